"""ChunkIndex and split_prompt on real tokenizations: MuSiQue passages pasted into chat prompts the ways RAG
apps join them, tokenized by the packaged default model's tokenizer (no weights are loaded)."""

from __future__ import annotations

import random

import pytest

from chunkcache.bench.datasets import load_json, shared_data_dir
from chunkcache.engine.matcher import (ChunkIndex, Match, Segment, blank_line_tokens, line_end_tokens,
                                      split_prompt)

JOINS = {
    "blank line": lambda ps: "\n\n".join(ps),
    "newline": lambda ps: "\n".join(ps),
    "space": lambda ps: " ".join(ps),
    "no separator": lambda ps: "".join(ps),
    "[i] list": lambda ps: "\n".join(f"[{k}] {p}" for k, p in enumerate(ps, 1)),
    "Document i:": lambda ps: "\n\n".join(f"Document {k}: {p}" for k, p in enumerate(ps, 1)),
}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from chunkcache.models.loader import resolve_model_dir

    return AutoTokenizer.from_pretrained(resolve_model_dir("default"), local_files_only=True)


@pytest.fixture(scope="module")
def passages() -> list[str]:
    """40 distinct MuSiQue passages (title line and text, without the chunk's trailing blank line)."""
    path = shared_data_dir() / "musique_dev.json"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    seen: list[str] = []
    for example in load_json(path):
        for p in example.passages:
            text = p.strip()
            if text not in seen:
                seen.append(text)
    assert len(seen) >= 48
    return seen[:48]


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def chat(tok, context: str) -> str:
    content = f"Answer the question using the passages below.\n\n{context}\n\nQuestion: who wrote it?"
    return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                   add_generation_prompt=True)


def indexed(tok, texts: list[str], window: int = 16) -> ChunkIndex:
    index = ChunkIndex(window)
    for k, text in enumerate(texts):
        index.add(f"p{k}", encode(tok, text))
    return index


def verified(index: ChunkIndex, ids: list[int], matches: list[Match]) -> list[Match]:
    """The matches, after checking each one equals its chunk's tokens and none overlap."""
    end = 0
    for m in matches:
        assert m.start >= end and m.end - m.start >= index.window
        assert ids[m.start:m.end] == index.tokens(m.chunk_id)[m.offset:m.offset + m.end - m.start]
        end = m.end
    return matches


