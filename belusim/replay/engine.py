"""The real-time executor: one engine driven by the shared step loop in wall-clock time.

The scheduler, block pool, prefix cache, tier index and connector semantics are the
simulator's own objects (policy/); only the executor differs. It runs each step on a
backend (real GPU work, or the compute model's time waited out), moves KV between the
backend's paged cache and the pool for real, and records when each request arrived, was
admitted, loaded, got its first token and finished, in wall-clock seconds from the start.

Physical blocks. The policy counts blocks; the replay gives each request a table of
physical cache blocks for its context (its own, also where the policy shares a cached
prefix: the attention reads as many bytes either way) and each pool chunk a slot. A
finished request's blocks return to the free list once its saves have landed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

from belusim.config.scenario import GB, Scenario, SystemConfig
from belusim.policy.blocks import BlockPool
from belusim.policy.connector import ConnectorSemantics
from belusim.policy.request import Request, State
from belusim.policy.scheduler import Load, Save, Scheduler, blocks_for
from belusim.policy.step import IDLE, WaitSaves, load_landed, save_landed, step_loop
from belusim.policy.tier import TierIndex


class ReplayError(RuntimeError):
    pass


@dataclass
class Transfer:
    """One load or save in flight on the backend."""

    kind: str  # load | save
    item: Load | Save
    gpu_blocks: list[int]
    slots: list[int]
    start: float
    handle: object = None
    end: float = math.nan


@dataclass
class ReplayStats:
    steps: int = 0
    step_s: list = field(default_factory=list)  # wall time of each step, launch to done
    overhead_s: list = field(default_factory=list)  # executor CPU time per step outside the backend
    loads: list = field(default_factory=list)  # (blocks, seconds)
    saves: list = field(default_factory=list)
    blocks_verified: int = 0


class ReplayInstance:
    """The executor side of policy.step.step_loop in wall-clock time."""

    def __init__(self, scenario: Scenario, system: SystemConfig, backend, kv_blocks: int, on_finish):
        kv, eng = system.kv, scenario.engine
        if scenario.cluster.instances != 1 or scenario.cluster.prefill_instances_per_server is not None:
            raise ReplayError(
                "the replay runs one instance: set cluster.servers=1 and cluster.gpus_per_server to "
                "cluster.tensor_parallel "
                f"(scenario {scenario.name!r} has {scenario.cluster.instances} instances)")
        self.sc, self.system, self.backend, self.on_finish = scenario, system, backend, on_finish
        self.bs = eng.block_size
        self.tier = None
        if kv.kind != "hbm-only":
            if kv.chunk_tokens % eng.block_size:
                raise ReplayError(f"chunk_tokens ({kv.chunk_tokens}) must be a multiple of block_size")
            chunk_bytes = scenario.model.kv_bytes_per_token * kv.chunk_tokens
            self.tier = TierIndex(f"{system.name}.pool", int(kv.capacity_gb * GB // chunk_bytes),
                                  kv.chunk_tokens // eng.block_size)
        self.conn = ConnectorSemantics(kv.load_mode, kv.save_mode, kv.hold_blocks_until_saved,
                                       kv.layer_sync_us * 1e-6, scenario.model.layers)
        self.sched = Scheduler(BlockPool(kv_blocks, eng.enable_prefix_caching), eng.block_size,
                               eng.max_num_batched_tokens, eng.max_num_seqs, tier=self.tier,
                               load_mode=kv.load_mode, save=kv.save,
                               hold_blocks_until_saved=kv.hold_blocks_until_saved)
        self.kv_blocks = kv_blocks
        self.t0 = time.perf_counter()
        self.stats = ReplayStats()
        self.step_ends: list[float] = []
        # physical blocks and pool slots
        self.free_blocks = list(range(backend.num_gpu_blocks - 1, -1, -1))
        self.tables: dict[int, list[int]] = {}
        self.free_slots = list(range(backend.num_pool_chunks - 1, -1, -1)) if self.tier else []
        self.slot_of: dict[int, int] = {}
        self.saving: dict[int, int] = {}  # request id -> saves in flight (blocks kept until 0)
        self.done_unfreed: set[int] = set()
        self.transfers: list[Transfer] = []
        self._woken = False
        self.admit = lambda: None  # submits the requests due by now (set by replay_scenario)
        self.loop = step_loop(self.sched, self.conn, self, coalesce_steps=1)
        self.cmd = next(self.loop)

    # -- the step loop's executor interface ------------------------------------------------
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def steady(self) -> bool:
        return False  # no stretches: every step runs for real

    def plan_load(self, load: Load, in_step: bool) -> None:
        if not in_step:
            self.transfers.append(self._issue_load(load))

    def start_saves(self, saves: list[Save]) -> None:
        for save in saves:
            self.transfers.append(self._issue_save(save))

    def step_ended(self) -> None:
        self.step_ends.append(self.now())

    def request_finished(self, req: Request) -> None:
        if self.saving.get(id(req), 0):
            self.done_unfreed.add(id(req))
        else:
            self._free_table(req)
        self.on_finish(req)

    # -- blocks and slots ------------------------------------------------------------------
    def _table(self, req: Request, nblocks: int) -> list[int]:
        t = self.tables.setdefault(id(req), [])
        while len(t) < nblocks:
            if not self.free_blocks:
                raise ReplayError(f"the replay's paged cache ({self.backend.num_gpu_blocks} blocks) is full")
            t.append(self.free_blocks.pop())
        return t

    def _free_table(self, req: Request) -> None:
        self.free_blocks.extend(reversed(self.tables.pop(id(req), [])))

    def _slot(self, key: int) -> int:
        s = self.slot_of.get(key)
        if s is None:
            if not self.free_slots:
                raise ReplayError(f"the pool region ({self.backend.num_pool_chunks} chunks) is full")
            s = self.slot_of[key] = self.free_slots.pop()
        return s

    def _evicted(self, keys: list[int]) -> None:
        for k in keys:
            s = self.slot_of.pop(k, None)
            if s is not None:
                self.free_slots.append(s)

    # -- transfers -------------------------------------------------------------------------
    def _chunk_names(self, req: Request, first_block: int, nblocks: int) -> list[int]:
        c, keys = self.tier.chunk_blocks, req.keys
        return [keys[(i + 1) * c - 1] for i in range(first_block // c, (first_block + nblocks) // c)]

    def _issue_load(self, load: Load) -> Transfer:
        req, c = load.request, self.tier.chunk_blocks
        gpu = self._table(req, load.first_block + load.num_blocks)[load.first_block:load.first_block + load.num_blocks]
        slots = [self.slot_of[k] for k in self._chunk_names(req, load.first_block, load.num_blocks)]
        tr = Transfer("load", load, gpu, slots, self.now())
        tr.handle = self.backend.load(gpu, slots, c)
        return tr

    def _issue_save(self, save: Save) -> Transfer:
        req, c = save.request, self.tier.chunk_blocks
        table = self.tables[id(req)]
        gpu = [b for i in save.chunk_indexes for b in table[i * c:(i + 1) * c]]
        slots = [self._slot(k) for k in save.keys]
        self.saving[id(req)] = self.saving.get(id(req), 0) + 1
        tr = Transfer("save", save, gpu, slots, self.now())
        tr.handle = self.backend.save(gpu, slots, c)
        return tr

    def _landed(self, tr: Transfer) -> None:
        # the landing itself (the backend's clock of its copy stream), as the simulator
        # reports it; the scheduler sees it now, at the poll before the next step
        at = getattr(self.backend, "landed_at", None)
        tr.end = min(self.now(), at(tr.handle) - self.t0) if at else self.now()
        if tr.kind == "load":
            self.stats.blocks_verified += self.backend.verify_load(tr.handle)
            self.stats.loads.append((len(tr.gpu_blocks), tr.end - tr.start))
            load_landed(self.sched, tr.item, tr.end)
            self._woken = True
        else:
            self.backend.finish_save(tr.handle)
            self.stats.saves.append((len(tr.gpu_blocks), tr.end - tr.start))
            req = tr.item.request
            self.saving[id(req)] -= 1
            save_landed(self.sched, tr.item, self._evicted, self._wake)
            if not self.saving[id(req)]:
                del self.saving[id(req)]
                if id(req) in self.done_unfreed:
                    self.done_unfreed.discard(id(req))
                    self._free_table(req)

    def _wake(self) -> None:
        self._woken = True

    def poll(self) -> None:
        if not self.transfers:
            return
        still = []
        for tr in self.transfers:
            if self.backend.done(tr.handle):
                self._landed(tr)
            else:
                still.append(tr)
        self.transfers = still

    # -- running ---------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        req.instance = 0
        self.sched.add(req)
        self._woken = True

    def _run_step(self, plan) -> None:
        c0 = time.perf_counter()
        seqs = []
        for req, n in plan.scheduled:
            table = self._table(req, blocks_for(req.num_computed + n, self.bs))
            seqs.append((table, req.num_computed, n))
        in_step = []
        if plan.in_step_loads:
            for load in plan.loads:
                tr = Transfer("load", load, [], [], self.now())
                req = load.request
                tr.gpu_blocks = self._table(req, load.first_block + load.num_blocks)[
                    load.first_block:load.first_block + load.num_blocks]
                tr.slots = [self.slot_of[k] for k in self._chunk_names(req, load.first_block, load.num_blocks)]
                in_step.append(tr)
        c1 = time.perf_counter()
        if in_step:
            mode = self.conn.load_mode
            for tr in in_step:
                if mode == "sync":  # one blocking retrieve per request before the forward pass
                    tr.start = self.now()
                    tr.handle = self.backend.load(tr.gpu_blocks, tr.slots, self.tier.chunk_blocks)
                    self.backend.wait(tr.handle)
                    tr.end = tr.item.request.load_end = self.now()
                else:  # layer-wise: issued together, overlapping the forward pass
                    tr.handle = self.backend.load(tr.gpu_blocks, tr.slots, self.tier.chunk_blocks)
        t_start = self.now()
        self.backend.compute(seqs, plan)
        for tr in in_step:
            if self.conn.load_mode != "sync":
                self.backend.wait(tr.handle)
                tr.end = tr.item.request.load_end = self.now()
            self.stats.blocks_verified += self.backend.verify_load(tr.handle)
            self.stats.loads.append((len(tr.gpu_blocks), tr.end - tr.start))
        self.stats.step_s.append(self.now() - t_start)
        self.stats.overhead_s.append(c1 - c0)
        self.stats.steps += 1

    def advance(self) -> bool:
        """Run the loop until it goes idle. Returns True if it did any work.

        Before every schedule, as vLLM's engine core does between steps, requests that
        arrived meanwhile join the scheduler (the admit hook) and finished transfers are
        collected, so a request that arrives or a load that lands during a step is seen
        by the very next step, as in the simulator."""
        worked = False
        while True:
            cmd = self.cmd
            if cmd is IDLE:
                self.admit()
                self.poll()
                if not self._woken:
                    return worked
                self._woken = False
            elif isinstance(cmd, WaitSaves):
                for save in cmd.saves:
                    tr = self._issue_save(save)
                    self.backend.wait(tr.handle)
                    self._landed(tr)
            else:
                self._run_step(cmd.plan)
            worked = True
            t = time.perf_counter()
            if cmd is not IDLE:
                self.admit()
                self.poll()
            self.cmd = self.loop.send(1)
            if self.stats.overhead_s and not isinstance(cmd, (WaitSaves,)) and cmd is not IDLE:
                self.stats.overhead_s[-1] += time.perf_counter() - t  # admitting, polling, scheduling the next step

    def busy(self) -> bool:
        return bool(self.transfers) or self.cmd is not IDLE or self._woken


def replay_scenario(scenario: Scenario, system: SystemConfig, backend, kv_blocks: int, record,
                    progress=None) -> dict:
    """Replay every phase of the scenario on one backend in wall-clock time.
    record(request, instance) is called for every finished or rejected request."""
    from belusim.workloads import build_workload

    bs = scenario.engine.block_size
    box: dict = {}
    inst = ReplayInstance(scenario, system, backend, kv_blocks, lambda r: box["finish"](r))
    phases = []
    submitted = completed = rejected = 0
    for phase in scenario.run.phases:
        if phase.clear_hbm_cache:
            inst.sched.clear_cache()
        wl = build_workload(phase.workload or scenario.workload, block_size=bs, seed=scenario.run.seed,
                            base_dir=scenario.base_dir, phase=phase.name)
        if progress:
            progress(f"{system.name}: replaying phase {phase.name} ({len(wl.requests)} requests)")
        heap: list[tuple] = []  # (due, sequence, spec)
        seq = itertools.count()
        start = inst.now()
        specs = iter(wl.requests)
        left = len(wl.requests)
        if wl.mode == "closed":
            for c in range(max(1, wl.clients)):
                spec = next(specs, None)
                if spec is not None:
                    heapq.heappush(heap, (start, next(seq), spec))
        else:
            for spec in wl.requests:
                heapq.heappush(heap, (start + (spec.arrival_s or 0.0), next(seq), spec))

        def finish(req: Request) -> None:
            nonlocal left, completed
            left -= 1
            if req.state is State.FINISHED:
                completed += 1
            record(req, inst)
            if wl.mode == "closed":
                nxt = next(specs, None)
                if nxt is not None:
                    heapq.heappush(heap, (inst.now() + wl.think_time_s, next(seq), nxt))

        box["finish"] = finish

        def admit() -> None:
            nonlocal submitted, rejected
            now = inst.now()
            while heap and heap[0][0] <= now:
                due, _seq, spec = heapq.heappop(heap)
                keys = spec.block_keys.tolist()
                req = Request(spec.req_id, spec.prompt_tokens, spec.output_tokens, keys, due, phase.name)
                submitted += 1
                if not inst.sched.can_ever_fit(req):
                    req.state = State.REJECTED
                    req.reject_reason = (f"prompt+output ({req.prompt_tokens}+{req.output_tokens} tokens) "
                                         f"exceeds the instance's KV cache ({kv_blocks} blocks of {bs} tokens)")
                    rejected += 1
                    finish(req)
                    continue
                inst.submit(req)

        inst.admit = admit
        while left > 0:
            admit()
            worked = inst.advance()
            if left == 0:
                break
            if not worked:
                # idle: sleep until the next arrival, or poll transfers briefly
                wait = (heap[0][0] - inst.now()) if heap else math.inf
                if inst.transfers:
                    wait = min(wait, 50e-6)
                if wait == math.inf:
                    raise ReplayError(f"phase {phase.name!r}: {left} requests outstanding and nothing to run")
                if wait > 0:
                    time.sleep(min(wait, 0.01))
        phases.append({"name": phase.name, "start_s": start, "end_s": inst.now()})
    # let the last saves land
    while inst.transfers or inst.busy():
        inst.advance()
        if inst.transfers:
            time.sleep(50e-6)
    backend.sync()
    checks = _check(inst, submitted, completed, rejected)
    st = inst.stats
    loads = [s for _b, s in st.loads]
    return {
        "phases": phases,
        "steps": st.steps,
        "step_overhead_mean_s": _mean(st.overhead_s),
        "step_overhead_p99_s": _pct(st.overhead_s, 99),
        "step_mean_s": _mean(st.step_s),
        "loads": len(st.loads),
        "load_blocks": sum(b for b, _s in st.loads),
        "mean_load_s": _mean(loads),
        "saves": len(st.saves),
        "save_blocks": sum(b for b, _s in st.saves),
        "mean_save_s": _mean([s for _b, s in st.saves]),
        "blocks_verified": st.blocks_verified,
        "load_samples": [[b, s] for b, s in st.loads],
        "save_samples": [[b, s] for b, s in st.saves],
        "checks": checks,
        "step_ends": inst.step_ends,
    }


def _mean(xs) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def _pct(xs, q) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return float(s[min(len(s) - 1, int(math.ceil(q / 100 * len(s))) - 1)])


def _check(inst: ReplayInstance, submitted: int, completed: int, rejected: int) -> dict:
    """Conservation at the end of a replay: requests, HBM blocks, physical blocks, slots."""
    sched = inst.sched
    sched.check()
    if sched.running or sched.waiting or sched.held:
        raise ReplayError("the replay ended with requests still held by the engine")
    if inst.tier is not None:
        inst.tier.check()
        if len(inst.slot_of) != len(inst.tier.chunks):
            raise ReplayError(f"pool slots in use ({len(inst.slot_of)}) != chunks stored ({len(inst.tier.chunks)})")
    if inst.tables:
        raise ReplayError(f"{len(inst.tables)} requests still hold physical blocks")
    if len(inst.free_blocks) != inst.backend.num_gpu_blocks:
        raise ReplayError("physical blocks leaked")
    if submitted != completed + rejected:
        raise ReplayError(f"requests submitted ({submitted}) != finished ({completed}) + rejected ({rejected})")
    return {"requests_submitted": submitted, "requests_finished": completed, "requests_rejected": rejected,
            "kv_blocks_in_use_at_end": sched.pool.in_use,
            "pool_chunks_stored": len(inst.tier.chunks) if inst.tier else 0}
