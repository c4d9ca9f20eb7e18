"""The discrete-event kernel: SimPy's environment, events, processes, conditions and
resources, with SimPy's semantics, written to be compiled with the model's hot modules.

Every event a run schedules passes through here (about 35 per request), and SimPy's own
Python (a heap of tuples compared element by element, events with instance dictionaries,
processes resumed through bound methods) cost more than its share of a compiled replay.
This kernel keeps SimPy's contract, so that a run gives the same results event for event:

- events are processed in the order of (time, priority, the order they were scheduled in),
  URGENT before NORMAL at the same time;
- an event's callbacks run in the order they were added, once, when it is processed; a
  failed event that nobody defused raises out of step();
- a process starts at an URGENT Initialize event, is resumed by the events it yields and,
  when its generator returns, schedules itself as an event with the return value;
- a condition (all_of, any_of, `a & b`, `a | b`) checks its events as they are processed;
- a resource grants requests first come, first served, trying only the queue's head when a
  request is made or a release (an event) is processed.

Differences: no Process.interrupt and no priority or preemptive resources (belusim uses
neither); a yielded non-event raises RuntimeError without the frame's source line; time is
a float; Environment.spawn runs a generator as a Task. tests/test_kernel.py runs the same
random programs on SimPy and here and compares the traces and the events scheduled.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from heapq import heappop, heappush
from typing import Any

Infinity = float("inf")
URGENT = 0
NORMAL = 1

# Compiled (an extension module), the schedule is a heap of events compared by their native
# fields; run as Python source, a heap of (time, priority, number, event) tuples through the
# C heapq, as SimPy's, is faster. Both order events alike: by time, priority, number.
_COMPILED = not __file__.endswith(".py")


class EmptySchedule(Exception):
    """No events left to process."""


class StopSimulation(Exception):
    """Ends Environment.run() at its `until` event."""


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = _Pending()


class Event:
    """Something that happens at a point in simulated time. Triggered (succeed/fail)
    schedules it; processed runs its callbacks (then callbacks is None)."""

    # defaults in the class: a new event sets only what differs (cheaper run as Python)
    _value: Any = PENDING
    _ok: bool = False
    _defused: bool = False
    # its place in the schedule: (time, priority, number)
    _at: float = 0.0
    _priority: int = NORMAL
    _eid: int = 0

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.callbacks: list[Any] | None = []

    def __repr__(self) -> str:
        return f"<{self._desc()} object at {id(self):#x}>"

    def _desc(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def triggered(self) -> bool:
        return self._value is not PENDING

    @property
    def processed(self) -> bool:
        return self.callbacks is None

    @property
    def ok(self) -> bool:
        return self._ok

    @property
    def defused(self) -> bool:
        return self._defused

    @defused.setter
    def defused(self, value: bool) -> None:
        self._defused = True

    @property
    def value(self) -> Any:
        if self._value is PENDING:
            raise AttributeError(f"Value of {self} is not yet available")
        return self._value

    def trigger(self, event: Event) -> None:
        """Take event's outcome (as a callback of it)."""
        self._ok = event._ok
        self._value = event._value
        self.env.schedule(self)

    def succeed(self, value: Any = None) -> Event:
        return self._settle(True, value)

    def fail(self, exception: BaseException) -> Event:
        if self._value is PENDING and not isinstance(exception, BaseException):
            raise TypeError(f"{exception} is not an exception.")
        return self._settle(False, exception)

    def _settle(self, ok: bool, value: Any) -> Event:
        if self._value is not PENDING:
            raise RuntimeError(f"{self} has already been triggered")
        self._ok = ok
        self._value = value
        self.env.schedule(self)
        return self

    def __and__(self, other: Event) -> Condition:
        return Condition(self.env, True, [self, other])

    def __or__(self, other: Event) -> Condition:
        return Condition(self.env, False, [self, other])


class Timeout(Event):
    """An event that succeeds `delay` after now."""

    def __init__(self, env: Environment, delay: float, value: Any = None) -> None:
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        self.env = env
        self.callbacks = []
        self._value = value
        self._ok = True
        self._delay = delay
        env.schedule(self, NORMAL, delay)

    def _desc(self) -> str:
        value = "" if self._value is None else f", value={self._value}"
        return f"Timeout({self._delay}{value})"


