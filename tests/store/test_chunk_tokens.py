"""Listing stored chunks' tokens (what the serving engine indexes to find chunks in plain prompts), and
slicing a record to the part of a chunk a prompt holds."""

from __future__ import annotations

import pytest
import torch

from chunkcache.store import MemoryTier, TieredStore
from store_helpers import build_record, flip_byte, tensor_span


def test_every_tier_lists_each_chunk_once_with_its_tokens(disk):
    a, a2, b, c = build_record(1), build_record(1, prefix_ids=("x",)), build_record(2), build_record(3)
    mem = MemoryTier(1 << 20)
    store = TieredStore([mem, disk])
    for r in (a, a2, b):
        store.put(r)
    mem.put(c)  # only in the fast tier
    want = {r.chunk_id: r.token_ids for r in (a, b)}
    assert dict(disk.chunk_tokens()) == want
    listed = list(store.chunk_tokens())
    assert len(listed) == 3 and dict(listed) == {**want, c.chunk_id: c.token_ids}


def test_a_corrupt_file_is_dropped_not_listed(disk):
    a, b = build_record(1, tokens=8), build_record(2, tokens=8)
    disk.put(a)
    disk.put(b)
    path = disk.path(b.chunk_id)
    start, _ = tensor_span(path, "tokens")
    flip_byte(path, start)
    assert dict(disk.chunk_tokens()) == {a.chunk_id: a.token_ids}
    assert not path.exists()


def test_slice_keeps_the_matching_part_and_exactness_only_from_the_start():
    rec = build_record(4, tokens=10, exact=True, dtype=torch.float32)
    head, mid = rec.slice(0, 6), rec.slice(3, 9)
    assert head.token_ids == rec.token_ids[:6] and head.exact
    assert mid.token_ids == rec.token_ids[3:9] and not mid.exact
    assert torch.equal(mid.keys[1], rec.keys[1][:, 3:9]) and torch.equal(mid.values[2], rec.values[2][:, 3:9])
    assert torch.equal(mid.outside, rec.outside[3:9])
    assert rec.slice(0, 10) is rec
    with pytest.raises(ValueError, match="outside"):
        rec.slice(5, 11)
    # a part names its whole record's block and where it lies there, also for a part of a part
    for part, first in ((mid, 3), (mid.slice(2, 5), 5), (rec, 0)):
        for which in ("k", "v"):
            whole, tokens = part.whole_block(which, slice(1, 3))
            assert whole.is_contiguous() and (tokens.start, tokens.stop) == (first, first + part.n_tokens)
            assert torch.equal(whole[:, :, tokens], part.block(which)[1:3])
