"""The official ``openai`` client and LangChain's ``ChatOpenAI`` work against ``chunkcache serve`` unchanged."""

from __future__ import annotations

import time

from serve_helpers import Server

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # greedy SmolLM2 keeps counting: a long answer on demand


def test_models_lists_the_served_model(server: Server, model_id: str) -> None:
    client = server.client()
    assert [m.id for m in client.models.list().data] == [model_id]
    assert client.models.retrieve(model_id).id == model_id
    assert server.health()["model"] == model_id


def test_chat_completion(server: Server, model_id: str) -> None:
    r = server.client().chat.completions.create(
        model=model_id, messages=[{"role": "system", "content": "You are terse."},
                                  {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.model == model_id and r.object == "chat.completion"
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens <= r.usage.prompt_tokens
    stats = r.model_extra["chunkcache"]
    assert stats["prompt_tokens"] == r.usage.prompt_tokens and stats["completion_tokens"] == r.usage.completion_tokens


def test_greedy_chat_is_repeatable_and_max_completion_tokens_limits(server: Server, model_id: str) -> None:
    client = server.client()
    ask = dict(model=model_id, messages=[{"role": "user", "content": "Name three colours."}], temperature=0)
    a = client.chat.completions.create(max_completion_tokens=6, **ask)
    b = client.chat.completions.create(max_completion_tokens=6, **ask)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens <= 6


def test_streaming_chat_with_usage(server: Server, model_id: str) -> None:
    client = server.client()
    ask = dict(model=model_id, messages=[{"role": "user", "content": "Say something about the sea."}],
               max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in ("stop", "length")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    plain = client.chat.completions.create(**ask)
    assert text == plain.choices[0].message.content  # greedy: streamed and whole answers agree


def test_streaming_without_usage_ends_with_done(server: Server, model_id: str) -> None:
    body = {"model": model_id, "prompt": COUNTING, "max_tokens": 5, "temperature": 0, "stream": True}
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(lines[:-1])
    assert '"chunkcache"' in lines[-2]


def test_text_completion_plain_and_streamed(server: Server, model_id: str) -> None:
    client = server.client()
    r = client.completions.create(model=model_id, prompt=COUNTING, max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    assert "11" in r.choices[0].text
    streamed = client.completions.create(model=model_id, prompt=COUNTING, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_stop_strings_cut_the_text(server: Server, model_id: str) -> None:
    r = server.client().completions.create(model=model_id, prompt=COUNTING, max_tokens=20, temperature=0,
                                           stop=["13"])
    assert r.choices[0].finish_reason == "stop"
    assert "13" not in r.choices[0].text and "12" in r.choices[0].text


def test_seeded_sampling_is_reproducible(server: Server, model_id: str) -> None:
    client = server.client()
    ask = dict(model=model_id, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=1234)
    assert client.completions.create(**ask).choices[0].text == client.completions.create(**ask).choices[0].text


def test_langchain_chat_openai_invoke(server: Server, model_id: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server.base}/v1", api_key="unused", model=model_id, max_tokens=8,
                     temperature=0, max_retries=0)
    msg = llm.invoke("What is two plus two?")
    assert isinstance(msg.content, str) and msg.content
    assert msg.usage_metadata["output_tokens"] > 0


def test_client_disconnect_cancels_the_request(server: Server, model_id: str) -> None:
    client = server.client()
    t0 = time.monotonic()
    short = client.completions.create(model=model_id, prompt=COUNTING, max_tokens=32, temperature=0)
    per_32 = time.monotonic() - t0
    assert short.choices[0].finish_reason == "length"  # so a long request would really run long
    body = {"model": model_id, "prompt": COUNTING, "max_tokens": 1500, "temperature": 0, "stream": True}
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    deadline = time.monotonic() + 2 * per_32 + 3  # finishing 1500 tokens would take ~47 times per_32
    while time.monotonic() < deadline:
        snap = server.health()["engine"]
        if snap["running"] == 0 and snap["waiting"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"request still running after the client left: {server.health()}")



def test_tiny_temperature_or_top_p_is_greedy_not_a_failure(server: Server, model_id: str) -> None:
    client = server.client()
    greedy = client.completions.create(model=model_id, prompt=COUNTING, max_tokens=6, temperature=0)
    for tiny in ({"temperature": 1e-300}, {"temperature": 1.0, "top_p": 1e-300}):
        r = client.completions.create(model=model_id, prompt=COUNTING, max_tokens=6, **tiny)
        assert r.choices[0].text == greedy.choices[0].text
    assert server.health()["status"] == "ok"
