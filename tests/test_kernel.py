"""The event kernel against SimPy: the same random programs (processes, timeouts at tied
times, events triggered by others, conditions, resources, failures, return values) give the
same trace of (time, what happened) and the same count of scheduled events."""

from __future__ import annotations

import random

import pytest
import simpy

from belusim.sim import kernel


class Boom(Exception):
    pass


def _program(env, resource_cls, seed: int) -> tuple[list, int]:
    rng = random.Random(seed)
    log: list = []
    res = [resource_cls(env, capacity=rng.choice([1, 1, 2, 3])) for _ in range(2)]
    signals = [env.event() for _ in range(6)]

    def worker(i: int):
        for step in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.3:
                yield env.timeout(rng.choice([0, 0.5, 1, 1, 2]))
            elif kind < 0.5:
                r = res[rng.randrange(2)]
                with r.request() as req:
                    yield req
                    log.append((env.now, i, step, "got", r.count))
                    yield env.timeout(rng.choice([0, 1, 2]))
            elif kind < 0.6:
                sig = signals[rng.randrange(len(signals))]
                if not sig.triggered:
                    if rng.random() < 0.2:
                        sig.fail(Boom(i))
                    else:
                        sig.succeed(i)
                yield env.timeout(0)
            elif kind < 0.75:
                sig = signals[rng.randrange(len(signals))]
                t = env.timeout(rng.choice([1, 2, 3]), value="t")
                cond = (sig | t) if rng.random() < 0.6 else (sig & t)
                try:
                    got = yield cond
                    log.append((env.now, i, step, "cond", sorted(str(v) for v in got.values())))
                except Boom as e:
                    log.append((env.now, i, step, "boom", e.args))
            elif kind < 0.85:
                child = env.process(helper(i, step))
                try:
                    v = yield child
                    log.append((env.now, i, step, "child", v))
                except Boom as e:
                    log.append((env.now, i, step, "child-boom", e.args))
            else:
                evs = [env.timeout(rng.choice([0, 1, 2])) for _ in range(rng.randint(0, 3))]
                yield env.all_of(evs)
                log.append((env.now, i, step, "all", len(evs)))
        return i

    def helper(i: int, step: int):
        yield env.timeout(rng.choice([0, 1]))
        if rng.random() < 0.3:
            raise Boom(i, step)
        return (i, step)

    def releaser():  # triggers the signals nobody triggered, so that every worker ends
        yield env.timeout(10)
        for k, sig in enumerate(signals):
            if not sig.triggered:
                sig.succeed(f"late{k}")
                yield env.timeout(0)

    procs = [env.process(worker(i)) for i in range(rng.randint(2, 8))]
    env.process(releaser())
    for s in signals:  # a failed signal nobody waited for must not end the run
        s.callbacks.append(lambda ev: setattr(ev, "defused", True))
    done = env.all_of(procs)
    env.run(until=rng.choice([2.5, 4.0]))
    log.append((env.now, "paused"))
    value = env.run(until=done)
    log.append((env.now, "done", [value[p] for p in procs]))
    env.run()
    scheduled = next(env._eid) if isinstance(env, simpy.Environment) else env.scheduled
    return log, scheduled


@pytest.mark.parametrize("seed", range(60))
def test_kernel_matches_simpy(seed):
    want = _program(simpy.Environment(0.0), simpy.Resource, seed)
    got = _program(kernel.Environment(0.0), kernel.Resource, seed)
    assert got == want


def test_failed_event_nobody_waits_for_raises():
    for mod in (simpy, kernel):
        env = mod.Environment()
        env.event().fail(Boom("x"))
        with pytest.raises(Boom):
            env.run()


def test_run_until_the_past_and_empty_schedule():
    env = kernel.Environment(5.0)
    with pytest.raises(ValueError, match="must be greater"):
        env.run(until=1.0)
    with pytest.raises(kernel.EmptySchedule):
        env.step()
    ev = env.event()
    with pytest.raises(RuntimeError, match="until"):
        env.run(until=ev)
    assert env.peek() == kernel.Infinity


def test_yielding_a_non_event_is_an_error():
    env = kernel.Environment()

    def bad():
        yield 42

    env.process(bad())
    with pytest.raises(RuntimeError, match="Invalid yield value"):
        env.run()


def test_task_runs_like_a_process_without_an_end_event():
    env = kernel.Environment()
    log = []

    def body(tag):
        yield env.timeout(1)
        log.append((env.now, tag))

    env.spawn(body("task"))
    p = env.process(body("process"))
    env.run()
    assert log == [(1.0, "task"), (1.0, "process")]
    assert not p.is_alive
    # start + timeout each, and the process's end event
    assert env.scheduled == 5


def _grants(env, resource_cls) -> list:
    """Two holders release at once while one request waits; a third request comes after the
    releases but before their events are processed: SimPy grants only the head of the queue
    per request made or release processed, which decides where a third process's event falls."""
    res = resource_cls(env, capacity=2)
    log = []

    def user(name: str, waits: list, hold: float):
        for w in waits:
            yield env.timeout(w)
        with res.request() as req:
            yield req
            log.append((env.now, name))
            yield env.timeout(hold)

    def other():
        yield env.timeout(0.5)
        yield env.timeout(0.5)  # after c's, before the releases' events
        yield env.timeout(0)
        log.append((env.now, "f"))

    env.process(user("a", [0], 1))
    env.process(user("b", [0], 1))
    env.process(user("w1", [0.5], 1))
    env.process(user("c", [0.5, 0.5], 1))
    env.process(other())
    env.run()
    return log


def test_resource_grants_as_simpy():
    want = _grants(simpy.Environment(0.0), simpy.Resource)
    assert _grants(kernel.Environment(0.0), kernel.Resource) == want
    assert want == [(0.0, "a"), (0.0, "b"), (1.0, "w1"), (1.0, "f"), (1.0, "c")]
