"""Benchmark datasets: the public chunk-reuse QA format, ``musique``, and the synthetic ``needle`` and
``multihop`` sets.

Format (DESIGN section 6): a JSON list of ``{"question": str, "answers": [str], "ctxs": [{"title": str,
"text": str}, ...]}``, optionally with ``"answer_pattern"``: a regular expression whose first match in a
prediction is the extracted answer that accuracy compares with the gold answers, and ``"edges"``: [[source,
target], ...] passage indices, links that the ``graph`` strategy lets a target read. Every context passage
becomes one chunk.

The synthetic sets are deterministic for a seed, and their target passages are never the first chunk: the
first chunk's cached states are exact under reuse (it follows the template prefix exactly as when it was
cached), so a target there would make every reuse strategy look perfect.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Example:
    question: str
    answers: list[str]
    passages: list[str]  # chunk texts, in prompt order
    answer_pattern: str | None = None  # regex: accuracy compares its first match with the gold answers
    edges: list[tuple[int, int]] = field(default_factory=list)  # (source, target) passage indices: links


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
            pattern = row.get("answer_pattern")
            edges = [(int(s), int(t)) for s, t in row.get("edges", [])]
            if any(not (0 <= i < len(ctxs)) for e in edges for i in e):
                raise ValueError(f"{path}: example {n} has an edge outside its {len(ctxs)} passages")
            out.append(Example(str(row["question"]), [str(a) for a in row["answers"]], ctxs,
                               str(pattern) if pattern else None, edges))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: example {n} lacks question/answers/ctxs[].text ({e})") from None
    return out


_FILLER = [
    "The weather there is usually mild in spring.",
    "Visitors often arrive by train in the early morning.",
    "Local markets sell fresh bread, fruit and fish.",
    "Many old buildings line the narrow streets near the centre.",
    "The museum keeps maps drawn by early travellers.",
    "Children play football in the park on weekends.",
    "A small ferry crosses the bay twice a day.",
    "The library stays open late during the winter months.",
    "Most shops close early on Sundays.",
    "The old bridge was repaired after the spring floods.",
    "Cyclists ride along the river path every evening.",
    "A choir rehearses in the town hall on Thursdays.",
    "The hills behind the town are covered in pine trees.",
    "Fishermen mend their nets on the quay at dawn.",
    "The station clock has not been changed in decades.",
    "Tea is served in the garden when the weather allows.",
]


def _first_never_target(rng: random.Random, targets: list[str], others: list[str]) -> list[str]:
    """All passages in a seeded order whose first passage is never one of ``targets``."""
    others = list(others)
    first = others.pop(rng.randrange(len(others)))
    rest = targets + others
    rng.shuffle(rest)
    return [first] + rest


# --- needle: a 4-digit code among confusable objects ----------------------------------------------------

_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "silver", "black", "white", "brown"]
_THINGS = ["falcon", "harbor", "lantern", "orchard", "glacier", "meadow", "tower", "river", "compass", "anchor"]
_PLACES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Quito", "Perth", "Tunis", "Hanoi", "Dakar"]
_ROOMS = ["the cellar", "the attic", "room 4", "the east wing", "the boathouse", "the vault", "the workshop"]
_CODE_SENTENCES = [
    "The code of the {obj} is {code}.",
    "The {obj} opens with the code {code}.",
    "To unlock the {obj}, enter the code {code}.",
    "Staff were told that the code for the {obj} is {code}.",
]
NEEDLE_QUESTIONS = ["What is the code of the {obj}?", "Which code opens the {obj}?", "What code unlocks the {obj}?"]
CODE_PATTERN = r"\b\d{4}\b"


def _story(rng: random.Random, items: list[tuple[str, int]]) -> str:
    (obj, code), = items
    f = rng.sample(_FILLER, 3)
    said = rng.choice(_CODE_SENTENCES).format(obj=obj, code=code)
    return passage_text(rng.choice(["Storage notes", "A visit", "Travel diary"]),
                        f"The {obj} is kept in {rng.choice(_PLACES)}. {f[0]} {f[1]} {said} {f[2]}")


def _memo(rng: random.Random, items: list[tuple[str, int]]) -> str:
    (obj, code), = items
    f = rng.sample(_FILLER, 2)
    said = rng.choice(_CODE_SENTENCES).format(obj=obj, code=code)
    return passage_text("Memo", f"To the night staff in {rng.choice(_PLACES)}: {f[0]} {said} "
                                f"Please do not share it. {f[1]}")


def _notice(rng: random.Random, items: list[tuple[str, int]]) -> str:
    (obj, code), = items
    return passage_text("Notice", f"{rng.choice(_FILLER)} From Monday the {obj} opens with the code {code}. "
                                  f"{rng.choice(_FILLER)}")


def _log(rng: random.Random, items: list[tuple[str, int]]) -> str:
    lines = "\n".join(f"- {obj}: code {code}, stored in {rng.choice(_ROOMS)}" for obj, code in items)
    return passage_text(f"Inventory log, {rng.choice(_PLACES)}", f"{rng.choice(_FILLER)}\n{lines}")


def _table(rng: random.Random, items: list[tuple[str, int]]) -> str:
    rows = "\n".join(f"{obj} | {rng.choice(_ROOMS)} | {code}" for obj, code in items)
    return passage_text("Lock register", f"object | room | code\n{rows}\n{rng.choice(_FILLER)}")


# Passage shapes and how many objects each states. One object a passage: with two or three, the 1.5B
# evaluation model itself confused rows (full prefill 5/10, then 6/8), which tests the model, not reuse.
_SHAPES = [(_story, 1), (_memo, 1), (_notice, 1), (_log, 1), (_table, 1)]


def needle(n: int = 50, passages: int = 6, seed: int = 0) -> list[Example]:
    """Single-hop QA: find the 4-digit code of one object among passages that state codes of other objects.

    Per example (seeded): passage shapes are drawn from five kinds (a story, a memo, a notice, an inventory
    line, a lock-register row), each with several phrasings and varied filler, one object each. The
    distractors share the question's shape: the target ("the <colour> <thing>"), one object sharing its
    colour, then random others, each with its own code; the target's passage is never the first.
    Accuracy extracts the first 4-digit number of the answer (``answer_pattern``)."""
    if passages < 2:
        raise ValueError("needle needs at least two passages (the target is never the first)")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shapes = [rng.choice(_SHAPES) for _ in range(passages)]
        slots = sum(k for _, k in shapes)
        color, thing = rng.choice(_COLORS), rng.choice(_THINGS)
        target = f"{color} {thing}"
        confusable = [(color, rng.choice([t for t in _THINGS if t != thing]))]
        rest = [(c, t) for c in _COLORS for t in _THINGS if c != color and t != thing]
        others = confusable[: slots - 1] + rng.sample(rest, max(0, slots - 1 - len(confusable)))
        rng.shuffle(others)
        objs = [f"{c} {t}" for c, t in others]
        target_passage = rng.randrange(1, passages)
        before = sum(k for _, k in shapes[:target_passage])
        objs.insert(before + rng.randrange(shapes[target_passage][1]), target)
        codes = rng.sample(range(1000, 10000), slots)
        items = list(zip(objs, codes))
        texts, i = [], 0
        for shape, k in shapes:
            texts.append(shape(rng, items[i:i + k]))
            i += k
        question = rng.choice(NEEDLE_QUESTIONS).format(obj=target)
        out.append(Example(question, [str(codes[objs.index(target)])], texts, CODE_PATTERN))
    return out


# --- multihop: birthplace -> country bridge questions (2WikiMQA style) ----------------------------------

_FIRST_NAMES = ["Elena", "Marcus", "Ingrid", "Tobias", "Amara", "Felix", "Noor", "Henrik", "Lucia", "Oren",
                "Sabine", "Dario"]
_SURNAMES = ["Varga", "Lindqvist", "Okafor", "Moreau", "Castell", "Brandt", "Halloran", "Sato", "Petrov",
             "Delgado", "Wexler", "Amundsen"]
_JOBS = ["a painter", "a chemist", "an architect", "a violinist", "a novelist", "an engineer", "a botanist",
         "a photographer"]
# Invented places, so the country can only come from the passages, not from what the model already knows.
_CITIES = ["Tarnholm", "Vessaline", "Quorra", "Ebberton", "Maldoro", "Castrel", "Yselden", "Ponteva", "Hollin",
           "Drossa", "Lunmark", "Careth"]
_COUNTRIES = ["Arvenia", "Kestria", "Moldavar", "Ostrelia", "Sundria", "Veltania", "Zarkovia", "Elbion"]
_BIRTH = [
    "{p} was born in {city} in {year}.",
    "Born in {city} in {year}, {p} showed an early talent for the work.",
    "{p}, born in {city}, is remembered by many former students.",
]
_WORK = [
    "Later {first} worked for many years in {city} as {job}.",
    "{first} moved to {city} to work as {job}.",
    "As {job}, {first} spent most of a long career in {city}.",
]
_GEO = [
    "{city} is a city in {country}.",
    "{city} is the capital of {country}.",
    "{city} lies in the north of {country}, close to the coast.",
    "The town of {city}, in the south of {country}, is known for its {thing}.",
]
MULTIHOP_QUESTIONS = ["In which country was {p} born?", "{p} was born in a city of which country?",
                      "In what country is the birthplace of {p}?"]
COUNTRY_PATTERN = r"\b(?:" + "|".join(_COUNTRIES) + r")\b"


def _bio(rng: random.Random, person: str, birth: str, work: str, job: str) -> str:
    born = rng.choice(_BIRTH).format(p=person, city=birth, year=rng.randrange(1890, 1990))
    worked = rng.choice(_WORK).format(first=person.split()[0], city=work, job=job)
    return passage_text(person, f"{born} {worked} {rng.choice(_FILLER)}")


def _geo(rng: random.Random, city: str, country: str) -> str:
    f = rng.sample(_FILLER, 2)
    fact = rng.choice(_GEO).format(city=city, country=country, thing=rng.choice(["wool", "glass", "cheese"]))
    return passage_text(city, f"{f[0]} {fact} {f[1]}")


def multihop(n: int = 50, seed: int = 0, links: bool = False) -> list[Example]:
    """Two-hop bridge QA: "In which country was <person> born?" needs the person's passage (birth city) and
    the city's passage (its country).

    Per example (seeded), seven passages: three biographies of one shape (the target and two people sharing
    its first name or its surname), each naming a birth city and a different work city, and one geography
    passage for each of the four cities involved, all in different countries. The traps have the question's
    shape: the target's work city, the namesakes' birth cities (each with its country stated), and a namesake
    who works in the target's birth city. The target's biography and its birth city's passage are never first.
    Accuracy extracts the first country named (``answer_pattern``).

    ``links``: the ``linked`` set, the same examples with the links a wiki would have: every city a
    biography names links to that city's passage (edges city -> biography, so under ``graph`` a biography
    reads the pages of the cities it names)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_SURNAMES)
        target = f"{first} {last}"
        namesakes = [f"{first} {rng.choice([s for s in _SURNAMES if s != last])}",
                     f"{rng.choice([f for f in _FIRST_NAMES if f != first])} {last}"]
        cities = rng.sample(_CITIES, 4)  # target's birth and work cities, the namesakes' birth cities
        countries = dict(zip(cities, rng.sample(_COUNTRIES, 4)))
        jobs = rng.sample(_JOBS, 3)
        bios = [_bio(rng, target, cities[0], cities[1], jobs[0]),
                _bio(rng, namesakes[0], cities[2], cities[0], jobs[1]),
                _bio(rng, namesakes[1], cities[3], cities[1], jobs[2])]
        geos = [_geo(rng, c, countries[c]) for c in cities]
        texts = _first_never_target(rng, [bios[0], geos[0]], bios[1:] + geos[1:])
        question = rng.choice(MULTIHOP_QUESTIONS).format(p=target)
        named = [(0, 1), (2, 0), (3, 1)]  # the cities each biography names: birth, work
        edges = sorted((texts.index(geos[c]), texts.index(bio)) for bio, cs in zip(bios, named) for c in cs)
        out.append(Example(question, [countries[cities[0]]], texts, COUNTRY_PATTERN, edges if links else []))
    return out


