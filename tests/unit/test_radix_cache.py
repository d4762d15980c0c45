"""RadixCache and ChunkCache: hand-made cases, a random run against a brute-force model,
and request-level caching (finished, aborted, chunked) on real pools with leak checks."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch

from sglserve.mem_cache.chunk_cache import ChunkCache
from sglserve.mem_cache.memory_pool import PagedTokenToKVPoolAllocator, ReqToTokenPool
from sglserve.mem_cache.radix_cache import RadixCache, TreeNode


def make(ps: int, pages: int = 256, cls: Any = RadixCache, **kw: Any):
    alloc = PagedTokenToKVPoolAllocator(pages * ps, ps, "cpu")
    req_pool = ReqToTokenPool(8, 256, "cpu")
    return cls(req_pool, alloc, ps, **kw), alloc


def put(cache: RadixCache, key: List[int]) -> Tuple[int, torch.Tensor]:
    """Insert key with fresh slots, freeing the duplicates as a caller must."""
    slots = cache.token_to_kv_pool_allocator.alloc(len(key))
    n = cache.insert(key, slots)
    cache.token_to_kv_pool_allocator.free(slots[:n])
    return n, slots


def tree_nodes(cache: RadixCache) -> List[Tuple[TreeNode, Tuple[int, ...]]]:
    """(node, full token path from the root) for every node, by walking the public links."""
    out, stack = [], [(c, ()) for c in cache.root_node.children.values()]
    while stack:
        node, above = stack.pop()
        path = above + tuple(node.key)
        out.append((node, path))
        stack.extend((c, path) for c in node.children.values())
    return out


# ---------------------------------------------------------------- hand-made cases
def test_insert_match_split_page1() -> None:
    cache, alloc = make(1)
    assert put(cache, [1, 2, 3])[0] == 0
    n, s2 = put(cache, [1, 2, 4, 5])
    assert n == 2 and cache.total_size() == 5
    m = cache.match_prefix([1, 2, 3, 9])
    assert len(m.device_indices) == 3 and m.last_node.key == [3]
    assert m.last_node.parent.key == [1, 2]  # split at the divergence
    assert sorted(cache.root_node.children) == [1]
    assert torch.equal(cache.match_prefix([1, 2, 4, 5]).device_indices[2:], s2[2:])
    miss = cache.match_prefix([9, 1])
    assert len(miss.device_indices) == 0 and miss.last_node is cache.root_node
    assert len(cache.match_prefix([]).device_indices) == 0
    cache.check_integrity(0)


def test_match_splits_inside_a_node() -> None:
    cache, _ = make(1)
    _, slots = put(cache, [1, 2, 3, 4, 5, 6])
    m = cache.match_prefix([1, 2, 3, 7])
    assert torch.equal(m.device_indices, slots[:3])
    assert m.last_node.key == [1, 2, 3] and [c.key for c in m.last_node.children.values()] == [[4, 5, 6]]
    m.device_indices[0] = -5  # the result is a copy: the tree must not change
    assert torch.equal(cache.match_prefix([1, 2, 3, 4, 5, 6]).device_indices, slots)
    cache.check_integrity(0)


def test_page_aligned_matching_page4() -> None:
    cache, _ = make(4)
    key = list(range(10, 22))  # 3 pages
    _, slots = put(cache, key)
    assert list(cache.root_node.children) == [(10, 11, 12, 13)]
    assert len(cache.match_prefix(key[:3]).device_indices) == 0  # shorter than a page
    assert torch.equal(cache.match_prefix(key[:7]).device_indices, slots[:4])
    assert torch.equal(cache.match_prefix(key[:6] + [99, 99]).device_indices, slots[:4])
    assert torch.equal(cache.match_prefix(key + [1, 2]).device_indices, slots)
    n, _ = put(cache, key[:8] + [5, 5, 5, 5])
    assert n == 8 and cache.total_size() == 16
    with pytest.raises(ValueError, match="multiple of page_size"):
        cache.insert(key[:6], slots[:6])
    with pytest.raises(ValueError):
        cache.insert(key[:4], slots[:8])
    cache.check_integrity(0)


@pytest.mark.parametrize("ps", [1, 4])
def test_evict_lru_order_and_stop(ps: int) -> None:
    cache, alloc = make(ps)
    a, b, c = [[t] * (2 * ps) for t in (1, 2, 3)]
    for k in (a, b, c):
        put(cache, k)
    cache.match_prefix(a)  # a is now the most recent, b the least
    free0 = alloc.available_size()
    cache.evict(1)  # one leaf is enough
    assert alloc.available_size() == free0 + 2 * ps
    assert len(cache.match_prefix(b).device_indices) == 0
    assert len(cache.match_prefix(c).device_indices) == 2 * ps
    cache.evict(1)  # c was just matched after a: a goes next
    assert len(cache.match_prefix(a).device_indices) == 0 and cache.total_size() == 2 * ps
    cache.check_integrity(0)


def test_evict_cascades_to_parents() -> None:
    cache, alloc = make(1)
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])
    put(cache, [7])
    cache.match_prefix([7])
    cache.evict(4)  # leaves [3], [4], then their parent [1, 2]: 4 tokens
    assert cache.total_size() == 1 and len(cache.match_prefix([7]).device_indices) == 1
    cache.evict(10**6)
    assert cache.total_size() == 0 and alloc.available_size() == alloc.size
    cache.check_integrity(0)


def test_locks_protect_and_count() -> None:
    cache, alloc = make(1)
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4, 5])
    node = cache.match_prefix([1, 2, 4, 5]).last_node
    assert cache.inc_lock_ref(node) == -4 and cache.inc_lock_ref(node) == 0
    assert (cache.evictable_size(), cache.protected_size()) == (1, 4)
    other = cache.match_prefix([1, 2, 3]).last_node
    assert cache.inc_lock_ref(other) == -1  # [1, 2] was already locked
    assert cache.dec_lock_ref(other) == 1
    cache.evict(100)
    assert cache.total_size() == 4 and cache.evictable_size() == 0
    cache.check_integrity(0)
    with pytest.raises(RuntimeError, match="lock leak"):
        cache.check_idle()
    assert cache.dec_lock_ref(node) == 0 and cache.dec_lock_ref(node) == 4
    with pytest.raises(RuntimeError, match="unlocked"):
        cache.dec_lock_ref(node)
    assert cache.inc_lock_ref(cache.root_node) == 0 and cache.dec_lock_ref(None) == 0
    cache.evict(100)
    assert alloc.available_size() == alloc.size
    cache.check_integrity(0)


def test_split_of_locked_node_keeps_it_locked() -> None:
    cache, _ = make(1)
    put(cache, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(node)
    put(cache, [1, 2, 9])  # splits the locked node into [1, 2] + [3, 4]
    assert node.key == [3, 4] and node.parent.lock_ref == 1
    assert (cache.evictable_size(), cache.protected_size()) == (1, 4)
    cache.evict(100)
    assert cache.total_size() == 4
    assert cache.dec_lock_ref(node) == 4 and cache.evictable_size() == 4
    cache.check_integrity(0)


def test_integrity_check_finds_leaks_and_reset() -> None:
    cache, alloc = make(4)
    put(cache, list(range(8)))
    lost = alloc.alloc(4)
    with pytest.raises(RuntimeError, match="leak"):
        cache.check_integrity(0)
    cache.check_integrity(4)
    alloc.free(lost)
    cache.check_integrity(0)
    assert "[0, 1, 2, 3, 4, 5, 6, 7]" in cache.pretty_print()
    node = cache.match_prefix(list(range(8))).last_node
    alloc.free(node.value[:4])  # freed behind the tree's back
    with pytest.raises(RuntimeError, match="free"):
        cache.check_integrity()
    cache.reset()
    assert cache.total_size() == 0 and cache.evictable_size() == 0
    assert len(cache.match_prefix(list(range(8))).device_indices) == 0


def test_disabled_cache_stores_nothing() -> None:
    cache, alloc = make(1, disable=True)
    assert put(cache, [1, 2, 3])[0] == 0
    assert len(cache.match_prefix([1, 2, 3]).device_indices) == 0
    assert cache.total_size() == 0 and alloc.available_size() == alloc.size


# ------------------------------------------------- random operations vs. a model
class Model:
    """Brute force: a dict from every cached page-aligned prefix to its page's slots."""

    def __init__(self, ps: int) -> None:
        self.ps = ps
        self.slots: Dict[Tuple[int, ...], torch.Tensor] = {}
        self.time: Dict[Tuple[int, ...], int] = {}  # last op that covered the prefix
        self.clock = 0
        self.locks: List[Tuple[Tuple[int, ...], Any]] = []

    def prefixes(self, key: List[int]) -> List[Tuple[int, ...]]:
        return [tuple(key[:i]) for i in range(self.ps, len(key) + 1, self.ps)]

    def match_len(self, key: List[int]) -> int:
        n = 0
        for p in self.prefixes(key):
            if p not in self.slots:
                break
            n += self.ps
        return n

    def touch(self, key: List[int], n: int) -> None:
        self.clock += 1
        for p in self.prefixes(key[:n]):
            self.time[p] = self.clock

    def locked(self) -> Dict[Tuple[int, ...], int]:
        count: Dict[Tuple[int, ...], int] = {}
        for path, _ in self.locks:
            for p in self.prefixes(list(path)):
                count[p] = count.get(p, 0) + 1
        return count


