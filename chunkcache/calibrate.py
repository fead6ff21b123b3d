"""A calibrated quality gate: the smallest budget of a reuse strategy whose answers stay within a fidelity
target of full prefill, measured on the user's own store (DESIGN sections 3 and 6).

A strategy's budget is its ``budget_param`` (cacheblend ``ratio``, cachecraft ``alpha``, epic ``k``).
Calibration takes N questions, answers each greedily with ``full`` once (the reference), then walks the
budget grid in ascending order — a larger value recomputes more — answering the same prompts with the
strategy at that value. Per value it measures

* fidelity: mean ROUGE-L of the greedy answer against full's greedy answer (``bench.metrics.rouge_l``);
* first-token agreement: share of questions whose first generated token equals full's;
* recompute fraction: mean share of the context's prefill work redone (``RequestStats.recompute_fraction``).

The first value whose fidelity reaches the target is the answer; larger values are not run, since the
smallest passing value is what is wanted. If no value reaches it, nothing is chosen (the CLI saves nothing
and exits 1, naming the best fidelity reached): silently saving a setting below the target would defeat a
gate, and ``full`` needs no calibration.

Questions come from a file (one per line) or are synthesized from the stored chunks, deterministically
(seeded): chunks are visited in a seeded shuffle, one "content sentence" is drawn from each (a prose
sentence of at least five words, not a heading, not code), and the question asks what the documents say
about the sentence's first half (``What do the documents say about "The Zorblat fruit is purple ..."?``).
Why this recipe: the words come from the chunk, so retrieval brings that chunk (and its neighbours in
embedding space) into the prompt as a real question about the store would; the rest of the sentence is
what an answer must supply, so the answer has to be read from the retrieved, reused context — the part
that reuse can get wrong — rather than echoed from the question; and it needs no model to write questions,
so calibration is offline, cheap and repeatable. Prompts are built exactly as ``ask`` builds them (top-k
retrieval, same template), so the setting is measured on the traffic it will serve.
"""

from __future__ import annotations

import inspect
import random
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from chunkcache.bench.metrics import rouge_l
from chunkcache.strategies import STRATEGIES, make_strategy
from chunkcache.strategies.base import Strategy

if TYPE_CHECKING:
    from chunkcache.api import Engine

Number = int | float

# Default grids, ascending in recompute. ratio: share of context tokens; alpha: scales Cache-Craft's CFO
# (1.0 recomputes each chunk's full fix overhead); k: leading tokens per chunk.
DEFAULT_GRIDS: dict[str, list[Number]] = {
    "cacheblend": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5],
    "cachecraft": [0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
    "epic": [4, 8, 16, 32, 64],
}
# A strategy without a grid above gets its constructor default times these factors (invalid ones dropped).
DERIVED_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SEED = 0
MIN_WORDS = 5
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_MARKUP = "*_`>-+|\"' \t"


@dataclass
class Point:
    """The measurements at one budget value."""

    value: Number
    spec: str
    fidelity: float
    first_token_agreement: float
    recompute_fraction: float


@dataclass
class Calibration:
    """Everything one calibration run measured; ``chosen`` is None when no value reached ``target``."""

    strategy: str
    param: str
    target: float
    questions: list[str]
    source: str  # "synthetic" or the questions file
    k: int
    max_new_tokens: int
    points: list[Point] = field(default_factory=list)
    chosen: Point | None = None

    @property
    def best(self) -> Point | None:
        return max(self.points, key=lambda p: p.fidelity, default=None)

    def record(self, model: str) -> dict:
        """What is saved in store.json under ``"calibration"`` (requires ``chosen``)."""
        if self.chosen is None:
            raise ValueError("no budget reached the target: there is nothing to save")
        chosen = asdict(self.chosen)
        return {"strategy": chosen.pop("spec"), "param": self.param, **chosen, "target": self.target,
                "n": len(self.questions), "questions": self.source, "k": self.k,
                "max_new_tokens": self.max_new_tokens, "model": model,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "grid": [asdict(p) for p in self.points]}


# --- input checks (cheap: the CLI runs them before the model loads) -----------------------------------

