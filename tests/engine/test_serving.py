"""The serving engine on the real packaged models: batched paged decode gives the tokens the one-request
path gives, whatever else is in the batch; blocks come back; queue bounds, cancellation, stop strings and
transparent reuse of passages pasted into chat prompts."""

from __future__ import annotations

import pytest
import torch

from chunkcache.bench.datasets import load_dataset
from chunkcache.engine.decode import generate
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.engine.serving import PromptTooLongError, QueueFullError, ServingConfig, ServingEngine
from chunkcache.engine.sequence import GenParams, RagPrompt
from chunkcache.strategies import make_strategy

MAX = 10


def _passages(n: int) -> list[str]:
    _, examples = load_dataset("needle")
    return [p for ex in examples[:8] for p in ex.passages][:n]


def _serving(model_tok, strategy: str = "full", **config) -> ServingEngine:
    model, tok = model_tok
    reuse = ReuseEngine(model, tok, store_dtype=torch.float32)
    return ServingEngine(reuse, make_strategy(strategy), ServingConfig(kv_bytes=256 << 20, **config))


def _tokens(handle) -> list[int]:
    return [t for out in handle for t in out.token_ids]


def _serve_all(eng: ServingEngine, prompts: list, max_tokens: int = MAX) -> list[list[int]]:
    """Submit every prompt before the engine starts (so they share batches), then collect their tokens."""
    handles = [eng.submit(p, GenParams(max_tokens=max_tokens)) for p in prompts]
    eng.start()
    try:
        return [_tokens(h) for h in handles]
    finally:
        eng.shutdown()


def _rag_prompts(eng: ServingEngine) -> list[RagPrompt]:
    tpl = eng.reuse.template
    texts = _passages(6)
    prompts = []
    for i, q in enumerate(["What is the code of the lantern?", "Which code opens the tower?",
                           "Where is the river?", "Name one object."]):
        chunks = [tpl.encode_chunk(t) for t in texts[i:i + 2 + i % 3]]
        prompts.append(RagPrompt(chunks, tpl.encode_question(q)))
    return prompts


def test_batched_decode_matches_single_request_path(smol):
    """Paged, batched decode of 4 concurrent requests of different lengths gives, token for token, what
    the one-request path (executor prefill + decode.generate over request-local KV) gives."""
    eng = _serving(smol, max_running=8)
    prompts = _rag_prompts(eng)
    served = _serve_all(eng, prompts)
    full = make_strategy("full")
    for p, got in zip(prompts, served):
        pre = eng.reuse.prefill(p.chunks, p.question_ids, full, reserve=MAX)
        want = list(generate(eng.reuse.model, pre.result, MAX, eng.reuse.stop_ids))
        assert got == want and len(got) > 0
    assert eng.snapshot()["kv_blocks_free"] == eng.blocks.n_blocks


def test_greedy_output_does_not_depend_on_the_batch(smol):
    """The same prompts alone (one at a time) and together under concurrency give the same tokens."""
    alone_eng = _serving(smol, "focus", max_running=1)
    prompts = _rag_prompts(alone_eng)
    alone = []
    alone_eng.start()
    try:
        for p in prompts:
            alone.append(_tokens(alone_eng.submit(p, GenParams(max_tokens=MAX))))
    finally:
        alone_eng.shutdown()
    assert _serve_all(_serving(smol, "focus", max_running=8), prompts) == alone


def test_sliding_window_decode_matches_single_request_path(gemma):
    """Gemma 3's local layers: decode past the 512-token window over the paged KV equals the reference."""
    eng = _serving(gemma, max_running=4)
    tpl = eng.reuse.template
    chunks = [tpl.encode_chunk(t) for t in _passages(16)]
    assert sum(map(len, chunks)) > eng.reuse.model.windows[0]
    prompts = [RagPrompt(chunks, tpl.encode_question("What is the code of the lantern?")),
               RagPrompt(chunks[:2], tpl.encode_question("Which code opens the tower?"))]
    served = _serve_all(eng, prompts, 6)
    for p, got in zip(prompts, served):
        pre = eng.reuse.prefill(p.chunks, p.question_ids, make_strategy("full"), reserve=6)
        assert got == list(generate(eng.reuse.model, pre.result, 6, eng.reuse.stop_ids))


