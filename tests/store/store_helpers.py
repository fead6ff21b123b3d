"""Helpers for the store tests: small real chunk records, exact comparison, byte surgery on files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import torch

from chunkcache.kv.record import ChunkRecord, chunk_hash

FP = "test-model-fingerprint"


def build_record(
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    prefix_ids: tuple[str, ...] = (),
    stats: bool = True,
    fingerprint: str = FP,
    layers: int = 3,
    heads: int = 2,
    tokens: int = 5,
    head_dim: int = 4,
    exact: bool | None = None,
) -> ChunkRecord:
    """A record with random K/V; the same seed gives the same chunk (id), prefix_ids pick the variant."""
    g = torch.Generator().manual_seed(seed)
    token_ids = torch.randint(0, 50_000, (tokens,), generator=g).tolist()
    shape = (heads, tokens, head_dim)
    pg = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32("|".join(prefix_ids).encode()))  # per variant
    return ChunkRecord(
        chunk_id=chunk_hash(fingerprint, token_ids),
        token_ids=token_ids,
        keys=[torch.randn(shape, generator=pg).to(dtype) for _ in range(layers)],
        values=[torch.randn(shape, generator=pg).to(dtype) for _ in range(layers)],
        fingerprint=fingerprint,
        prefix_ids=list(prefix_ids),
        inter=torch.rand(layers, max(1, len(prefix_ids)), generator=pg) if stats else None,
        intra=torch.rand(layers, generator=pg) if stats else None,
        outside=torch.rand(tokens, generator=pg) if stats else None,
        exact=exact,
    )


def assert_same_record(got: ChunkRecord | None, want: ChunkRecord) -> None:
    """Exact equality of every field, dtypes included."""
    assert got is not None
    assert got.chunk_id == want.chunk_id
    assert got.token_ids == want.token_ids
    assert got.fingerprint == want.fingerprint
    assert got.prefix_ids == want.prefix_ids
    assert got.exact is want.exact
    assert len(got.keys) == len(want.keys) and len(got.values) == len(want.values)
    for a, b in zip((*got.keys, *got.values), (*want.keys, *want.values)):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    for name in ("inter", "intra", "outside"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.dtype == torch.float32
            assert torch.equal(a, b.float())


def tensor_span(path: Path, name: str) -> tuple[int, int]:
    """Absolute [start, end) byte range of tensor ``name``'s data in a safetensors file."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8 : 8 + header_len])[name]["data_offsets"]
    return 8 + header_len + start, 8 + header_len + end


def flip_byte(path: Path, offset: int) -> None:
    """Invert every bit of the byte at ``offset``."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