def check_settings(target: float, n: int, k: int, max_new_tokens: int) -> None:
    """The fidelity target is in (0, 1]; the question count, top-k and answer length are at least 1."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"--target must be in (0, 1], got {target}")
    if n < 1 or k < 1 or max_new_tokens < 1:
        raise ValueError("-n, -k and --max-new-tokens must be at least 1")


def parse_grid(text: str) -> list[Number]:
    """``"0.1,0.2"`` → ``[0.1, 0.2]`` (integers stay integers, as in strategy specs)."""
    values: list[Number] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            values.append(int(item) if item.lstrip("-").isdigit() else float(item))
        except ValueError:
            raise ValueError(f"--grid value {item!r} is not a number") from None
    if not values:
        raise ValueError("--grid is empty")
    return values


def budget_of(spec: str) -> tuple[type[Strategy], list[str]]:
    """The strategy class of ``spec`` and its other ``key=value`` parameters; errors if it has no budget
    parameter or the spec already fixes it."""
    make_strategy(spec)  # unknown names and bad parameters fail here
    name, _, params = spec.strip().partition(":")
    cls = STRATEGIES[name]
    if cls.budget_param is None:
        tunable = ", ".join(n for n, c in STRATEGIES.items() if c.budget_param)
        raise ValueError(f"strategy {name!r} has no budget parameter to calibrate; choose one of {tunable}")
    others = [item.strip() for item in params.split(",") if item.strip()]
    if any(item.partition("=")[0].strip() == cls.budget_param for item in others):
        raise ValueError(f"--strategy {spec} fixes {cls.budget_param}, which calibrate tunes: "
                         f"give the values to try with --grid instead")
    return cls, others


def default_grid(cls: type[Strategy]) -> list[Number]:
    """``DEFAULT_GRIDS`` for the strategy, else multiples of its constructor's default budget."""
    if cls.name in DEFAULT_GRIDS:
        return DEFAULT_GRIDS[cls.name]
    default = inspect.signature(cls.__init__).parameters[cls.budget_param].default
    if not isinstance(default, (int, float)) or isinstance(default, bool):
        raise ValueError(f"strategy {cls.name!r} has no default grid for {cls.budget_param}: pass --grid")
    values = sorted({type(default)(default * f) for f in DERIVED_FACTORS})
    valid = []
    for v in values:
        try:
            cls(**{cls.budget_param: v})
            valid.append(v)
        except ValueError:
            pass
    return valid


def candidates(spec: str, grid: list[Number] | None = None) -> tuple[str, list[tuple[Number, str]]]:
    """(budget parameter, [(value, strategy spec)] in ascending order) for calibrating ``spec``."""
    cls, others = budget_of(spec)
    values = sorted(set(grid if grid is not None else default_grid(cls)))
    if not values:
        raise ValueError(f"no valid {cls.budget_param} values to try for {cls.name!r}: pass --grid")
    out = []
    for v in values:
        full_spec = f"{cls.name}:" + ",".join([*others, f"{cls.budget_param}={v}"])
        make_strategy(full_spec)  # e.g. a ratio above 1 fails here, before any model call
        out.append((v, full_spec))
    return cls.budget_param, out


# --- questions --------------------------------------------------------------------------------------

