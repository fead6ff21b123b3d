"""Quality protocol (issue #10): extraction accuracy, answer-token position, paired intervals, fair synthetic
sets."""

from __future__ import annotations

import re

import pytest

from chunkcache.bench.datasets import CODE_PATTERN, COUNTRY_PATTERN, callgraph, load_dataset, multihop, needle
from chunkcache.bench.metrics import accuracy, answer_position, extracted_answer, paired_difference, t_quantile
from chunkcache.bench.report import table
from chunkcache.bench.runner import token_pieces
from chunkcache.rag.index import Hit
from chunkcache.rag.links import chunk_edges


def test_extraction_accuracy_takes_the_first_match():
    assert extracted_answer("The code is 4821.", ["4821"], CODE_PATTERN) == 1.0
    assert extracted_answer("Not 1234 but 4821.", ["4821"], CODE_PATTERN) == 0.0  # first match only
    assert extracted_answer("It is 48210.", ["4821"], CODE_PATTERN) == 0.0
    assert extracted_answer("I do not know.", ["4821"], CODE_PATTERN) == 0.0
    assert extracted_answer("Born in Hollin, Elbion.", ["elbion"], COUNTRY_PATTERN) == 1.0
    assert extracted_answer("Kestria, or maybe Elbion.", ["Elbion"], COUNTRY_PATTERN) == 0.0
    # without a pattern accuracy stays gold-in-prediction, which the same wrong-first answer passes
    assert accuracy("Kestria, or maybe Elbion.", ["Elbion"], None) == 1.0
    assert accuracy("Kestria, or maybe Elbion.", ["Elbion"], COUNTRY_PATTERN) == 0.0


def test_t_quantiles_and_paired_interval_on_a_known_vector():
    for df, t in [(1, 12.7062), (4, 2.7764), (9, 2.2622), (49, 2.0096)]:  # two-sided 95% table values
        assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-4)
    # d = [1, 0, 0, 1, 0]: mean 0.4, sd sqrt(0.3), half width 2.7764 * sqrt(0.3 / 5)
    mean, (lo, hi) = paired_difference([1, 0, 1, 1, 0], [0, 0, 1, 0, 0])
    assert mean == pytest.approx(0.4)
    assert (lo, hi) == pytest.approx((0.4 - 0.68010, 0.4 + 0.68010), abs=1e-4)
    assert paired_difference([0.5] * 4, [0.5] * 4) == (0.0, (0.0, 0.0))
    assert paired_difference([1.0], [0.0]) == (1.0, None)
    with pytest.raises(ValueError):
        paired_difference([1.0, 0.0], [1.0])


def test_answer_position_skips_boilerplate_and_finds_the_gold_answer():
    assert answer_position(["The", " code", " is", " ", "4", "8", "2", "1", "."], ["4821"]) == 4
    assert answer_position(["The", " answer", " is", " Paris", "."], ["London"]) == 3  # first content token
    assert answer_position(["Hollin", " is", " in", " El", "bion"], ["Elbion"]) == 3  # gold beats first content
    assert answer_position(["The", " the", "."], ["x"]) is None
    assert answer_position([], ["x"]) is None


def test_token_pieces_join_to_the_answer(smol):
    _, tok = smol
    ids = tok.encode("The code is 4821, not 1234.", add_special_tokens=False)
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tok.decode(ids)


@pytest.mark.parametrize("make", [needle, multihop])
def test_synthetic_sets_are_seeded_and_never_put_the_target_first(make):
    rows = make(40)
    assert rows == make(40) and rows != make(40, seed=1)
    for ex in rows:
        assert ex.answer_pattern
        holders = [i for i, p in enumerate(ex.passages) if re.search(rf"\b{ex.answers[0]}\b", p)]
        assert holders and 0 not in holders  # the passage(s) stating the answer
        assert re.search(ex.answer_pattern, ex.answers[0])


