"""The serving engine: continuous batching over chunk-reusing prefills (DESIGN section 5).

One background thread runs steps. Each step (1) drops requests whose client went away, freeing their
blocks; (2) admits waiting requests (scheduler.py) and runs each one's partial prefill through the reuse
strategy — a plain prompt through the transparent matcher (plain.py), a ``RagPrompt`` through the
template path — then copies its K/V into its blocks and samples its first token; (3) runs one batched
decode step (runner.py) for every running request. Text is detokenized per request as tokens arrive, with
stop strings cut out, and pushed to the request's handle.

Prefills of one step run one after another: each has its own layout and plan, and the executor is a
per-request loop over layers. What is batched is decode, where the many running requests share every
weight read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import torch

from chunkcache.engine.decode import Sampling, pick
from chunkcache.engine.kv_blocks import KVBlocks
from chunkcache.engine.plain import PlainPrompts
from chunkcache.engine.reuse import Prefilled, ReuseEngine
from chunkcache.engine.runner import DecodeRunner
from chunkcache.engine.scheduler import QueueFullError, Scheduler
from chunkcache.engine.sequence import GenParams, Output, RagPrompt, RequestHandle, Sequence, new_request_id
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Strategy

__all__ = ["PromptTooLongError", "QueueFullError", "ServingConfig", "ServingEngine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingConfig:
    """Capacity of the serving engine: KV pool bytes and block size, running and waiting bounds, and the
    prompt tokens admitted per step."""

    kv_bytes: int = 1 << 30
    block_size: int = 16
    max_running: int = 32
    max_waiting: int = 64
    max_prefill_tokens: int = 8192
    # Decode steps replayed from CUDA graphs where the device allows (engine/runner.py). Off until measured:
    # written and tested on CPU only so far; tests/engine/test_cuda.py checks its tokens against the eager step.
    cuda_graphs: bool = False


class PromptTooLongError(ValueError):
    """The prompt and ``max_tokens`` do not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, window: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: together "
            f"{prompt_tokens + max_tokens}, more than the model's context window of {window} tokens")
        self.prompt_tokens, self.max_tokens, self.window = prompt_tokens, max_tokens, window