def test_queue_bound_and_window_errors(smol):
    eng = _serving(smol, max_running=1, max_waiting=1)
    ids = eng.encode_chat([{"role": "user", "content": "Say hello."}])
    eng.submit(ids, GenParams(max_tokens=4))
    eng.submit(ids, GenParams(max_tokens=4))  # one may run, one may wait
    with pytest.raises(QueueFullError) as err:
        eng.submit(ids, GenParams(max_tokens=4))
    assert err.value.retry_after > 0
    with pytest.raises(PromptTooLongError, match=rf"{len(ids)} tokens.*max_tokens is {eng.window}"):
        eng.submit(ids, GenParams(max_tokens=eng.window))
    with pytest.raises(ValueError, match="empty"):
        eng.submit([], GenParams())
    eng.shutdown()


def test_cancel_frees_blocks_and_stop_strings_cut_text(smol):
    eng = _serving(smol, max_running=4)
    eng.start()
    try:
        ids = eng.encode_chat([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
        free = eng.blocks.n_blocks
        handle = eng.submit(ids, GenParams(max_tokens=200))
        outs = iter(handle)
        next(outs)
        handle.cancel()
        last = list(outs)[-1]
        assert last.finish_reason == "cancelled"
        assert eng.snapshot()["kv_blocks_free"] == free
        plain = "".join(o.text for o in eng.submit(ids, GenParams(max_tokens=24)))
        words = plain.split()
        assert len(words) > 4
        stop = " " + words[3]
        outs = list(eng.submit(ids, GenParams(max_tokens=24, stop=(stop,))))
        text = "".join(o.text for o in outs)
        assert outs[-1].finish_reason == "stop" and stop not in text
        assert plain.startswith(text) and text == plain[:plain.index(stop)]
    finally:
        eng.shutdown()


def test_passages_pasted_in_a_chat_prompt_are_reused(smol):
    """An unmodified RAG app pastes passages into its message: the first request learns them, the second
    (other question, other order) reuses them, and ``full`` never does."""
    texts = _passages(4)

    def chat(order: list[int], question: str) -> list[dict]:
        body = "\n\n".join(f"[{i + 1}] {texts[j]}" for i, j in enumerate(order))
        return [{"role": "system", "content": "You answer from the passages."},
                {"role": "user", "content": f"Passages:\n\n{body}\n\nQuestion: {question}"}]

    for strategy in ("focus", "full"):
        eng = _serving(smol, strategy)
        eng.start()
        try:
            first = eng.submit(eng.encode_chat(chat([0, 1, 2, 3], "What is the code of the lantern?")),
                               GenParams(max_tokens=4))
            list(first)
            second = eng.submit(eng.encode_chat(chat([2, 0, 3, 1], "Which code opens the tower?")),
                                GenParams(max_tokens=4))
            list(second)
        finally:
            eng.shutdown()
        assert first.stats["cached_tokens"] == 0
        if strategy == "full":
            assert second.stats["cached_tokens"] == 0
        else:
            assert second.stats["chunks_hit"] >= 4
            assert second.stats["cached_tokens"] > 0.6 * sum(len(eng.reuse.template.encode_chunk(t)) for t in texts)


def test_a_failing_step_ends_requests_with_an_error_and_the_engine_keeps_serving(smol, monkeypatch):
    eng = _serving(smol)
    ids = eng.encode_chat([{"role": "user", "content": "Say hello."}])
    real_admit = eng.scheduler.admit
    calls = {"n": 0}

    def failing_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real_admit()

    monkeypatch.setattr(eng.scheduler, "admit", failing_once)
    doomed = eng.submit(ids, GenParams(max_tokens=4))
    eng.start()
    try:
        last = list(doomed)[-1]
        assert last.finish_reason == "error" and "RuntimeError" in last.error
        outs = list(eng.submit(ids, GenParams(max_tokens=4)))
        assert outs[-1].finish_reason in ("stop", "length") and any(o.token_ids for o in outs)
        assert eng.snapshot()["kv_blocks_free"] == eng.blocks.n_blocks
    finally:
        eng.shutdown()