def test_needle_is_fair():
    rows = needle(40)
    shapes = set()
    for ex in rows:
        target = re.search(r"the (\w+ \w+)\?$", ex.question).group(1)
        color, thing = target.split()
        text = "".join(ex.passages)
        assert text.count(target) >= 1 and len(re.findall(r"\b\d{4}\b", text)) >= 6  # other objects' codes
        # distractors share the question's shape (other objects' codes), one of them the target's colour
        assert re.search(rf"\b{color} (?!{thing}\b)\w+", text)
        assert len(set(re.findall(r"\b\d{4}\b", text))) == len(re.findall(r"\b\d{4}\b", text))  # one code each
        shapes.update(p.split("\n")[0] for p in ex.passages)
    assert len({s.split(",")[0] for s in shapes}) >= 5  # several passage kinds
    assert len({ex.question.split(" the ")[0] for ex in rows}) == 3  # several question phrasings
    first_kinds = {ex.passages[0].split("\n")[0].split(",")[0] for ex in rows}
    assert len(first_kinds) >= 3


def test_multihop_needs_both_hops():
    for ex in multihop(40):
        person = re.search(r"[A-Z][a-z]+ [A-Z][a-z]+", ex.question).group(0)
        bio = next(p for p in ex.passages if p.startswith(f"Title: {person}\n"))
        city = re.search(r"[Bb]orn in (\w+)", bio).group(1)
        geo = next(p for p in ex.passages if p.startswith(f"Title: {city}\n"))
        assert ex.answers[0] in geo and ex.answers[0] not in bio  # the bridge: person -> city -> country
        assert ex.passages.index(bio) > 0 and ex.passages.index(geo) > 0
        countries = set(re.findall(COUNTRY_PATTERN, "".join(ex.passages)))
        assert len(countries) == 4  # distractor cities name other countries
    name, rows = load_dataset("multihop")
    assert name == "multihop" and len(rows) == 50


def test_linked_is_multihop_with_the_links_between_its_pages(tmp_path):
    plain, linked = multihop(20), multihop(20, links=True)
    for a, b in zip(plain, linked):
        assert (a.question, a.passages, a.edges) == (b.question, b.passages, [])
        targets = [t for _, t in b.edges]
        assert sorted(set(targets)) == sorted(i for i, p in enumerate(b.passages) if " born " in p or "Born" in p)
        assert all(targets.count(t) == 2 for t in targets)  # a biography links its birth and work cities
        for s, t in b.edges:
            city = b.passages[s].split("\n")[0].removeprefix("Title: ")
            assert city in b.passages[t] and city not in b.passages[t].split("\n")[0]
    assert load_dataset("linked")[0] == "linked"
    path = tmp_path / "bad.json"
    path.write_text('[{"question": "q", "answers": ["a"], "ctxs": [{"text": "x"}], "edges": [[0, 1]]}]')
    with pytest.raises(ValueError, match="edge outside"):
        load_dataset(str(path))


def test_callgraph_answers_need_the_called_definition_and_its_edges_are_what_links_reads():
    for ex in callgraph(20):
        func = re.search(r"does (\w+)\(\)", ex.question).group(1)
        caller = next(p for p in ex.passages if f"def {func}()" in p)
        callee_name = re.search(r"return (\w+)\(\)", caller).group(1)
        callee = next(p for p in ex.passages if f"def {callee_name}()" in p)
        assert ex.answers[0] in callee and ex.answers[0] not in caller  # the call is the bridge
        assert ex.passages.index(caller) > 0 and ex.passages.index(callee) > 0
        assert len(set(re.findall(CODE_PATTERN, "".join(ex.passages)))) == 3  # two distractor codes
        hits = [Hit(i, 0.5, f"/repo/m{i}.py", 1, 5, p, str(i)) for i, p in enumerate(ex.passages)]
        assert chunk_edges(hits) == ex.edges and len(ex.edges) == 3
    assert load_dataset("callgraph")[0] == "callgraph"


def test_table_shows_paired_intervals():
    out = table({"full": {"f1": 0.5, "f1_diff_vs_full": 0.0, "f1_diff_ci95": [0.0, 0.0]},
                 "naive": {"f1": 0.4, "accuracy_diff_vs_full": -0.06, "accuracy_diff_ci95": [-0.131, 0.011]}})
    assert "Δacc [lo, hi]" in out and "ΔF1 [lo, hi]" in out
    assert "-0.06 [-0.13, +0.01]" in out and "+0.00 [+0.00, +0.00]" in out