def expected_eviction(cache: RadixCache, model: Model, num_tokens: int) -> set:
    """Replay LRU leaf eviction on the tree's current node boundaries with the model's
    times and locks; returns the prefixes that must disappear."""
    nodes = tree_nodes(cache)
    locked = model.locked()
    n_children = {path: len(node.children) for node, path in nodes}
    info = {path: (node, model.time[path]) for node, path in nodes}
    heap = [(t, path) for path, (node, t) in info.items() if not node.children and path not in locked]
    heapq.heapify(heap)
    freed, gone = 0, set()
    while freed < num_tokens and heap:
        t, path = heapq.heappop(heap)
        assert not heap or heap[0][0] != t, "ambiguous LRU tie"
        node = info[path][0]
        freed += len(node.key)
        gone.update(model.prefixes(list(path))[-(len(node.key) // model.ps) :])
        parent = path[: len(path) - len(node.key)]
        if parent:
            n_children[parent] -= 1
            if n_children[parent] == 0 and parent not in locked:
                heapq.heappush(heap, (info[parent][1], parent))
    return gone


def check_against_model(cache: RadixCache, alloc: PagedTokenToKVPoolAllocator, model: Model) -> None:
    ps, locked = model.ps, model.locked()
    seen: Dict[Tuple[int, ...], torch.Tensor] = {}
    for node, path in tree_nodes(cache):
        pages = model.prefixes(list(path))[-(len(node.key) // ps) :]
        for i, p in enumerate(pages):
            seen[p] = node.value[i * ps : (i + 1) * ps]
            assert model.time[p] == node.last_access, f"LRU time of {p}"
        assert node.lock_ref == locked.get(path, 0), f"lock_ref of {path}"
    assert seen.keys() == model.slots.keys()
    assert all(torch.equal(seen[p], model.slots[p]) for p in seen)
    assert cache.total_size() == ps * len(model.slots)
    assert cache.protected_size() == ps * len(locked)
    assert cache.evictable_size() + cache.protected_size() == cache.total_size()
    cache.check_integrity(0)  # free + cached == total: every slot is free or in the tree


@pytest.mark.parametrize("ps", [1, 2, 4])
@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_model(ps: int, seed: int) -> None:
    rng = random.Random(seed * 31 + ps)
    cache, alloc = make(ps, pages=4096)
    model = Model(ps)
    inserted: List[List[int]] = []

    def rand_key(aligned: bool) -> List[int]:
        if inserted and rng.random() < 0.5:  # extend or cut a known key: shares prefixes
            base = rng.choice(inserted)[: rng.randint(0, 4 * ps)]
        else:
            base = []
        key = base + [rng.randint(0, 2) for _ in range(rng.randint(0, 4 * ps))]
        return key[: len(key) - len(key) % ps] if aligned else key

    def match(key: List[int]) -> Any:
        n = model.match_len(key)
        res = cache.match_prefix(key)
        want = [model.slots[p] for p in model.prefixes(key[:n])]
        assert torch.equal(res.device_indices, torch.cat(want) if want else torch.empty(0, dtype=torch.int64))
        model.touch(key, n)
        return res.last_node, tuple(key[:n])

    for step in range(400):
        op = rng.random()
        if op < 0.35:
            key = rand_key(aligned=True)
            want = model.match_len(key)
            n, slots = put(cache, key)
            assert n == want
            for i, p in enumerate(model.prefixes(key)):
                model.slots.setdefault(p, slots[i * ps : (i + 1) * ps])
            model.touch(key, len(key))
            inserted.append(key)
        elif op < 0.6:
            match(rand_key(aligned=False))
        elif op < 0.75:
            before = len(model.locked())
            node, path = match(rand_key(aligned=False))
            model.locks.append((path, node))
            assert cache.inc_lock_ref(node) == -ps * (len(model.locked()) - before)
        elif op < 0.87 and model.locks:
            before = len(model.locked())
            _, node = model.locks.pop(rng.randrange(len(model.locks)))
            assert cache.dec_lock_ref(node) == ps * (before - len(model.locked()))
        else:
            num = rng.randint(1, cache.total_size() + ps)
            gone = expected_eviction(cache, model, num)
            free0 = alloc.available_size()
            cache.evict(num)
            assert alloc.available_size() - free0 == ps * len(gone)
            for p in gone:
                del model.slots[p]
        check_against_model(cache, alloc, model)
    for _, node in model.locks:
        cache.dec_lock_ref(node)
    cache.evict(10**9)
    assert alloc.available_size() == alloc.size and cache.total_size() == 0


# ------------------------------------------------------- request-level caching
@dataclass
class FakeReq:
    origin_input_ids: List[int]
    output_ids: List[int] = field(default_factory=list)
    fill_ids: List[int] = field(default_factory=list)
    req_pool_idx: Optional[int] = None
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_node: Any = None
    kv_len: int = 0  # the driver's bookkeeping: positions of the row that have KV


class Driver:
    """The scheduler's side reduced to what the cache sees: match+lock, allocate, compute, release."""

    def __init__(self, cache: Any) -> None:
        self.cache, self.alloc = cache, cache.token_to_kv_pool_allocator
        self.table = cache.req_to_token_pool.req_to_token
        self.active: List[FakeReq] = []

    def admit(self, req: FakeReq) -> None:
        req.prefix_indices, req.last_node = self.cache.match_prefix((req.origin_input_ids + req.output_ids)[:-1])
        self.cache.inc_lock_ref(req.last_node)
        req.req_pool_idx = self.cache.req_to_token_pool.alloc(1)[0]
        req.kv_len = len(req.prefix_indices)
        self.table[req.req_pool_idx, : req.kv_len] = req.prefix_indices.to(torch.int32)
        self.active.append(req)
        self.check()

    def compute(self, req: FakeReq, upto: int) -> None:
        """KV for positions kv_len..upto-1 (a prefill chunk or one decode step)."""
        last = int(self.table[req.req_pool_idx, req.kv_len - 1]) if req.kv_len else -1
        new = self.alloc.alloc_extend([req.kv_len], [upto], [last])
        self.table[req.req_pool_idx, req.kv_len : upto] = new.to(torch.int32)
        req.kv_len = upto
        req.fill_ids = (req.origin_input_ids + req.output_ids)[:upto]

    def chunk(self, req: FakeReq, upto: int) -> None:
        self.compute(req, upto)
        self.cache.cache_unfinished_req(req)
        assert torch.equal(req.prefix_indices, self.table[req.req_pool_idx, :upto].long())
        self.check()

    def run_to_end(self, req: FakeReq, outputs: List[int], is_insert: bool = True) -> None:
        """Finish the prefill, sample `outputs` (a decode step before each but the first), release."""
        if req.kv_len < len(req.origin_input_ids):
            self.compute(req, len(req.origin_input_ids))
        for i, tok in enumerate(outputs):
            if i:
                self.compute(req, req.kv_len + 1)
            req.output_ids.append(tok)
        self.finish(req, is_insert)

    def finish(self, req: FakeReq, is_insert: bool = True) -> None:
        rows_free = self.cache.req_to_token_pool.available_size()
        self.cache.cache_finished_req(req, is_insert=is_insert)
        assert self.cache.req_to_token_pool.available_size() == rows_free + 1
        self.active.remove(req)
        self.check()

    def check(self) -> None:
        """free + cached + pages only active requests hold == total, and idle means clean."""
        ps, tree, held = self.alloc.page_size, set(), set()
        if isinstance(self.cache, RadixCache):
            for node, _ in tree_nodes(self.cache):
                tree |= set((node.value // ps).tolist())
        for r in self.active:
            held |= set((self.table[r.req_pool_idx, : r.kv_len].long() // ps).tolist())
        assert not held & set(self.alloc.free_pages), "a request points at a free page"
        self.cache.check_integrity(ps * len(held - tree))
        if not self.active:
            self.cache.check_idle()


def new_cache(kind: str, ps: int) -> Any:
    return {"radix": lambda: make(ps)[0], "chunk": lambda: make(ps, cls=ChunkCache)[0],
            "radix_disabled": lambda: make(ps, disable=True)[0]}[kind]()


@pytest.mark.parametrize("ps", [1, 4])
def test_finished_request_is_cached_and_reused(ps: int) -> None:
    d = Driver(make(ps)[0])
    prompt = list(range(100, 110))
    r1 = FakeReq(prompt)
    d.admit(r1)
    d.run_to_end(r1, [7, 8, 9])  # KV exists for prompt + [7, 8]
    assert d.cache.total_size() == 12 // ps * ps
    cached = d.cache.match_prefix(prompt + [7, 8]).device_indices
    r2 = FakeReq(prompt + [7, 5])
    d.admit(r2)
    assert len(r2.prefix_indices) == 11 // ps * ps and d.cache.protected_size() == len(r2.prefix_indices)
    assert torch.equal(r2.prefix_indices, cached[: len(r2.prefix_indices)])
    d.run_to_end(r2, [1, 2])
    assert d.cache.total_size() == 12 // ps * ps + 13 // ps * ps - 11 // ps * ps


@pytest.mark.parametrize("ps", [1, 4])
def test_identical_concurrent_requests_free_their_duplicates(ps: int) -> None:
    d = Driver(make(ps)[0])
    prompt = [5] * 13
    r1, r2 = FakeReq(prompt), FakeReq(list(prompt))
    d.admit(r1)
    d.admit(r2)
    d.compute(r1, 13)
    d.compute(r2, 13)
    d.run_to_end(r1, [1, 2])
    d.run_to_end(r2, [1, 3])  # the same 14 tokens with KV: all duplicates
    assert d.cache.total_size() == 14 // ps * ps


@pytest.mark.parametrize("ps", [1, 4])
def test_abort_frees_without_inserting(ps: int) -> None:
    d = Driver(make(ps)[0])
    d.admit(r0 := FakeReq(list(range(9))))
    d.run_to_end(r0, [50])
    total = d.cache.total_size()
    r1 = FakeReq(list(range(9)) + [60, 61, 62])
    d.admit(r1)
    d.run_to_end(r1, [70, 71], is_insert=False)
    r2 = FakeReq(list(range(200, 220)))  # aborted in the middle of a chunked prefill
    d.admit(r2)
    d.chunk(r2, 6)
    d.finish(r2, is_insert=False)
    assert d.cache.total_size() == total + 6 // ps * ps  # only what the chunk cached stays


@pytest.mark.parametrize("kind", ["radix", "chunk", "radix_disabled"])
@pytest.mark.parametrize("ps", [1, 4])
def test_chunked_prefill_then_finish(kind: str, ps: int) -> None:
    d = Driver(new_cache(kind, ps))
    r = FakeReq(list(range(300, 323)))
    d.admit(r)
    for upto in (7, 14):
        d.chunk(r, upto)
        if kind == "radix":
            assert d.cache.protected_size() == upto // ps * ps == d.cache.total_size()
    d.run_to_end(r, [1, 2, 3])
    if kind == "radix":
        assert d.cache.total_size() == 25 // ps * ps
    else:
        assert d.cache.total_size() == 0 and d.alloc.available_size() == d.alloc.size


@pytest.mark.parametrize("ps", [1, 4])
def test_chunked_prefill_meets_a_duplicate(ps: int) -> None:
    """Another request caches the chunked request's next tokens first: the chunked one
    must free its copies (incl. its partial page) and point its row at the tree's."""
    d = Driver(make(ps)[0])
    prompt = list(range(400, 420))
    r1, r2 = FakeReq(prompt), FakeReq(list(prompt))
    d.admit(r1)
    d.chunk(r1, 6)
    d.admit(r2)
    d.run_to_end(r2, [9])
    d.chunk(r1, 14)
    tree = d.cache.match_prefix(prompt[:14]).device_indices
    assert torch.equal(d.table[r1.req_pool_idx, : len(tree)].long(), tree)
    d.run_to_end(r1, [5, 6])
    assert d.cache.total_size() == 21 // ps * ps


@pytest.mark.parametrize("ps", [1, 4])
def test_running_request_prefix_survives_eviction(ps: int) -> None:
    d = Driver(make(ps)[0])
    d.admit(r0 := FakeReq(list(range(12))))
    d.run_to_end(r0, [1])
    d.admit(r1 := FakeReq(list(range(8)) + [99] * 4))
    d.cache.evict(10**6)
    assert d.cache.total_size() == len(r1.prefix_indices) == 8
    d.run_to_end(r1, [2])
    d.cache.evict(10**6)
    assert d.alloc.available_size() == d.alloc.size


def test_chunk_cache_caches_nothing() -> None:
    cache, alloc = make(4, cls=ChunkCache)
    m = cache.match_prefix(list(range(8)))
    assert len(m.device_indices) == 0 and m.last_node is None
    assert cache.inc_lock_ref(None) == 0 and cache.dec_lock_ref(None) == 0
    assert cache.insert(list(range(8)), alloc.alloc(8)) == 0 and alloc.available_size() == alloc.size
    cache.evict(100)
    assert (cache.evictable_size(), cache.protected_size(), cache.total_size()) == (0, 0, 0)
    assert "ChunkCache" in cache.pretty_print()
    cache.check_idle()
