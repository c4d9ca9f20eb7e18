"""The external KV tier's index: which chunks a pool (or a host's DRAM) holds, with LRU.

The tier stores whole chunks of `chunk_blocks` engine blocks (1 for Beluga's native
16-token blocks, 16 for LMCache's 256-token chunks). A chunk is named by the chain key of
its last block, which identifies the whole prefix up to it. A chunk being written is
`pending`: invisible to lookups until its save completes, and not saved twice.
"""

from __future__ import annotations

from collections import OrderedDict


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

    def chunk_keys(self, block_keys: list[int], first_chunk: int, last_chunk: int) -> list[int]:
        c = self.chunk_blocks
        return [block_keys[(i + 1) * c - 1] for i in range(first_chunk, last_chunk)]

    def match(self, block_keys: list[int], limit_blocks: int, start_blocks: int = 0) -> int:
        """Leading blocks (whole chunks, at most limit_blocks) the tier holds. `start_blocks`
        skips chunks the caller knows are held (nothing was evicted since it last looked)."""
        self.lookups += 1
        c = self.chunk_blocks
        chunks = self.chunks
        i, n_chunks = start_blocks // c, limit_blocks // c
        while i < n_chunks and block_keys[(i + 1) * c - 1] in chunks:
            i += 1
        return i * c

    def touch(self, block_keys: list[int], first_block: int, n_blocks: int) -> None:
        """Mark the chunks of a hit as recently used (once, when the hit is taken)."""
        c = self.chunk_blocks
        move = self.chunks.move_to_end
        for i in range(first_block // c, (first_block + n_blocks) // c):
            move(block_keys[(i + 1) * c - 1])
        self.hit_chunks += n_blocks // c

    def wanted(self, block_keys: list[int], upto_blocks: int, from_chunk: int) -> list[int]:
        """Chunk indexes in [from_chunk, upto_blocks // chunk) that are neither stored nor pending."""
        c, chunks, pending = self.chunk_blocks, self.chunks, self.pending
        return [
            i for i in range(from_chunk, upto_blocks // c)
            if block_keys[(i + 1) * c - 1] not in chunks and block_keys[(i + 1) * c - 1] not in pending
        ]

    def begin_save(self, keys: list[int]) -> None:
        self.pending.update(keys)

    def end_save(self, keys: list[int]) -> None:
        self.pending.difference_update(keys)
        chunks = self.chunks
        before = len(chunks)
        chunks.update(dict.fromkeys(keys))  # keys were not stored when the save began
        self.inserted += len(chunks) - before
        over = len(chunks) - self.capacity
        for _ in range(max(0, over)):
            chunks.popitem(last=False)
        self.evictions += max(0, over)

    def check(self) -> None:
        if len(self.chunks) > self.capacity:
            raise AssertionError(f"tier {self.name} holds more chunks than fit")
        if self.pending:
            raise AssertionError(f"tier {self.name}: {len(self.pending)} saves never completed")
