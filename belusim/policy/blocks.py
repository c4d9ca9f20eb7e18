"""HBM KV blocks of one instance and its prefix cache (vLLM V1 semantics).

A block is either private to a request (partly filled, or generated tokens) or cached under
its chain key. Cached blocks nobody uses sit in an LRU queue and are evicted, oldest first,
only when a fresh block is needed. Counting is enough: the simulator never needs to know
which physical block holds what, only how many are in use and which keys are resident.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice, takewhile


class OutOfBlocks(Exception):
    pass


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
        return start + sum(1 for _ in takewhile(self.resident.__contains__, islice(keys, start, limit)))

    def count_unreferenced(self, keys: list[int]) -> int:
        """Of these resident keys, how many nobody holds (taking them costs free blocks)."""
        lru = self.lru
        if not lru:
            return 0
        refcount = self.refcount
        return len(keys) - sum(1 for k in keys if k in refcount)

    # -- changes ---------------------------------------------------------------------
    def acquire_cached(self, keys: list[int]) -> None:
        """Take references on resident cached blocks (a prefix hit)."""
        refcount, lru = self.refcount, self.lru
        taken = 0
        for key in keys:
            n = refcount.get(key)
            if n is None:
                del lru[key]  # KeyError here means the caller skipped match_prefix
                refcount[key] = 1
                taken += 1
            else:
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
            pop, resident = self.lru.popitem, self.resident
            for _ in range(evict):
                resident.discard(pop(last=False)[0])
            self.evictions += evict
        self.in_use += n

    def promote(self, keys: list[int]) -> list[int]:
        """Private blocks became full with these contents: cache them. Returns the keys
        cached; a key already cached by someone else stays private, as in vLLM."""
        if not self.caching:
            return []
        resident = self.resident
        new = [k for k in keys if k not in resident]
        self.refcount.update(dict.fromkeys(new, 1))
        resident.update(new)
        self.promotions += len(new)
        return new

    def release(self, cached_keys: list[int], private: int) -> None:
        """Return a request's blocks; deepest first, so its tail is evicted before its head."""
        refcount = self.refcount
        unheld = []
        for key in reversed(cached_keys):
            n = refcount[key] - 1
            if n:
                refcount[key] = n
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
        self.lru.clear()

    def check(self) -> None:
        if not (0 <= self.in_use <= self.num_blocks):
            raise AssertionError(f"in_use={self.in_use} outside [0, {self.num_blocks}]")
        if self.in_use + len(self.lru) > self.num_blocks:
            raise AssertionError("more blocks resident than exist")
        if len(self.resident) != len(self.refcount) + len(self.lru):
            raise AssertionError("resident set out of step with the cache")
