"""HBM KV blocks of one instance and its prefix cache (vLLM V1 semantics).

A block is either private to a request (partly filled, or generated tokens) or cached under
its chain key. Cached blocks nobody uses sit in an LRU queue and are evicted, oldest first,
only when a fresh block is needed. Counting is enough: the simulator never needs to know
which physical block holds what, only how many are in use and which keys are resident.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import filterfalse, islice, repeat, takewhile


class OutOfBlocks(Exception):
    pass


class EvictionLog:
    """The most recent evicted keys, addressed by eviction count, so that a waiting request
    can tell whether its matched prefix lost a key without walking it again."""

    KEEP = 1 << 12  # keys kept (a few steps of evictions); an older question gets None (walk again)

    __slots__ = ("keys", "base")

    def __init__(self):
        self.keys: list[int] = []
        self.base = 0  # eviction count of keys[0]

    def extend(self, keys) -> None:
        log = self.keys
        log.extend(keys)
        if len(log) > 2 * self.KEEP:
            drop = len(log) - self.KEEP
            del log[:drop]
            self.base += drop

    def since(self, count: int) -> list[int] | None:
        if count < self.base:
            return None
        return self.keys[count - self.base:]


class BlockPool:
    def __init__(self, num_blocks: int, caching: bool = True):
        if num_blocks <= 0:
            raise ValueError("an instance needs at least one KV block")
        self.num_blocks = num_blocks
        self.caching = caching
        self.in_use = 0  # blocks held by requests (cached-and-referenced plus private)
        self.refcount: dict[int, int] = {}  # cached keys held by at least one request
        self.lru: OrderedDict[int, None] = OrderedDict()  # cached keys held by nobody; first = next evicted
        self.resident: set[int] = set()  # every cached key, held or not (fast prefix walks)
        self.evictions = 0
        self.promotions = 0
        self._evicted = EvictionLog()

    # -- queries ---------------------------------------------------------------------
    @property
    def free(self) -> int:
        """Blocks a request could get now (empty plus evictable)."""
        return self.num_blocks - self.in_use

    @property
    def cached(self) -> int:
        return len(self.resident)

    def contains(self, key: int) -> bool:
        return key in self.resident

    def match_prefix(self, keys: list[int], limit: int, start: int = 0) -> int:
        """How many leading keys (at most `limit`) are resident. `start` skips keys the
        caller knows are resident (nothing was evicted since it last looked)."""
        if not self.caching or start >= limit:
            return min(start, limit) if self.caching else 0
        return start + len(list(takewhile(self.resident.__contains__, islice(keys, start, limit))))

    def count_unreferenced(self, keys: list[int]) -> int:
        """Of these resident keys, how many nobody holds (taking them costs free blocks)."""
        lru = self.lru
        if not lru:
            return 0
        return len(keys) - sum(map(self.refcount.__contains__, keys))

    # -- changes ---------------------------------------------------------------------
    def acquire_cached(self, keys: list[int]) -> None:
        """Take references on resident cached blocks (a prefix hit)."""
        refcount, lru = self.refcount, self.lru
        held = list(map(refcount.get, keys, repeat(0)))
        taken = held.count(0)
        # Bulk paths for the usual cases (all unheld, or all held by others); a request's
        # keys are distinct (a chain key includes its position).
        if taken == len(keys):
            deque(map(lru.pop, keys), maxlen=0)  # KeyError: the caller skipped match_prefix
            refcount.update(dict.fromkeys(keys, 1))
        elif taken == 0:
            refcount.update(zip(keys, map((1).__add__, held)))
        else:
            for key, n in zip(keys, held):
                if n == 0:
                    del lru[key]
                refcount[key] = n + 1
        self.in_use += taken

    def allocate(self, n: int) -> None:
        """Take n fresh private blocks, evicting unreferenced cached blocks if needed."""
        if n <= 0:
            return
        if n > self.free:
            raise OutOfBlocks(n)
        evict = n - (self.num_blocks - self.in_use - len(self.lru))
        if evict > 0:
            lru = self.lru
            gone = list(islice(lru, evict))  # the oldest first
            deque(map(lru.pop, gone), maxlen=0)
            self.resident.difference_update(gone)
            self._evicted.extend(gone)
            self.evictions += evict
        self.in_use += n

    def promote(self, keys: list[int]) -> list[int]:
        """Private blocks became full with these contents: cache them. Returns the keys
        cached; a key already cached by someone else stays private, as in vLLM."""
        if not self.caching:
            return []
        resident = self.resident
        new = list(filterfalse(resident.__contains__, keys))
        self.refcount.update(dict.fromkeys(new, 1))
        resident.update(new)
        self.promotions += len(new)
        return new

    def release(self, cached_keys: list[int], private: int) -> None:
        """Return a request's blocks; deepest first, so its tail is evicted before its head."""
        refcount = self.refcount
        keys = cached_keys[::-1]
        held = list(map(refcount.__getitem__, keys))
        if held.count(1) == len(held):  # the usual case: nobody else holds any of them
            deque(map(refcount.pop, keys), maxlen=0)
            unheld = keys
        else:
            unheld = []
            for key, n in zip(keys, held):
                if n > 1:
                    refcount[key] = n - 1
                else:
                    del refcount[key]
                    unheld.append(key)
        self.lru.update(dict.fromkeys(unheld))
        self.in_use -= len(unheld) + private
        if self.in_use < 0:
            raise AssertionError("block accounting went negative")

    def clear_cache(self) -> None:
        """Drop every unreferenced cached block (an engine restart empties HBM)."""
        self.evictions += len(self.lru)
        self.resident.difference_update(self.lru)
        self._evicted.extend(self.lru)
        self.lru.clear()

    def evicted_since(self, evictions: int) -> list[int] | None:
        """The keys evicted after the pool's eviction count was `evictions` (None if that is
        too long ago to tell)."""
        return self._evicted.since(evictions)

    def check(self) -> None:
        if not (0 <= self.in_use <= self.num_blocks):
            raise AssertionError(f"in_use={self.in_use} outside [0, {self.num_blocks}]")
        if self.in_use + len(self.lru) > self.num_blocks:
            raise AssertionError("more blocks resident than exist")
        if len(self.resident) != len(self.refcount) + len(self.lru):
            raise AssertionError("resident set out of step with the cache")
