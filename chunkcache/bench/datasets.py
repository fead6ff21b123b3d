"""Benchmark datasets: the public chunk-reuse QA format, ``musique`` and a synthetic ``needle`` set.

Format (DESIGN section 6): a JSON list of ``{"question": str, "answers": [str], "ctxs": [{"title": str,
"text": str}, ...]}``. Every context passage becomes one chunk.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Example:
    question: str
    answers: list[str]
    passages: list[str]  # chunk texts, in prompt order


def passage_text(title: str, text: str) -> str:
    """A context passage as a chunk: its title line, its text, and a blank line that separates it from the next."""
    head = f"Title: {title}\n" if title else ""
    return f"{head}{text.strip()}\n\n"


def shared_data_dir() -> Path:
    """``$CHUNKCACHE_DATA`` or the ``shared/data`` folder beside the checkout."""
    env = os.environ.get("CHUNKCACHE_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path("shared/data")


def load_json(path: Path) -> list[Example]:
    """Examples from a file in the format above; a clear error names what is wrong."""
    try:
        rows = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"dataset file {path} is not valid JSON: {e}") from None
    if not isinstance(rows, list):
        raise ValueError(f"dataset file {path} must hold a JSON list of examples")
    out = []
    for n, row in enumerate(rows):
        try:
            ctxs = [passage_text(c.get("title", ""), c["text"]) for c in row["ctxs"]]
            out.append(Example(str(row["question"]), [str(a) for a in row["answers"]], ctxs))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: example {n} lacks question/answers/ctxs[].text ({e})") from None
    return out


_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "silver", "black"]
_THINGS = ["falcon", "harbor", "lantern", "orchard", "glacier", "meadow", "tower", "river"]
_CITIES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Quito", "Perth", "Tunis", "Hanoi", "Dakar"]
_FILLER = [
    "The weather there is usually mild in spring.",
    "Visitors often arrive by train in the early morning.",
    "Local markets sell fresh bread, fruit and fish.",
    "Many old buildings line the narrow streets near the centre.",
    "The museum keeps maps drawn by early travellers.",
    "Children play football in the park on weekends.",
]


def needle(n: int = 50, passages: int = 6, seed: int = 0) -> list[Example]:
    """Synthetic single-hop QA: one passage states "The code of the <color> <thing> is <number>."; the
    other passages state codes of other objects. Deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        objs = rng.sample([(c, t) for c in _COLORS for t in _THINGS], passages)
        codes = rng.sample(range(1000, 9999), passages)
        texts = []
        for (color, thing), code in zip(objs, codes):
            city = rng.choice(_CITIES)
            filler = rng.sample(_FILLER, 3)
            body = (f"The {color} {thing} is kept in {city}. {filler[0]} {filler[1]} "
                    f"The code of the {color} {thing} is {code}. {filler[2]}")
            texts.append(passage_text(f"The {color} {thing}", body))
        target = rng.randrange(passages)
        color, thing = objs[target]
        out.append(Example(f"What is the code of the {color} {thing}?", [str(codes[target])], texts))
    return out


def load_dataset(name_or_path: str) -> tuple[str, list[Example]]:
    """(dataset name, examples) for ``musique``, ``needle`` or a JSON path."""
    if name_or_path == "needle":
        return "needle", needle()
    if name_or_path == "musique":
        return "musique", load_json(shared_data_dir() / "musique_dev.json")
    return Path(name_or_path).stem, load_json(Path(name_or_path))
