"""PagedTokenToKVPoolAllocator and ReqToTokenPool: pages, partial-page fill, OOM, double free."""

from __future__ import annotations

import random
from typing import List

import pytest
import torch

from sglserve.mem_cache.memory_pool import MHATokenToKVPool, PagedTokenToKVPoolAllocator, ReqToTokenPool

PAGE_SIZES = [1, 4, 16]


def pages_of(slots: torch.Tensor, ps: int) -> List[int]:
    return sorted(set((slots // ps).tolist()))


def snapshot(a: PagedTokenToKVPoolAllocator):
    return list(a.free_pages), a.available_size()


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_alloc_gives_whole_fresh_pages(ps: int) -> None:
    a = PagedTokenToKVPoolAllocator(64 * ps, ps, "cpu")
    assert a.size == 64 * ps and a.available_size() == 64 * ps
    n = 2 * ps + 3 if ps > 1 else 5
    slots = a.alloc(n)
    assert slots.dtype == torch.int64 and len(slots) == n
    n_pages = -(-n // ps)
    assert a.available_size() == (64 - n_pages) * ps
    pages = pages_of(slots, ps)
    assert len(pages) == n_pages and 0 not in pages
    # Every page starts at offset 0 and is filled in order
    first_of_page = (slots[::ps] // ps).tolist()
    assert slots.tolist() == [first_of_page[i // ps] * ps + i % ps for i in range(n)]
    assert len(set(slots.tolist())) == n
    assert int(slots.max()) < (a.num_pages + 1) * ps


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_alloc_zero_and_size_rounding(ps: int) -> None:
    a = PagedTokenToKVPoolAllocator(10 * ps + ps - 1, ps, "cpu")
    assert a.size == 10 * ps and a.num_pages == 10
    assert len(a.alloc(0)) == 0 and a.available_size() == a.size


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_page_zero_never_returned_until_exhausted(ps: int) -> None:
    a = PagedTokenToKVPoolAllocator(8 * ps, ps, "cpu")
    seen = []
    for _ in range(8):
        slots = a.alloc(1)
        assert slots is not None
        seen += pages_of(slots, ps)
    assert sorted(seen) == list(range(1, 9))
    assert a.available_size() == 0
    assert a.alloc(1) is None
    assert a.alloc_extend([0], [1], [-1]) is None


@pytest.mark.parametrize("ps", [4, 16])
def test_alloc_extend_fills_partial_page_from_last_loc(ps: int) -> None:
    a = PagedTokenToKVPoolAllocator(32 * ps, ps, "cpu")
    prefix = a.alloc(ps + 2)  # one full page and 2 slots of a second page
    free_before = a.available_size()
    new = a.alloc_extend([ps + 2], [3 * ps + 1], [int(prefix[-1])])
    assert len(new) == 2 * ps - 1
    # ps - 2 slots complete the partial page, then one full page, then one slot of another
    partial = int(prefix[-1]) // ps
    fill = ps - 2
    assert new[:fill].tolist() == list(range(int(prefix[-1]) + 1, (partial + 1) * ps))
    rest_pages = pages_of(new[fill:], ps)
    assert len(rest_pages) == 2 and partial not in rest_pages and 0 not in rest_pages
    assert a.available_size() == free_before - 2 * ps
    # Page-aligned prefix: last_loc is ignored, fresh pages only
    new2 = a.alloc_extend([ps], [ps + 1], [12345])
    assert int(new2[0]) % ps == 0 and a.available_size() == free_before - 3 * ps


@pytest.mark.parametrize("ps", [4, 16])
def test_alloc_extend_within_one_page_takes_no_page(ps: int) -> None:
    a = PagedTokenToKVPoolAllocator(8 * ps, ps, "cpu")
    prefix = a.alloc(1)
    before = snapshot(a)
    new = a.alloc_extend([1], [ps], [int(prefix[0])])
    assert new.tolist() == list(range(int(prefix[0]) + 1, int(prefix[0]) + ps))
    assert snapshot(a) == before


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_alloc_extend_batch(ps: int) -> None:
    """Several requests at once: each one's slots are its own, in position order."""
    a = PagedTokenToKVPoolAllocator(64 * ps, ps, "cpu")
    rng = random.Random(ps)
    prefix_lens = [0, 1, ps, 2 * ps + 1, 3]
    seq_lens = [p + rng.randint(1, 3 * ps) for p in prefix_lens]
    prefixes = [a.alloc(p) if p else torch.empty(0, dtype=torch.int64) for p in prefix_lens]
    last_locs = [int(x[-1]) if len(x) else -1 for x in prefixes]
    out = a.alloc_extend(prefix_lens, seq_lens, last_locs)
    assert len(out) == sum(s - p for p, s in zip(prefix_lens, seq_lens))
    offset, owner = 0, {}  # type: int, Dict[int, int]
    for i, (p, s, pre) in enumerate(zip(prefix_lens, seq_lens, prefixes)):
        full = torch.cat([pre, out[offset : offset + s - p]])
        offset += s - p
        for pos, slot in enumerate(full.tolist()):
            assert slot % ps == pos % ps, "position and slot disagree on the offset in the page"
            assert owner.setdefault(slot // ps, i) == i, "a page has two owners"
    assert 0 not in owner
    assert a.available_size() + len(owner) * ps == a.size


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_out_of_memory_has_no_side_effects(ps: int) -> None:
    a = PagedTokenToKVPoolAllocator(4 * ps, ps, "cpu")
    a.alloc(2 * ps)
    before = snapshot(a)
    assert a.alloc(2 * ps + 1) is None
    assert a.alloc_extend([0, 0], [ps, 2 * ps], [-1, -1]) is None
    assert snapshot(a) == before
    assert a.alloc(2 * ps) is not None and a.available_size() == 0


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_double_free_raises_without_side_effects(ps: int) -> None:
    a = PagedTokenToKVPoolAllocator(8 * ps, ps, "cpu")
    x, y = a.alloc(ps), a.alloc(ps)
    a.free(x)
    before = snapshot(a)
    with pytest.raises(RuntimeError, match="double free"):
        a.free(x)
    with pytest.raises(RuntimeError):
        a.free(torch.cat([y, x]))  # y is valid, x is not: y must stay allocated
    assert snapshot(a) == before
    a.free(y)
    assert a.available_size() == a.size


@pytest.mark.parametrize("ps", PAGE_SIZES)
@pytest.mark.parametrize("bad", ["zero", "negative", "past_end"])
def test_free_rejects_reserved_and_out_of_range_pages(ps: int, bad: str) -> None:
    a = PagedTokenToKVPoolAllocator(4 * ps, ps, "cpu")
    a.alloc(4 * ps)
    slot = {"zero": 0, "negative": -1, "past_end": (a.num_pages + 1) * ps}[bad]
    with pytest.raises(RuntimeError):
        a.free(torch.tensor([slot]))
    assert a.available_size() == 0 and a.alloc(1) is None


@pytest.mark.parametrize("ps", [4, 16])
def test_free_is_per_page(ps: int) -> None:
    """Freeing any slot of a page frees the whole page (pages have one owner)."""
    a = PagedTokenToKVPoolAllocator(4 * ps, ps, "cpu")
    x = a.alloc(ps)
    a.free(x[1:2])
    assert a.available_size() == a.size
    a.free(torch.empty(0, dtype=torch.int64))
    assert a.available_size() == a.size


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_random_alloc_free_accounting(ps: int) -> None:
    """free + allocated == total after every step; no page is handed out twice."""
    a = PagedTokenToKVPoolAllocator(32 * ps, ps, "cpu")
    rng = random.Random(1000 + ps)
    held: List[torch.Tensor] = []  # one entry per owner: its slots
    for _ in range(300):
        if held and rng.random() < 0.45:
            a.free(held.pop(rng.randrange(len(held))))
        elif held and rng.random() < 0.3:
            i = rng.randrange(len(held))  # extend an owner, continuing its last page
            n = len(held[i])
            new = a.alloc_extend([n], [n + rng.randint(1, 2 * ps)], [int(held[i][-1])])
            if new is not None:
                held[i] = torch.cat([held[i], new])
        else:
            before = snapshot(a)
            slots = a.alloc(rng.randint(1, 5 * ps))
            if slots is None:
                assert snapshot(a) == before
            else:
                held.append(slots)
        owned = [p for h in held for p in pages_of(h, ps)]
        assert len(owned) == len(set(owned)), "page owned twice"
        assert 0 not in owned and not set(owned) & set(a.free_pages)
        assert a.available_size() + len(owned) * ps == a.size
    for h in held:
        a.free(h)
    assert sorted(a.free_pages) == list(range(1, a.num_pages + 1))


def test_clear_restores_every_page() -> None:
    a = PagedTokenToKVPoolAllocator(64, 4, "cpu")
    a.alloc(30)
    a.clear()
    assert a.available_size() == 64 and sorted(a.free_pages) == list(range(1, 17))


@pytest.mark.parametrize("ps", [1, 16])
def test_kv_buffer_holds_the_highest_slot(ps: int) -> None:
    size = 8 * ps
    pool = MHATokenToKVPool(size, ps, torch.float32, head_num=2, head_dim=4, layer_num=1, device="cpu")
    a = PagedTokenToKVPoolAllocator(size, ps, "cpu")
    top = int(a.alloc(size).max())
    k = torch.ones(1, 2, 4)
    pool.set_kv_buffer(0, torch.tensor([top]), k, 2 * k)
    assert pool.get_key_buffer(0)[top].sum() == 8 and pool.get_value_buffer(0)[top].sum() == 16


def test_req_to_token_pool_rows() -> None:
    pool = ReqToTokenPool(3, 16, "cpu")
    rows = pool.alloc(2)
    assert rows == [0, 1] and pool.available_size() == 1
    assert pool.alloc(2) is None and pool.available_size() == 1
    pool.free(rows[0])
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(rows[0])
    with pytest.raises(RuntimeError):
        pool.free([rows[1], rows[1]])  # duplicate in one call
    with pytest.raises(RuntimeError):
        pool.free(7)
    pool.free([rows[1]])
    assert pool.available_size() == 3
    pool.alloc(3)
    pool.clear()
    assert pool.available_size() == 3


def test_free_page_ids_is_the_free_list_read_only() -> None:
    """The idle check reads the free pages as an array view: the same pages as free_pages, in
    the same order, and writing through it must fail (it is the allocator's own stack)."""
    import numpy as np

    alloc = PagedTokenToKVPoolAllocator(64, 4, "cpu")
    taken = alloc.alloc(10)
    alloc.free(taken[:4])
    ids = alloc.free_page_ids()
    assert ids.tolist() == alloc.free_pages and ids.dtype == np.int64
    with pytest.raises(ValueError):
        ids[0] = 0
    alloc.alloc(4)  # the allocator still writes its stack after a view was handed out
    assert alloc.free_page_ids().tolist() == alloc.free_pages
