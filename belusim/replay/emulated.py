"""The emulated backend: no GPU. A step waits out the compute model's time; a transfer copies
its blocks for real in host memory (the pool region and a host array standing for the GPU's
paged cache) and lands after the transfer model's time for it alone on an idle fabric.

Each block is represented by its first `block_repr_bytes` bytes (the whole block when it is
smaller), so that a replay of a large model fits a CI machine: the copies exercise the block
tables, the pool slots, the window rules and the checksums; the times come from the models.
"""

from __future__ import annotations

import time
import zlib

import numpy as np

from belusim.compute.roofline import ComputeModel
from belusim.config.scenario import Scenario, SystemConfig
from belusim.policy.request import Request
from belusim.policy.scheduler import Load, Save
from belusim.replay.pool import PoolRegion, PoolSpec


class ChecksumError(RuntimeError):
    pass


def wait_until(deadline: float) -> None:
    """Sleep to 5 ms before the deadline, then spin: time.sleep overshoots by milliseconds
    on a busy machine."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        if left > 0.006:
            time.sleep(left - 0.005)


class TransferTimes:
    """Seconds one load or save of n blocks takes alone on the system's path (the same
    transport model the simulator uses, on an idle fabric)."""

    def __init__(self, scenario: Scenario, system: SystemConfig):
        self.sc, self.kv = scenario, system.kv
        self._cache: dict[tuple[str, int], float] = {}
        self._env = self._paths = None

    def seconds(self, direction: str, nblocks: int, chunk_blocks: int) -> float:
        key = (direction, nblocks)
        t = self._cache.get(key)
        if t is None:
            if self._env is None:
                from belusim.sim.kernel import Environment
                from belusim.transport.kvpath import KVPaths

                self._env = Environment()
                self._paths = KVPaths(self._env, self.sc, self.kv)
            env, paths = self._env, self._paths
            t0 = env.now
            bs = self.sc.engine.block_size
            req = Request(0, nblocks * bs + 1, 1, list(range(1, nblocks + 1)), 0.0)
            if direction == "load":
                proc = paths.load(paths.instance_places[0], Load(req, 0, nblocks))
            else:
                n = max(1, nblocks // chunk_blocks)
                keys = [req.keys[(i + 1) * chunk_blocks - 1] for i in range(n)]
                proc = paths.save(paths.instance_places[0], Save(req, list(range(n)), keys))
            env.process(proc)
            env.run()  # the fabric is idle again afterwards
            t = self._cache[key] = env.now - t0
        return t


class EmulatedBackend:
    name = "emulated"

    def __init__(self, scenario: Scenario, system: SystemConfig, num_gpu_blocks: int, pool_spec: PoolSpec,
                 block_repr_bytes: int = 4096, rank: int = 0, tp: int = 1):
        """rank/tp: one tensor-parallel rank's backend (replay/tp.py), holding its share of
        each block; the compute model's step time is the TP instance's, all-reduces included."""
        self.compute_model = ComputeModel.build(scenario.model, scenario.gpu, scenario.cluster.tensor_parallel,
                                                scenario.interconnect, scenario.attention)
        block_bytes = int(scenario.model.kv_bytes_per_token_per_rank(tp) * scenario.engine.block_size)
        self.rb = min(block_bytes, block_repr_bytes)
        self.bs = scenario.engine.block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.gpu = np.zeros((num_gpu_blocks, self.rb), dtype=np.uint8)
        self.times = TransferTimes(scenario, system)
        self.pool = None
        self.num_pool_chunks = 0
        kv = system.kv
        self.chunk_blocks = max(1, kv.chunk_tokens // scenario.engine.block_size)
        if kv.kind != "hbm-only":
            from belusim.config.scenario import GB

            chunk_bytes = scenario.model.kv_bytes_per_token * kv.chunk_tokens
            cap = int(kv.capacity_gb * GB // chunk_bytes)
            self.num_pool_chunks = cap + 1024  # chunks being saved are not counted by the tier yet
            self.pool = PoolRegion(pool_spec, self.num_pool_chunks * self.chunk_blocks * self.rb)
            self.slots = self.pool.array.reshape(self.num_pool_chunks * self.chunk_blocks, self.rb)
            self.times.seconds("load", 1, self.chunk_blocks)  # build the transport model now
        self.sums: dict[int, int] = {}  # pool block row -> checksum written with it
        self._rng = np.random.default_rng(rank)
        self.description = (f"emulated: compute waits the compute model's step time; KV copies are real "
                            f"memcpy of {self.rb} bytes per block in host memory, timed by the transport model")

    # -- compute ----------------------------------------------------------------------------
    def compute(self, seqs, plan) -> None:
        start = time.perf_counter()
        t = self.compute_model.step_time(plan.tokens, plan.prefill_units, plan.decode_context,
                                              len(plan.scheduled))
        for table, ctx, n in seqs:  # write this step's KV: fresh bytes into the blocks it fills
            first = ctx // self.bs
            rows = table[first:]
            if rows:
                self.gpu[rows, :8] = self._rng.integers(0, 255, size=(len(rows), 8), dtype=np.uint8)
        wait_until(start + t)

    # -- transfers --------------------------------------------------------------------------
    def _rows(self, slots, chunk_blocks):
        return [s * chunk_blocks + j for s in slots for j in range(chunk_blocks)]

    def load(self, gpu_blocks, slots, chunk_blocks):
        rows = self._rows(slots, chunk_blocks)[:len(gpu_blocks)]
        self.gpu[gpu_blocks] = self.slots[rows]
        due = time.perf_counter() + self.times.seconds("load", len(gpu_blocks), chunk_blocks)
        return {"due": due, "gpu": list(gpu_blocks), "rows": rows}

    def save(self, gpu_blocks, slots, chunk_blocks):
        rows = self._rows(slots, chunk_blocks)
        self.slots[rows] = self.gpu[gpu_blocks]
        for r, b in zip(rows, gpu_blocks):
            self.sums[r] = zlib.crc32(self.gpu[b].tobytes())
        due = time.perf_counter() + self.times.seconds("store", len(gpu_blocks), chunk_blocks)
        return {"due": due}

    def done(self, h) -> bool:
        return time.perf_counter() >= h["due"]

    def wait(self, h) -> None:
        wait_until(h["due"])

    def landed_at(self, h) -> float:
        return h["due"]

    def verify_load(self, h) -> int:
        for r, b in zip(h["rows"], h["gpu"]):
            want = self.sums.get(r)
            got = zlib.crc32(self.gpu[b].tobytes())
            if want is None or got != want:
                raise ChecksumError(f"KV block read back from pool row {r} into block {b} fails its checksum "
                                    f"(written {want}, read {got})")
        return len(h["gpu"])

    def finish_save(self, h) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        if self.pool is not None:
            self.slots = None
            self.pool.close()
