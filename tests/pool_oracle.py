"""Reference models for the property tests: the block pool and the tier index one key at a
time (a dict per key, an OrderedDict for the LRU), as plain as vLLM V1's description of
them. The run-indexed implementations in belusim.policy must agree with these exactly."""

from __future__ import annotations

from collections import OrderedDict


class ReferencePool:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.in_use = 0
        self.refcount: dict[int, int] = {}  # cached keys held by at least one request
        self.lru: OrderedDict[int, None] = OrderedDict()  # cached keys held by nobody; first = next evicted
        self.evictions = 0
        self.evicted: list[int] = []

    @property
    def resident(self) -> set[int]:
        return set(self.refcount) | set(self.lru)

    @property
    def free(self) -> int:
        return self.num_blocks - self.in_use

    def match_prefix(self, keys: list[int], limit: int) -> int:
        n = 0
        while n < limit and (keys[n] in self.refcount or keys[n] in self.lru):
            n += 1
        return n

    def count_unreferenced(self, keys: list[int]) -> int:
        return sum(k in self.lru for k in keys)

    def acquire_cached(self, keys: list[int]) -> None:
        for k in keys:
            if k in self.lru:
                del self.lru[k]
                self.in_use += 1
            self.refcount[k] = self.refcount.get(k, 0) + 1

    def allocate(self, n: int) -> None:
        if n > self.free:
            raise RuntimeError("out of blocks")
        evict = n - (self.num_blocks - self.in_use - len(self.lru))
        for _ in range(max(0, evict)):
            key, _ = self.lru.popitem(last=False)  # the oldest first
            self.evicted.append(key)
            self.evictions += 1
        self.in_use += n

    def promote(self, keys: list[int]) -> list[int]:
        """Cache these full private blocks; a key cached already stays private (vLLM)."""
        new = [k for k in keys if k not in self.refcount and k not in self.lru]
        for k in new:
            self.refcount[k] = 1
        return new

    def release(self, cached_keys: list[int], private: int) -> None:
        """Deepest first: the request's tail is evicted before its head."""
        for k in reversed(cached_keys):
            self.refcount[k] -= 1
            if not self.refcount[k]:
                del self.refcount[k]
                self.lru[k] = None
                self.in_use -= 1
        self.in_use -= private

    def clear_cache(self) -> None:
        self.evictions += len(self.lru)
        self.evicted.extend(self.lru)
        self.lru.clear()


class ReferenceTier:
    """Chunks named by their last block's key; pending chunks invisible; LRU with touches."""

    def __init__(self, capacity: int, chunk_blocks: int):
        self.capacity = capacity
        self.c = chunk_blocks
        self.chunks: OrderedDict[int, None] = OrderedDict()
        self.pending: set[int] = set()
        self.evictions = 0
        self.inserted = 0

    def names(self, keys: list[int], first_chunk: int, end_chunk: int) -> list[int]:
        return [keys[(i + 1) * self.c - 1] for i in range(first_chunk, end_chunk)]

    def match(self, keys: list[int], limit_blocks: int) -> int:
        n = 0
        for name in self.names(keys, 0, limit_blocks // self.c):
            if name not in self.chunks:
                break
            n += 1
        return n * self.c

    def touch(self, keys: list[int], first_block: int, n_blocks: int) -> None:
        for name in self.names(keys, first_block // self.c, (first_block + n_blocks) // self.c):
            self.chunks.move_to_end(name)

    def wanted(self, keys: list[int], upto_blocks: int, from_chunk: int) -> list[int]:
        return [i for i in range(from_chunk, upto_blocks // self.c)
                if keys[(i + 1) * self.c - 1] not in self.chunks and keys[(i + 1) * self.c - 1] not in self.pending]

    def begin_save(self, names: list[int]) -> None:
        self.pending.update(names)

    def end_save(self, names: list[int]) -> list[int]:
        self.pending.difference_update(names)
        for name in names:
            self.chunks[name] = None
            self.inserted += 1
        evicted = []
        while len(self.chunks) > self.capacity:
            evicted.append(self.chunks.popitem(last=False)[0])
        self.evictions += len(evicted)
        return evicted
