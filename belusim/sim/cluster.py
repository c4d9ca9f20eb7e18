"""A cluster of instances behind one router, on one KV system, driven through phases.

`simulate(scenario, system)` builds the simulated world for one system (on the event kernel,
sim/kernel.py, which has SimPy's semantics), then plays the scenario's phases one after
another on it (caches persist between phases), recording every request and checking
conservation at the end.
"""

from __future__ import annotations

import gc
import time
from array import array
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from belusim.compute.roofline import ComputeModel
from belusim.config.scenario import GB, Scenario, SystemConfig
from belusim.errors import CheckFailed, SimulationError
from belusim.sim.engine import Instance
from belusim.sim.kernel import EmptySchedule, Environment, Event
from belusim.transport.kvpath import KVPaths
from belusim.report.metrics import Recorder, itl_ends, summarize
from belusim.policy.blocks import BlockPool
from belusim.policy.connector import ConnectorSemantics
from belusim.policy.request import Request, State
from belusim.policy.router import Router
from belusim.policy.scheduler import Scheduler
from belusim.policy.tier import TierIndex
from belusim.workloads import build_workload
from belusim.workloads.spec import Workload


# An instance's step end times are what its finished requests' inter-token gaps are read
# from (report.metrics.itl_ends). Every _TRIM_EVERY records, the ends that no request
# still in flight can read (those at or before every live first token) are dropped, so a
# long run keeps them for its requests in flight, not 8 bytes per engine step forever.
_TRIM_EVERY = 1024
_TRIM_MIN = 4096  # an instance with fewer ends keeps them all


def _key_array(block_keys) -> array:
    """A request's chain keys as one int64 array: 8 bytes a key where a list of Python ints
    costs about 40, for every request in flight and every run of the prefix indexes."""
    bk = np.asarray(block_keys)
    if bk.dtype == np.int64:
        return array("q", bk.tobytes())
    return array("q", bk.tolist())


