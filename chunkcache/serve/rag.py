"""``POST /v1/rag/query``: a question answered from the ingested documents, with citations and engine stats.

The same path as ``chunkcache ask``: retrieve the top-k chunks (``Engine.prompt``; with ``budget_tokens``, those
``Engine.select`` chooses under that prefill budget, reported as ``selection``; ``structure`` lays them out
as ``ask --structure`` does), hand the engine a
structured ``RagPrompt`` (template prefix | chunks | question), so every retrieved chunk's record is reused.
Greedy by default, as ``ask`` is. A stream sends the citations first, then text deltas, then a final event
with the finish reason, usage and stats, then ``[DONE]``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from chunkcache.engine.sequence import RagPrompt
from chunkcache.rag import Hit
from chunkcache.rag.links import chunk_edges
from chunkcache.serve.completions import SSE_HEADERS, sse
from chunkcache.serve.errors import APIError, error_body
from chunkcache.serve.generation import Run, gen_params, submit
from chunkcache.serve.schemas import RagQueryRequest
from chunkcache.serve.state import ServerState, state
from chunkcache.strategies import make_strategy

router = APIRouter()


def citations(hits: list[Hit]) -> list[dict]:
    """Where each retrieved chunk came from (path and lines) and its retrieval score, best first."""
    return [{"path": h.path, "start_line": h.start_line, "end_line": h.end_line, "score": round(h.score, 4)}
            for h in hits]


@router.post("/v1/rag/query")
async def rag_query(body: RagQueryRequest, request: Request, st: ServerState = Depends(state)) -> object:
    """Answer ``question`` from the top ``k`` retrieved chunks, or from those chosen under ``budget_tokens``."""
    selection = None
    structure = None if body.structure in (None, "sequential") else body.structure
    try:
        if body.budget_tokens is None:
            hits, chunks, question_ids = await st.engine_call(st.engine.prompt, body.question, body.k)
        else:
            hits, chunks, question_ids, selection = await st.engine_call(
                st.engine.select, body.question, body.k, make_strategy(structure) if structure else st.serving.strategy,
                body.budget_tokens, None)
    except ValueError as e:  # an empty question, or a store without documents
        raise APIError(400, str(e), "question", "invalid_value") from None
    edges = tuple(chunk_edges(hits)) if structure == "graph" else ()
    prompt = RagPrompt(chunks, question_ids, structure, edges)
    n_prompt = len(st.serving.reuse.template.prefix_ids) + sum(map(len, chunks)) + len(question_ids)
    params = gen_params(st, n_prompt, body.max_tokens, 0.0 if body.temperature is None else body.temperature,
                        body.top_p, body.seed)
    run = Run(st, submit(st, prompt, params), "rag")
    head = {"id": run.handle.request_id, "object": "rag.answer", "created": int(time.time()), "model": st.model_id}
    cited = citations(hits)
    if selection is not None:
        head["selection"] = selection
    if body.stream:
        return StreamingResponse(_events(run, head, cited), media_type="text/event-stream", headers=SSE_HEADERS)
    text = await run.text(request)
    return {**head, "answer": text.strip(), "finish_reason": run.finish_reason, "citations": cited,
            "usage": run.usage(), "chunkcache": run.handle.stats}


async def _events(run: Run, head: dict, cited: list[dict]) -> AsyncIterator[str]:
    yield sse({**head, "citations": cited})
    async for out in run.outputs():
        if out.text:
            yield sse({**head, "delta": out.text})
        if out.finish_reason in ("stop", "length"):
            yield sse({**head, "finish_reason": out.finish_reason, "usage": run.usage(),
                       "chunkcache": run.handle.stats})
        elif out.finish_reason is not None:
            try:
                run.raise_for_failure()
            except APIError as e:
                yield sse(error_body(e.status, e.message, e.param, e.code))
    yield sse("[DONE]")
