"""The step loop of one engine, written once: schedule, execute, apply.

`step_loop` is a generator in policy terms. It tells its executor which transfers to start
and yields what it waits for; the executor answers. Two executors drive it: the SimPy model
(`belusim.sim.engine`) and the real-time replay (`belusim.replay`), so the scheduler, block
pool, prefix cache, tier index and connector semantics see the same calls in the same order
in both.

What the loop yields:
  IDLE            nothing to run: resume when a request arrives or a load lands
  Execute(p, k)   run step p: the lookups' metadata RPCs, the in-step loads (sync: one
                  request after another, then the forward pass; layer-wise: overlapping
                  it), the forward pass. k > 1: up to k identical pure-decode steps (the
                  first may start with the RPCs of a lookup that failed). The executor
                  sends back how many steps it ran.
  WaitSaves(s)    run these saves and resume once all have landed (sync-step-end saves)

The executor implements:
  now() -> float
  plan_load(load, in_step)    a load was planned; not in_step: start it now and, when it
                              lands, call load_landed() and wake the loop
  start_saves(saves)          start saves that the loop does not wait for; when each lands,
                              call save_landed()
  steady() -> bool            no copy in flight that changes step times (a stretch may run)
  step_ended()                a step's tokens are out
  request_finished(request)
"""

from __future__ import annotations

from belusim.policy.connector import ConnectorSemantics
from belusim.policy.scheduler import Load, Save, Scheduler, StepPlan


class _Idle:
    __slots__ = ()

    def __repr__(self) -> str:
        return "IDLE"


IDLE = _Idle()


class Execute:
    __slots__ = ("plan", "steps")

    def __init__(self, plan: StepPlan, steps: int = 1):  # (not a dataclass: see scheduler.Load)
        self.plan = plan
        self.steps = steps  # > 1: a pure-decode stretch of up to this many steps


class WaitSaves:
    __slots__ = ("saves",)

    def __init__(self, saves: list[Save]):
        self.saves = saves


def step_loop(sched: Scheduler, conn: ConnectorSemantics, ex, coalesce_steps: int = 1):
    """One engine's life: schedule a step, have the executor run it, apply it, repeat."""
    while True:
        now = ex.now()
        plan = sched.schedule(now)
        for load in plan.loads:
            load.request.load_start = now
            ex.plan_load(load, plan.in_step_loads)
        if not plan.scheduled:
            if plan.loads and plan.in_step_loads:
                raise AssertionError("an in-step load was planned without its request")
            if not plan.preempted:  # preempted everything it had: admit afresh at once
                yield IDLE
            continue
        # A stretch needs a steady step: no copy kernel overlapping it (its slowdown is per
        # step) and nothing new to admit. A blocked waiting request stays blocked until
        # blocks are freed (a finish or a held request's save ends the stretch), its
        # instance evicts one of its hits (the horizon avoids it) or the tier changes its
        # prefix (the saving side notifies); with every sequence slot taken, nothing is
        # admitted before a request finishes.
        k = 1
        if (coalesce_steps > 1 and plan.pure_decode
                and sched.admission_stalled()
                and ex.steady()):
            k = sched.decode_horizon(coalesce_steps)
        if k > 1:
            ran = yield Execute(plan, k)
            for req in sched.advance_decode(plan, ran, ex.now()):
                ex.request_finished(req)
            continue
        yield Execute(plan, 1)
        firsts, finished, saves = sched.step_done(plan, ex.now())
        if saves and conn.step_waits_for_saves:
            # wait_for_save(): the step's outputs leave once its saves have landed
            yield WaitSaves(saves)
            now = ex.now()
            for req in firsts:
                req.first_token = now
            for req in finished:
                req.finish = now
            ex.step_ended()
        else:
            ex.step_ended()
            if saves:
                ex.start_saves(saves)
        for req in finished:
            ex.request_finished(req)


def load_landed(sched: Scheduler, load: Load, now: float) -> None:
    """An async load's data landed: its request may run from the next step on."""
    load.request.load_end = now
    sched.load_done(load)


def save_landed(sched: Scheduler, save: Save, on_evicted, wake, on_woken=None) -> None:
    """A save's data landed: the tier stores its chunks (on_evicted(evicted) sees what that
    pushed out, unless None; on_woken(requests) the blocked requests whose lookup that may change: any
    instance's, the tier may be shared); wake() if that freed a finished request's held
    blocks (the head may fit now); then the request's on_saved callback runs once its last
    save landed."""
    tier = sched.tier
    evicted = tier.end_save(save.request.keys, save.chunk_indexes, save.request, save.tier_run,  # type: ignore
                            report=on_evicted is not None)
    if on_evicted is not None:
        on_evicted(evicted)
    woken = tier.take_woken()  # type: ignore
    if woken and on_woken is not None:
        on_woken(woken)
    if sched.save_done(save):
        wake()
    req = save.request
    if req.saves_in_flight == 0 and req.on_saved is not None:
        cb, req.on_saved = req.on_saved, None
        cb(req)