class ServingEngine:
    """See module docstring. ``submit`` is thread-safe; everything else runs on the engine thread."""

    def __init__(self, reuse: ReuseEngine, strategy: Strategy, config: ServingConfig = ServingConfig()) -> None:
        self.reuse = reuse
        self.tokenizer = reuse.tokenizer
        self.strategy = strategy
        self.config = config
        model = reuse.model
        self.window = model.shape.max_positions
        self.blocks = KVBlocks.from_bytes(model.shape, config.kv_bytes, config.block_size, model.device,
                                          model.dtype)
        self.scheduler = Scheduler(self.blocks, config.max_running, config.max_waiting,
                                   config.max_prefill_tokens)
        self.runner = DecodeRunner(model, self.blocks, config.cuda_graphs)
        self.plain = PlainPrompts(reuse)
        self.plain.index_store()
        self.requests_total = 0
        self.steps = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- client side ----------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of chat ``messages`` under the model's chat template, ending with the assistant header
        (a model without a template gets ``role: content`` lines and ``assistant:``)."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.tokenizer(text, add_special_tokens=True).input_ids

    def encode_text(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=True).input_ids

    def submit(self, prompt: list[int] | RagPrompt, params: GenParams,
               loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        """Queue a request (thread-safe); consume the returned handle for its output. Raises
        ``PromptTooLongError``, ``QueueFullError``, or ``ValueError`` for an empty prompt or one that needs
        more KV memory than the whole pool."""
        if isinstance(prompt, RagPrompt):
            n = len(self.reuse.template.prefix_ids) + sum(len(c) for c in prompt.chunks) + len(prompt.question_ids)
            if not prompt.question_ids:
                raise ValueError("the question is empty")
        else:
            prompt = list(prompt)
            n = len(prompt)
            if not n:
                raise ValueError("the prompt is empty")
        if n + params.max_tokens > self.window:
            raise PromptTooLongError(n, params.max_tokens, self.window)
        handle = RequestHandle(new_request_id(), n, loop)
        seq = Sequence(prompt, n, params, handle, self.reuse.stop_ids)
        if not self.scheduler.fits(seq):
            raise ValueError(f"the prompt ({n} tokens) plus max_tokens ({params.max_tokens}) needs more KV memory "
                             f"than the server's pool of {self.blocks.capacity * self.blocks.block_size} tokens")
        self.scheduler.add(seq)
        with self._wake:
            self.requests_total += 1
            self._wake.notify()
        return handle

    def forget(self, chunk_ids: list[str]) -> None:
        """Stop matching these chunks in prompts (their document was deleted)."""
        for cid in chunk_ids:
            self.plain.index.remove(cid)

    def refresh_index(self) -> int:
        """Index chunks stored since start (e.g. by an ingest); return how many were added."""
        return self.plain.index_store()

    def in_flight(self) -> list[dict]:
        """Every waiting and running request: id, prompt tokens, tokens generated of its max, age (diagnostics)."""
        with self.scheduler._lock:
            seqs = [("waiting", s) for s in self.scheduler.waiting] + [("running", s) for s in self.scheduler.running]
        now = time.perf_counter()
        return [{"state": state, "id": s.request_id, "prompt_tokens": s.prompt_len, "generated": len(s.output),
                 "max_tokens": s.params.max_tokens, "kv_len": s.kv_len, "age_s": round(now - s.submitted, 1)}
                for state, s in seqs]

    def snapshot(self) -> dict:
        waiting, running = self.scheduler.counts()
        return {"waiting": waiting, "running": running, "kv_blocks_total": self.blocks.capacity,
                "kv_blocks_free": self.blocks.free_blocks, "requests_total": self.requests_total,
                "steps": self.steps}

    # --- engine thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the step loop (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="chunkcache-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the loop; requests still queued or running end with finish_reason "cancelled"."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        for seq in self.scheduler.drain():
            self._finish(seq, "cancelled")

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.scheduler.has_work():
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a bug in a step must not leave clients waiting forever
                log.exception("engine step failed; failing every request in flight")
                for seq in self.scheduler.drain():
                    self._finish(seq, "error", error=f"engine failure: {type(e).__name__}")

    def step(self) -> None:
        """One engine step (module docstring). Public so tests and in-process benchmarks can drive it."""
        self.steps += 1
        for seq in self.scheduler.take_cancelled():
            self._finish(seq, "cancelled", release=False)
        for seq in self.scheduler.admit():
            self._prefill(seq)
        batch = [s for s in self.scheduler.running if s.pending is not None and s.finish_reason is None]
        if not batch:
            return
        try:
            tokens = self.runner.step(batch)
        except Exception as e:  # noqa: BLE001 - one failed step must not take the server down
            log.exception("decode step failed")
            for seq in batch:
                self._finish(seq, "error", error=f"decode failed: {type(e).__name__}: {e}")
            return
        for seq, token in zip(batch, tokens):
            seq.kv_len += 1
            self._emit(seq, token)

    def _prefill(self, seq: Sequence) -> None:
        started = time.perf_counter()
        try:
            pre = self._run_prefill(seq.prompt)
            result = pre.result
            self.blocks.write_prompt(seq.blocks, result.keys, result.values, result.length)
        except Exception as e:  # noqa: BLE001 - a bad request ends alone, with its error
            log.exception("prefill of %s failed", seq.request_id)
            self._finish(seq, "error", error=f"prefill failed: {type(e).__name__}: {e}")
            return
        seq.kv_len = result.length
        seq.next_position = result.next_position
        seq.stats = {"cached_tokens": pre.stats.tokens_reused,
                     "recompute_fraction": round(pre.stats.recompute_fraction, 4),
                     "chunks_hit": pre.stats.chunks_hit, "chunks_missed": pre.stats.chunks_missed,
                     "queue_ms": round((started - seq.submitted) * 1e3, 2),
                     "prefill_ms": round((time.perf_counter() - started) * 1e3, 2),
                     **{f"{name}_ms": round(pre.stats.timings_ms[key], 2)
                        for name, key in (("load", "load"), ("compute", "prefill"), ("store", "store"))},
                     "strategy": getattr(seq.prompt, "strategy", None) or self.strategy.name}
        p = seq.params
        if p.temperature > 0:
            seq.generator = torch.Generator().manual_seed(p.seed if p.seed is not None else 0)
        self._emit(seq, pick(result.logits, Sampling(p.temperature, p.top_p), seq.generator))

    def _run_prefill(self, prompt: list[int] | RagPrompt) -> Prefilled:
        if isinstance(prompt, RagPrompt):
            strategy = make_strategy(prompt.strategy) if prompt.strategy else self.strategy
            return self.reuse.prefill(prompt.chunks, prompt.question_ids, strategy, edges=list(prompt.edges))
        return self.plain.prefill(prompt, self.strategy)

    def _emit(self, seq: Sequence, token: int) -> None:
        """Account a new token: stream its text, or finish on a stop token, stop string or length."""
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        if token in seq.stop_ids:
            self._finish(seq, "stop")
            return
        seq.output.append(token)
        text = self.tokenizer.decode(seq.output, skip_special_tokens=True)
        cut = min((i for i in (text.find(s, max(0, seq.sent_chars - len(s))) for s in seq.params.stop) if i >= 0),
                  default=-1)
        if cut >= 0:
            self._finish(seq, "stop", text=text[seq.sent_chars:cut], tokens=[token])
            return
        if len(seq.output) >= seq.params.max_tokens:
            self._finish(seq, "length", text=text[seq.sent_chars:], tokens=[token])
            return
        safe = len(text) - _held_back(text, seq.params.stop)
        seq.handle.push(Output(text[seq.sent_chars:safe], [token], None))
        seq.sent_chars = max(seq.sent_chars, safe)
        seq.pending = token

    def _finish(self, seq: Sequence, reason: str, text: str = "", tokens: list[int] | None = None,
                error: str | None = None, release: bool = True) -> None:
        seq.finish_reason = reason
        seq.pending = None
        if release:
            self.scheduler.finish(seq)
        seq.handle.stats = seq.finish_stats()
        seq.handle.push(Output(text, tokens or [], reason, error))


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` not to stream yet: an incomplete UTF-8 character, or the start of
    what may become a stop string."""
    if text.endswith("\ufffd"):
        return 1
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold
