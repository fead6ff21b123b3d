"""Schemathesis fuzzes every operation of the server's own OpenAPI schema: no input may cause a 5xx.

Both valid (positive) and invalid (negative) inputs are generated. Valid bodies get the served model's name,
so they reach the engine rather than stopping at a 404, and a document is indexed first, so RAG queries
retrieve something. ``POST /v1/documents`` is left out: its ``paths`` form ingests server-side folders by
design, and random strings such as ``.`` or ``/`` would make the fuzzer index whole directory trees.
Generation lengths are capped so the run stays well under a minute on a CPU.
"""

from __future__ import annotations

import signal
import time

import hypothesis.strategies as hs
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from serve_helpers import Server

MAX_EXAMPLES = 25
CAP = 4  # tokens generated per fuzzed request at most
TEXT_CAP = 1000  # characters of text in one fuzzed body, all strings together, and items per list / 50: a
# prompt near the 8K window takes a minute to prefill on 2 shared CPU cores and stalls the requests queued
# behind it, which tests the machine's speed, not the server's robustness


def _bounded(value: object, budget: list[int] | None = None) -> object:
    """``value`` with its strings cut so that together they hold at most TEXT_CAP characters, and every list
    cut to TEXT_CAP // 50 items."""
    budget = [TEXT_CAP] if budget is None else budget
    if isinstance(value, str):
        kept = value[:budget[0]]
        budget[0] -= len(kept)
        return kept
    if isinstance(value, list):
        return [_bounded(v, budget) for v in value[:TEXT_CAP // 50]]
    if isinstance(value, dict):
        return {k: _bounded(v, budget) for k, v in value.items()}
    return value


def test_no_input_causes_a_server_error(server: Server, model_id: str) -> None:
    with server.http() as http:
        doc = {"name": "fuzz-notes.md", "text": "The fuzzing lighthouse keeper logs every ship at dawn."}
        assert http.post("/v1/documents", json=doc).status_code == 200
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json").exclude(method="POST",
                                                                                  path="/v1/documents")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # chat, completions, models (2), rag, documents (2), health, metrics
    failures: list[str] = []
    reached_engine = [0]
    for operation in operations:
        cases = hs.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            if isinstance(case.body, dict):
                case.body = _bounded(case.body)
                if isinstance(case.body.get("model"), str):
                    case.body["model"] = model_id
                for field in ("max_tokens", "max_completion_tokens"):
                    value = case.body.get(field)  # 1115.0 validates as an int too, so floats are capped as well
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        case.body[field] = min(value, CAP)
                case.body.setdefault("max_tokens", CAP)
            try:
                response = case.call(timeout=60)
            except requests.Timeout:
                server.proc.send_signal(signal.SIGUSR1)  # the server dumps its threads' stacks into its log
                time.sleep(1)
                raise AssertionError(f"no answer in 60 s to {case.method} {case.formatted_path} {case.body!r:.300}; "
                                     f"server log:\n{server.log.read_text()[-6000:]}") from None
            reached_engine[0] += response.status_code == 200 and case.method == "POST"
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r:.300}: "
                                f"{response.status_code} {response.text[:200]}")

        fuzz()
    assert not failures, failures[:5]
    assert reached_engine[0] > 0  # some fuzzed requests were valid enough to generate
    assert server.health()["status"] == "ok"
