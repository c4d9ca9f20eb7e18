"""HBM KV blocks of one instance and its prefix cache (vLLM V1 semantics), indexed by runs.

A block is either private to a request (partly filled, or generated tokens) or cached under
its chain key. Cached blocks nobody uses sit in an LRU queue and are evicted, oldest first,
only when a fresh block is needed. Counting is enough: the simulator never needs to know
which physical block holds what, only how many are in use and which keys are resident.

Chain keys name a block and its whole prefix, so the cached keys form a tree. The index is
a radix tree (after SGLang's radix cache, python/sglang/srt/mem_cache/radix_cache.py): a
node is a run of consecutive keys that share their fate (resident or not, the same
holders, one place in the LRU), children are found by their first key, and every
operation works per run, never per block. The order of evictions is vLLM V1's block for
block (vllm/v1/core/block_pool.py, kv_cache_utils.py FreeKVCacheBlockQueue): a released
request's blocks join the LRU deepest first, a hit takes blocks out of it wherever they
are, eviction takes the oldest; a run splits where only part of it changes. A run stays
in the tree after its blocks are evicted while deeper runs are still resident (two
requests prefilling the same prefix: one caches the head, the other the tail).

A request holds its cached blocks as depth ranges of its own keys, `runs`: node
boundaries always fall on those ranges' ends, so releasing a request walks its path once.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any


class OutOfBlocks(Exception):
    pass


class Node:
    """A run of consecutive chain keys starting at `depth` (blocks from the prompt's start)."""

    __slots__ = ("keys", "first", "depth", "parent", "children", "ref", "cached", "prev", "next")

    def __init__(self, keys: Sequence[int], depth: int, parent: Node | None, ref: int = 0, cached: bool = False):
        self.keys = keys
        # its first key, kept beside keys: the tree's links are by first key, and reading one
        # out of an int64 array from compiled code makes a new int (about 300 instructions)
        self.first: int = keys[0] if len(keys) else -1
        self.depth = depth
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.ref = ref  # requests holding every block of the run
        self.cached = cached  # resident in HBM (else a placeholder on the way to resident runs)
        self.prev: Node | None = None  # neighbours in the LRU (None: not in it)
        self.next: Node | None = None

    def __repr__(self) -> str:
        return f"Node(depth={self.depth}, n={len(self.keys)}, ref={self.ref}, cached={self.cached})"


def _split(node: Node, k: int, keep_bottom: bool, link: bool = True) -> Node:
    """Cut `node` after its first k keys. Returns the new node: the top part if keep_bottom
    (node stays the deeper part), else the bottom. In the LRU the two stay where the run
    was, the deeper part first (unless not `link`: the caller evicts the new part)."""
    keys = node.keys
    if keep_bottom:
        new = top = Node(keys[:k], node.depth, node.parent, node.ref, node.cached)
        node.parent.children[node.first] = top  # type: ignore
        node.keys = keys[k:]
        node.first = node.keys[0]
        node.depth += k
        node.parent = top
        top.children[node.first] = node
        if link and node.prev is not None:  # top goes right after node
            nxt = node.next
            top.prev, top.next = node, nxt
            node.next = nxt.prev = top  # type: ignore
        return top
    new = bottom = Node(keys[k:], node.depth + k, node, node.ref, node.cached)
    bottom.children = node.children
    for child in bottom.children.values():
        child.parent = bottom
    node.keys = keys[:k]
    node.children = {bottom.first: bottom}
    if link and node.prev is not None:  # bottom goes right before node
        prv = node.prev
        bottom.prev, bottom.next = prv, node
        prv.next = node.prev = bottom
    return new


def common_prefix_len(a: Sequence[int], b, start: int, n: int) -> int:
    """How many leading keys of a run (at most n) equal b[start:], given a[0] == b[start].
    A chain key names its whole prefix, so two paths agree up to a depth exactly when their
    keys there are equal: one comparison for a run that matches, a bisection where it ends."""
    if a[n - 1] == b[start + n - 1]:
        return n
    lo, hi = 1, n  # a[lo - 1] matches, a[hi - 1] does not
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if a[mid - 1] == b[start + mid - 1]:
            lo = mid
        else:
            hi = mid
    return lo


def walk_start(index, root, hint, names, target: int) -> tuple[Any, int]:
    """Where a walk down `names` toward depth `target` may begin: (parent, depth) of `hint`,
    the (index, run) a request's last walk reached, if that run is still in this index's
    tree, on this path (a chain key names its whole prefix) and at or above `target`; else
    (root, 0). The runs above it lie wholly on the path before `target`, so a walk that
    changes or reports nothing above `target` may skip them."""
    if hint is not None and hint[0] is index:
        node = hint[1]
        parent, d = node.parent, node.depth
        if (parent is not None and d <= target and d < len(names) and names[d] == node.first
                and parent.children.get(node.first) is node):
            return parent, d
    return root, 0


class BlockPool:
    def __init__(self, num_blocks: int, caching: bool = True):
        if num_blocks <= 0:
            raise ValueError("an instance needs at least one KV block")
        self.num_blocks = num_blocks
        self.caching = caching
        self.in_use = 0  # blocks held by requests (cached-and-referenced plus private)
        self.root = Node([], 0, None, cached=True)
        # unreferenced cached runs, a circular list through this sentinel; head.next = next evicted
        self._lru = head = Node([], 0, None)
        head.prev = head.next = head
        self.lru_blocks = 0  # blocks in those runs
        self.cached = 0  # cached blocks, held or not
        self.evictions = 0
        self.promotions = 0
        # Blocked requests and how many leading blocks their last lookup found resident: an
        # eviction inside that prefix or a promotion of the block after it drops the watch.
        self._watchers: dict = {}

    # -- queries ---------------------------------------------------------------------
    @property
    def free(self) -> int:
        """Blocks a request could get now (empty plus evictable)."""
        return self.num_blocks - self.in_use

    @property
    def empty(self) -> int:
        """Blocks holding nothing (free without evicting)."""
        return self.num_blocks - self.in_use - self.lru_blocks

    def match_prefix(self, keys, limit: int, start: int = 0) -> int:
        """How many leading keys (at most `limit`) are resident. (`start`: kept for callers
        that know a resident prefix; the walk is per run, so it starts at the root.)"""
        if not self.caching or limit <= 0:
            return 0
        node, d = self.root, 0
        children = node.children
        while d < limit:
            child = children.get(keys[d])
            if child is None or not child.cached:
                return d
            n = min(len(child.keys), limit - d)
            m = common_prefix_len(child.keys, keys, d, n)
            d += m
            if m < len(child.keys):
                return d
            children = child.children
        return d

    def _path(self, keys, end: int):
        """The nodes along keys[:end], which must all be in the tree, with node boundaries
        at `end`; yields (node, depth)."""
        node, d = self.root, 0
        while d < end:
            node = node.children[keys[d]]
            yield node
            d += len(node.keys)

    def _cut(self, keys, end: int, keep_bottom: bool) -> None:
        """Make a node boundary at depth `end` on the path of keys (resident up to `end`)."""
        node, d = self.root, 0
        while d < end:
            node = node.children[keys[d]]
            nd = d + len(node.keys)
            if nd > end:
                _split(node, end - d, keep_bottom)
                return
            d = nd

    def count_unreferenced(self, keys, n: int | None = None) -> int:
        """Of the resident keys keys[:n], how many nobody holds (taking them costs free blocks)."""
        if n is None:
            n = len(keys)
        if not self.lru_blocks or n <= 0:
            return 0
        node, d, total = self.root, 0, 0
        while d < n:
            node = node.children[keys[d]]
            m = min(len(node.keys), n - d)
            if not node.ref:
                total += m
            d += m
        return total

    def evictable_sparing(self, keys, n: int, enough: int) -> int:
        """How many LRU blocks can be evicted, oldest first, before one of the resident
        blocks keys[:n] would go (counting stops once `enough` is reached)."""
        head = self._lru
        # (in the LRU's circle prev and next are never None: declared Node, read unchecked)
        node: Node = head.next  # type: ignore[assignment]
        total = 0
        while node is not head and total < enough:
            d, m = node.depth, len(node.keys)
            if d < n and keys[d] == node.first:  # part of that prefix: only its blocks past n
                return total + max(0, d + m - n)
            total += m
            node = node.next  # type: ignore[assignment]
        return total

    # -- blocked requests --------------------------------------------------------------
    def watch(self, req, resident: int) -> None:
        """`req` (chain keys `req.keys`) could not be admitted with its first `resident`
        blocks cached here: watch for an eviction among them or a promotion of the next."""
        self._watchers[req] = resident

    def unwatch(self, req) -> None:
        self._watchers.pop(req, None)

    def watching(self, req) -> bool:
        """Is `req` still watched, i.e. its cached prefix unchanged since it blocked?"""
        return req in self._watchers

    def watched(self) -> list:
        return list(self._watchers)

    def _wake_evicted(self, depth: int, key: int) -> None:
        for req, n in list(self._watchers.items()):
            if depth < n and req.keys[depth] == key:
                del self._watchers[req]

    def _wake_promoted(self, keys, runs) -> None:
        for req, n in list(self._watchers.items()):
            if n < len(req.keys) and any(a <= n < b for a, b in runs) and req.keys[n] == keys[n]:
                del self._watchers[req]

    # -- changes ---------------------------------------------------------------------
    def acquire_cached(self, keys, n: int | None = None) -> list[tuple[int, int]]:
        """Take references on the resident blocks keys[:n] (a prefix hit). Returns the runs
        now held: [(0, n)] (nothing if n is 0)."""
        if n is None:
            n = len(keys)
        if n <= 0:
            return []
        self._cut(keys, n, keep_bottom=True)  # the deeper part keeps its LRU place
        taken = 0
        for node in self._path(keys, n):
            if not node.ref:
                prv, nxt = node.prev, node.next  # AttributeError: the caller skipped match_prefix
                prv.next, nxt.prev = nxt, prv
                node.prev = node.next = None
                taken += len(node.keys)
            node.ref += 1
        self.lru_blocks -= taken
        self.in_use += taken
        return [(0, n)]

    def allocate(self, n: int) -> None:
        """Take n fresh private blocks, evicting unreferenced cached blocks if needed."""
        if n <= 0:
            return
        if n > self.num_blocks - self.in_use:
            raise OutOfBlocks(n)
        evict = n - (self.num_blocks - self.in_use - self.lru_blocks)
        if evict > 0:
            self._evict(evict)
        self.in_use += n

    def _evict(self, count: int) -> None:
        """Evict `count` blocks from the old end of the LRU, a run's deepest blocks first."""
        head = self._lru
        self.evictions += count
        self.lru_blocks -= count
        self.cached -= count
        while count:
            node: Node = head.next  # type: ignore[assignment]
            n = len(node.keys)
            if n > count:  # its deepest `count` go; node keeps its place with the rest
                gone = _split(node, n - count, keep_bottom=False, link=False)
                if self._watchers:
                    self._wake_evicted(gone.depth, gone.first)
                self._drop(gone)
                return
            nxt: Node = node.next  # type: ignore[assignment]
            head.next, nxt.prev = nxt, head
            node.prev = node.next = None
            if self._watchers:
                self._wake_evicted(node.depth, node.first)
            self._drop(node)
            count -= n

    def _drop(self, node: Node) -> None:
        """A run's blocks are gone from HBM; prune placeholders nothing resident hangs from."""
        node.cached = False
        while not node.children and not node.cached and node.parent is not None:
            parent = node.parent
            del parent.children[node.first]
            node.parent = None
            node = parent

    def promote(self, keys, first: int, end: int, owner=None) -> list[tuple[int, int]]:
        """Private blocks keys[first:end] became full: cache them, held by their request.
        Returns the runs cached; a key already cached by someone else stays private, as in
        vLLM. owner: the request (its pool_hint, the run its last promotion reached, lets
        the walk skip the runs above, which lie wholly on its path before `first`)."""
        if not self.caching or first >= end:
            return []
        new: list[tuple[int, int]] = []
        parent: Node
        parent, d = walk_start(self, self.root, owner.pool_hint if owner is not None else None, keys, first)
        while d < end:
            child = parent.children.get(keys[d])
            if child is None:
                # the rest of the path is new: a placeholder up to `first`, then the run
                if d < first:
                    child = Node(keys[d:first], d, parent)
                    parent.children[keys[d]] = child
                    parent, d = child, first
                run = Node(keys[d:end], d, parent, ref=1, cached=True)
                parent.children[keys[d]] = run
                new.append((d, end))
                if owner is not None:
                    owner.pool_hint = (self, run)
                break
            n = len(child.keys)
            m = common_prefix_len(child.keys, keys, d, min(n, end - d))
            if m < n and (d + m < end or (not child.cached and d + m > first)):
                _split(child, m, keep_bottom=False)  # the path leaves this run, or caches only its head
            if not child.cached and d + m > first:
                lo = max(d, first)
                if lo > d:
                    child = _split(child, lo - d, keep_bottom=False)
                child.cached, child.ref = True, 1
                if new and new[-1][1] == lo:
                    new[-1] = (new[-1][0], d + m)
                else:
                    new.append((lo, d + m))
            parent, d = child, d + m
            if owner is not None:
                owner.pool_hint = (self, child)
        got = sum(e - s for s, e in new)
        self.cached += got
        self.promotions += got
        if self._watchers and new:
            self._wake_promoted(keys, new)
        return new

    def release(self, keys, runs: list[tuple[int, int]], private: int) -> None:
        """Return a request's blocks; deepest first, so its tail is evicted before its head."""
        if runs:
            nodes: list[Node] = []
            it = iter(runs)
            lo, hi = next(it)
            for node in self._path(keys, runs[-1][1]):
                if node.depth >= hi:
                    lo, hi = next(it)
                if node.depth >= lo:
                    nodes.append(node)
            head, unheld = self._lru, 0
            for node in reversed(nodes):
                node.ref -= 1
                if not node.ref:  # joins the young end of the LRU
                    tail: Node = head.prev  # type: ignore[assignment]
                    node.prev, node.next = tail, head
                    tail.next = head.prev = node
                    unheld += len(node.keys)
            self.lru_blocks += unheld
            private += unheld
        self.in_use -= private
        if self.in_use < 0:
            raise AssertionError("block accounting went negative")

    def clear_cache(self) -> None:
        """Drop every unreferenced cached block (an engine restart empties HBM)."""
        if self.lru_blocks:
            self._evict(self.lru_blocks)

    # -- views for tests and checks (walk everything) ------------------------------------
    def nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def lru_nodes(self):
        head = self._lru
        node = head.next
        while node is not head:
            yield node
            node = node.next

    @property
    def lru(self) -> list[int]:
        """Unreferenced cached keys, next evicted first."""
        return list(chain.from_iterable(reversed(node.keys) for node in self.lru_nodes()))

    @property
    def refcount(self) -> dict[int, int]:
        """Held cached keys and how many requests hold each."""
        return {k: node.ref for node in self.nodes() if node.ref for k in node.keys}

    @property
    def resident(self) -> set[int]:
        return {k for node in self.nodes() if node.cached for k in node.keys}

    def contains(self, key: int) -> bool:
        return key in self.resident

    def check(self) -> None:
        if not (0 <= self.in_use <= self.num_blocks):
            raise AssertionError(f"in_use={self.in_use} outside [0, {self.num_blocks}]")
        if self.in_use + self.lru_blocks > self.num_blocks:
            raise AssertionError("more blocks resident than exist")
        in_lru = set()
        prev = self._lru
        for node in self.lru_nodes():
            if node.prev is not prev or node in in_lru:
                raise AssertionError(f"the LRU's links are broken at {node!r}")
            in_lru.add(node)
            prev = node
        cached = lru = 0
        for node in self.nodes():
            if node.ref < 0 or (node.ref and not node.cached) or not node.keys:
                raise AssertionError(f"bad run {node!r}")
            if node.first != node.keys[0] or node.parent.children.get(node.first) is not node or (
                    node.depth != node.parent.depth + len(node.parent.keys)):
                raise AssertionError(f"run {node!r} out of place in the tree")
            if node.cached:
                cached += len(node.keys)
                if not node.ref:
                    lru += len(node.keys)
                    if node not in in_lru:
                        raise AssertionError(f"unreferenced cached run {node!r} missing from the LRU")
            elif not node.children:
                raise AssertionError(f"placeholder run {node!r} with nothing below it")
            elif node in in_lru:
                raise AssertionError(f"run {node!r} in the LRU")
        if cached != self.cached or lru != self.lru_blocks or len(in_lru) != sum(
                1 for n in self.nodes() if n.cached and not n.ref):
            raise AssertionError(f"resident counts out of step with the cache: {cached} cached, "
                                 f"{lru} unreferenced; the pool counts {self.cached}, {self.lru_blocks}")