class Process(Event):
    """A generator run as a process: resumed by the events it yields; as an event, it is
    triggered by the generator's return (or exception)."""

    def __init__(self, env: Environment, generator: Generator[Any, Any, Any]) -> None:
        if not hasattr(generator, "throw"):
            raise ValueError(f"{generator} is not a generator.")
        self.env = env
        self.callbacks = []
        self._generator = generator
        self._target: Event | None = env._urgent([self])

    def _desc(self) -> str:
        return f"Process({self.name})"

    @property
    def target(self) -> Event | None:
        return self._target

    @property
    def name(self) -> str:
        return str(getattr(self._generator, "__name__", "process"))

    @property
    def is_alive(self) -> bool:
        return self._value is PENDING

    # A process waits in its target's callbacks as itself (not a bound method, made anew at
    # every wait) and step() resumes it. It has no __call__: with one, mypyc 2.4.1 compiled
    # this subclass with its fields shifted (process.callbacks read the environment).
    def _resume(self, event: Event) -> None:
        env = self.env
        env._active_proc = self
        gen = self._generator
        target: Event | None = None
        while True:
            try:
                if event._ok:
                    nxt = gen.send(event._value)
                else:
                    event._defused = True
                    exc = type(event._value)(*event._value.args)
                    exc.__cause__ = event._value
                    nxt = gen.throw(exc)
            except StopIteration as e:
                self._ok = True
                self._value = e.value
                env.schedule(self)
                target = None
                break
            except BaseException as e:
                self._ok = False
                self._value = e
                env.schedule(self)
                target = None
                break
            if not isinstance(nxt, Event):
                raise RuntimeError(f'Invalid yield value "{nxt}" in process {self.name}')
            target = nxt
            cbs = nxt.callbacks
            if cbs is not None:
                cbs.append(self)
                break
            event = nxt  # already processed: go on at once
        self._target = target
        env._active_proc = None


class Task:
    """A generator run as Environment.process() would run it, for a caller that never waits
    for its end: started by an URGENT event and resumed by the events it yields, in the same
    order, but with no end event (its return value is dropped; an exception propagates)."""

    def __init__(self, env: Environment, gen: Generator[Any, Any, Any]) -> None:
        self.gen = gen
        env._urgent([self])

    def __call__(self, event: Event) -> None:
        self._resume(event)

    def _resume(self, event: Event) -> None:
        gen = self.gen
        while True:
            try:
                if event._ok:
                    nxt = gen.send(event._value)
                else:
                    event._defused = True
                    nxt = gen.throw(event._value)
            except StopIteration:
                return
            cbs = nxt.callbacks
            if cbs is not None:  # not yet processed: resume when it is
                cbs.append(self)
                return
            event = nxt