def read_questions(path: str | Path, n: int, seed: int = SEED) -> list[str]:
    """Up to ``n`` questions from a file of one question per line (a seeded sample, in file order)."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    questions = [q for q in lines if q]
    if not questions:
        raise ValueError(f"the questions file {path} has no questions (one per line)")
    if len(questions) <= n:
        return questions
    keep = sorted(random.Random(seed).sample(range(len(questions)), n))
    return [questions[i] for i in keep]


def content_sentences(text: str) -> list[str]:
    """Prose sentences of a chunk worth asking about: at least ``MIN_WORDS`` words, not a heading or
    comment line, and mostly letters (code, tables and number lists are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for sentence in _SENTENCE_SPLIT.split(line):
            sentence = sentence.strip(_MARKUP)
            if len(sentence.split()) < MIN_WORDS:
                continue
            if sum(c.isalpha() or c in " ,.;:'" for c in sentence) < 0.9 * len(sentence):
                continue
            out.append(sentence)
    return out


def question_about(sentence: str) -> str:
    """Ask what the documents say about the first half of ``sentence`` (3 to 8 words)."""
    words = sentence.rstrip(".!?;:,").split()
    head = " ".join(words[:max(3, min(8, len(words) // 2))])
    return f'What do the documents say about "{head} ..."?'


def synthetic_questions(chunk_texts: list[str], n: int, seed: int = SEED) -> list[str]:
    """``n`` distinct questions from the chunks (module docstring): a seeded shuffle of the chunks, one
    seeded sentence per chunk per pass, as many passes as needed. Fewer when the store has too little prose."""
    rng = random.Random(seed)
    pools = [content_sentences(t) for t in chunk_texts]
    order = [i for i in range(len(pools)) if pools[i]]
    rng.shuffle(order)
    for i in order:
        rng.shuffle(pools[i])
    questions: list[str] = []
    while len(questions) < n and any(pools[i] for i in order):
        for i in order:
            if pools[i] and len(questions) < n:
                q = question_about(pools[i].pop())
                if q not in questions:
                    questions.append(q)
    if not questions:
        raise ValueError("the store's chunks have no prose sentences to ask about: pass --questions FILE")
    return questions


# --- measurement ------------------------------------------------------------------------------------

@dataclass
class Run:
    """One greedy answer: its text, first token and recompute fraction."""

    text: str
    first_token: int
    recompute: float


def answer(eng: Engine, chunks: list[list[int]], question_ids: list[int], strategy: Strategy,
           max_new_tokens: int) -> Run:
    """The greedy answer to one assembled prompt under ``strategy`` (what ``ask`` generates)."""
    pre = eng.reuse.prefill(chunks, question_ids, strategy, reserve=max_new_tokens)
    tokens = list(eng.reuse.generate(pre, max_new_tokens))
    text = eng.reuse.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Run(text, int(torch.argmax(pre.result.logits)), pre.stats.recompute_fraction)


def measure(eng: Engine, prompts: list[tuple[list[list[int]], list[int]]], references: list[Run], value: Number,
            spec: str, max_new_tokens: int, progress: bool = False) -> Point:
    """Fidelity, first-token agreement and recompute fraction of ``spec`` against the ``full`` references."""
    strategy = make_strategy(spec)
    runs = [answer(eng, chunks, q, strategy, max_new_tokens)
            for chunks, q in tqdm(prompts, desc=spec, unit="q", leave=False, disable=not progress)]
    pairs = list(zip(runs, references))
    return Point(value, spec, fidelity=statistics.fmean(rouge_l(r.text, ref.text) for r, ref in pairs),
                 first_token_agreement=statistics.fmean(r.first_token == ref.first_token for r, ref in pairs),
                 recompute_fraction=statistics.fmean(r.recompute for r in runs))


def prepare(eng: Engine, questions: list[str], k: int, max_new_tokens: int, progress: bool = False
            ) -> tuple[list[tuple[list[list[int]], list[int]]], list[Run]]:
    """Each question's prompt (retrieved as ``ask`` does) and its ``full`` reference answer, computed once."""
    prompts = [eng.prompt(q, k)[1:] for q in questions]
    full = make_strategy("full")
    refs = [answer(eng, chunks, q, full, max_new_tokens)
            for chunks, q in tqdm(prompts, desc="full (reference)", unit="q", leave=False, disable=not progress)]
    return prompts, refs


def calibrate(eng: Engine, target: float, strategy: str, questions: list[str] | None = None,
              source: str = "synthetic", n: int = 20, k: int = 5, max_new_tokens: int = 128,
              grid: list[Number] | None = None, progress: bool = True,
              on_point: Callable[[Point], None] | None = None) -> Calibration:
    """Walk the grid of ``strategy``'s budget upward until fidelity reaches ``target`` (module docstring).

    ``questions`` None synthesizes ``n`` from the store; ``on_point`` sees each measured value as it lands."""
    check_settings(target, n, k, max_new_tokens)
    param, specs = candidates(strategy, grid)
    if questions is None:
        chunk_texts = [hit.text for hit in eng.index.live_chunks()]
        if not chunk_texts:
            raise ValueError(f"the store {eng.root} has no documents: run `chunkcache ingest PATH` first")
        questions = synthetic_questions(chunk_texts, n)
    prompts, refs = prepare(eng, questions, k, max_new_tokens, progress)
    result = Calibration(strategy.partition(":")[0].strip(), param, target, questions, source, k, max_new_tokens)
    for value, spec in specs:
        point = measure(eng, prompts, refs, value, spec, max_new_tokens, progress)
        result.points.append(point)
        if on_point:
            on_point(point)
        if point.fidelity >= target:
            result.chosen = point
            break
    return result
