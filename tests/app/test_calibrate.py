"""`chunkcache calibrate`: the smallest budget meeting a fidelity target is found, saved and used by `ask`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app_helpers import QUESTION
from chunkcache.calibrate import (DEFAULT_GRIDS, candidates, content_sentences, default_grid, measure, prepare,
                                  synthetic_questions)
from chunkcache.cli import main
from chunkcache.strategies import DEFAULT_STRATEGY, STRATEGIES, Strategy

TARGET = 0.9
# cachecraft alpha: 0.1 recomputes ~5% of the context and misses the target on the tiny store; 3 recomputes
# every chunk that is not exact, so some value of the grid meets it. Few questions, short answers: fast.
N, K, TOKENS = 3, 3, 8
CALIBRATE = ["--strategy", "cachecraft", "--grid", "0.1,1,3", "--target", str(TARGET),
             "-n", str(N), "-k", str(K), "--max-new-tokens", str(TOKENS)]


def manifest(store: Path) -> dict:
    return json.loads((store / "store.json").read_text())


def test_calibrate_saves_the_smallest_budget_meeting_the_target_and_ask_uses_it(store_copy, open_engine,
                                                                                    capsys) -> None:
    store = store_copy()
    assert main(["calibrate", "--store", str(store), *CALIBRATE]) == 0
    out = capsys.readouterr().out
    cal = manifest(store)["calibration"]
    assert cal["fidelity"] >= TARGET
    assert cal["strategy"] == f"cachecraft:alpha={cal['value']}"
    assert (cal["param"], cal["target"], cal["n"], cal["k"], cal["max_new_tokens"]) == ("alpha", TARGET, N, K, TOKENS)
    assert cal["questions"] == "synthetic" and cal["model"] and cal["date"]
    # walked upward; every smaller value measured missed the target (0.1 did) and was not chosen
    grid = cal["grid"]
    assert [p["value"] for p in grid] == sorted(p["value"] for p in grid)
    assert grid[0]["value"] == 0.1 and grid[0]["fidelity"] < TARGET and cal["value"] != 0.1
    assert grid[-1]["spec"] == cal["strategy"]
    assert all(p["fidelity"] < TARGET for p in grid[:-1])
    assert 0 < cal["recompute_fraction"] < 1
    # the table: one row per measured value, the chosen one marked
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0.1", "1 ", "3 "))]
    assert [r[0] for r in rows] == [str(p["value"]) for p in grid], out
    assert "<- meets target" in out and f"saved {cal['strategy']}" in out

    # deterministic: the saved setting on the same questions reproduces the saved fidelity
    eng = open_engine(store, max_new_tokens=4)
    assert (eng.strategy_spec, eng.strategy_source) == (cal["strategy"], "calibrated")
    questions = synthetic_questions([hit.text for hit in eng.index.live_chunks()], N)
    prompts, refs = prepare(eng, questions, K, TOKENS)
    again = measure(eng, prompts, refs, cal["value"], cal["strategy"], TOKENS)
    assert again.fidelity == pytest.approx(cal["fidelity"], abs=1e-9)
    assert again.recompute_fraction == pytest.approx(cal["recompute_fraction"], abs=1e-9)

    # ask uses the saved spec and reports it; an explicit strategy wins
    s = eng.ask(QUESTION, strategy="naive").stats
    assert (s["strategy_spec"], s["strategy_source"]) == ("naive", "explicit")
    assert main(["ask", QUESTION, "--store", str(store), "-k", str(K), "--max-new-tokens", "4", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert (stats["strategy_spec"], stats["strategy_source"]) == (cal["strategy"], "calibrated")
    assert 0 < stats["recompute_fraction"] < 1


def test_no_budget_meeting_the_target_saves_nothing_and_exits_1(store_copy, shared_engine, tmp_path: Path,
                                                               capsys) -> None:
    # the same questions as above, asked from a file: alpha=0.1 misses the target there, so here too
    store = store_copy()
    questions = tmp_path / "questions.txt"
    asked = synthetic_questions([hit.text for hit in shared_engine.index.live_chunks()], N)
    questions.write_text("\n" + "\n\n".join(asked) + "\n")
    args = ["calibrate", "--store", str(store), "--questions", str(questions), "--strategy", "cachecraft",
            "--grid", "0.1", "--target", str(TARGET), "-k", str(K), "--max-new-tokens", str(TOKENS)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: no alpha in the grid reaches fidelity {TARGET} on {N} questions (best 0."), err
    assert "cachecraft:alpha=0.1" in err[-1] and "nothing saved" in err[-1]
    assert "calibration" not in manifest(store)


@pytest.mark.parametrize("args, fragment", [
    (["--target", "0"], "--target must be in (0, 1]"),
    (["--target", "1.5"], "--target must be in (0, 1]"),
    (["--strategy", "bogus"], "unknown strategy 'bogus'"),
    (["--strategy", "naive"], "strategy 'naive' has no budget parameter"),
    (["--strategy", "cacheblend:ratio=0.3"], "fixes ratio"),
    (["--strategy", "cacheblend", "--grid", "0.1,x"], "--grid value 'x' is not a number"),
    (["--strategy", "cacheblend", "--grid", "2"], "ratio must be in [0, 1]"),
    (["-n", "0"], "at least 1"),
    (["--questions", "missing.txt"], "missing.txt"),
])
def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys, args: list[str], fragment: str) -> None:
    assert main(["calibrate", "--store", str(tmp_path / "store"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_calibrating_an_empty_store_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["calibrate", "--store", str(tmp_path / "empty"), "--strategy", "epic", "--grid", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no documents" in err[-1], err


# --- without the model: grids and synthetic questions ------------------------------------------------

def test_every_tunable_strategy_has_an_ascending_valid_default_grid() -> None:
    tunable = [name for name, cls in STRATEGIES.items() if cls.budget_param]
    assert set(DEFAULT_GRIDS) <= set(tunable)
    if STRATEGIES[DEFAULT_STRATEGY.partition(":")[0]].budget_param:
        tunable.append(DEFAULT_STRATEGY)
    for spec in tunable:
        param, cands = candidates(spec)
        values = [v for v, _ in cands]
        assert values == sorted(set(values)) and len(values) >= 3, spec
        assert all(s.endswith(f"{param}={v}") for v, s in cands)


def test_a_strategy_without_a_listed_grid_gets_multiples_of_its_default(monkeypatch) -> None:
    class Tuned(Strategy):
        name = "tuned"
        budget_param = "share"

        def __init__(self, share: float = 0.4) -> None:
            if share > 1:
                raise ValueError("share must be <= 1")
            self.share = share

        def select(self, req, records, must):
            raise NotImplementedError

    monkeypatch.setitem(STRATEGIES, "tuned", Tuned)
    assert default_grid(Tuned) == [0.1, 0.2, 0.4, 0.8]  # 1.6 is rejected by the constructor
    assert candidates("tuned")[1][0] == (0.1, "tuned:share=0.1")


def test_synthetic_questions_are_seeded_distinct_and_about_prose() -> None:
    texts = ["# The Zorblat fruit\n\nThe Zorblat fruit is purple and grows only on Mount Kelvar. "
             "Farmers harvest the Zorblat in early spring.\n",
             "def add(a, b):\n    return a + b  # x\n",
             "| col | col |\n|-----|-----|\n| 1 | 2 |\n"]
    assert content_sentences(texts[0]) == ["The Zorblat fruit is purple and grows only on Mount Kelvar.",
                                           "Farmers harvest the Zorblat in early spring."]
    assert content_sentences(texts[1]) == content_sentences(texts[2]) == []
    qs = synthetic_questions(texts, 5)
    assert qs == synthetic_questions(texts, 5)  # seeded
    assert len(qs) == 2 == len(set(qs))  # only two prose sentences exist
    assert 'What do the documents say about "The Zorblat fruit is purple ..."?' in qs
    with pytest.raises(ValueError, match="--questions"):
        synthetic_questions(texts[1:], 3)
