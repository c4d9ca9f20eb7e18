"""HBM KV blocks of one instance and its prefix cache (vLLM V1 semantics).

A block is either private to a request (partly filled, or generated tokens) or cached under
its chain key. Cached blocks nobody uses sit in an LRU queue and are evicted, oldest first,
only when a fresh block is needed. Counting is enough: the simulator never needs to know
which physical block holds what, only how many are in use and which keys are resident.
"""

from __future__ import annotations

from collections import OrderedDict


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
        self.evictions = 0
        self.hits_blocks = 0
        self.queried_blocks = 0

    # -- queries ---------------------------------------------------------------------
    @property
    def free(self) -> int:
        """Blocks a request could get now (empty plus evictable)."""
        return self.num_blocks - self.in_use

    @property
    def cached(self) -> int:
        return len(self.refcount) + len(self.lru)

    def contains(self, key: int) -> bool:
        return key in self.refcount or key in self.lru

    def match_prefix(self, keys: list[int], limit: int) -> int:
        """How many leading keys (at most `limit`) are resident."""
        if not self.caching:
            return 0
        n = 0
        refcount, lru = self.refcount, self.lru
        for key in keys[:limit]:
            if key in refcount or key in lru:
                n += 1
            else:
                break
        return n

    # -- changes ---------------------------------------------------------------------
    def acquire_cached(self, keys: list[int]) -> None:
        """Take references on resident cached blocks (a prefix hit)."""
        for key in keys:
            n = self.refcount.get(key)
            if n is None:
                del self.lru[key]  # KeyError here means the caller skipped match_prefix
                self.refcount[key] = 1
                self.in_use += 1
            else:
                self.refcount[key] = n + 1

    def allocate(self, n: int) -> None:
        """Take n fresh private blocks, evicting unreferenced cached blocks if needed."""
        if n <= 0:
            return
        if n > self.free:
            raise OutOfBlocks(n)
        empty = self.num_blocks - self.in_use - len(self.lru)
        for _ in range(n - empty):
            self.lru.popitem(last=False)
            self.evictions += 1
        self.in_use += n

    def promote(self, key: int) -> bool:
        """A private block became full with content `key`: cache it. False if `key` is
        already cached by someone else (then the block stays private, as in vLLM)."""
        if not self.caching or key in self.refcount or key in self.lru:
            return False
        self.refcount[key] = 1
        return True

    def release(self, cached_keys: list[int], private: int) -> None:
        """Return a request's blocks; deepest first, so its tail is evicted before its head."""
        for key in reversed(cached_keys):
            n = self.refcount[key] - 1
            if n:
                self.refcount[key] = n
            else:
                del self.refcount[key]
                self.lru[key] = None
                self.in_use -= 1
        self.in_use -= private
        if self.in_use < 0:
            raise AssertionError("block accounting went negative")

    def clear_cache(self) -> None:
        """Drop every unreferenced cached block (an engine restart empties HBM)."""
        self.lru.clear()

    def check(self) -> None:
        if not (0 <= self.in_use <= self.num_blocks):
            raise AssertionError(f"in_use={self.in_use} outside [0, {self.num_blocks}]")
        if self.in_use + len(self.lru) > self.num_blocks:
            raise AssertionError("more blocks resident than exist")
