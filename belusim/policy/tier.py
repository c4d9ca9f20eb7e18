"""The external KV tier's index: which chunks a pool (or a host's DRAM) holds, with LRU.

The tier stores whole chunks of `chunk_blocks` engine blocks (1 for Beluga's native
16-token blocks, 16 for LMCache's 256-token chunks). A chunk is named by the chain key of
its last block, which identifies the whole prefix up to it. A chunk being written is
`pending`: invisible to lookups until its save completes, and not saved twice.

Chunk names chain like block keys, so the index is a radix tree over runs of chunks that
share their fate (stored, pending, or gone but with stored chunks below), like the HBM
pool's (policy/blocks.py), and works per run, never per chunk. The LRU order is the one
the per-chunk OrderedDict it replaces kept (as LMCache's LRUCachePolicy,
lmcache/v1/storage_backend/cache_policy/lru.py): a store appends a save's chunks in prompt
order, a hit moves its chunks to the young end in prompt order, so a prompt's first
chunks go first and its deeper chunks may stay stored below an evicted head, unreachable by
lookups until they age out too. A run splits where only part of it changes.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from itertools import chain

from belusim.policy.blocks import common_prefix_len, walk_start

GONE, PENDING, STORED = 0, 1, 2


class TierNode:
    """A run of consecutive chunk names starting at chunk index `depth`."""

    __slots__ = ("keys", "first", "depth", "parent", "children", "state", "prev", "next")

    def __init__(self, keys: Sequence[int], depth: int, parent: TierNode | None, state: int = GONE):
        self.keys = keys
        # its first key, kept beside keys: the tree's links are by first key, and reading one
        # out of an int64 array from compiled code makes a new int (about 300 instructions)
        self.first: int = keys[0] if len(keys) else -1
        self.depth = depth
        self.parent = parent
        self.children: dict[int, TierNode] = {}
        self.state = state
        self.prev: TierNode | None = None  # neighbours in the LRU (None: not in it)
        self.next: TierNode | None = None

    def __repr__(self) -> str:
        return f"TierNode(depth={self.depth}, n={len(self.keys)}, state={self.state})"


def _split(node: TierNode, k: int, keep_bottom: bool, link: bool = True) -> TierNode:
    """Cut `node` after its first k names; returns the new part (the top if keep_bottom,
    else the bottom). In the LRU the two stay where the run was, the top first (unless not
    `link`: the caller evicts the new part)."""
    keys = node.keys
    if keep_bottom:
        top = TierNode(keys[:k], node.depth, node.parent, node.state)
        node.parent.children[node.first] = top  # type: ignore
        node.keys = keys[k:]
        node.first = node.keys[0]
        node.depth += k
        node.parent = top
        top.children[node.first] = node
        if link and node.prev is not None:  # top goes right before node
            prv = node.prev
            top.prev, top.next = prv, node
            prv.next = node.prev = top
        return top
    bottom = TierNode(keys[k:], node.depth + k, node, node.state)
    bottom.children = node.children
    for child in bottom.children.values():
        child.parent = bottom
    node.keys = keys[:k]
    node.children = {bottom.first: bottom}
    if link and node.prev is not None:  # bottom goes right after node
        nxt = node.next
        bottom.prev, bottom.next = node, nxt
        node.next = nxt.prev = bottom  # type: ignore
    return bottom


class _ChunkView:
    """The stored chunk names, least recently used first (len() is O(1), the rest walks)."""

    __slots__ = ("tier",)

    def __init__(self, tier: TierIndex):
        self.tier = tier

    def __len__(self) -> int:
        return self.tier.stored

    def __iter__(self):
        return chain.from_iterable(node.keys for node in self.tier.lru_nodes())

    def __reversed__(self):
        return reversed(list(self))

    def __contains__(self, name: int) -> bool:
        return any(name in node.keys for node in self.tier.lru_nodes())


class TierIndex:
    def __init__(self, name: str, capacity_chunks: int, chunk_blocks: int):
        if capacity_chunks <= 0:
            raise ValueError(f"tier {name}: capacity must hold at least one chunk")
        self.name = name
        self.capacity = capacity_chunks
        self.chunk_blocks = chunk_blocks
        self.root = TierNode([], 0, None, STORED)
        self._lru = head = TierNode([], 0, None)  # stored runs, circular; head.next = next evicted
        head.prev = head.next = head
        self.stored = 0  # chunks stored
        self.pending_chunks = 0  # chunks being saved
        self.chunks = _ChunkView(self)
        self.evictions = 0
        self.inserted = 0
        self.lookups = 0
        self.hit_chunks = 0
        # Blocked requests and the chunks of their last lookup's match: a store of the chunk
        # after it or an eviction inside it wakes them (moves them to `woken`).
        self._watchers: dict = {}
        self._depths: list[int] = []  # their matched chunks, sorted
        self.woken: list = []

    def names(self, block_keys, end_blocks: int | None = None):
        """The chunk names of a prompt's blocks (a chunk is named by its last block's key)."""
        c = self.chunk_blocks
        if c == 1:
            return block_keys  # callers never index past end_blocks
        return block_keys[c - 1:end_blocks:c]

    def chunk_keys(self, block_keys: Sequence[int], first_chunk: int, last_chunk: int) -> list[int]:
        c = self.chunk_blocks
        return list(block_keys[(first_chunk + 1) * c - 1:last_chunk * c:c])

    def chunk_names(self, block_keys, chunk_indexes: list[int]) -> list[int]:
        """The names of these chunks (sorted chunk indexes), sliced per run of indexes."""
        c, out = self.chunk_blocks, []
        for a, b in _ranges(chunk_indexes) if chunk_indexes else ():
            out += block_keys[(a + 1) * c - 1:b * c:c]
        return out

    def _start(self, names, owner, target: int) -> tuple[TierNode, int]:
        """Where a walk toward chunk `target` may begin (blocks.walk_start, from the run the
        owner's last walk reached: its tier_hint)."""
        return walk_start(self, self.root, owner.tier_hint if owner is not None else None, names, target)

    def _walk(self, names, end: int, start=None):
        """Nodes along names[:end], all in the tree with a node boundary at `end`; yields them."""
        node, d = start or (self.root, 0)
        while d < end:
            node = node.children[names[d]]
            yield node
            d += len(node.keys)

    def _cut(self, names, at: int, keep_bottom: bool) -> None:
        """A node boundary at chunk `at` on this path (which is in the tree up to `at`)."""
        if at <= 0:
            return
        node, d = self.root, 0
        while d < at:
            node = node.children.get(names[d])  # type: ignore
            if node is None:
                return
            nd = d + len(node.keys)
            if nd > at:
                _split(node, at - d, keep_bottom)
                return
            d = nd

    def match(self, block_keys: Sequence[int], limit_blocks: int, start_blocks: int = 0) -> int:
        """Leading blocks (whole chunks, at most limit_blocks) the tier holds. (`start_blocks`:
        kept for callers that know a stored prefix; the walk is per run, from the root.)"""
        self.lookups += 1
        c = self.chunk_blocks
        limit = limit_blocks // c
        if limit <= 0:
            return 0
        names = self.names(block_keys, limit * c)
        children, d = self.root.children, 0
        while d < limit:
            child = children.get(names[d])
            if child is None or child.state != STORED:
                break
            n = min(len(child.keys), limit - d)
            m = common_prefix_len(child.keys, names, d, n)
            d += m
            if m < len(child.keys):
                break
            children = child.children
        return d * c

    def touch(self, block_keys: Sequence[int], first_block: int, n_blocks: int) -> None:
        """Mark the chunks of a hit as recently used (once, when the hit is taken): they move
        to the young end in prompt order."""
        c = self.chunk_blocks
        first, end = first_block // c, (first_block + n_blocks) // c
        self.hit_chunks += n_blocks // c
        if end <= first:
            return
        names = self.names(block_keys, end * c)
        self._cut(names, end, keep_bottom=True)
        self._cut(names, first, keep_bottom=False)
        head = self._lru
        d, node = 0, self.root
        while d < end:
            node = node.children[names[d]]
            if d >= first:  # unlink, then append at the young end
                prv: TierNode = node.prev  # type: ignore[assignment]
                nxt: TierNode = node.next  # type: ignore[assignment]
                prv.next, nxt.prev = nxt, prv
                tail: TierNode = head.prev  # type: ignore[assignment]
                node.prev, node.next = tail, head
                tail.next = head.prev = node
            d += len(node.keys)

    # -- blocked requests ------------------------------------------------------------------
    def watch(self, req, matched_chunks: int) -> None:
        """`req` (with chain keys `req.keys`) could not be admitted with `matched_chunks` of
        its prefix stored: watch for the changes that would alter that lookup's answer."""
        old = self._watchers.get(req)
        if old is not None:
            del self._depths[bisect_left(self._depths, old)]
        self._watchers[req] = matched_chunks
        insort(self._depths, matched_chunks)  # a save wakes only those whose match ends in it

    def unwatch(self, req) -> None:
        m = self._watchers.pop(req, None)
        if m is not None:
            del self._depths[bisect_left(self._depths, m)]

    def watching(self, req) -> bool:
        """Is `req` still watched, i.e. nothing changed its lookup since it blocked?"""
        return req in self._watchers

    def take_woken(self) -> list:
        """The requests woken since the last call."""
        woken, self.woken = self.woken, []
        return woken

    def _wake(self, req) -> None:
        self.unwatch(req)
        self.woken.append(req)

    def _wake_stored(self, block_keys, ranges) -> None:
        c, depths = self.chunk_blocks, self._depths
        for a, b in ranges:
            if bisect_left(depths, a) == bisect_left(depths, b):
                continue  # no watcher's match ends inside this range
            for req, m in list(self._watchers.items()):
                i = (m + 1) * c - 1  # the name of the chunk after its match
                if a <= m < b and i < len(req.keys) and req.keys[i] == block_keys[i]:
                    self._wake(req)

    def _wake_evicted(self, depth: int, name: int) -> None:
        """A run starting at chunk `depth` with first chunk `name` was (partly) evicted: a
        watcher matched into it exactly when its own chunk there has that name."""
        if self._depths[-1] <= depth:
            return  # every watcher's match ends at or above this run
        c = self.chunk_blocks
        hit = [req for req, m in self._watchers.items() if depth < m and req.keys[(depth + 1) * c - 1] == name]
        for req in hit:
            self._wake(req)

    def wanted(self, block_keys: Sequence[int], upto_blocks: int, from_chunk: int, owner=None) -> list[int]:
        """Chunk indexes in [from_chunk, upto_blocks // chunk) that are neither stored nor
        pending. owner: the request whose keys these are (its tier_hint speeds the walk)."""
        end = upto_blocks // self.chunk_blocks
        if from_chunk >= end:
            return []
        names = self.names(block_keys, upto_blocks)
        out: list[int] = []
        node, d = self._start(names, owner, from_chunk)
        while d < end:
            child = node.children.get(names[d])
            if child is None:
                out.extend(range(max(d, from_chunk), end))
                break
            m = common_prefix_len(child.keys, names, d, min(len(child.keys), end - d))
            if child.state == GONE and d + m > from_chunk:
                out.extend(range(max(d, from_chunk), d + m))
            if m < len(child.keys):  # the path leaves the tree inside this run
                if d + m < end:
                    out.extend(range(max(d + m, from_chunk), end))
                break
            node, d = child, d + m
        return out

    def begin_wanted(self, block_keys: Sequence[int], upto_blocks: int, from_chunk: int, owner=None):
        """wanted(), then begin_save() of what it found, with the chunks' names: (chunk
        indexes, names, run), or None when none is wanted. In the usual case (the wanted
        chunks are where the path leaves the tree, after what is stored or pending) one walk
        does both, the indexes are a range, the names a slice of block_keys and `run` the
        pending run made for them (for end_save; else None)."""
        c = self.chunk_blocks
        end = upto_blocks // c
        if from_chunk >= end:
            return None
        names = self.names(block_keys, upto_blocks)
        node, d = self._start(names, owner, from_chunk)
        while d < end:
            child = node.children.get(names[d])
            if child is None:
                break
            n = len(child.keys)
            m = common_prefix_len(child.keys, names, d, min(n, end - d))
            if m < n or (child.state == GONE and d + m > from_chunk):
                return self._begin_wanted_walking(block_keys, upto_blocks, from_chunk, owner)
            node, d = child, d + m
        else:
            return None  # all stored or pending
        # begin_save's walk would go down the same runs (whole, none GONE past from_chunk)
        # to this node, its last one, and hang the pending run (after a placeholder) here.
        first = max(d, from_chunk)
        if owner is not None and node is not self.root:
            owner.tier_hint = (self, node)
        if d < first:
            child = TierNode(names[d:first], d, node)
            node.children[names[d]] = child
            node, d = child, first
        run = node.children[names[d]] = TierNode(names[d:end], d, node, PENDING)
        self.pending_chunks += end - first
        return range(first, end), block_keys[(first + 1) * c - 1:end * c:c], run

    def _begin_wanted_walking(self, block_keys, upto_blocks: int, from_chunk: int, owner):
        idx = self.wanted(block_keys, upto_blocks, from_chunk, owner)
        if not idx:
            return None
        names = self.chunk_names(block_keys, idx)
        self.begin_save(block_keys, idx, owner)
        return idx, names, None

    def begin_save(self, block_keys, chunk_indexes: list[int], owner=None) -> None:
        """These chunks (none stored or pending) are being written: pending until end_save."""
        if not chunk_indexes:
            return
        names = self.names(block_keys, (chunk_indexes[-1] + 1) * self.chunk_blocks)
        for a, b in _ranges(chunk_indexes):
            self._mark_pending(names, a, b, owner)
        self.pending_chunks += len(chunk_indexes)

    def _mark_pending(self, names, first: int, end: int, owner=None) -> None:
        parent, d = self._start(names, owner, first)
        while d < end:
            child = parent.children.get(names[d])
            if child is None:
                if d < first:  # a placeholder up to `first`
                    child = TierNode(names[d:first], d, parent)
                    parent.children[names[d]] = child
                    parent, d = child, first
                parent.children[names[d]] = TierNode(names[d:end], d, parent, PENDING)
                return
            n = len(child.keys)
            m = common_prefix_len(child.keys, names, d, min(n, end - d))
            if m < n:
                _split(child, m, keep_bottom=False)
            if d + m > first:
                if child.state != GONE:
                    raise AssertionError(f"tier {self.name}: saving a chunk stored or pending")
                if first > d:
                    child = _split(child, first - d, keep_bottom=False)
                child.state = PENDING
            parent, d = child, d + m
            if owner is not None:
                owner.tier_hint = (self, child)

    def end_save(self, block_keys, chunk_indexes: Sequence[int], owner=None, run: TierNode | None = None,
                 report: bool = True) -> list[int]:
        """Store the chunks (at the young end, in prompt order); returns the chunk names
        evicted to make room, oldest first ([] if not `report`). run: the pending run that
        begin_wanted made for these chunks, if it did (a shortcut: used if it is still
        exactly them)."""
        if not chunk_indexes:
            return []
        head = self._lru
        n = len(chunk_indexes)
        if run is not None and run.state == PENDING and len(run.keys) == n:
            # Unsplit since (a split leaves a run shorter; a pending run is never dropped):
            # the walk below would store this run and nothing else.
            ranges: Sequence[tuple[int, int]] = ((run.depth, run.depth + n),)
            run.state = STORED
            tail: TierNode = head.prev  # type: ignore[assignment]
            run.prev, run.next = tail, head
            tail.next = head.prev = run
        else:
            names = self.names(block_keys, (chunk_indexes[-1] + 1) * self.chunk_blocks)
            ranges = list(_ranges(chunk_indexes))
            for a, b in ranges:
                for node in self._walk(names, b, self._start(names, owner, a)):
                    if node.depth >= a:
                        if node.state != PENDING:
                            raise AssertionError(f"tier {self.name}: a save ended that never began")
                        node.state = STORED
                        tail = head.prev  # type: ignore[assignment]
                        node.prev, node.next = tail, head
                        tail.next = head.prev = node
        if self._watchers:
            self._wake_stored(block_keys, ranges)
        self.pending_chunks -= n
        self.stored += n
        self.inserted += n
        over = self.stored - self.capacity
        if over <= 0:
            return []
        return self._evict(over, report)

    def _evict(self, count: int, report: bool = True) -> list[int]:
        """Evict `count` chunks from the old end, a run's first chunks first; returns their
        names if `report`."""
        head = self._lru
        self.evictions += count
        self.stored -= count
        evicted: list[int] = []
        while count:
            node: TierNode = head.next  # type: ignore[assignment]
            n = len(node.keys)
            if n > count:  # its first `count` go; node keeps its place with the rest
                node = _split(node, count, keep_bottom=True, link=False)
                if report:
                    evicted.extend(node.keys)
                if self._watchers:
                    self._wake_evicted(node.depth, node.first)
                self._drop(node)
                break
            nxt: TierNode = node.next  # type: ignore[assignment]
            head.next, nxt.prev = nxt, head
            node.prev = node.next = None
            if report:
                evicted.extend(node.keys)
            if self._watchers:
                self._wake_evicted(node.depth, node.first)
            self._drop(node)
            count -= n
        return evicted

    def _drop(self, node: TierNode) -> None:
        node.state = GONE
        while not node.children and node.state == GONE and node.parent is not None:
            parent = node.parent
            del parent.children[node.first]
            node.parent = None
            node = parent

    # -- views for tests and checks (walk everything) ------------------------------------
    def lru_nodes(self):
        head = self._lru
        node = head.next
        while node is not head:
            yield node
            node = node.next

    def nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    @property
    def pending(self) -> set[int]:
        return {k for node in self.nodes() if node.state == PENDING for k in node.keys}

    def check(self) -> None:
        in_lru, prev = set(), self._lru
        for node in self.lru_nodes():
            if node.prev is not prev or node in in_lru or node.state != STORED:
                raise AssertionError(f"tier {self.name}: the LRU's links are broken at {node!r}")
            in_lru.add(node)
            prev = node
        stored = pending = 0
        for node in self.nodes():
            if not node.keys or node.first != node.keys[0] or node.parent.children.get(node.first) is not node or (
                    node.depth != node.parent.depth + len(node.parent.keys)):
                raise AssertionError(f"tier {self.name}: run {node!r} out of place in the tree")
            if node.state == STORED:
                stored += len(node.keys)
                if node not in in_lru:
                    raise AssertionError(f"tier {self.name}: stored run {node!r} missing from the LRU")
            elif node.state == PENDING:
                pending += len(node.keys)
            elif not node.children:
                raise AssertionError(f"tier {self.name}: placeholder run {node!r} with nothing below it")
        if stored != self.stored or len(in_lru) != sum(1 for n in self.nodes() if n.state == STORED):
            raise AssertionError(f"tier {self.name}: {stored} chunks stored, the index counts {self.stored}")
        if self.stored > self.capacity:
            raise AssertionError(f"tier {self.name} holds more chunks than fit")
        if pending != self.pending_chunks:
            raise AssertionError(f"tier {self.name}: {pending} chunks pending, the index counts "
                                 f"{self.pending_chunks}")
        if pending:
            raise AssertionError(f"tier {self.name}: {pending} saves never completed")
        if self._watchers:
            raise AssertionError(f"tier {self.name}: {len(self._watchers)} blocked requests still watched")


def _ranges(sorted_indexes: Sequence[int]):
    """Consecutive runs [a, b) of sorted, distinct integers."""
    a = sorted_indexes[0]
    if sorted_indexes[-1] - a + 1 == len(sorted_indexes):  # the usual case: one run
        yield a, a + len(sorted_indexes)
        return
    prev = a
    for i in sorted_indexes[1:]:
        if i != prev + 1:
            yield a, prev + 1
            a = i
        prev = i
    yield a, prev + 1
