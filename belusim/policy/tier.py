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

    def match(self, block_keys: list[int], limit_blocks: int) -> int:
        """Leading blocks (whole chunks, at most limit_blocks) the tier holds; touches them."""
        self.lookups += 1
        c = self.chunk_blocks
        n = 0
        chunks = self.chunks
        hit = []
        for i in range(limit_blocks // c):
            key = block_keys[(i + 1) * c - 1]
            if key in chunks:
                hit.append(key)
                n += c
            else:
                break
        for key in hit:
            chunks.move_to_end(key)
        self.hit_chunks += len(hit)
        return n

    def wanted(self, block_keys: list[int], upto_blocks: int, from_chunk: int) -> list[int]:
        """Chunk indexes in [from_chunk, upto_blocks // chunk) that are neither stored nor pending."""
        out = []
        for i in range(from_chunk, upto_blocks // self.chunk_blocks):
            key = block_keys[(i + 1) * self.chunk_blocks - 1]
            if key not in self.chunks and key not in self.pending:
                out.append(i)
        return out

    def begin_save(self, keys: list[int]) -> None:
        self.pending.update(keys)

    def end_save(self, keys: list[int]) -> None:
        for key in keys:
            self.pending.discard(key)
            if key in self.chunks:
                self.chunks.move_to_end(key)
                continue
            self.chunks[key] = None
            self.inserted += 1
            if len(self.chunks) > self.capacity:
                self.chunks.popitem(last=False)
                self.evictions += 1

    def check(self) -> None:
        if len(self.chunks) > self.capacity:
            raise AssertionError(f"tier {self.name} holds more chunks than fit")
        if self.pending:
            raise AssertionError(f"tier {self.name}: {len(self.pending)} saves never completed")
