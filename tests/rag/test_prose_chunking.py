"""Prose chunking: token budget, headings first, then paragraphs and sentences, exact line ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkcache.rag import chunk_document

TOPICS = ["installation", "configuration", "key rotation", "backups", "monitoring", "upgrades"]


def sentence(topic: str, i: int) -> str:
    return f"Step {i} of {topic} requires checking the {topic} settings before continuing."


def markdown_doc(paragraphs: int, sentences: int) -> str:
    parts = []
    for level, topic in enumerate(TOPICS):
        parts.append(f"{'#' * (1 + level % 2)} {topic.title()}\n")
        for p in range(paragraphs):
            parts.append(" ".join(sentence(topic, p * sentences + s) for s in range(sentences)) + "\n")
    return "\n".join(parts)


def test_long_markdown_respects_budget_and_line_ranges(count_tokens, check_chunks):
    text = markdown_doc(paragraphs=5, sentences=4)
    chunks = chunk_document(Path("guide.md"), text, count_tokens, max_tokens=96)
    check_chunks(text, chunks, 96)
    assert len(chunks) > len(TOPICS)  # sections had to be split


def test_sections_that_fit_are_never_split_and_chunks_start_at_headings(count_tokens, check_chunks):
    text = markdown_doc(paragraphs=2, sentences=2)
    section_tokens = max(count_tokens(s) for s in text.split("\n#") if s.strip())
    budget = section_tokens + 8  # one section fits, two do not
    chunks = chunk_document(Path("guide.md"), text, count_tokens, max_tokens=budget)
    check_chunks(text, chunks, budget)
    assert [c.text.splitlines()[0].lstrip("# ") for c in chunks] == [t.title() for t in TOPICS]


def test_small_sections_are_merged_up_to_the_budget(count_tokens, check_chunks):
    text = markdown_doc(paragraphs=1, sentences=1)
    chunks = chunk_document(Path("guide.md"), text, count_tokens, max_tokens=1000)
    check_chunks(text, chunks, 1000)
    assert len(chunks) == 1


def test_hash_lines_inside_code_fences_are_not_headings(count_tokens, check_chunks):
    fence = "```bash\n# install the tool\npip install thing\n# and run it\nthing --help\n```"
    text = f"# Setup\n\nRun these commands first, in a fresh shell.\n\n{fence}\n\n# Usage\n\nCall it.\n"
    budget = count_tokens(fence) + 2  # the Setup section does not fit, its code block does
    chunks = chunk_document(Path("readme.md"), text, count_tokens, max_tokens=budget)
    check_chunks(text, chunks, budget)
    assert fence in [c.text for c in chunks]


def test_setext_headings_split_markdown(count_tokens, check_chunks):
    body = " ".join(sentence("setup", i) for i in range(3))
    text = f"Setup\n=====\n\n{body}\n\nUsage\n-----\n\n{body}\n"
    budget = count_tokens(f"Setup\n=====\n\n{body}") + 2
    chunks = chunk_document(Path("readme.md"), text, count_tokens, max_tokens=budget)
    check_chunks(text, chunks, budget)
    assert [c.text.splitlines()[0] for c in chunks] == ["Setup", "Usage"]


def test_rst_titles_with_and_without_overline_split(count_tokens, check_chunks):
    body = " ".join(sentence("backups", i) for i in range(3))
    text = f"=====\nGuide\n=====\n\n{body}\n\nBackups\n-------\n\n{body}\n\nRestore\n~~~~~~~\n\n{body}\n"
    budget = count_tokens(f"Backups\n-------\n\n{body}") + 12
    chunks = chunk_document(Path("guide.rst"), text, count_tokens, max_tokens=budget)
    check_chunks(text, chunks, budget)
    assert [c.start_line for c in chunks] == [1, 7, 12]


def test_paragraphs_are_split_before_sentences(count_tokens, check_chunks):
    paragraphs = [" ".join(sentence(t, i) for i in range(3)) for t in TOPICS[:4]]
    text = "\n\n".join(paragraphs) + "\n"
    budget = max(count_tokens(p) for p in paragraphs) + 4
    chunks = chunk_document(Path("notes.txt"), text, count_tokens, max_tokens=budget)
    check_chunks(text, chunks, budget)
    assert [c.text for c in chunks] == paragraphs


def test_a_long_paragraph_splits_at_sentence_ends(count_tokens, check_chunks):
    text = " ".join(sentence("monitoring", i) for i in range(40))
    chunks = chunk_document(Path("notes.txt"), text, count_tokens, max_tokens=50)
    check_chunks(text, chunks, 50)
    assert len(chunks) > 5
    assert all(c.text.endswith(".") and c.text.startswith("Step") for c in chunks)


def test_unknown_suffix_is_chunked_as_prose(count_tokens, check_chunks):
    text = "\n\n".join(" ".join(sentence(t, i) for i in range(4)) for t in TOPICS)
    chunks = chunk_document(Path("notes.unknownext"), text, count_tokens, max_tokens=64)
    check_chunks(text, chunks, 64)


def test_a_counter_that_pads_is_rejected_clearly():
    with pytest.raises(ValueError, match="pad or add special tokens"):
        chunk_document(Path("notes.md"), "Some text.", lambda text: 128, max_tokens=64)
