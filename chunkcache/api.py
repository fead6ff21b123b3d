"""``Engine``: the Python API and the code path behind every CLI command (DESIGN section 1).

A store directory holds everything a deployment needs::

    <store>/store.json   which model (and template) the caches belong to, the calibrated strategy
                         setting (``"calibration"``, written by ``chunkcache calibrate``; see calibrate.py)
                         and the pinned documents (``"pinned"``, by ``chunkcache cache pin``)
    <store>/chunkcache.toml   optional tier capacities, Redis URL and eviction policy (store/settings.py)
    <store>/index/       SQLite metadata + faiss HNSW index (rag/index.py)
    <store>/kv/          one safetensors file per chunk-record variant (store/disk.py)
    <store>/.lock        held while ingesting, so two processes never interleave writes
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkcache.calibrate import Calibration, Point, calibrate, read_questions
from chunkcache.engine.decode import Sampling
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.models.loader import DEFAULT_MODEL, canonical_name, load_model
from chunkcache.rag import Embedder, Hit, IngestReport, VectorIndex, ingest, require_paths
from chunkcache.rag.ingest import document_key
from chunkcache.rag.links import chunk_edges
from chunkcache.rag.select import Candidate, select_chunks
from chunkcache.store import DiskTier, TierSettings, store_lock
from chunkcache.strategies import DEFAULT_STRATEGY, Strategy, make_strategy

STORE_ENV = "CHUNKCACHE_STORE"
DEFAULT_STORE = ".chunkcache"
MANIFEST = "store.json"
CALIBRATION = "calibration"  # store.json key of the saved calibration record
PINNED = "pinned"  # store.json key of the pinned documents' keys
STRUCTURES = (None, "sequential", "parallel", "graph")  # how ``ask`` lays out the retrieved chunks


class StoreMismatchError(ValueError):
    """The store's caches were made by another model or prompt template."""


@dataclass
class Citation:
    path: str
    start_line: int
    end_line: int
    score: float

    def __str__(self) -> str:
        return f"{_display_path(self.path)}:{self.start_line}-{self.end_line}"


@dataclass
class Answer:
    text: str
    citations: list[Citation]
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"answer": self.text,
                "citations": [{"path": _display_path(c.path), "start_line": c.start_line,
                               "end_line": c.end_line, "score": round(c.score, 4)} for c in self.citations],
                "stats": self.stats}


