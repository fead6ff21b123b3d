"""Replay a trace straight into a ``ServingEngine`` from N client threads (no HTTP), e.g. on a GPU.

The model is either a packaged or local one (``load_model``) or a random-weight model of a real shape
(``--model-shape llama3-8b``, built as ``chunkcache.bench.ttft`` builds it). A random model has no
tokenizer, so it gets a ``WordTokenizer``: every word of the trace's text hashes to a fixed id, which keeps
prompt lengths realistic (about one id per word) and keeps the trace's reuse structure, since a passage's
ids are the same wherever it appears. Its generated text is meaningless; only timing and reuse are measured.

Prompts are encoded before the clock starts (Hugging Face tokenizers are not safe to share between
threads), in one of two forms: ``chat`` gives the chat-templated ids of the request's messages, exactly what
``/v1/chat/completions`` submits, so reuse relies on the engine finding stored chunks inside the prompt;
``rag`` gives a ``RagPrompt`` of the passages tokenized alone plus the question, what ``/v1/rag/query``
submits. A client measures TTFT at the first event with tokens and end-to-end latency at the last event,
and reads prompt, cached and completion token counts from the handle's stats.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from chunkcache.bench.serve_report import RequestResult
from chunkcache.bench.server_process import ServerError
from chunkcache.bench.workload import TraceRequest

MODEL_SHAPES = ("llama3-8b",)


def load_lm(model: str, model_shape: str | None, device: str, layers: int | None = None):
    """(CausalLM, tokenizer): a random-weight model of ``model_shape`` with a ``WordTokenizer``, or the
    packaged/local ``model`` with its own tokenizer."""
    if model_shape is None:
        from chunkcache.models.loader import load_model

        return load_model(model, device=device)
    if model_shape not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {model_shape!r}; choose from {', '.join(MODEL_SHAPES)}")
    from chunkcache.bench.ttft import build_model
    from chunkcache.bench.word_tokenizer import WordTokenizer

    lm = build_model(layers, device)
    return lm, WordTokenizer(lm.config.vocab_size)


@dataclass(frozen=True)
class EngineSettings:
    """What one run's ``ServingEngine`` is built with (None: the ``ServingConfig`` default)."""

    strategy: str
    max_running: int | None = None
    max_waiting: int | None = None
    kv_bytes: int | None = None
    store_bytes: int = 8 << 30  # host-memory tier of chunk records
    cuda_graphs: bool | None = None


def build_engine(lm, tokenizer, settings: EngineSettings):
    """A started ``ServingEngine`` over a fresh ``ReuseEngine`` (empty in-memory store) of a loaded model."""
    from chunkcache.engine.reuse import ReuseEngine
    from chunkcache.engine.serving import ServingConfig, ServingEngine
    from chunkcache.strategies import make_strategy

    overrides = {k: v for k, v in (("max_running", settings.max_running), ("max_waiting", settings.max_waiting),
                                   ("kv_bytes", settings.kv_bytes), ("cuda_graphs", settings.cuda_graphs))
                 if v is not None}
    engine = ServingEngine(ReuseEngine(lm, tokenizer, memory_bytes=settings.store_bytes), make_strategy(settings.strategy), ServingConfig(**overrides))
    engine.start()
    return engine


def encode(engine, req: TraceRequest, prompt_format: str):
    """The prompt ``submit`` gets for one request: chat-templated ids, or a ``RagPrompt``."""
    if prompt_format == "chat":
        return engine.encode_chat(req.messages())
    if prompt_format == "rag":
        from chunkcache.engine.sequence import RagPrompt

        template = engine.reuse.template
        return RagPrompt([template.encode_chunk(p) for p in req.passages], template.encode_question(req.question))
    raise ValueError(f"prompt format must be chat or rag, got {prompt_format!r}")


def _one(engine, index: int, prompt, max_tokens: int) -> RequestResult:
    """Submit one prompt (waiting out a full queue as an HTTP client would on 429) and measure it."""
    from chunkcache.engine.sequence import GenParams
    from chunkcache.engine.serving import QueueFullError

    res = RequestResult(index)
    t0 = time.perf_counter()
    try:
        while True:
            try:
                handle = engine.submit(prompt, GenParams(max_tokens=max_tokens, temperature=0.0))
                break
            except QueueFullError as e:
                time.sleep(max(e.retry_after, 0.01))
        for out in handle:
            if out.token_ids and res.ttft_s is None:
                res.ttft_s = time.perf_counter() - t0
            if out.finish_reason is not None:
                if out.finish_reason in ("error", "cancelled"):
                    res.error = out.error or out.finish_reason
                break
        res.latency_s = time.perf_counter() - t0
    except ValueError as e:  # prompt too long or empty: the request fails, the benchmark goes on
        res.error = f"{type(e).__name__}: {e}"
        return res
    stats = handle.stats
    res.prompt_tokens = int(stats.get("prompt_tokens", handle.prompt_tokens))
    res.cached_tokens = int(stats.get("cached_tokens", 0))
    res.completion_tokens = int(stats.get("completion_tokens", 0))
    res.engine_stats = dict(stats)
    return res


def replay_engine(engine, trace: list[TraceRequest], clients: int, max_tokens: int, prompt_format: str = "chat",
                  warmup: int = 1) -> tuple[list[RequestResult], float]:
    """Per-request results (in trace order) and the wall time of the timed part (warm-up excluded)."""
    if clients < 1:
        raise ValueError("clients must be at least 1")
    prompts = [(req.index, encode(engine, req, prompt_format)) for req in trace]
    warm = encode(engine, TraceRequest(-1, -1, ("Warm-up passage.",), "Say hello."), prompt_format)
    for _ in range(warmup):
        r = _one(engine, -1, warm, 2)
        if r.error:
            raise ServerError(f"warm-up request failed: {r.error}")
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in prompts:
        todo.put(item)
    results: list[RequestResult] = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                index, prompt = todo.get_nowait()
            except queue.Empty:
                return
            r = _one(engine, index, prompt, max_tokens)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, name=f"bench-client-{i}", daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sorted(results, key=lambda r: r.index), wall