class ConditionValue:
    """The events of a condition that had been processed when it was, in its order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __getitem__(self, key: Event) -> Any:
        if key not in self.events:
            raise KeyError(str(key))
        return key._value

    def __contains__(self, key: Event) -> bool:
        return key in self.events

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConditionValue):
            return self.events == other.events
        if isinstance(other, dict):
            return self.todict() == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"<ConditionValue {self.todict()}>"

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))

    def keys(self) -> Iterator[Event]:
        return iter(list(self.events))

    def values(self) -> Iterator[Any]:
        return iter([e._value for e in self.events])

    def items(self) -> Iterator[tuple[Event, Any]]:
        return iter([(e, e._value) for e in self.events])

    def todict(self) -> dict[Event, Any]:
        return {e: e._value for e in self.events}


class Condition(Event):
    """Succeeds once all (all_events) or any of its events have succeeded; fails with the
    first of them that fails."""

    def __init__(self, env: Environment, all_events: bool, events: Iterable[Event]) -> None:
        super().__init__(env)
        self._all = all_events
        self._events = tuple(events)
        self._count = 0
        self._check_cb = self._check  # one bound method: added to and removed from the events
        if not self._events:
            self.succeed(ConditionValue())
            return
        for event in self._events:
            if self.env is not event.env:
                raise ValueError("It is not allowed to mix events from different environments")
        for event in self._events:
            cbs = event.callbacks
            if cbs is None:
                self._check(event)
            else:
                cbs.append(self._check_cb)
        self.callbacks.append(self._build_value)  # type: ignore[union-attr]

    def _desc(self) -> str:
        return f"{'AllOf' if self._all else 'AnyOf'}({self._events})"

    def _populate_value(self, value: ConditionValue) -> None:
        for event in self._events:
            if isinstance(event, Condition):
                event._populate_value(value)
            elif event.callbacks is None:
                value.events.append(event)

    def _build_value(self, event: Event) -> None:
        self._remove_check_callbacks()
        if event._ok:
            value = ConditionValue()
            self._value = value
            self._populate_value(value)

    def _remove_check_callbacks(self) -> None:
        for event in self._events:
            cbs = event.callbacks
            if cbs:
                for i in range(len(cbs)):
                    if cbs[i] is self._check_cb:
                        del cbs[i]
                        break
            if isinstance(event, Condition):
                event._remove_check_callbacks()

    def _check(self, event: Event) -> None:
        if self._value is not PENDING:
            return
        self._count += 1
        if not event._ok:
            event._defused = True
            self.fail(event._value)
        elif (self._count == len(self._events)) if self._all else (self._count > 0):
            self.succeed()


class Request(Event):
    """A request for one unit of a Resource: succeeds when granted. As a context manager it
    releases the unit on exit (or withdraws the request if it was never granted)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.env)
        self.resource = resource
        self.usage_since: float | None = None
        resource.queue.append(self)
        resource._grant()

    def __enter__(self) -> Request:
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.cancel()
        if exc_type is not GeneratorExit:
            self.resource.release(self)

    def cancel(self) -> None:
        if self._value is PENDING:
            self.resource.queue.remove(self)


class Release(Event):
    """Gives a request's unit back; succeeds at once."""

    def __init__(self, resource: Resource, request: Request) -> None:
        super().__init__(resource.env)
        self.request = request
        self.resource = resource
        self.callbacks.append(resource._grant_after)  # type: ignore[union-attr]
        try:
            resource.users.remove(request)
        except ValueError:
            pass
        self.succeed()


class Resource:
    """`capacity` units, granted first come, first served (SimPy's Resource: a request is
    granted when made if a unit is free, else when a release event frees one)."""

    def __init__(self, env: Environment, capacity: int = 1) -> None:
        if capacity <= 0:
            raise ValueError('"capacity" must be > 0.')
        self.env = env
        self.capacity = capacity
        self.users: list[Request] = []
        self.queue: list[Request] = []

    @property
    def count(self) -> int:
        return len(self.users)

    def request(self) -> Request:
        return Request(self)

    def release(self, request: Request) -> Release:
        return Release(self, request)

    def _grant(self) -> None:
        # At most the head, as SimPy's _trigger_put tries the first waiting request only.
        queue = self.queue
        if queue and len(self.users) < self.capacity:
            req = queue.pop(0)
            self.users.append(req)
            req.usage_since = self.env._now
            req.succeed()

    def _grant_after(self, _release: Event) -> None:
        self._grant()


def _stop(event: Event) -> None:
    """run()'s callback on its `until` event."""
    if event._ok:
        raise StopSimulation(event._value)
    raise event._value


