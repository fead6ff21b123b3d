"""``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI's API over the serving engine.

A plain prompt needs nothing special from the client: the engine finds stored chunks anywhere in its tokens
and reuses them, and ``usage.prompt_tokens_details.cached_tokens`` says how many prompt tokens were reused.
Every response carries a ``chunkcache`` field with the request's engine stats. Streams are server-sent events
(``data: {chunk}`` lines, then ``data: [DONE]``); with ``stream_options.include_usage`` a last chunk with empty
``choices`` carries the usage, as OpenAI sends it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from chunkcache.serve.errors import APIError, error_body
from chunkcache.serve.generation import Run, gen_params, submit
from chunkcache.serve.schemas import ChatCompletionRequest, CompletionRequest
from chunkcache.serve.state import ServerState, state

router = APIRouter()

# roles a chat template may not know, mapped to the ones every template has
_ROLES = {"developer": "system"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(obj: dict | str) -> str:
    """One server-sent event carrying ``obj`` as JSON (or the literal ``[DONE]``)."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


async def event_stream(run: Run, piece: Callable[[str, str | None], dict], include_usage: bool,
                       head: dict) -> AsyncIterator[str]:
    """The SSE body of a streamed request: ``piece(text, finish_reason)`` makes each chunk; with
    ``include_usage`` a last chunk of ``head`` (id, object, model...) with no choices carries the usage. An
    engine failure ends the stream with an OpenAI-shaped error event. Closing it early cancels the request
    (see ``Run``)."""
    async for out in run.outputs():
        if out.finish_reason is None:
            if out.text:
                yield sse(piece(out.text, None))
            continue
        if out.finish_reason in ("stop", "length"):
            yield sse({**piece(out.text, out.finish_reason), "chunkcache": run.handle.stats})
            if include_usage:
                yield sse({**head, "choices": [], "usage": run.usage(), "chunkcache": run.handle.stats})
        else:
            try:
                run.raise_for_failure()
            except APIError as e:
                yield sse(error_body(e.status, e.message, e.param, e.code))
    yield sse("[DONE]")


def _streaming(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           st: ServerState = Depends(state)) -> object:
    """Chat completion of ``messages`` with the served model (streamed when ``stream`` is true)."""
    st.check_model(body.model)
    messages = [{"role": _ROLES.get(m.role, m.role), "content": m.text()} for m in body.messages]
    try:
        ids = await st.tokenize(st.serving.encode_chat, messages)
    except Exception as e:  # a template that rejects the conversation (e.g. roles out of order)
        raise APIError(400, f"messages: the model's chat template cannot format them ({type(e).__name__}: "
                            f"{str(e)[:200]})", "messages", "invalid_value") from None
    params = gen_params(st, len(ids), body.token_limit(), 1.0 if body.temperature is None else body.temperature,
                        body.top_p, body.seed, body.stop_strings())
    run = Run(st, submit(st, ids, params), "chat")
    rid, created = "chat" + run.handle.request_id, int(time.time())
    head = {"id": rid, "created": created, "model": st.model_id, "system_fingerprint": None}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        first = [True]

        def piece(text: str, finish: str | None) -> dict:
            delta = {"role": "assistant", "content": text} if first[0] else {"content": text} if text else {}
            first[0] = False
            return {**head, "object": "chat.completion.chunk", **extra,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        return _streaming(event_stream(run, piece, include_usage, {**head, "object": "chat.completion.chunk"}))
    text = await run.text(request)
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": run.finish_reason, "logprobs": None}],
            "usage": run.usage(), "chunkcache": run.handle.stats}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, st: ServerState = Depends(state)) -> object:
    """Text completion of ``prompt`` (a string or token ids) with the served model."""
    st.check_model(body.model)
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        ids = list(prompt)
        vocab = len(st.serving.tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})", "prompt", "invalid_value")
    else:
        text = prompt if isinstance(prompt, str) else "".join(prompt)
        ids = await st.tokenize(st.serving.encode_text, text)
    params = gen_params(st, len(ids), body.token_limit(), 1.0 if body.temperature is None else body.temperature,
                        body.top_p, body.seed, body.stop_strings())
    run = Run(st, submit(st, ids, params), "completions")
    head = {"id": run.handle.request_id, "created": int(time.time()), "model": st.model_id,
            "system_fingerprint": None}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}

        def piece(text: str, finish: str | None) -> dict:
            return {**head, "object": "text_completion", **extra,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}

        return _streaming(event_stream(run, piece, include_usage, {**head, "object": "text_completion"}))
    text = await run.text(request)
    return {**head, "object": "text_completion",
            "choices": [{"index": 0, "text": text, "finish_reason": run.finish_reason, "logprobs": None}],
            "usage": run.usage(), "chunkcache": run.handle.stats}
