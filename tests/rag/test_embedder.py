"""The packaged MiniLM embedder: shape, normalisation, semantics, ordering, truncation."""

from __future__ import annotations

import numpy as np

from chunkcache.rag import Embedder


def test_shape_dtype_and_unit_norm(embedder: Embedder):
    vectors = embedder.embed(["Rotate the signing keys.", "A cat sleeps.", "x"])
    assert embedder.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_paraphrases_score_higher_than_unrelated_text(embedder: Embedder):
    query, paraphrase, unrelated = embedder.embed(
        [
            "How do I rotate the API keys?",
            "To change your API credentials, run the key rotation command.",
            "The recipe needs two cups of flour and an egg.",
        ]
    )
    assert query @ paraphrase > 0.5
    assert query @ paraphrase > query @ unrelated + 0.3


def test_batching_by_length_returns_rows_in_input_order(embedder: Embedder, monkeypatch):
    texts = ["a much longer sentence about database backups and restores", "short", "medium length text here"]
    one_by_one = np.stack([embedder.embed([t])[0] for t in texts])
    monkeypatch.setattr(embedder, "batch_size", 2)
    np.testing.assert_allclose(embedder.embed(texts), one_by_one, atol=1e-5)


def test_texts_are_truncated_to_256_tokens(embedder: Embedder):
    head = " ".join(f"token{i}" for i in range(400))  # far beyond 256 WordPiece tokens
    with_tail, without_tail = embedder.embed([head + " completely different trailing words", head])
    np.testing.assert_allclose(with_tail, without_tail, atol=1e-6)
