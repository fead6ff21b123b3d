"""A request's K/V workspace: every cached record copied into the request's buffers and rotated into place.

A partial prefill (engine/executor.py) reads the cached K/V of every position it does not compute. Before
its first layer, each record's pre-RoPE keys and its values are copied into per-request buffers
[layers, Hkv, L (+ decode reserve), D] at the record's span — one copy per record (``ChunkRecord.block``)
— and all keys are rotated to their positions in this prompt, one fused pass per run of layers that share
a RoPE table. For a long context this placement moves more bytes than the plan computes (a 32K-token
context on a Llama-3-8B shape is 4 GiB of K/V), so a request does it once: the question probe
(engine/probe.py) and the plan then run over the same workspace.

Records in pinned host memory (the host tier) are streamed in layer group by layer group on a side CUDA
stream, each group rotated there as soon as it lands, while the first layers already compute: a pass waits
(``wait``) only for the group of the layer it is about to read, so the copy hides behind compute (DESIGN
section 4, layer-wise loading; LMCache and CacheBlend pipeline the same way). Elsewhere every record is
placed before the first layer.

Sharing is exact when every position a pass overwrote is recomputed by each later pass at every layer, so
no later pass reads a probe's K/V as if cached; ``claim`` and ``check_kept`` enforce it (the question is
always in a plan). Records are never written: the buffers are copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chunkcache.engine.prompt import Layout
from chunkcache.kv.record import ChunkRecord
from chunkcache.models.base import CausalLM, Placement
from chunkcache.models.rope import RotaryTables, rope_rows


@dataclass
class Workspace:
    """See module docstring."""

    k_pre: torch.Tensor  # [layers, Hkv, L, D], keys before RoPE
    values: torch.Tensor  # [layers, Hkv, L + reserve, D]
    k_rot: torch.Tensor  # [layers, Hkv, L + reserve, D], keys rotated to their positions
    rotary: RotaryTables
    place: torch.Tensor | None  # RoPE position of every token on the device (None: simply 0..L-1)
    n_pos: int  # positions the prompt spans (its last RoPE position + 1)
    sources: tuple  # the prefix record and chunk records it was filled from
    written: torch.Tensor  # host positions some pass computed (their K/V are no longer the records')
    _inherited: torch.Tensor | None = None
    events: list | None = None  # per layer: the CUDA event its streamed records landed on (None: all placed)

    @classmethod
    def build(cls, model: CausalLM, length: int, layout: Layout, prefix: ChunkRecord | None,
              records: list[ChunkRecord | None], placement: Placement | None, reserve: int) -> "Workspace":
        """Buffers for a prompt of ``length`` tokens laid out as ``layout`` (and ``placement``), filled from
        ``prefix`` and ``records`` (None: a chunk the plan computes), with ``reserve`` decode slots."""
        s = model.shape
        dev, dt = model.device, model.dtype
        n_pos = length if placement is None else int(placement.positions.max()) + 1
        if n_pos > s.max_positions:
            raise ValueError(f"prompt of {n_pos} positions exceeds the model's window of {s.max_positions}")
        rotary = model.rotary(max(length, n_pos) + reserve)
        place = _positions(placement, length, dev)
        k_pre = torch.zeros(s.n_layers, s.n_kv_heads, length, s.head_dim, device=dev, dtype=dt)
        values = torch.zeros(s.n_layers, s.n_kv_heads, length + reserve, s.head_dim, device=dev, dtype=dt)
        k_rot = torch.empty_like(values)
        sources = [(span, rec) for span, rec in [(layout.prefix, prefix)] + list(zip(layout.chunks, records))
                   if rec is not None]
        kinds = [model.layer_type(i) for i in range(s.n_layers)]
        streamed = dev.type == "cuda" and any(rec.keys[0].device.type == "cpu" for _, rec in sources)
        events = _stream_in(k_pre, values, k_rot, sources, kinds, rotary, place, length) if streamed else None
        if not streamed:
            _place(k_pre, values, k_rot, sources, kinds, rotary, place, length, range(s.n_layers))
        return cls(k_pre, values, k_rot, rotary, place, n_pos, (prefix, *records),
                   torch.zeros(0, dtype=torch.long), events=events)

    def wait(self, layer: int) -> None:
        """Make the current stream wait until ``layer``'s records are placed (a no-op once waited for, and
        when nothing streams)."""
        if self.events is not None and self.events[layer] is not None:
            torch.cuda.current_stream(self.k_pre.device).wait_event(self.events[layer])
            for i in range(layer, len(self.events)):  # the rest of its group landed with it
                if self.events[i] is not self.events[layer]:
                    break
                self.events[i] = None

    def serves(self, prefix: ChunkRecord | None, records: list[ChunkRecord | None],
               placement: Placement | None, capacity: int) -> bool:
        """Whether a pass reading ``prefix`` and ``records`` under ``placement`` with ``capacity`` slots can
        use this workspace: the same record objects, the same RoPE positions, room enough."""
        same_records = len(self.sources) == len(records) + 1 and all(
            a is b for a, b in zip(self.sources, (prefix, *records)))
        length = self.k_pre.shape[2]
        place = _positions(placement, length, self.k_pre.device)
        same_place = self.place is None if place is None else self.place is not None and torch.equal(place, self.place)
        return same_records and same_place and self.values.shape[2] >= capacity

    def claim(self, positions: torch.Tensor) -> None:
        """A pass that computes ``positions`` (host, its first layer's set) starts: it must recompute every
        position an earlier pass wrote."""
        if self.written.numel() and not bool(torch.isin(self.written, positions).all()):
            raise ValueError("a pass over a shared workspace must recompute every position an earlier pass wrote")
        self._inherited = self.written
        self.written = torch.unique(torch.cat([self.written, positions]))

    def check_kept(self, positions: torch.Tensor) -> None:
        """The pass shrinks to ``positions`` (host): it must keep computing what earlier passes wrote."""
        if self._inherited is not None and self._inherited.numel() and \
                not bool(torch.isin(self._inherited, positions).all()):
            raise ValueError("a plan over a shared workspace dropped a position an earlier pass wrote")


LOAD_GROUP = 4  # layers streamed in per copy batch: enough to keep the copy engine busy, few launches


def _place(k_pre: torch.Tensor, values: torch.Tensor, k_rot: torch.Tensor, sources: list, kinds: list,
           rotary: RotaryTables, place: torch.Tensor | None, length: int, layers: range) -> None:
    """Copy ``layers`` of every (span, record) in ``sources`` into the buffers and rotate their keys."""
    a, b = layers.start, layers.stop
    moved: dict[int, torch.Tensor] = {}  # whole records' layers already on the device: parts of one cross once
    for span, rec in sources:  # from pinned host memory these copies are asynchronous
        for which, buf in (("k", k_pre), ("v", values)):
            dst, src = buf[a:b, :, span.start:span.end], rec.block(which)[a:b]
            if src.device != dst.device and not src.is_contiguous():  # a part of a record (ChunkRecord.whole_block)
                whole, tokens = rec.whole_block(which, slice(a, b))
                if whole.data_ptr() not in moved:
                    moved[whole.data_ptr()] = whole.to(device=dst.device, dtype=dst.dtype, non_blocking=True)
                src = moved[whole.data_ptr()][:, :, tokens]
            dst.copy_(src, non_blocking=True)
    for start, end in _runs(kinds[a:b]):
        cos, sin = rotary.get(kinds[a + start])
        rope_rows(k_pre[a + start:a + end], cos, sin, place, out=k_rot[a + start:a + end, :, :length])


def _stream_in(k_pre: torch.Tensor, values: torch.Tensor, k_rot: torch.Tensor, sources: list, kinds: list,
               rotary: RotaryTables, place: torch.Tensor | None, length: int) -> list:
    """Place the records group by group on a side stream; return each layer's landing event."""
    for kind in set(kinds):
        rotary.get(kind)  # RoPE tables made on the main stream, before the side stream reads them
    main = torch.cuda.current_stream(k_pre.device)
    side = _copy_stream(k_pre.device)
    side.wait_stream(main)  # the buffers' zero-fill and the RoPE tables come first
    for buf in (k_pre, values, k_rot):
        buf.record_stream(side)  # freed by the main stream, reused only after the side stream is done
    events = []
    with torch.cuda.stream(side):
        for a in range(0, len(kinds), LOAD_GROUP):
            b = min(a + LOAD_GROUP, len(kinds))
            _place(k_pre, values, k_rot, sources, kinds, rotary, place, length, range(a, b))
            event = torch.cuda.Event()
            event.record(side)
            events += [event] * (b - a)
    return events


_COPY_STREAMS: dict = {}


def _copy_stream(device: torch.device):
    """One side stream per device for streaming records in (created on first use)."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


def _positions(placement: Placement | None, length: int, device: torch.device) -> torch.Tensor | None:
    """The RoPE position of every token on ``device``, or None where they are simply 0..length-1."""
    if placement is None or torch.equal(placement.positions, torch.arange(length)):
        return None
    return placement.positions.to(device)


def _runs(kinds: list[str | None]) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of consecutive layers that share a layer type (one RoPE table each)."""
    runs: list[tuple[int, int]] = []
    for i, kind in enumerate(kinds):
        if runs and kinds[runs[-1][0]] == kind:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