def _display_path(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def resolve_store(store: str | os.PathLike | None) -> Path:
    """``store`` argument, else ``$CHUNKCACHE_STORE``, else ``./.chunkcache``; checked to be writable."""
    root = Path(store or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"store directory {root} is not writable ({e.strerror or e})") from None
    return root


class Engine:
    """Ingest documents, retrieve chunks, answer questions reusing chunk caches (see module docstring).

    ``tiers`` overrides the store's tier settings (``device_bytes``, ``host_bytes``, ``redis_url``,
    ``eviction``; store/settings.py). The reuse strategy is ``strategy`` when given (a spec such as ``"cacheblend:ratio=0.3"``), else the
    setting ``chunkcache calibrate`` saved in the store, else ``DEFAULT_STRATEGY``; ``strategy_spec`` and
    ``strategy_source`` (``"explicit"``, ``"calibrated"`` or ``"default"``) say which, and every answer's
    stats repeat them.
    """

    def __init__(self, store: str | os.PathLike | None = None, model: str = DEFAULT_MODEL,
                 strategy: str | None = None, device: str = "cpu", k: int = 5,
                 max_new_tokens: int = 128, tiers: dict[str, Any] | None = None) -> None:
        self.root = resolve_store(store)
        if strategy:
            make_strategy(strategy)  # a bad spec fails before the model loads
        self.k = k
        self.max_new_tokens = max_new_tokens
        self.model_name = canonical_name(model)
        lm, tok = load_model(model, device=device)
        self.tiers = TierSettings.load(self.root, **(tiers or {}))
        self.reuse = ReuseEngine(lm, tok, memory_bytes=0)
        self._check_manifest(self.model_name)
        self.use_strategy(strategy)
        self.kv = DiskTier(self.root / "kv", self.reuse.fingerprint)
        self.reuse.store = self.tiers.build(self.kv, lm.device)
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        for doc in self._read_manifest().get(PINNED, []):
            for chunk_id in self.index.document_chunk_hashes(doc):
                self.reuse.store.pin(chunk_id)

    def _check_manifest(self, model: str) -> None:
        path = self.root / MANIFEST
        mine = {"model": model, "fingerprint": self.reuse.fingerprint, "version": 1}
        if path.exists():
            theirs = json.loads(path.read_text())
            if theirs.get("fingerprint") != mine["fingerprint"]:
                raise StoreMismatchError(
                    f"store {self.root} was made by model {theirs.get('model')!r}, not {model!r}: "
                    f"use --model {theirs.get('model')} or another --store")
        else:
            self._write_manifest(mine)

    def _read_manifest(self) -> dict:
        return json.loads((self.root / MANIFEST).read_text())

    def _write_manifest(self, manifest: dict) -> None:
        """Replace store.json atomically (a per-process temp file, then ``os.replace``)."""
        path = self.root / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)

    @property
    def calibration(self) -> dict | None:
        """The calibration record saved in store.json, or None (see calibrate.py for its fields)."""
        return self._read_manifest().get(CALIBRATION)

    def save_calibration(self, record: dict) -> None:
        """Store ``record`` as the store's calibrated setting; an engine not told a strategy switches to it."""
        manifest = self._read_manifest()
        manifest[CALIBRATION] = record
        self._write_manifest(manifest)
        if self.strategy_source != "explicit":
            self.use_strategy(None)

    def use_strategy(self, spec: str | None) -> None:
        """Answer with ``spec``; None means the store's calibrated setting, else ``DEFAULT_STRATEGY``."""
        calibration = None if spec else self.calibration
        if spec:
            source = "explicit"
        elif calibration:
            spec, source = str(calibration.get("strategy", "")), "calibrated"
        else:
            spec, source = DEFAULT_STRATEGY, "default"
        try:
            self.strategy = make_strategy(spec)
        except ValueError as e:
            if source != "calibrated":
                raise
            raise ValueError(f"the calibrated strategy {spec!r} in {self.root / MANIFEST} is unusable ({e}): "
                             "run `chunkcache calibrate` again or pass --strategy") from None
        self.strategy_spec, self.strategy_source = spec, source

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            self._index = VectorIndex(self.root / "index", self.embedder.dim)
        return self._index

    def _count_tokens(self, text: str) -> int:
        return len(self.reuse.template.encode_chunk(text))

    def _chunk_key(self, text: str) -> str:
        return self.reuse.encode_chunk(text)[0]

    def _precompute(self, pairs: list[tuple[str, str]]) -> None:
        for chunk_id, text in pairs:
            self.reuse.precompute(self.reuse.template.encode_chunk(text), chunk_id)

    def ingest(self, paths: list[str | os.PathLike], progress: bool = True) -> IngestReport:
        """Index files and folders incrementally and precompute the new chunks' caches."""
        targets = [Path(p) for p in paths]
        require_paths(targets)  # before the lock and the embedder load
        with store_lock(self.root, timeout=600):
            report = ingest(targets, self.index, self.embedder, self._count_tokens, self._chunk_key,
                            on_chunk_removed=self.reuse.store.delete, precompute=self._precompute,
                            is_cached=self.reuse.store.__contains__, progress=progress)
            self.reuse.store.flush()  # every new record on disk (and Redis) before the lock is released
            return report

    def remove_document(self, path: str | os.PathLike) -> list[str]:
        """Forget an ingested document: its vectors, and the records of its chunks that no other document
        uses, from every tier. Returns the removed chunk ids; raises KeyError if it was never ingested."""
        key = document_key(Path(path))
        with store_lock(self.root, timeout=600):
            if self.index.document_sha(key) is None:
                raise KeyError(f"no ingested document {path}")
            chunk_ids = self.index.remove_document(key)
            self.index.save()
            manifest = self._read_manifest()
            if key in manifest.get(PINNED, []):
                manifest[PINNED] = [d for d in manifest[PINNED] if d != key]
                self._write_manifest(manifest)
            in_use = self.index.chunk_hashes_in_use()
            gone = [c for c in dict.fromkeys(chunk_ids) if c not in in_use]
            for chunk_id in gone:
                self.reuse.store.delete(chunk_id)
                self.reuse.store.unpin(chunk_id)
        return gone

    def pin_document(self, path: str | os.PathLike, pin: bool = True) -> int:
        """Keep (``pin``) or stop keeping an ingested document's chunk records in the memory tiers whatever the
        eviction policy says, in this process and every later one on this store. Returns its chunk count;
        KeyError if it was never ingested."""
        key = document_key(Path(path))
        if self.index.document_sha(key) is None:
            raise KeyError(f"no ingested document {path}")
        hashes = self.index.document_chunk_hashes(key)
        for chunk_id in hashes:
            (self.reuse.store.pin if pin else self.reuse.store.unpin)(chunk_id)
        manifest = self._read_manifest()
        pinned = [d for d in manifest.get(PINNED, []) if d != key] + ([key] if pin else [])
        manifest[PINNED] = pinned
        self._write_manifest(manifest)
        return len(hashes)

    def retrieve(self, question: str, k: int | None = None) -> list[Hit]:
        """The top-k chunks for a question, best first."""
        if not question or not question.strip():
            raise ValueError("the question is empty")
        return self.index.search(self.embedder.embed([question])[0], k or self.k)

    def prompt(self, question: str, k: int | None = None) -> tuple[list[Hit], list[list[int]], list[int]]:
        """What ``ask`` feeds the model: the top-k hits, their chunks' token ids and the question's ids."""
        hits = self.retrieve(question, k)
        if not hits:
            raise ValueError(f"the store {self.root} has no documents: run `chunkcache ingest PATH` first")
        chunks = [self.reuse.template.encode_chunk(h.llm_text) for h in hits]
        return hits, chunks, self.reuse.template.encode_question(question)

    def ask(self, question: str, k: int | None = None, strategy: str | None = None,
            on_text: Callable[[str], None] | None = None, sampling: Sampling = Sampling(),
            structure: str | None = None, budget_tokens: int | None = None,
            budget_ms: float | None = None) -> Answer:
        """Retrieve, assemble, reuse caches, answer. ``on_text`` receives the answer as it streams.
        ``strategy`` (a spec) overrides the engine's strategy for this question. ``structure`` lays the
        chunks out as one ``sequential`` prompt (the strategy's way), in ``parallel`` (order-invariant,
        strategies/parallel.py) or as a ``graph`` of the links and code definitions between them
        (rag/links.py, strategies/graph.py). ``budget_tokens`` or ``budget_ms`` replace top-k by a choice among
        more candidates under a prefill-cost budget, where a cached chunk costs only what the strategy
        recomputes of it (rag/select.py); ``stats["selection"]`` reports it."""
        if structure not in STRUCTURES:
            raise ValueError(f"unknown structure {structure!r}; choose from {', '.join(STRUCTURES[1:])}")
        if structure not in (None, "sequential"):
            if strategy and make_strategy(strategy).name != structure:
                raise ValueError(f"--structure {structure} lays chunks out with the {structure} strategy; "
                                 f"drop --strategy {strategy} or --structure")
            strategy = strategy or structure
        if budget_tokens is not None and budget_ms is not None:
            raise ValueError("give a budget in tokens or in milliseconds, not both")
        t0 = time.perf_counter()
        strat = make_strategy(strategy) if strategy else self.strategy
        selection = None
        if budget_tokens is None and budget_ms is None:
            hits, chunks, q = self.prompt(question, k)
        else:
            hits, chunks, q, selection = self.select(question, k or self.k, strat, budget_tokens, budget_ms)
        t1 = time.perf_counter()
        edges = chunk_edges(hits) if strat.name == "graph" else []
        pre = self.reuse.prefill(chunks, q, strat, reserve=self.max_new_tokens, edges=edges)
        tokens: list[int] = []
        shown = ""
        ttft = None
        for tok in self.reuse.generate(pre, self.max_new_tokens, sampling):
            ttft = ttft or (time.perf_counter() - t0) * 1e3
            tokens.append(tok)
            text = self.reuse.tokenizer.decode(tokens, skip_special_tokens=True)
            if on_text and len(text) > len(shown) and not text.endswith("\ufffd"):
                on_text(text[len(shown):])
                shown = text
        t2 = time.perf_counter()
        text = self.reuse.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        stats = pre.stats.to_dict()
        stats["strategy"] = strat.name
        stats["strategy_spec"] = strategy if strategy else self.strategy_spec
        stats["strategy_source"] = "explicit" if strategy else self.strategy_source
        stats["ttft_ms"] = round(ttft if ttft is not None else (t2 - t0) * 1e3, 1)
        stats["new_tokens"] = len(tokens)
        stats["edges"] = len(pre.layout.edges)
        if selection is not None:
            stats["selection"] = selection
        stats["timings_ms"] = {"retrieve": round((t1 - t0) * 1e3, 1), **stats["timings_ms"],
                               "decode": round((t2 - t1) * 1e3 - sum(pre.stats.timings_ms.values()), 1),
                               "total": round((t2 - t0) * 1e3, 1)}
        return Answer(text, [Citation(h.path, h.start_line, h.end_line, h.score) for h in hits], stats)

    def select(self, question: str, k: int, strat: Strategy, budget_tokens: int | None, budget_ms: float | None
               ) -> tuple[list[Hit], list[list[int]], list[int], dict]:
        """What ``prompt`` returns, plus a report, with the chunks chosen among 2·k candidates (at least 10)
        under a budget of ``budget_tokens`` computed tokens or ``budget_ms`` prefill milliseconds for
        ``strat`` (rag/select.py) instead of the top k."""
        if budget_ms is not None:
            if budget_ms <= 0:
                raise ValueError(f"--budget-ms must be positive, got {budget_ms}")
            budget = budget_ms / self.reuse.ms_per_token
        else:
            if budget_tokens <= 0:
                raise ValueError(f"--budget-tokens must be positive, got {budget_tokens}")
            budget = float(budget_tokens)
        hits, chunks, q = self.prompt(question, max(2 * k, 10))
        vectors = self.index.vectors([h.id for h in hits])
        cands = [Candidate(h.score, len(c), self.reuse.chunk_id(c) in self.reuse.store, strat.expected_recompute, v)
                 for h, c, v in zip(hits, chunks, vectors)]
        chosen = select_chunks(cands, budget, len(q))
        cost = len(q) + sum(cands[i].cost for i in chosen)
        selection = {"budget_tokens": round(budget, 1), "candidates": len(cands), "chosen": len(chosen),
                     "cached_chosen": sum(cands[i].cached for i in chosen), "estimated_tokens": round(cost, 1),
                     "over_budget": cost > budget, "ms_per_token": round(self.reuse.ms_per_token, 4)}
        return [hits[i] for i in chosen], [chunks[i] for i in chosen], q, selection

    def calibrate(self, target: float = 0.95, strategy: str | None = None,
                  questions: str | os.PathLike | None = None, n: int = 20, k: int | None = None,
                  max_new_tokens: int | None = None, grid: list[int | float] | None = None,
                  progress: bool = True, on_point: Callable[[Point], None] | None = None) -> Calibration:
        """Find the smallest budget of ``strategy`` (default ``DEFAULT_STRATEGY``) whose answers reach fidelity
        ``target`` to full prefill on ``n`` questions (read from the ``questions`` file, else synthesized from
        the store) and save it in store.json; when none does, nothing is saved (``result.chosen`` is None).
        See calibrate.py."""
        asked = read_questions(questions, n) if questions is not None else None
        result = calibrate(self, target, strategy or DEFAULT_STRATEGY, asked,
                           source="synthetic" if questions is None else str(questions), n=n, k=k or self.k,
                           max_new_tokens=max_new_tokens or self.max_new_tokens, grid=grid, progress=progress,
                           on_point=on_point)
        if result.chosen is not None:
            self.save_calibration(result.record(self.model_name))
        return result

    def cache_stats(self) -> dict:
        """Records, bytes and hit rate of the disk tier, plus per-document chunk and cache counts."""
        self.reuse.store.flush()
        docs: dict[str, dict[str, int]] = {}
        for doc in self.index.documents():
            hashes = self.index.document_chunk_hashes(doc)
            docs[_display_path(doc)] = {"chunks": len(hashes), "cached": sum(1 for h in hashes if h in self.kv)}
        return {"store": str(self.root), **self.kv.stats(), "documents": docs}

    def cache_verify(self) -> dict:
        """Check every record checksum (bad ones are removed) and the index's consistency."""
        self.reuse.store.flush()
        n_ok, bad = self.kv.verify()
        return {"records_ok": n_ok, "records_removed": bad, "index_problems": self.index.verify()}

    def cache_clear(self) -> int:
        """Remove every chunk record (the index stays; records are recomputed on demand). Returns count."""
        self.reuse.store.flush()
        n = self.kv.stats()["records"]
        self.reuse.store.clear()
        return n

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        self.reuse.store.close()  # finishes the background writes to disk and Redis first

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

