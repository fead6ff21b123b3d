"""Every bad request gets OpenAI's error shape and the right status, and none hurts the server."""

from __future__ import annotations

import concurrent.futures as cf
import re
import subprocess
import sys

import httpx
import openai
import pytest
from serve_helpers import API_KEY, Server, start_server, stop_server


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_malformed_json_is_400(server: Server) -> None:
    with server.http() as http:
        err = _error(http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                               headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]


def test_schema_violations_are_400_naming_the_field(server: Server, model_id: str) -> None:
    with server.http() as http:
        err = _error(http.post("/v1/chat/completions", json={"model": model_id, "messages": [{"role": "wizard"}]}),
                     400)
        assert err["param"] == "messages[0].role"
        err = _error(http.post("/v1/completions", json={"model": model_id, "prompt": "a", "temperature": -1}), 400)
        assert err["param"] == "temperature"
        err = _error(http.post("/v1/chat/completions", json={"model": model_id}), 400)
        assert err["param"] == "messages"


def test_a_seed_beyond_64_bits_is_400(server: Server, model_id: str) -> None:
    """Found by the fuzzer: a seed torch cannot take used to fail the engine step, and with it every request
    in flight. Now it is refused up front, and the largest 64-bit seeds work."""
    with server.http() as http:
        for path, body in (("/v1/rag/query", {"question": "q", "temperature": 0.5}),
                           ("/v1/completions", {"model": model_id, "prompt": "a", "temperature": 0.5})):
            err = _error(http.post(path, json={**body, "seed": -8554616736225789214720, "max_tokens": 2}), 400)
            assert err["param"] == "seed"
        for seed in (-(1 << 63), (1 << 64) - 1):
            r = http.post("/v1/completions", json={"model": model_id, "prompt": "a", "temperature": 0.5,
                                                   "seed": seed, "max_tokens": 2})
            assert r.status_code == 200, r.text


def test_n_other_than_one_is_400(server: Server, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], n=2)
    assert e.value.status_code == 400 and "n=1" in e.value.message


def test_prompt_beyond_the_window_is_400_naming_both_numbers(server: Server, model_id: str) -> None:
    client = server.client()
    prompt = "The quick brown fox jumps over the lazy dog. " * 40  # ~400 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model_id, prompt=prompt, max_tokens=100_000)
    err = e.value.body
    assert err["code"] == "context_length_exceeded"
    numbers = [int(n) for n in re.findall(r"\d+", err["message"])]
    assert 100_000 in numbers  # max_tokens
    prompt_tokens = client.completions.create(model=model_id, prompt=prompt, max_tokens=1).usage.prompt_tokens
    assert prompt_tokens in numbers


def test_unknown_model_is_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


def test_oversized_body_is_413_before_parsing(server: Server, model_id: str) -> None:
    big = b'{"model": "' + b"x" * (9 << 20) + b'"}'  # over the 8 MiB default, and never valid JSON
    with server.http() as http:
        err = _error(http.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"}),
                     413)
        assert str(8 << 20) in err["message"]

        def chunks():  # no Content-Length: the limit is counted as the body arrives
            for _ in range(9):
                yield b" " * (1 << 20)

        _error(http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert server.health()["status"] == "ok"


def test_unknown_route_is_404_json(server: Server) -> None:
    with server.http() as http:
        _error(http.get("/v1/nothing-here"), 404)


def test_missing_or_wrong_key_is_401(guarded_server: Server) -> None:
    base = f"{guarded_server.base}/v1"
    for key in ("wrong-key", API_KEY + "x", API_KEY[:-1]):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key=key, max_retries=0).models.list()
    r = httpx.post(f"{base}/chat/completions", json={"model": "default", "messages": []})
    assert _error(r, 401)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{base}/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert _error(r, 401)["code"] == "invalid_api_key"  # refused before the body is even parsed
    assert guarded_server.client().models.list().data  # the right key works
    assert httpx.get(f"{guarded_server.base}/health").status_code == 200  # probes need no key
    assert httpx.get(f"{guarded_server.base}/metrics").status_code == 200


def test_full_queue_is_429_with_retry_after(guarded_server: Server) -> None:
    body = {"model": "default", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 48, "temperature": 0}
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{guarded_server.base}/v1/completions", json=body, headers=headers, timeout=300)

    with cf.ThreadPoolExecutor(6) as pool:  # one running and one waiting are allowed: the rest must be refused
        responses = list(pool.map(post, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 429 in codes, codes
    assert set(codes) <= {200, 429}
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert _error(refused, 429)["type"] == "rate_limit_error"
    assert guarded_server.health()["status"] == "ok"


@pytest.mark.parametrize("args,message", [(["--max-running", "0"], "--max-running must be at least 1"),
                                          (["--port", "70000"], "--port must be in [1, 65535]")])
def test_bad_serve_options_fail_before_the_model_loads(tmp_path, args: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "chunkcache.cli", "serve", "--store", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and r.stderr.startswith("error: ")


def test_api_key_from_the_environment(tmp_path) -> None:
    srv = start_server(tmp_path, "--max-tokens", "4", env_key="env-secret")
    try:
        assert httpx.get(f"{srv.base}/v1/models").status_code == 401
        wrong = httpx.get(f"{srv.base}/v1/models", headers={"Authorization": "Bearer flag-secret"})
        assert wrong.status_code == 401
        assert srv.client().models.list().data  # the environment's key works
    finally:
        stop_server(srv)
