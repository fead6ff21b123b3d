"""On-disk format of one chunk variant: a checksummed safetensors file.

Tensors: ``k.{l}`` and ``v.{l}`` per layer (in the record's dtype, bf16 by default: the caller
decides), ``tokens`` (int64), and, when the record has them, ``inter``, ``intra``, ``outside``
(float32). One tensor per layer lets :func:`read_layers` load single layers lazily, so layer l+1's
KV can be read while layer l computes (DESIGN section 4).

Header metadata (strings): ``format``, ``format_version``, ``fingerprint``, ``chunk_id``,
``prefix_ids`` (JSON list), ``exact`` (``"1"`` or ``"0"``, see ``ChunkRecord``), ``n_layers``,
``digests`` (JSON: tensor name -> sha256 over its name, dtype, shape and raw bytes) and ``checksum``:
sha256 over every (name, digest) pair in sorted name order, so it covers every tensor's name and bytes.
Keeping the per-tensor digests lets a lazy layer read verify exactly the tensors it loads without hashing
the whole file.

Readers raise :class:`CorruptRecordError` for anything that fails to parse or verify — a damaged
or truncated file, another model's file (fingerprint mismatch), another format version, a file
under the wrong chunk id or variant name — so the store can drop it and treat it as a miss.
A missing file raises :class:`FileNotFoundError` as usual.

Versions: 2 adds ``exact``. Version-1 files (written before records knew whether they were exact) are
still read: without the flag, an isolated record is exact and a captured variant is not, which is
``ChunkRecord``'s default.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from safetensors.torch import save_file

from chunkcache.kv.record import ChunkRecord, variant_name

FORMAT = "chunkcache-kv"
FORMAT_VERSION = "2"
_READABLE_VERSIONS = ("1", FORMAT_VERSION)
_STATS = ("inter", "intra", "outside")
# What a damaged file can make parsing raise; every one of them means "corrupt", never a crash.
_PARSE_ERRORS = (SafetensorError, ValueError, KeyError, TypeError, RuntimeError)


class CorruptRecordError(ValueError):
    """A stored record failed to parse or verify; it must not be used."""


def tensor_digest(name: str, tensor: torch.Tensor) -> str:
    """sha256 over a tensor's name, dtype, shape and raw bytes (a contiguous CPU tensor)."""
    h = hashlib.sha256(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
    h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def checksum(digests: dict[str, str]) -> str:
    """File checksum: sha256 over every (name, tensor digest) pair in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name]}\0".encode())
    return h.hexdigest()


def _encoded(record: ChunkRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The record's tensors and header metadata, as written to a file or a value."""
    tensors: dict[str, torch.Tensor] = {"tokens": torch.tensor(record.token_ids, dtype=torch.int64)}
    for layer, (k, v) in enumerate(zip(record.keys, record.values)):
        # cloned: a record's layers may be views of one block, and safetensors refuses shared storage
        tensors[f"k.{layer}"] = k.detach().to("cpu").contiguous().clone()
        tensors[f"v.{layer}"] = v.detach().to("cpu").contiguous().clone()
    for name in _STATS:
        stat = getattr(record, name)
        if stat is not None:
            tensors[name] = stat.detach().to(device="cpu", dtype=torch.float32).contiguous()
    digests = {name: tensor_digest(name, t) for name, t in tensors.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": record.fingerprint,
        "chunk_id": record.chunk_id,
        "prefix_ids": json.dumps(list(record.prefix_ids)),
        "exact": "1" if record.exact else "0",
        "n_layers": str(len(record.keys)),
        "digests": json.dumps(digests, sort_keys=True),
        "checksum": checksum(digests),
    }
    return tensors, metadata


def write_record(record: ChunkRecord, path: Path) -> None:
    """Write ``record`` to ``path`` in this format (not atomically: the disk tier handles that)."""
    tensors, metadata = _encoded(record)
    save_file(tensors, str(path), metadata=metadata)


def encode_record(record: ChunkRecord) -> bytes:
    """``record`` in this format as one byte string: the same bytes a file would hold (the Redis tier's value)."""
    tensors, metadata = _encoded(record)
    return save_bytes(tensors, metadata=metadata)


def decode_record(data: bytes, fingerprint: str, chunk_id: str, variant: str) -> ChunkRecord:
    """Parse and fully verify a value made by :func:`encode_record`, expected to hold (chunk_id, variant) of
    ``fingerprint``; :class:`CorruptRecordError` for anything else, as for a file."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        raw = header.pop("__metadata__", None) or {}
        meta = _check_header(raw, set(header), fingerprint, chunk_id, variant)
        tensors = load_bytes(data)
        digests = json.loads(raw["digests"])
        for name, tensor in tensors.items():
            if tensor_digest(name, tensor) != digests[name]:
                raise CorruptRecordError(f"tensor {name!r} does not match its checksum")
    except CorruptRecordError:
        raise
    except (*_PARSE_ERRORS, struct.error, AttributeError) as e:
        raise CorruptRecordError(f"unreadable value ({type(e).__name__}: {e})") from e
    return _record(chunk_id, fingerprint, meta, tensors)


def read_record(path: Path, fingerprint: str, chunk_id: str, variant: str) -> ChunkRecord:
    """Load and fully verify the record at ``path``, expected to hold (chunk_id, variant) of ``fingerprint``."""
    with _checked_file(path, fingerprint, chunk_id, variant) as (f, meta, digests):
        tensors = {name: _load(f, name, digests) for name in digests}
    return _record(chunk_id, fingerprint, meta, tensors)


def _record(chunk_id: str, fingerprint: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ChunkRecord:
    n_layers = meta["n_layers"]
    try:
        return ChunkRecord(
            chunk_id=chunk_id,
            token_ids=tensors["tokens"].tolist(),
            keys=[tensors[f"k.{layer}"] for layer in range(n_layers)],
            values=[tensors[f"v.{layer}"] for layer in range(n_layers)],
            fingerprint=fingerprint,
            prefix_ids=meta["prefix_ids"],
            exact=meta["exact"],
            inter=tensors.get("inter"),
            intra=tensors.get("intra"),
            outside=tensors.get("outside"),
        )
    except (KeyError, ValueError) as e:
        raise CorruptRecordError(f"inconsistent record ({e})") from e


def read_tokens(path: Path, fingerprint: str, chunk_id: str, variant: str) -> list[int]:
    """Only the token ids of the record at ``path`` (header and token checksum verified, K/V left unread):
    what indexing a store's chunks for matching inside prompts needs."""
    with _checked_file(path, fingerprint, chunk_id, variant) as (f, _meta, digests):
        return _load(f, "tokens", digests).tolist()


def read_layers(
    path: Path, fingerprint: str, chunk_id: str, variant: str, layers: Sequence[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Load and verify only the (K, V) of ``layers``, in the order given; other layers stay unread."""
    with _checked_file(path, fingerprint, chunk_id, variant) as (f, meta, digests):
        n_layers = int(meta["n_layers"])
        out = []
        for layer in layers:
            if not 0 <= layer < n_layers:
                raise IndexError(f"layer {layer} out of range: record has {n_layers} layers")
            out.append((_load(f, f"k.{layer}", digests), _load(f, f"v.{layer}", digests)))
        return out


def verify_file(path: Path, fingerprint: str) -> None:
    """Fully verify the file at ``path``, taking the chunk id and variant from where it lies in the store."""
    read_record(path, fingerprint, chunk_id=path.parent.name, variant=path.name.removesuffix(".safetensors"))


@contextmanager
def _checked_file(
    path: Path, fingerprint: str, chunk_id: str, variant: str
) -> Iterator[tuple[Any, dict[str, Any], dict[str, str]]]:
    """Open ``path`` and verify its header; yield (open file, parsed metadata, tensor digests)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            meta = _check_header(raw, set(f.keys()), fingerprint, chunk_id, variant)
            yield f, meta, json.loads(raw["digests"])
    except CorruptRecordError as e:
        raise CorruptRecordError(f"{path}: {e}") from e
    except IndexError:
        raise  # a caller asking for a layer the record lacks: a usage error, not corruption
    except _PARSE_ERRORS as e:
        raise CorruptRecordError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _check_header(
    raw: dict[str, str], names: set[str], fingerprint: str, chunk_id: str, variant: str
) -> dict[str, Any]:
    if raw.get("format") != FORMAT or raw.get("format_version") not in _READABLE_VERSIONS:
        raise CorruptRecordError(f"format {raw.get('format')!r} version {raw.get('format_version')!r}")
    if raw.get("fingerprint") != fingerprint:
        raise CorruptRecordError(f"fingerprint {raw.get('fingerprint')!r} is not this store's {fingerprint!r}")
    if raw.get("chunk_id") != chunk_id:
        raise CorruptRecordError(f"holds chunk {raw.get('chunk_id')!r}, expected {chunk_id!r}")
    prefix_ids = json.loads(raw["prefix_ids"])
    if not isinstance(prefix_ids, list) or variant_name(prefix_ids) != variant:
        raise CorruptRecordError(f"prefix {prefix_ids!r} is not variant {variant!r}")
    exact = None  # version 1: ChunkRecord's default
    if raw["format_version"] != "1":
        if raw.get("exact") not in ("0", "1"):
            raise CorruptRecordError(f"exact flag {raw.get('exact')!r} is not '0' or '1'")
        exact = raw["exact"] == "1"
    n_layers = int(raw["n_layers"])
    kv_names = {f"{kind}.{layer}" for kind in "kv" for layer in range(n_layers)}
    if not kv_names | {"tokens"} <= names <= kv_names | {"tokens", *_STATS}:
        raise CorruptRecordError(f"tensors {sorted(names)} do not make a {n_layers}-layer record")
    digests = json.loads(raw["digests"])
    if not isinstance(digests, dict) or set(digests) != names or checksum(digests) != raw.get("checksum"):
        raise CorruptRecordError("checksum or tensor list does not match the header")
    return {"n_layers": n_layers, "prefix_ids": prefix_ids, "exact": exact}


def _load(f: Any, name: str, digests: dict[str, str]) -> torch.Tensor:
    tensor = f.get_tensor(name)
    if tensor_digest(name, tensor) != digests[name]:
        raise CorruptRecordError(f"tensor {name!r} does not match its checksum")
    return tensor