def hbm_kv_blocks(scenario: Scenario) -> int:
    """KV blocks per instance: what gpu_memory_utilization leaves after the weights, per GPU.

    With tensor parallelism every rank holds 1/TP of the weights and its share of each
    block's KV heads, so the block count is what one rank's HBM holds."""
    eng, model, gpu = scenario.engine, scenario.model, scenario.gpu
    if eng.kv_blocks is not None:
        return eng.kv_blocks
    tp = scenario.cluster.tensor_parallel
    weights = model.weight_bytes_per_rank(tp)
    budget = gpu.hbm_gb * GB * eng.gpu_memory_utilization - weights - eng.activation_reserve_gb * GB
    block_bytes = model.kv_bytes_per_token_per_rank(tp) * eng.block_size
    blocks = int(budget // block_bytes)
    if blocks <= 0:
        raise SimulationError(
            f"{model.id} ({weights / GB:.1f} GB of weights per GPU at tensor_parallel={tp}) leaves no KV cache "
            f"on {gpu.id} at gpu_memory_utilization={eng.gpu_memory_utilization}"
        )
    return blocks


@dataclass
class SystemRun:
    system: str
    summaries: list[dict]
    wall_s: float
    sim_s: float
    steps: int
    step_events: int
    link_utilisation: dict[str, float]
    transfers: dict
    checks: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    events: int = 0  # events scheduled (for speed benchmarks)
    utilisation_series: dict = field(default_factory=dict)  # busiest links over time (Fabric.utilisation_series)


class Cluster:
    def __init__(self, scenario: Scenario, system: SystemConfig, recorder: Recorder):
        self.sc = scenario
        self.system = system
        self.recorder = recorder
        self.env = Environment()
        kv = system.kv
        self.paths = KVPaths(self.env, scenario, kv, system.stack)
        self.paths.fabric.record_series = scenario.run.utilisation_series
        eng = scenario.engine
        self.kv_blocks = hbm_kv_blocks(scenario)
        self.tiers: list[TierIndex] = []
        tier_for_server = {}
        if kv.kind != "hbm-only":
            if kv.chunk_tokens % eng.block_size:
                raise SimulationError(f"chunk_tokens ({kv.chunk_tokens}) must be a multiple of block_size")
            chunk_blocks = kv.chunk_tokens // eng.block_size
            chunk_bytes = scenario.model.kv_bytes_per_token * kv.chunk_tokens
            cap = int(kv.capacity_gb * GB // chunk_bytes)
            if kv.kind == "local-dram":
                for s in range(scenario.cluster.servers):
                    tier_for_server[s] = TierIndex(f"{system.name}.dram{s}", cap, chunk_blocks)
                self.tiers = list(tier_for_server.values())
            else:
                shared = TierIndex(f"{system.name}.pool", cap, chunk_blocks)
                self.tiers = [shared]
                tier_for_server = {s: shared for s in range(scenario.cluster.servers)}
            if scenario.run.utilisation_series:
                for tier in self.tiers:  # occupancy over time, for the reports
                    self.paths.fabric.gauges[tier.name] = (tier.chunks.__len__, tier.capacity)
        compute = ComputeModel.build(scenario.model, scenario.gpu, scenario.cluster.tensor_parallel,
                                     scenario.interconnect, scenario.attention)
        n_prefill = scenario.cluster.prefill_instances_per_server
        self.disaggregated = n_prefill is not None
        if self.disaggregated and kv.kind == "hbm-only":
            raise SimulationError(
                f"system {system.name!r}: prefill/decode disaggregation hands KV over through a tier; "
                "hbm-only has none (use local-dram, rdma-pool or cxl-pool)"
            )
        connector = ConnectorSemantics(kv.load_mode, kv.save_mode, kv.hold_blocks_until_saved,
                                       kv.layer_sync_us * 1e-6, scenario.model.layers)
        self.instances: list[Instance] = []
        tp = scenario.cluster.tensor_parallel
        for i, place in enumerate(self.paths.instance_places):
            role = "mixed"
            if n_prefill is not None:  # disaggregated
                role = "prefill" if place.gpu // tp < n_prefill else "decode"
            sched = Scheduler(
                BlockPool(self.kv_blocks, eng.enable_prefix_caching),
                eng.block_size,
                eng.max_num_batched_tokens,
                eng.max_num_seqs,
                tier=tier_for_server.get(place.server),
                load_mode=kv.load_mode,
                save=kv.save,
                hold_blocks_until_saved=kv.hold_blocks_until_saved,
            )
            self.instances.append(
                Instance(self.env, i, place, sched, compute, self.paths, eng.decode_coalesce_steps,
                         scenario.gpu.copy_kernel_compute_slowdown, self._finished, role, connector)
            )
        for inst in self.instances:
            if inst.sched.tier is not None:
                inst.tier_peers = {o.index: o for o in self.instances if o.sched.tier is inst.sched.tier}
        # New requests go to instances that prefill; disaggregated decodes have routers of
        # their own, one per group of instances sharing a tier (a pool: all of them).
        self.entry = [inst for inst in self.instances if inst.role != "decode"]
        self.router = Router(system.router, [inst.sched for inst in self.entry])
        self.decode_routers: dict[int, tuple[list[Instance], Router]] = {}
        if self.disaggregated:
            groups: dict[int, list[Instance]] = {}
            for inst in self.instances:
                if inst.role == "decode":
                    groups.setdefault(id(inst.sched.tier), []).append(inst)
            for members in groups.values():
                self.decode_routers[id(members[0].sched.tier)] = (
                    members, Router(system.router, [m.sched for m in members]))
        self._phase_left = 0
        self._phase_done: Event | None = None
        self._live: dict[int, Request] = {}
        self.end_time = 0.0  # when the last request finished or the last save landed
        self.submitted = 0
        self.completed = 0
        self.rejected = 0
        self.last_reject_reason = ""
        # id() of each request admitted and not yet recorded: a second record of one is caught
        # (the request is alive while it is recorded, so its id cannot have been reused)
        self._unrecorded: set[int] = set()
        self.records = 0
        self.recorded_twice: list[str] = []

    # -- requests ----------------------------------------------------------------------
    def _finished(self, req: Request) -> None:
        if req.state is State.FINISHED and req.num_output < req.output_tokens:
            # A disaggregated prefill is done: hand over once its KV has landed in the tier.
            if req.saves_in_flight:
                req.on_saved = self._hand_off
            else:
                self._hand_off(req)
            return
        self._live.pop(id(req), None)
        if req.state is State.FINISHED:
            self.completed += 1
        self.end_time = max(self.end_time, self.env.now)
        ends = (itl_ends(self.instances[req.instance].step_ends, req)
                if req.state is State.FINISHED else None)
        self._record(req, ends)
        if self.records % _TRIM_EVERY == 0:
            self.trim_step_ends()
        cb = req.on_finish
        if cb is not None:
            cb(req)
        self._phase_left -= 1
        if self._phase_left == 0 and self._phase_done is not None:
            self._phase_done.succeed()

    def trim_step_ends(self) -> int:
        """Drop the step ends at or before the earliest first token of any request in flight
        (and now): a request's gaps come from ends after its first token, and one that has
        none yet gets it later than now. A live request's index arithmetic in itl_ends
        only counts ends after its first token, so its gaps come out the same. Returns how
        many ends were dropped."""
        cutoff = self.env.now
        for req in self._live.values():
            ft = req.first_token
            if ft < cutoff:  # NaN (no first token yet) compares False
                cutoff = ft
        dropped = 0
        for inst in self.instances:
            ends = inst.step_ends
            if len(ends) > _TRIM_MIN:
                k = bisect_right(ends, cutoff)
                if k:
                    del ends[:k]
                    dropped += k
        return dropped

    def _record(self, req: Request, ends=None) -> None:
        """Record it; ends: the step ends of its tokens after the first (itl_ends), if known."""
        if id(req) in self._unrecorded:
            self._unrecorded.discard(id(req))
        else:
            self.recorded_twice.append(f"{req.phase}/{req.req_id}")
        self.records += 1
        self.recorder.record_ends(self.system.name, req, ends)

    def _hand_off(self, req: Request) -> None:
        tier = self.instances[req.instance].sched.tier
        members, router = self.decode_routers[id(tier)]
        req.hand_off()
        members[self._route(router, members, req)].submit(req)

    @staticmethod
    def _route(router: Router, members: list[Instance], req: Request) -> int:
        """Route as if every instance stepped one step at a time: one part-way through a
        decode stretch shows the steps that have ended."""
        if not router.reads_loads:
            return router.choose(req)
        if router.reads_caches:
            for inst in members:
                inst.catch_up()
        elif router.reads_floors:
            return router.least_loaded([inst.sched.outstanding_tokens - inst.stretch_drop for inst in members],
                                       lambda i: members[i].load_now())
        return router.choose(req, [inst.load_now() for inst in members])

    def submit(self, spec, phase: str, on_finish=None) -> Request:
        bs = self.sc.engine.block_size
        keys = _key_array(spec.block_keys)
        if len(keys) != spec.prompt_tokens // bs:
            raise SimulationError(
                f"request {spec.req_id} ({spec.source}): {len(keys)} block keys for "
                f"{spec.prompt_tokens} prompt tokens at block size {bs}"
            )
        req = Request(spec.req_id, spec.prompt_tokens, spec.output_tokens, keys, self.env.now, phase)
        req.on_finish = on_finish
        self.submitted += 1
        self._unrecorded.add(id(req))
        inst = self.entry[self._route(self.router, self.entry, req)]
        idx = inst.index
        req.prefill_only = self.disaggregated
        if not inst.sched.can_ever_fit(req):
            req.state = State.REJECTED
            req.instance = idx
            req.reject_reason = (
                f"prompt+output ({req.prompt_tokens}+{req.output_tokens} tokens) exceeds the "
                f"instance's KV cache ({self.kv_blocks} blocks of {bs} tokens)"
            )
            self.rejected += 1
            self.last_reject_reason = req.reject_reason
            self._finished(req)
            return req
        self._live[id(req)] = req
        inst.submit(req)
        return req

    # -- phases -------------------------------------------------------------------------
    def _open_loop(self, wl: Workload, phase: str):
        start = self.env.now
        for spec in wl.requests:
            delay = start + (spec.arrival_s or 0.0) - self.env.now
            if delay > 0:
                yield self.env.timeout(delay)
            self.submit(spec, phase)

    def _closed_loop(self, wl: Workload, phase: str):
        it = iter(wl.requests)
        env = self.env

        def client():
            for spec in it:
                done = env.event()
                self.submit(spec, phase, on_finish=lambda _r, done=done: done.succeed())
                yield done
                if wl.think_time_s > 0:
                    yield env.timeout(wl.think_time_s)

        for _ in range(max(1, wl.clients)):
            env.process(client())
        return
        yield  # a generator, like _open_loop

    def _session_loop(self, wl: Workload, phase: str):
        """Each session sends its turns in order: the first at its arrival_s, each later
        one tags["think_s"] after the previous one finished."""
        env = self.env
        start = env.now
        sessions: dict = {}
        for spec in wl.requests:
            sessions.setdefault(spec.tags["session"], []).append(spec)

        def session(turns):
            delay = start + (turns[0].arrival_s or 0.0) - env.now
            if delay > 0:
                yield env.timeout(delay)
            for k, spec in enumerate(turns):
                think = spec.tags.get("think_s", 0.0) if k else 0.0
                if think > 0:
                    yield env.timeout(think)
                done = env.event()
                self.submit(spec, phase, on_finish=lambda _r, done=done: done.succeed())
                yield done

        for turns in sessions.values():
            env.process(session(turns))
        return
        yield  # a generator, like _open_loop

    def run_phase(self, phase: str, wl: Workload, max_time: float) -> None:
        if not wl.requests:
            raise SimulationError(f"phase {phase!r}: the workload has no requests")
        self._phase_left = len(wl.requests)
        self._phase_done = self.env.event()
        if wl.mode == "closed":
            self.env.process(self._closed_loop(wl, phase))
        elif wl.mode == "sessions":
            self.env.process(self._session_loop(wl, phase))
        else:
            self.env.process(self._open_loop(wl, phase))
        deadline = self.env.timeout(max_time)
        with _long_lived_frozen():
            self.env.run(until=self._phase_done | deadline)
        if not self._phase_done.triggered:
            # Report what could not be served instead of dropping it.
            for req in list(self._live.values()):
                if req.phase == phase:
                    self._record(req)
            raise SimulationError(
                f"phase {phase!r} did not finish within max_sim_time_s={max_time:g}: "
                f"{self._phase_left} requests outstanding"
            )

    def clear_hbm(self) -> None:
        for inst in self.instances:
            inst.sched.clear_cache()

    def drain(self) -> None:
        """Let in-flight saves finish. Engines are idle, so only transfers remain; stepping
        event by event stops before the phases' unused deadline timers."""
        env = self.env
        while self.paths.fabric.active_flows or any(i.pending_saves for i in self.instances):
            try:
                env.step()
            except EmptySchedule:
                stuck = {i.index: i.pending_saves for i in self.instances if i.pending_saves}
                raise CheckFailed(
                    f"system {self.system.name!r}: saves that never complete: nothing left to simulate "
                    f"but {sum(stuck.values())} saves are still pending (instance: saves {stuck}), "
                    f"{self.paths.fabric.active_flows} flows active") from None
        self.end_time = max(self.end_time, env.now)

    @property
    def events_scheduled(self) -> int:
        # the kernel numbers every scheduled event (its tie-breaker)
        return self.env.scheduled

    def check(self) -> dict:
        """Conservation at the end of a run; a failure raises CheckFailed saying what and by how much."""
        problems: list[str] = []
        for inst in self.instances:
            try:
                inst.sched.check()
            except AssertionError as e:
                problems.append(f"instance {inst.index}: {e}")
            if inst.sched.running or inst.sched.waiting:
                problems.append(f"instance {inst.index} still holds requests")
            if inst.pending_saves:
                problems.append(f"instance {inst.index} has {inst.pending_saves} saves in flight")
            if inst.sched.held:
                problems.append(f"instance {inst.index}: {len(inst.sched.held)} finished requests "
                                "still hold blocks for saves that never landed")
        for tier in self.tiers:
            try:
                tier.check()
            except AssertionError as e:
                problems.append(str(e))
        f = self.paths.fabric
        problems += f.conservation_problems()
        if self._live:
            problems.append(f"{len(self._live)} requests neither finished nor reported")
        if self.submitted != self.completed + self.rejected:
            problems.append(f"requests submitted ({self.submitted}) != finished ({self.completed}) "
                            f"+ rejected ({self.rejected})")
        if self.recorded_twice:
            problems.append(f"{len(self.recorded_twice)} requests recorded twice or never admitted "
                            f"(e.g. {', '.join(self.recorded_twice[:3])})")
        if self.records != self.submitted:
            problems.append(f"{self.records} request records for {self.submitted} requests admitted")
        if problems:
            raise CheckFailed(f"system {self.system.name!r}: " + "; ".join(problems))
        st = self.paths.stats
        moved = st.load_bytes + st.save_bytes
        return {
            "requests_submitted": self.submitted,
            "requests_finished": self.completed,
            "requests_rejected": self.rejected,
            "kv_blocks_in_use_at_end": sum(i.sched.pool.in_use for i in self.instances),
            "bytes_requested": f.bytes_requested,
            "bytes_delivered": f.bytes_delivered,
            "bytes_moved": f.bytes_moved,
            "tier_bytes_moved": moved,
        }


@contextmanager
def _long_lived_frozen():
    """Run a phase with what exists before it (the workload, the indexes, the models) out of
    the cyclic garbage collector's way: its full collections walked all of it, again and again,
    for none of it is garbage during the phase (about 3% of a trace replay's instructions).
    Young objects are collected as before, in larger batches. Restored afterwards."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def simulate(scenario: Scenario, system: SystemConfig, recorder: Recorder, progress=None,
             goodput: dict[str, float] | None = None) -> SystemRun:
    """Run every phase of the scenario on one system."""
    t0 = time.perf_counter()
    recorder.itl_exact_gaps = scenario.run.itl_exact_gaps
    cluster = Cluster(scenario, system, recorder)
    bs = scenario.engine.block_size
    phase_starts = {}
    warnings: list[str] = []
    for n, phase in enumerate(scenario.run.phases):
        if phase.wait_for_saves:
            cluster.drain()
        if phase.clear_hbm_cache:
            cluster.clear_hbm()
        wl_cfg = phase.workload or scenario.workload
        wl = build_workload(wl_cfg, block_size=bs, seed=scenario.run.seed, base_dir=scenario.base_dir,
                            phase=phase.name)
        phase_starts[phase.name] = cluster.env.now
        if progress:
            progress(f"{system.name}: phase {phase.name} ({len(wl.requests)} requests)")
        rejected_before = cluster.rejected
        cluster.run_phase(phase.name, wl, scenario.run.max_sim_time_s)
        note = _overload(wl, cluster.env.now - phase_starts[phase.name])
        if note:
            warnings.append(f"{system.name}, phase {phase.name}: {note}")
        if cluster.rejected - rejected_before == len(wl.requests):
            raise SimulationError(
                f"system {system.name!r}, phase {phase.name!r}: none of the {len(wl.requests)} requests can be "
                f"served: {cluster.last_reject_reason} (raise engine.kv_blocks or gpu_memory_utilization, "
                "or shorten the prompts)")
    cluster.drain()
    checks = cluster.check()
    sim_s = cluster.end_time
    summaries = [summarize(recorder.rows, system.name, p.name, recorder.gaps_view(system.name, p.name), goodput)
                 for p in scenario.run.phases]
    st = cluster.paths.stats
    transfers = {
        "loads": st.loads, "saves": st.saves, "load_gb": st.load_bytes / GB, "save_gb": st.save_bytes / GB,
        "mean_load_s": st.load_time_s / st.loads if st.loads else None,
        "mean_save_s": st.save_time_s / st.saves if st.saves else None,
        "rpc_calls": st.rpc_calls, "work_requests": st.work_requests,
        "tier_evictions": sum(t.evictions for t in cluster.tiers),
        "hbm_evictions": sum(i.sched.pool.evictions for i in cluster.instances),
    }
    return SystemRun(
        system=system.name,
        summaries=summaries,
        wall_s=time.perf_counter() - t0,
        sim_s=sim_s,
        steps=sum(i.steps for i in cluster.instances),
        step_events=sum(i.step_events for i in cluster.instances),
        link_utilisation={k: v for k, v in sorted(cluster.paths.fabric.utilisation(sim_s).items())
                          if v >= 0.001},
        transfers=transfers,
        checks=checks,
        events=cluster.events_scheduled,
        warnings=warnings,
        utilisation_series=cluster.paths.fabric.utilisation_series(sim_s, top=8),
    )


def _overload(wl: Workload, phase_s: float) -> str | None:
    """An open-loop phase whose requests arrive faster than the cluster serves them: queues
    (and TTFT) grow with the length of the trace, so its means describe the trace, not the system."""
    arrivals = wl.arrival_times()
    if wl.mode != "open" or len(arrivals) < 10:
        return None
    span = max(arrivals) - min(arrivals)
    if span <= 0 or phase_s <= 0:
        return None
    offered, served = len(arrivals) / span, len(wl.requests) / phase_s
    if served < 0.8 * offered:
        return (f"overloaded: requests arrive at {offered:.3g}/s but were served at {served:.3g}/s; "
                "queues and TTFT grow with the trace length (lower the rate or add instances)")
    return None