# --- callgraph: a function's value needs the definition it calls --------------------------------------------

_VERBS = ["compute", "score", "measure", "rank", "price", "weigh", "count", "rate", "scale", "adjust"]
_NOUNS = ["order", "parcel", "ticket", "sensor", "invoice", "batch", "route", "shelf", "meter", "crate"]


def callgraph(n: int = 30, seed: int = 0) -> list[Example]:
    """Code QA over a call graph: "What does ``f()`` return?" where ``f`` returns ``g()`` and ``g``, in another
    chunk, returns a 4-digit constant: the answer needs both chunks (no arithmetic, which a small model
    gets wrong even with a full prefill).

    Per example (seeded), three caller/callee pairs as six Python chunks (module header, one function each),
    with distinct names and constants; the distractor pairs have the same shape. Edges follow the calls
    (callee -> caller, as ``rag/links.py`` reads them from code), so under ``graph`` a caller reads the
    definition it uses. The target pair is never first. Accuracy extracts the 4-digit code."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        names = rng.sample([f"{v}_{o}" for v in _VERBS for o in _NOUNS], 6)
        mods = rng.sample(range(10, 99), 6)
        codes = rng.sample(range(1000, 10000), 3)
        pairs = []
        for i in range(3):
            f, g = names[2 * i], names[2 * i + 1]
            callee = f"# module lib{mods[2 * i + 1]}.py\n\ndef {g}():\n    return {codes[i]}\n\n"
            caller = (f"# module lib{mods[2 * i]}.py\nfrom lib{mods[2 * i + 1]} import {g}\n\n"
                      f"def {f}():\n    return {g}()\n\n")
            pairs.append((caller, callee))
        texts = _first_never_target(rng, list(pairs[0]), [p for q in pairs[1:] for p in q])
        edges = sorted((texts.index(callee), texts.index(caller)) for caller, callee in pairs)
        out.append(Example(f"What value does {names[0]}() return?", [str(codes[0])], texts, CODE_PATTERN, edges))
    return out


def load_dataset(name_or_path: str) -> tuple[str, list[Example]]:
    """(dataset name, examples) for ``musique``, ``needle``, ``multihop``, ``linked``, ``callgraph`` or a JSON
    path."""
    if name_or_path == "needle":
        return "needle", needle()
    if name_or_path == "multihop":
        return "multihop", multihop()
    if name_or_path == "linked":
        return "linked", multihop(links=True)
    if name_or_path == "callgraph":
        return "callgraph", callgraph()
    if name_or_path == "musique":
        return "musique", load_json(shared_data_dir() / "musique_dev.json")
    return Path(name_or_path).stem, load_json(Path(name_or_path))
