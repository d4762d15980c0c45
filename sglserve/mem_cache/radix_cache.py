"""RadixCache: a radix tree over token ids whose nodes own the KV slots of their tokens.

Every node holds whole pages: keys are matched, split and inserted page by page, so a
node's slots free back to the allocator as complete pages. Children are keyed by their
first page (a tuple of page_size ids; the bare id when page_size == 1).

LRU time is a counter bumped once per match/insert (reproducible, unlike a clock). An
operation stamps exactly the nodes whose every token it covered; when it stops inside a
node the node is split first, so the untouched remainder keeps its older time.

cache_salt (vLLM's and SGLang's request field): each salt has a tree of its own, a root in
`salt_roots` (made on its first insert, dropped when eviction empties it), so requests with
different salts never share a prefix and one tenant cannot learn another's prompts from
cache-hit timing. Unsalted requests use `root_node` exactly as before. A root is a node
without a parent; it holds no tokens.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from sglserve.mem_cache.base_prefix_cache import BasePrefixCache, MatchResult

if TYPE_CHECKING:
    from sglserve.mem_cache.memory_pool import PagedTokenToKVPoolAllocator, ReqToTokenPool

ChildKey = Union[int, Tuple[int, ...]]


class TreeNode:
    """One edge of the radix tree: `key` tokens whose KV lives in `value` slots."""

    __slots__ = ("id", "children", "parent", "key", "value", "lock_ref", "last_access")

    def __init__(
        self,
        node_id: int,
        key: Optional[List[int]] = None,
        value: Optional[torch.Tensor] = None,
        parent: Optional["TreeNode"] = None,
        last_access: int = 0,
    ) -> None:
        self.id = node_id  # creation order: breaks LRU ties deterministically
        self.children: Dict[ChildKey, TreeNode] = {}
        self.parent = parent
        self.key: List[int] = key if key is not None else []
        self.value: Optional[torch.Tensor] = value
        self.lock_ref = 0
        self.last_access = last_access

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref}, last_access={self.last_access})"


class RadixCache(BasePrefixCache):
    """Prefix cache with LRU eviction of unlocked leaves; see BasePrefixCache for the contract."""

    def __init__(
        self,
        req_to_token_pool: "ReqToTokenPool",
        token_to_kv_pool_allocator: "PagedTokenToKVPoolAllocator",
        page_size: int,
        disable: bool = False,
    ) -> None:
        super().__init__(req_to_token_pool, token_to_kv_pool_allocator, page_size)
        self.disable = disable
        self.reset()

    def reset(self) -> None:
        self._node_ids = itertools.count()
        self._clock = 0
        self.root_node = TreeNode(next(self._node_ids))
        self.root_node.value = self._empty_indices()
        self.salt_roots: Dict[str, TreeNode] = {}
        self._evictable = 0
        self._protected = 0

    # ---- key helpers --------------------------------------------------------------
    def _child_key(self, key: List[int]) -> ChildKey:
        return key[0] if self.page_size == 1 else tuple(key[: self.page_size])

    def _match_len(self, a: List[int], b: List[int]) -> int:
        """Common prefix length of a and b in whole pages (both are page-aligned)."""
        n = min(len(a), len(b))
        if a[:n] == b[:n]:
            return self._floor_page(n)
        ps, i = self.page_size, 0
        if ps == 1:
            while a[i] == b[i]:
                i += 1
            return i
        while a[i : i + ps] == b[i : i + ps]:
            i += ps
        return i

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _split(self, child: TreeNode, split_len: int) -> TreeNode:
        """Cut `child` after split_len tokens; returns the new upper node (same lock state)."""
        parent = child.parent
        upper = TreeNode(next(self._node_ids), child.key[:split_len], child.value[:split_len], parent, child.last_access)
        upper.lock_ref = child.lock_ref
        child.key, child.value = child.key[split_len:], child.value[split_len:]
        child.parent = upper
        upper.children[self._child_key(child.key)] = child
        parent.children[self._child_key(upper.key)] = upper
        return upper

    # ---- lookup and storage -------------------------------------------------------
    def _root(self, salt: Optional[str], create: bool = False) -> Optional[TreeNode]:
        """The tree of `salt` (None: the shared tree); None when that salt has no tree yet."""
        if salt is None:
            return self.root_node
        root = self.salt_roots.get(salt)
        if root is None and create:
            root = self.salt_roots[salt] = TreeNode(next(self._node_ids), value=self._empty_indices())
        return root

    def match_prefix(self, key: List[int], salt: Optional[str] = None) -> MatchResult:
        """Longest cached page-aligned prefix of key (in salt's tree); splits the last node at the match end."""
        tick = self._tick()
        key = list(key[: self._floor_page(len(key))])
        root = self._root(salt)
        if self.disable or not key or root is None:
            return MatchResult(self._empty_indices(), self.root_node)
        node, values = root, []
        for node, _ in self._walk(key, tick, root):
            values.append(node.value)
        indices = torch.cat(values) if values else self._empty_indices()
        return MatchResult(indices, node)

    def _walk(self, key: List[int], tick: int, root: TreeNode) -> Iterator[Tuple[TreeNode, int]]:
        """Follow `key` down from `root`, splitting a node it only partly matches, so every node
        yielded is matched whole; yields (node, tokens of key it covers) and stamps it as used."""
        node = root
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                return
            plen = self._match_len(child.key, key)
            if plen < len(child.key):
                child = self._split(child, plen)
            child.last_access = tick
            yield child, plen
            node, key = child, key[plen:]

    def insert(self, key: List[int], value: torch.Tensor, salt: Optional[str] = None) -> int:
        """Add key -> value; returns the already-cached prefix length (caller frees those slots).

        A disabled cache stores nothing: it frees `value` right away and returns 0.
        """
        if len(key) != len(value):
            raise ValueError(f"insert: {len(key)} tokens but {len(value)} slots")
        if len(key) % self.page_size:
            raise ValueError(f"insert: key length {len(key)} is not a multiple of page_size {self.page_size}")
        if self.disable:
            self.token_to_kv_pool_allocator.free(value)
            return 0
        return self._insert(key, value, salt)[0]

    def _insert(self, key: List[int], value: torch.Tensor, salt: Optional[str]) -> Tuple[int, TreeNode]:
        """insert's work; also returns the node that ends key (a root when key is empty)."""
        tick = self._tick()
        key, value = list(key), value.to(torch.int64)
        node, prefix_len = self._root(salt, create=bool(key)) or self.root_node, 0
        for node, plen in self._walk(key, tick, node):
            prefix_len += plen
        key, value = key[prefix_len:], value[prefix_len:]
        if key:
            leaf = TreeNode(next(self._node_ids), key, value.clone(), node, tick)
            node.children[self._child_key(key)] = leaf
            self._evictable += len(key)
            node = leaf
        return prefix_len, node

    def evict(self, num_tokens: int) -> None:
        """Free LRU unlocked leaves (parents cascade in as they empty) until num_tokens are freed."""
        if self.disable or num_tokens <= 0:
            return
        heap = [(n.last_access, n.id, n) for n in self._nodes() if not n.children and n.lock_ref == 0]
        heapq.heapify(heap)
        freed, released = 0, []
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            released.append(node.value)
            freed += len(node.key)
            parent = node.parent
            del parent.children[self._child_key(node.key)]
            self._evictable -= len(node.key)
            if parent.parent is not None and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, parent.id, parent))
        if self.salt_roots:  # a salt whose tree emptied leaves no root behind
            self.salt_roots = {s: r for s, r in self.salt_roots.items() if r.children}
        if released:  # one free call: one device-to-host copy however many leaves went
            self.token_to_kv_pool_allocator.free(torch.cat(released))

    # ---- locks --------------------------------------------------------------------
    def inc_lock_ref(self, node: Optional[TreeNode]) -> int:
        """Lock root..node; returns the (negative) change of evictable_size()."""
        delta = 0
        while node is not None and node.parent is not None:  # roots (no parent) are never locked
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
                delta -= len(node.key)
            node.lock_ref += 1
            node = node.parent
        return delta

    def dec_lock_ref(self, node: Optional[TreeNode]) -> int:
        """Unlock root..node; returns the (positive) change of evictable_size()."""
        if node is not None and node.parent is not None and node.lock_ref <= 0:
            raise RuntimeError(f"dec_lock_ref on unlocked node {node!r}")
        delta = 0
        while node is not None and node.parent is not None:
            if node.lock_ref == 1:
                self._evictable += len(node.key)
                self._protected -= len(node.key)
                delta += len(node.key)
            node.lock_ref -= 1
            node = node.parent
        return delta

    # ---- requests -----------------------------------------------------------------
    def cache_finished_req(self, req: Any, is_insert: bool = True) -> None:
        """Insert the request's page-aligned KV, free duplicates and tail, free its row, unlock."""
        alloc = self.token_to_kv_pool_allocator
        token_ids = self._finished_token_ids(req)
        kv = self._row_slots(req, len(token_ids))
        # Slots before old_len are the tree's; a partial page after it is the request's own.
        old_len = self._floor_page(len(req.prefix_indices))
        if self.disable:
            alloc.free(kv)
        elif is_insert:
            aligned = self._floor_page(len(token_ids))
            new_len = self.insert(token_ids[:aligned], kv[:aligned], getattr(req, "cache_salt", None))
            alloc.free(kv[old_len:new_len])
            alloc.free(kv[aligned:])
        else:
            alloc.free(kv[old_len:])
        self.req_to_token_pool.free(req.req_pool_idx)
        self.dec_lock_ref(req.last_node)

    def cache_unfinished_req(self, req: Any) -> None:
        """Cache fill_ids' whole pages; req keeps the tree's slots plus its partial-page tail."""
        token_ids = list(req.fill_ids)
        kv = self._row_slots(req, len(token_ids))
        if self.disable:
            req.prefix_indices = kv
            return
        aligned = self._floor_page(len(token_ids))
        old_len = self._floor_page(len(req.prefix_indices))
        salt = getattr(req, "cache_salt", None)
        new_len, new_node = self._insert(token_ids[:aligned], kv[:aligned], salt)
        if new_len == old_len and aligned:
            # Nothing was cached twice (the usual case): the tree now holds exactly the row's slots,
            # so the re-match below would find kv[:aligned] and rewrite the row with it. Only its
            # LRU stamp is left to do (per prefill step, 128 requests: that match cost ~5 ms).
            self._stamp_path(new_node)
            req.prefix_indices = kv
        else:
            self.token_to_kv_pool_allocator.free(kv[old_len:new_len])
            new_indices, new_node = self.match_prefix(token_ids[:aligned], salt)
            if len(new_indices) != aligned:
                raise RuntimeError(f"cache_unfinished_req: re-match found {len(new_indices)} of {aligned} tokens")
            # Duplicated pages were just freed: point the row at the tree's copies instead.
            self.req_to_token_pool.write_row(req.req_pool_idx, old_len, new_indices[old_len:])
            req.prefix_indices = torch.cat([new_indices, kv[aligned:].to(new_indices.device)])
        self.inc_lock_ref(new_node)
        self.dec_lock_ref(req.last_node)
        req.last_node = new_node

    def _stamp_path(self, node: TreeNode) -> None:
        """Stamp root..node as used now: what match_prefix of their whole key does."""
        tick = self._tick()
        while node.parent is not None:
            node.last_access = tick
            node = node.parent

    # ---- accounting and debugging -------------------------------------------------
    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        return sum(len(n.key) for n in self._nodes())

    def _nodes(self) -> Iterator[TreeNode]:
        """Every node except the roots, parents before children."""
        stack = list(self.root_node.children.values())
        for root in self.salt_roots.values():
            stack.extend(root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def pretty_print(self) -> str:
        lines = [f"RadixCache(page_size={self.page_size}, total={self.total_size()}, "
                 f"evictable={self._evictable}, protected={self._protected})"]

        def walk(node: TreeNode, depth: int) -> None:
            for child in sorted(node.children.values(), key=lambda c: c.id):
                head = child.key[:8]
                more = f"...(+{len(child.key) - 8})" if len(child.key) > 8 else ""
                lines.append(f"{'  ' * depth}{head}{more} slots={child.value[:8].tolist()} "
                             f"lock={child.lock_ref} t={child.last_access}")
                walk(child, depth + 1)

        walk(self.root_node, 1)
        for salt, root in self.salt_roots.items():
            lines.append(f"  salt {salt!r}:")
            walk(root, 2)
        text = "\n".join(lines)
        print(text)
        return text

    def check_integrity(self, outstanding_tokens: Optional[int] = None) -> None:
        """Structure (links, page-whole slots, lock order, counters) plus the base accounting check."""
        ps, evictable, protected, values = self.page_size, 0, 0, []
        for node in self._nodes():
            where = f"node {node.id} key={node.key[:8]}"
            if not node.key or len(node.key) % ps or len(node.value) != len(node.key):
                raise RuntimeError(f"{where}: {len(node.key)} tokens, {len(node.value)} slots, page_size {ps}")
            if node.parent.children.get(self._child_key(node.key)) is not node:
                raise RuntimeError(f"{where}: not linked from its parent under its first page")
            if node.lock_ref < 0 or (node.parent.parent is not None and node.lock_ref > node.parent.lock_ref):
                raise RuntimeError(f"{where}: lock_ref {node.lock_ref} vs parent {node.parent.lock_ref}")
            values.append(node.value)
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
        if (evictable, protected) != (self._evictable, self._protected):
            raise RuntimeError(f"counters evictable={self._evictable} protected={self._protected}, "
                               f"tree has {evictable} and {protected}")
        if values:  # one copy to the host for all slots
            pages = torch.cat(values).cpu().view(-1, ps)
            first = pages[:, 0]
            if bool((first % ps != 0).any()) or not torch.equal(pages - first[:, None], torch.arange(ps).expand_as(pages)):
                raise RuntimeError("tree slots are not whole pages")
            ids = (first // ps).numpy()
            alloc = self.token_to_kv_pool_allocator
            if ids.min() < 1 or ids.max() > alloc.num_pages:
                raise RuntimeError(f"tree page ids {ids.min()}..{ids.max()} outside 1..{alloc.num_pages}")
            if (np.bincount(ids) > 1).any():
                raise RuntimeError("a page is owned by two tree nodes")
            is_free = np.zeros(alloc.num_pages + 1, dtype=bool)
            is_free[alloc.free_page_ids()] = True
            if is_free[ids].any():
                raise RuntimeError(f"tree pages are free in the allocator: {ids[is_free[ids]][:5].tolist()}")
        super().check_integrity(outstanding_tokens)
