"""Chunk reuse through the server: a RAG app pasting passages into plain chat prompts, ``/v1/rag/query`` over
uploaded documents, and deletion that really invalidates what it removed."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_helpers import Server

from chunkcache.bench.datasets import passage_text, shared_data_dir
from chunkcache.rag.chunk import Chunk, llm_text

ZORBLAT = ("The Zorblat fruit grows only on the northern slopes of Mount Quellar. Its skin is a deep violet and "
           "its flesh tastes of pepper and honey. Farmers harvest it every third autumn, when the snow melts early.")


def _musique_passages(n: int = 4, chars: int = 600) -> list[str]:
    """The first ``n`` passages of a MuSiQue example, each cut to whole words within ``chars`` (CPU time)."""
    rows = json.loads((shared_data_dir() / "musique_dev.json").read_text())
    return [passage_text(c["title"], c["text"][:chars].rsplit(" ", 1)[0]) for c in rows[0]["ctxs"][:n]]


def _rag_chat(server: Server, model_id: str, passages: list[str], question: str):
    context = "".join(passages)
    return server.client().chat.completions.create(
        model=model_id, max_tokens=4, temperature=0,
        messages=[{"role": "system", "content": "Answer the question from the passages."},
                  {"role": "user", "content": f"{context}Question: {question}"}])


def test_rag_app_reuses_pasted_passages_in_another_order(server: Server, model_id: str) -> None:
    passages = _musique_passages()
    first = _rag_chat(server, model_id, passages, "Who wrote the play about Hannibal and Scipio?")
    second = _rag_chat(server, model_id, passages[::-1], "When was the play first performed?")
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens_details.cached_tokens
    assert second.model_extra["chunkcache"]["cached_tokens"] == second.usage.prompt_tokens_details.cached_tokens


def test_documents_round_trip_and_rag_query(server: Server, model_id: str) -> None:
    with server.http() as http:
        r = http.post("/v1/documents", json={"name": "zorblat.md", "text": ZORBLAT})
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["files_added"] == 1 and report["chunks_added"] >= 1
        path = report["documents"][0]
        listed = {d["id"]: d for d in http.get("/v1/documents").json()["data"]}
        assert listed[path]["name"] == "zorblat.md" and listed[path]["chunks"] == report["chunks_added"]
        assert listed[path]["cached"] == listed[path]["chunks"]  # precomputed at ingest

        again = http.post("/v1/documents", json={"name": "zorblat.md", "text": ZORBLAT}).json()
        assert again["files_unchanged"] == 1 and again["chunks_added"] == 0

        r = http.post("/v1/rag/query", json={"question": "What colour is the Zorblat fruit's skin?", "k": 1,
                                             "max_tokens": 8})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["citations"][0]["path"] == path
        assert answer["chunkcache"]["chunks_hit"] == 1
        assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        budget = http.post("/v1/rag/query", json={"question": "What colour is the Zorblat fruit's skin?",
                                                  "budget_tokens": 400, "max_tokens": 4}).json()
        sel = budget["selection"]
        assert sel["budget_tokens"] == 400 and 1 <= sel["chosen"] == len(budget["citations"]) <= sel["candidates"]
        assert sel["estimated_tokens"] <= 400 or sel["over_budget"]
        assert http.post("/v1/rag/query", json={"question": "q", "budget_tokens": 0}).status_code == 400

        deleted = http.delete(f"/v1/documents/{httpx.URL('zorblat.md')}")
        assert deleted.status_code == 200 and deleted.json()["chunks_removed"] == report["chunks_added"]
        assert path not in {d["id"] for d in http.get("/v1/documents").json()["data"]}
        assert http.delete("/v1/documents/zorblat.md").status_code == 404
        # a ~user path of no such user is no document either (expanduser raises; found by the fuzzer)
        assert http.delete("/v1/documents/~no-such-user-zorblat/x.md").status_code == 404


def test_rag_query_streams_citations_then_text(server: Server, tmp_path) -> None:
    doc = tmp_path / "streams.md"
    doc.write_text("The river Elbanor flows east into the Sea of Tarn.\n")
    with server.http() as http:
        assert http.post("/v1/documents", json={"paths": [str(doc)]}).status_code == 200
        body = {"question": "Where does the river Elbanor flow?", "k": 1, "max_tokens": 6, "stream": True}
        with http.stream("POST", "/v1/rag/query", json=body) as r:
            events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
        assert events[-1] == "[DONE]"
        first, last = json.loads(events[0]), json.loads(events[-2])
        assert first["citations"][0]["path"] == str(doc.resolve())
        assert last["finish_reason"] in ("stop", "length") and last["usage"]["completion_tokens"] > 0
        encoded = httpx.URL(path="/v1/documents/" + str(doc.resolve()).replace("/", "%2F"))
        assert http.delete(str(encoded)).status_code == 200


def test_deleting_a_document_stops_its_chunks_being_reused(server: Server, model_id: str) -> None:
    text = ("Quellar lanterns are lit with whale oil on the longest night. Each household hangs seven of them, "
            "one for every moon the old almanacs counted.")
    with server.http() as http:
        report = http.post("/v1/documents", json={"name": "lanterns.txt", "text": text}).json()
        assert report["chunks_added"] == 1
        path = report["documents"][0]
        # the passage's text as an app would paste it: the stored chunk (source header + text) is found by its
        # interior. Without the header, whose path prefix other documents of this server share (and which
        # earlier prompts taught the matcher), nothing else in the store matches this prompt.
        assert text in llm_text(path, Chunk(text, 1, 1))
        prompt = f"{text}\n\nHow many lanterns does each household hang?"
        ask = {"model": model_id, "prompt": prompt, "max_tokens": 2, "temperature": 0}
        before = http.post("/v1/completions", json=ask).json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert before > 0, "the stored chunk should be found in the prompt"
        assert http.delete("/v1/documents/lanterns.txt").status_code == 200
        after = http.post("/v1/completions", json=ask).json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert after == 0  # and the prompt's own text was too short to be learned


@pytest.mark.parametrize("body", [{"name": "../escape.md", "text": "x"}, {"name": "noext", "text": "x"},
                                  {"paths": ["MISSING"]}, {"name": "a.md"}])
def test_bad_document_requests_are_400(server: Server, body: dict, tmp_path) -> None:
    if body.get("paths") == ["MISSING"]:  # a path inside the ingest root that does not exist
        body = {"paths": [str(tmp_path / "not-here")]}
    with server.http() as http:
        r = http.post("/v1/documents", json=body)
    assert r.status_code == 400 and "error" in r.json()


def test_server_side_paths_only_inside_the_ingest_roots(server: Server, guarded_server: Server) -> None:
    with server.http() as http:
        r = http.post("/v1/documents", json={"paths": ["/etc"]})
    assert r.status_code == 403 and "ingest roots" in r.json()["error"]["message"]
    with guarded_server.http() as http:  # started without --ingest-root
        r = http.post("/v1/documents", json={"paths": ["/etc"]})
    assert r.status_code == 403 and "--ingest-root" in r.json()["error"]["message"]


def test_rag_query_structure_graph_reads_links_between_uploaded_documents(server: Server) -> None:
    pages = {"falconx.md": "Project Falconx builds the ingest service; its on-call rota is run by the team on "
                           "[the Heronx page](heronx.md).",
             "heronx.md": "The Heronx team's on-call pager number is 4471; the team meets on Tuesdays."}
    question = "What is the on-call pager number for Project Falconx?"
    with server.http() as http:
        for name, text in pages.items():
            assert http.post("/v1/documents", json={"name": name, "text": text}).status_code == 200
        body = {"question": question, "k": 2, "max_tokens": 4, "structure": "graph"}
        first = http.post("/v1/rag/query", json=body).json()["chunkcache"]
        second = http.post("/v1/rag/query", json=body).json()["chunkcache"]
        assert first["strategy"] == second["strategy"] == "graph"
        assert first["recompute_fraction"] > 0 and second["recompute_fraction"] == 0  # the linking page, once
        par = http.post("/v1/rag/query", json={**body, "structure": "parallel"}).json()["chunkcache"]
        assert par["strategy"] == "parallel" and par["recompute_fraction"] == 0
        assert http.post("/v1/rag/query", json={**body, "structure": "tree"}).status_code == 400
        for name in pages:
            assert http.delete(f"/v1/documents/{name}").status_code == 200
