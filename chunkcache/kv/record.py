"""Chunk KV records: a chunk's per-layer K (before RoPE) and V, plus what the reuse strategies need.

A chunk's identity is ``chunk_hash(fingerprint, token_ids)`` (DESIGN section 2.1): the chunk is always
tokenized on its own, so its ids are the same wherever it lands. A record is one *variant* of a chunk:
the states it had when computed after ``prefix_ids`` (empty for an isolated precompute, the preceding
chunks' hashes for a variant captured from a served request).

A record is *exact* when its states are the ones a full prefill of ``template prefix | prefix chunks | chunk``
gives: every token of the chunk was computed at every layer over exact states of everything before it.
An isolated record is exact (it was prefilled right after exactly the template prefix). A captured variant
is exact only if, in the request it comes from, the chunk and every chunk before it were either fully
recomputed at every layer or reused from exact records in their own place (``engine/reuse.py`` decides);
a variant captured from a partly recomputed request was computed over stale states and is not. Only an
exact record placed after exactly its ``prefix_ids`` may be reused without repair (``strategies/base.is_exact``).

Keys are stored before RoPE so placing the chunk at position p is one rotation (kv/rope.py).
The attention statistics are the Cache-Craft (arXiv 2502.15734, section 4) inputs:

* ``inter``   [layers, n_prefix]: attention mass from the chunk's tokens to each preceding chunk
  (for an isolated record: to the template prefix, attention-sink token excluded, as one context).
* ``intra``   [layers]: attention mass inside the chunk (causal).
* ``outside`` [tokens]: per-token attention mass to anything before the chunk, averaged over layers and
  heads — the token ranking Cache-Craft recomputes first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

ISOLATED = "isolated"


def chunk_hash(fingerprint: str, token_ids: list[int]) -> str:
    """Identity of a chunk: sha256 over (model fingerprint, token ids)."""
    h = hashlib.sha256(fingerprint.encode())
    h.update(torch.tensor(token_ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def variant_name(prefix_ids: list[str]) -> str:
    """Name of the variant computed after ``prefix_ids``: ``isolated`` or a short hash of the prefix."""
    if not prefix_ids:
        return ISOLATED
    return hashlib.sha256("|".join(prefix_ids).encode()).hexdigest()[:16]


def stacked(layers: list[torch.Tensor]) -> torch.Tensor:
    """The per-layer tensors as one [layers, ...] tensor: a view without a copy when they already are evenly
    spaced slices of one buffer (what ``ChunkRecord.to``, capture and the memory tier produce), else
    ``torch.stack``. Lets a request place a record with one copy instead of one per layer
    (engine/workspace.py)."""
    first = layers[0]
    if len(layers) > 1:
        step = layers[1].data_ptr() - first.data_ptr()
        size = first.element_size()
        same = all(t.shape == first.shape and t.stride() == first.stride() and t.dtype == first.dtype
                   and t.device == first.device and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                   and t.data_ptr() == first.data_ptr() + i * step for i, t in enumerate(layers))
        if same and step > 0 and step % size == 0:
            return first.as_strided((len(layers), *first.shape), (step // size, *first.stride()))
    return torch.stack(layers)


def host_copy(layers: list[torch.Tensor], dtype: torch.dtype | None = None, pin: bool = False) -> list[torch.Tensor]:
    """The per-layer tensors copied into one new host buffer (pinned when ``pin``), converted to ``dtype``
    where they are before the copy: one transfer for all layers, returned as per-layer views of the buffer
    (which ``stacked`` gives back without a copy)."""
    block = stacked(layers)
    if dtype is not None:
        block = block.to(dtype)
    out = torch.empty(block.shape, dtype=block.dtype, pin_memory=pin)
    out.copy_(block)
    return list(out.unbind(0))


@dataclass
class ChunkRecord:
    """One variant of one chunk's KV states (see module docstring)."""

    chunk_id: str
    token_ids: list[int]
    keys: list[torch.Tensor]  # per layer [kv_heads, tokens, head_dim], pre-RoPE
    values: list[torch.Tensor]  # per layer [kv_heads, tokens, head_dim]
    fingerprint: str
    prefix_ids: list[str] = field(default_factory=list)
    inter: torch.Tensor | None = None  # [layers, max(1, len(prefix_ids))]
    intra: torch.Tensor | None = None  # [layers]
    outside: torch.Tensor | None = None  # [tokens]
    exact: bool | None = None  # None: the default, exact for isolated records, not for captured variants
    # ``block`` results per "k"/"v", with the layer list each was made from (the list's identity keeps it valid)
    _blocks: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # for a part made by ``slice``: the whole record and where the part starts in it (``whole_block``)
    _whole: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.exact is None:
            self.exact = not self.prefix_ids
        if not self.token_ids:
            raise ValueError("a chunk record needs at least one token")
        if len(self.keys) != len(self.values):
            raise ValueError("keys and values must have one tensor per layer each")
        n = len(self.token_ids)
        for k, v in zip(self.keys, self.values):
            if k.shape[1] != n or v.shape[1] != n:
                raise ValueError(f"layer tensors cover {k.shape[1]} tokens, chunk has {n}")

    def block(self, which: str) -> torch.Tensor:
        """Keys (``"k"``) or values (``"v"``) of every layer as one [layers, Hkv, T, D] tensor (``stacked``),
        worked out once per record: checking 2 × layers views costs more host time per request than a
        short partial prefill has to spare."""
        layers = self.keys if which == "k" else self.values
        made = self._blocks.get(which)
        if made is not None and made[0] is layers:
            return made[1]
        block = stacked(layers)
        if block.untyped_storage().data_ptr() == layers[0].untyped_storage().data_ptr():
            self._blocks[which] = (layers, block)  # a view: remembering it costs no memory (a copy is not kept)
        return block

    @property
    def variant(self) -> str:
        return variant_name(self.prefix_ids)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def cci(self) -> float:
        """Cache Context Impact, CCI = sigmoid(ā / b̄) (Cache-Craft eq. 3).

        a_l = Σ_j inter_l(C_i, C_j) / (|C_i| |C_j|) and b_l = intra_l(C_i) / |C_i|² are averaged over layers.
        ``inter`` already holds per-context-token normalised mass (divided by |C_j| at capture), so only the
        division by |C_i| remains here.
        """
        if self.inter is None or self.intra is None:
            return 1.0
        n = float(self.n_tokens)
        a = self.inter.float().sum(dim=1).mean() / n
        b = self.intra.float().mean() / (n * n)
        return float(torch.sigmoid(a / b.clamp_min(1e-12)))

    def to(self, device: torch.device | str, dtype: torch.dtype, non_blocking: bool = False) -> "ChunkRecord":
        """A copy with K/V on ``device`` in ``dtype`` (statistics stay float32 on CPU), each as per-layer views of
        one buffer (``stacked``). ``non_blocking``: a copy from pinned host memory is queued on the device's
        stream instead of waited for."""
        k = self.block("k").to(device=device, dtype=dtype, non_blocking=non_blocking)
        v = self.block("v").to(device=device, dtype=dtype, non_blocking=non_blocking)
        moved = ChunkRecord(
            chunk_id=self.chunk_id,
            token_ids=self.token_ids,
            keys=list(k.unbind(0)),
            values=list(v.unbind(0)),
            fingerprint=self.fingerprint,
            prefix_ids=list(self.prefix_ids),
            inter=self.inter,
            intra=self.intra,
            outside=self.outside,
            exact=self.exact,
        )
        moved._blocks = {"k": (moved.keys, k), "v": (moved.values, v)}
        return moved

    def slice(self, start: int, end: int) -> "ChunkRecord":
        """The record of tokens ``start..end-1`` only (views, no copy): what a prompt that holds just that
        part of the chunk reuses. Keys are pre-RoPE, so any part can be placed anywhere. A part that does
        not start at the chunk's first token lost what came before it, so it is never exact."""
        if not 0 <= start < end <= self.n_tokens:
            raise ValueError(f"slice {start}:{end} outside a chunk of {self.n_tokens} tokens")
        if (start, end) == (0, self.n_tokens):
            return self
        k, v = self.block("k")[:, :, start:end], self.block("v")[:, :, start:end]
        part = ChunkRecord(
            chunk_id=self.chunk_id,
            token_ids=self.token_ids[start:end],
            keys=list(k.unbind(0)),  # one call for every layer's view: a served prompt cuts many parts
            values=list(v.unbind(0)),
            fingerprint=self.fingerprint,
            prefix_ids=list(self.prefix_ids),
            inter=self.inter,
            intra=self.intra,
            outside=None if self.outside is None else self.outside[start:end],
            exact=bool(self.exact) and start == 0,
        )
        part._blocks = {"k": (part.keys, k), "v": (part.values, v)}
        whole, offset = self._whole or (self, 0)
        part._whole = (whole, offset + start)
        return part

    def whole_block(self, which: str, layers: slice) -> tuple[torch.Tensor, slice]:
        """``layers`` of the keys or values of the record this one was cut from (itself if it is whole) and
        the tokens of it that are this record's: ``whole_block(w, ls)[0][:, :, tokens]`` is ``block(w)[ls]``.

        Why: a part's block is a strided view of the whole record's, and PyTorch copies a strided host tensor
        to a device by first making it contiguous in pageable memory, a copy that holds the host until it
        lands. Matched passages in served plain prompts are mostly parts, and those copies took about 0.1 s
        of a 4K-token request's prefill on the H100 (docs/benchmarks.md, 2026-12-07). The whole record's
        layers are contiguous, so they cross asynchronously and the part is cut out on the device
        (engine/workspace.py), for the bytes of the tokens that did not match."""
        whole, offset = self._whole or (self, 0)
        return whole.block(which)[layers], slice(offset, offset + self.n_tokens)
