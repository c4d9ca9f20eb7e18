"""The external KV tier's index: which chunks a pool (or a host's DRAM) holds, with LRU.

The tier stores whole chunks of `chunk_blocks` engine blocks (1 for Beluga's native
16-token blocks, 16 for LMCache's 256-token chunks). A chunk is named by the chain key of
its last block, which identifies the whole prefix up to it. A chunk being written is
`pending`: invisible to lookups until its save completes, and not saved twice.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice, takewhile

from belusim.policy.blocks import EvictionLog


class TierIndex:
    def __init__(self, name: str, capacity_chunks: int, chunk_blocks: int):
        if capacity_chunks <= 0:
            raise ValueError(f"tier {name}: capacity must hold at least one chunk")
        self.name = name
        self.capacity = capacity_chunks
        self.chunk_blocks = chunk_blocks
        self.chunks: OrderedDict[int, None] = OrderedDict()
        self.pending: set[int] = set()
        self.evictions = 0
        self.inserted = 0
        self.lookups = 0
        self.hit_chunks = 0
        self._evicted = EvictionLog()

    def chunk_keys(self, block_keys: list[int], first_chunk: int, last_chunk: int) -> list[int]:
        c = self.chunk_blocks
        return [block_keys[(i + 1) * c - 1] for i in range(first_chunk, last_chunk)]

    def match(self, block_keys: list[int], limit_blocks: int, start_blocks: int = 0) -> int:
        """Leading blocks (whole chunks, at most limit_blocks) the tier holds. `start_blocks`
        skips chunks the caller knows are held (nothing was evicted since it last looked)."""
        self.lookups += 1
        c = self.chunk_blocks
        i, n_chunks = start_blocks // c, limit_blocks // c
        if i >= n_chunks:
            return n_chunks * c
        # a chunk is named by its last block's key: positions c-1, 2c-1, ...
        names = islice(block_keys, i * c + c - 1, n_chunks * c, c)
        return (i + len(list(takewhile(self.chunks.__contains__, names)))) * c

    def touch(self, block_keys: list[int], first_block: int, n_blocks: int) -> None:
        """Mark the chunks of a hit as recently used (once, when the hit is taken)."""
        c = self.chunk_blocks
        first, end = first_block // c, (first_block + n_blocks) // c
        deque(map(self.chunks.move_to_end, islice(block_keys, first * c + c - 1, end * c, c)), maxlen=0)
        self.hit_chunks += n_blocks // c

    def wanted(self, block_keys: list[int], upto_blocks: int, from_chunk: int) -> list[int]:
        """Chunk indexes in [from_chunk, upto_blocks // chunk) that are neither stored nor pending."""
        c, chunks, pending = self.chunk_blocks, self.chunks, self.pending
        first, end = from_chunk, upto_blocks // c
        names = block_keys[first * c + c - 1:end * c:c]
        if not any(map(chunks.__contains__, names)) and pending.isdisjoint(names):
            return list(range(first, end))  # the usual case: nothing of it stored yet
        return [first + j for j, k in enumerate(names) if k not in chunks and k not in pending]

    def begin_save(self, keys: list[int]) -> None:
        self.pending.update(keys)

    def end_save(self, keys: list[int]) -> list[int]:
        """Store the chunks; returns the chunks evicted to make room."""
        self.pending.difference_update(keys)
        chunks = self.chunks
        before = len(chunks)
        chunks.update(dict.fromkeys(keys))  # keys were not stored when the save began
        self.inserted += len(chunks) - before
        over = len(chunks) - self.capacity
        if over <= 0:
            return []
        evicted = list(islice(chunks, over))  # the least recently used first
        deque(map(chunks.pop, evicted), maxlen=0)
        self.evictions += over
        self._evicted.extend(evicted)
        return evicted

    def evicted_since(self, evictions: int) -> list[int] | None:
        """The chunk names evicted after the tier's eviction count was `evictions` (None if
        that is too long ago to tell)."""
        return self._evicted.since(evictions)

    def check(self) -> None:
        if len(self.chunks) > self.capacity:
            raise AssertionError(f"tier {self.name} holds more chunks than fit")
        if self.pending:
            raise AssertionError(f"tier {self.name}: {len(self.pending)} saves never completed")