def token_span(tok, prompt: str, piece: str) -> range:
    """Token positions of ``prompt``'s tokenization that overlap the (only) occurrence of ``piece``."""
    assert prompt.count(piece) == 1
    lo = prompt.index(piece)
    hi = lo + len(piece)
    offsets = tok(prompt, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    pos = [i for i, (a, b) in enumerate(offsets) if a < hi and b > lo]
    return range(pos[0], pos[-1] + 1)


def test_seam_coverage_every_joining_style(tok, passages):
    """>= 95% of the pasted passages' tokens are matched, seams included, for every way of joining them."""
    texts = passages[:40]
    index = indexed(tok, texts)
    sizes = {f"p{k}": len(index.tokens(f"p{k}")) for k in range(len(texts))}
    coverage = {}
    for style, join in JOINS.items():
        order = list(range(len(texts)))
        random.Random(style).shuffle(order)
        matched = total = 0
        for g in range(0, len(order), 5):
            group = order[g:g + 5]
            ids = encode(tok, chat(tok, join([texts[k] for k in group])))
            matches = verified(index, ids, index.find(ids))
            pasted = {f"p{k}" for k in group}
            assert {m.chunk_id for m in matches} == pasted
            for cid in pasted:
                assert sum(len(m) for m in matches if m.chunk_id == cid) <= sizes[cid]
            matched += sum(len(m) for m in matches)
            total += sum(sizes[c] for c in pasted)
        coverage[style] = matched / total
    print("\nseam coverage: " + ", ".join(f"{s} {c:.4f}" for s, c in coverage.items()))
    assert min(coverage.values()) >= 0.95, coverage


def test_passage_not_in_index_is_not_matched(tok, passages):
    index = indexed(tok, passages[:40])
    stranger = passages[45]
    prompt = chat(tok, "\n\n".join([passages[3], stranger, passages[7]]))
    ids = encode(tok, prompt)
    matches = verified(index, ids, index.find(ids))
    assert {m.chunk_id for m in matches} == {"p3", "p7"}
    covered = {i for m in matches for i in range(m.start, m.end)}
    assert not covered & set(token_span(tok, prompt, stranger))


def test_passage_pasted_twice_matches_twice(tok, passages):
    index = indexed(tok, passages[:10])
    ids = encode(tok, chat(tok, "\n\n".join([passages[2], passages[5], passages[2]])))
    matches = verified(index, ids, index.find(ids))
    twice = [m for m in matches if m.chunk_id == "p2"]
    assert len(twice) == 2
    assert all(len(m) >= 0.95 * len(index.tokens("p2")) for m in twice)


def test_edited_middle_matches_in_two_pieces_around_the_edit(tok, passages):
    text = passages[4]
    cut = text.index(". ", len(text) // 2) + 2
    stop = text.index(". ", cut) + 2
    edit = "this sentence was rewritten by an editor and no cache has seen it before ."
    edited = text[:cut] + edit + " " + text[stop:]
    index = indexed(tok, [text])
    prompt = chat(tok, edited)
    ids = encode(tok, prompt)
    matches = verified(index, ids, index.find(ids))
    assert len(matches) == 2
    changed = token_span(tok, prompt, edit)
    assert 0 <= changed.start - matches[0].end <= 1 and 0 <= matches[1].start - changed.stop <= 1
    assert matches[0].offset < matches[1].offset
    assert sum(len(m) for m in matches) >= 0.8 * len(index.tokens("p0"))


def test_overlapping_stored_chunks_the_longest_run_wins(tok, passages):
    """A chunk holding the passage's first 200 tokens after other text hits first; the whole passage, whose
    first token differs in the prompt and so first hits a window later, still wins."""
    prompt = chat(tok, "Document 2: " + passages[8])
    ids = encode(tok, prompt)
    whole = encode(tok, passages[8])
    p0 = token_span(tok, prompt, passages[8]).start
    assert ids[p0] != whole[0] and ids[p0 + 1:p0 + len(whole)] == whole[1:]
    index = ChunkIndex(16)
    index.add("prefix", encode(tok, passages[9])[:48] + ids[p0:p0 + 200])
    index.add("whole", whole)
    assert verified(index, ids, index.find(ids)) == [Match(p0 + 1, p0 + len(whole), "whole", 1)]


def test_chunks_shorter_than_the_window_are_not_matched(tok):
    short = "the river flows north through the old town"
    ids = encode(tok, chat(tok, f"{short}\n\nmore text"))
    n = len(encode(tok, short))
    assert 4 < n < 16
    wide, narrow = ChunkIndex(16), ChunkIndex(4)
    for index in (wide, narrow):
        index.add("short", encode(tok, short))
    assert wide.find(ids) == []
    assert [m.chunk_id for m in verified(narrow, ids, narrow.find(ids))] == ["short"]


def test_remove_makes_a_chunk_unmatched(tok, passages):
    index = indexed(tok, passages[:3])
    ids = encode(tok, chat(tok, "\n\n".join(passages[:3])))
    assert {m.chunk_id for m in index.find(ids)} == {"p0", "p1", "p2"}
    index.remove("p1")
    assert "p1" not in index and "p0" in index and len(index) == 2
    with pytest.raises(KeyError):
        index.tokens("p1")
    assert {m.chunk_id for m in verified(index, ids, index.find(ids))} == {"p0", "p2"}
    index.add("p1", encode(tok, passages[1]))
    assert {m.chunk_id for m in index.find(ids)} == {"p0", "p1", "p2"}


def test_random_tokens_find_nothing(tok, passages):
    index = indexed(tok, passages[:40])
    rng = random.Random(0)
    ids = [rng.randrange(len(tok)) for _ in range(5000)]
    assert index.find(ids) == []


def test_blank_line_and_line_end_tokens(tok):
    blank, line_end = blank_line_tokens(tok), line_end_tokens(tok)
    assert set(encode(tok, "\n\n")) <= blank
    assert all("\n\n" in tok.decode([i]) for i in blank)
    assert all(tok.decode([i]).strip(" \t\n") == "" for i in line_end)
    split = encode(tok, "one.\n\ntwo")  # SmolLM2 writes this blank line as two "\n" tokens
    assert any(a in line_end and b in line_end for a, b in zip(split, split[1:]))
    assert not set(encode(tok, "one.\ntwo three")) & blank


def test_split_prompt_cuts_after_a_blank_line_written_as_two_tokens(tok):
    head, tail = "a first paragraph of the prompt", "and the question after it"
    ids = encode(tok, f"{head}.\n\n{tail}")
    cut = next(i for i in range(len(ids)) if tok.decode(ids[:i]) == f"{head}.\n\n")
    blank = blank_line_tokens(tok).__contains__
    assert split_prompt(ids, [], blank, min_learn=4, is_line_end=line_end_tokens(tok).__contains__) == [
        Segment(0, cut, "learn"), Segment(cut, len(ids), "question")]
    assert split_prompt(ids, [], blank, min_learn=4) == [Segment(0, len(ids), "question")]


B = 0  # the boundary token of the hand-made prompts below
boundary = {B}.__contains__


def run(*parts: list[int]) -> list[int]:
    return [t for part in parts for t in part]


def words(n: int, first: int = 1) -> list[int]:
    return list(range(first, first + n))


def test_split_prompt_kinds_and_merging():
    head = words(4) + [B]  # 5: text
    passage = words(39, 100) + [B]  # 40: learn
    note, label = words(2, 200) + [B], words(3, 300) + [B]  # 3 + 4: text, merged
    ids = run(head, words(20, 500), passage, note, label, words(25, 600), words(6, 700))
    matches = [Match(5, 25, "a", 3), Match(72, 97, "b", 0)]
    assert split_prompt(ids, matches, boundary) == [
        Segment(0, 5, "text"),
        Segment(5, 25, "chunk", "a", 3),
        Segment(25, 65, "learn"),
        Segment(65, 72, "text"),
        Segment(72, 97, "chunk", "b", 0),
        Segment(97, 103, "question"),
    ]
    kinds = [s.kind for s in split_prompt(ids, matches, boundary, min_learn=41)]
    assert kinds == ["text", "chunk", "text", "chunk", "question"]


def test_split_prompt_question_is_the_tail_after_the_last_boundary():
    ids = run(words(50) + [B], words(40, 100))
    assert split_prompt(ids, [], boundary) == [Segment(0, 51, "learn"), Segment(51, 91, "question")]
    no_boundary = words(90)
    assert split_prompt(no_boundary, [], boundary) == [Segment(0, 90, "question")]
    ends_on_boundary = words(60) + [B]
    assert split_prompt(ends_on_boundary, [], boundary) == [Segment(0, 61, "question")]


def test_split_prompt_trims_a_match_at_the_prompt_end():
    ids = words(10) + [B] + words(30, 100)
    segs = split_prompt(ids, [Match(11, 41, "c", 2)], boundary)
    assert segs == [Segment(0, 11, "text"), Segment(11, 40, "chunk", "c", 2), Segment(40, 41, "question")]
    one = split_prompt(words(5) + [B, 9], [Match(6, 7, "d", 0)], boundary)
    assert one == [Segment(0, 6, "text"), Segment(6, 7, "question")]


def test_split_prompt_tiles_a_real_prompt(tok, passages):
    """Indexed passages become chunks, the unindexed one in their midst is learned whole, the tail is the
    question."""
    index = indexed(tok, passages[:6])
    ids = encode(tok, chat(tok, "\n\n".join(passages[:3] + [passages[40]] + passages[3:6])))
    matches = index.find(ids)
    segs = split_prompt(ids, matches, blank_line_tokens(tok).__contains__,
                        is_line_end=line_end_tokens(tok).__contains__)
    assert segs[0].start == 0 and segs[-1].end == len(ids)
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    assert segs[-1].kind == "question" and "question" not in [s.kind for s in segs[:-1]]
    assert tok.decode(ids[segs[-1].start:]).startswith("Question: who wrote it?")
    assert [(s.start, s.end, s.chunk_id, s.offset) for s in segs if s.kind == "chunk"] == \
        [(m.start, m.end, m.chunk_id, m.offset) for m in matches]
    learned = [tok.decode(ids[s.start:s.end]) for s in segs if s.kind == "learn"]
    assert passages[40] + "\n\n" in learned
    assert all(text.endswith("\n\n") for text in learned)


def test_split_prompt_rejects_an_empty_prompt():
    with pytest.raises(ValueError):
        split_prompt([], [], boundary)