class Environment:
    """Simulated time and the schedule of events: a binary heap ordered by (time,
    priority, the order they were scheduled in)."""

    def __init__(self, initial_time: float = 0.0) -> None:
        self._now = float(initial_time)
        self._queue: list[Event] = []  # compiled: the heap of events
        self._tuples: list[tuple[float, int, int, Event]] = []  # as Python: the heap of tuples
        self._eid = 0
        self._active_proc: Process | None = None

    @property
    def now(self) -> float:
        """The current simulated time."""
        return self._now

    @property
    def active_process(self) -> Process | None:
        return self._active_proc

    @property
    def scheduled(self) -> int:
        """Events scheduled so far (SimPy numbers each one: the tie-breaker)."""
        return self._eid

    # -- making events --------------------------------------------------------------
    def event(self) -> Event:
        return Event(self)

    def timeout(self, delay: float = 0.0, value: Any = None) -> Timeout:
        return Timeout(self, delay, value)

    def process(self, generator: Generator[Any, Any, Any]) -> Process:
        return Process(self, generator)

    def spawn(self, generator: Generator[Any, Any, Any]) -> None:
        """Run a generator as a process that nobody waits for (see Task)."""
        Task(self, generator)

    def all_of(self, events: Iterable[Event]) -> Condition:
        return Condition(self, True, events)

    def any_of(self, events: Iterable[Event]) -> Condition:
        return Condition(self, False, events)

    def _urgent(self, callbacks: list[Any], delay: float = 0.0) -> Event:
        """A succeeded event (value None) scheduled URGENT after `delay`: a process's start,
        run()'s stop time."""
        event = Event(self)
        event.callbacks = callbacks
        event._ok = True
        event._value = None
        self.schedule(event, URGENT, delay)
        return event

    # -- the schedule ---------------------------------------------------------------------
    def schedule(self, event: Event, priority: int = NORMAL, delay: float = 0.0) -> None:
        """Put `event` on the schedule at now + delay (an event is on it at most once)."""
        at = self._now + delay
        eid = self._eid
        self._eid = eid + 1
        event._at = at
        if not _COMPILED:
            heappush(self._tuples, (at, priority, eid, event))
            return
        event._priority = priority
        event._eid = eid
        q = self._queue
        q.append(event)
        # sift up
        pos = len(q) - 1
        while pos > 0:
            parent_pos = (pos - 1) >> 1
            parent = q[parent_pos]
            pat = parent._at
            if at < pat or (at == pat and (priority < parent._priority
                                           or (priority == parent._priority and eid < parent._eid))):
                q[pos] = parent
                pos = parent_pos
            else:
                break
        q[pos] = event

    def _pop(self) -> Event:
        if not _COMPILED:
            return heappop(self._tuples)[3]
        q = self._queue
        last = q.pop()
        if not q:
            return last
        first = q[0]
        # sift `last` down from the root
        n = len(q)
        at, pr, eid = last._at, last._priority, last._eid
        pos = 0
        child = 1
        while child < n:
            c = q[child]
            right = child + 1
            if right < n:
                r = q[right]
                if _before(r, c):
                    child, c = right, r
            cat = c._at
            if cat < at or (cat == at and (c._priority < pr or (c._priority == pr and c._eid < eid))):
                q[pos] = c
                pos = child
                child = 2 * pos + 1
            else:
                break
        q[pos] = last
        return first

    def peek(self) -> float:
        """The time of the next event (infinity if none)."""
        if _COMPILED:
            return self._queue[0]._at if self._queue else Infinity
        return self._tuples[0][0] if self._tuples else Infinity

    def step(self) -> None:
        """Process the next event; EmptySchedule if there is none."""
        if not (self._queue or self._tuples):
            raise EmptySchedule()
        event = self._pop()
        self._now = event._at
        callbacks = event.callbacks
        event.callbacks = None
        if callbacks is not None:
            i = 0
            try:
                for i in range(len(callbacks)):
                    cb = callbacks[i]
                    if isinstance(cb, Process):
                        cb._resume(event)
                    elif isinstance(cb, Task):
                        cb._resume(event)
                    else:
                        cb(event)
            except StopSimulation:
                event.callbacks = callbacks[i + 1:]
                self.schedule(event, -1)
                raise
        if not event._ok and not event._defused:
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc

    def run(self, until: Any = None) -> Any:
        """Process events until none are left, until time `until` or until the event `until`
        is processed (returning its value)."""
        if until is not None:
            if not isinstance(until, Event):
                at = float(until)
                if at <= self._now:
                    raise ValueError(f"until ({at}) must be greater than the current simulation time")
                until = self._urgent([], at - self._now)
            elif until.callbacks is None:
                return until.value
            until.callbacks.append(_stop)
        try:
            while True:
                self.step()
        except StopSimulation as exc:
            return exc.args[0]
        except EmptySchedule:
            if until is not None:
                raise RuntimeError(f'No scheduled events left but "until" event was not triggered: {until}') from None
        return None


def _before(a: Event, b: Event) -> bool:
    """a comes before b in the schedule."""
    if a._at != b._at:
        return a._at < b._at
    if a._priority != b._priority:
        return a._priority < b._priority
    return a._eid < b._eid


__all__ = ["Condition", "ConditionValue", "EmptySchedule", "Environment", "Event", "Infinity", "NORMAL",
           "PENDING", "Process", "Release", "Request", "Resource", "StopSimulation", "Task", "Timeout",
           "URGENT"]
