"""Flows on links: a fluid model of transfers sharing capacity max-min fairly.

A transfer is one or more flows; each flow crosses a list of links and may carry a rate cap
of its own (a copy kernel's top speed, say). Whenever a flow starts or ends, every active
flow's rate is recomputed by progressive filling (max-min fairness), so completion times are
exact for piecewise-constant sharing. Fixed costs (latencies, launches, per-operation CPU
work) are added by the caller around `flow()`; this module only moves bytes.
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass, field

from belusim.sim.kernel import Environment, Event


_EPS_BYTES = 1e-3  # a flow with less left than this is done (float drift)
# Rate assignments remembered (bounds the memory of long runs). The H100 conversation trace
# meets 5,985 distinct sets of kinds in flight, kept in 4.5 MB (about 750 bytes an entry, by
# sys.getsizeof); at 4,096 the clears cost it 1,435 more fillings.
_RATES_SEEN_MAX = 8192


@dataclass(eq=False, slots=True)
class Link:
    """One direction of a link (or both, for a half-duplex part such as a memory device)."""

    name: str
    capacity: float  # bytes per second
    crossings: int = 0  # by the flows on it now (a flow that crosses it twice counts twice)
    bytes_carried: float = 0.0
    busy_time: float = 0.0  # time with at least one flow
    _busy_since: float = -1.0
    series: list = field(default_factory=list)  # bytes carried per time bucket (Fabric.bucket_s wide)
    _binned: float = 0.0  # bytes_carried already put into series
    # Progressive filling's working values (Fabric._fill), kept on the link: compiled, native
    # fields hold them unboxed, where lists indexed by link made a float object per update
    fill_count: int = 0  # crossings by flows not yet frozen
    fill_spare: float = 0.0  # capacity not yet given out
    fill_saturated: bool = False

    def __repr__(self) -> str:
        return f"Link({self.name}, {self.capacity / 1e9:.1f} GB/s)"


class Transfer:
    """Flows that one caller waits for together: `done` fires when the last has landed."""

    # Transfer and Flow are made for every transfer: plain classes, so that the compiled
    # build compiles their __init__ (a dataclass's runs as interpreted Python).
    __slots__ = ("done", "left")

    def __init__(self, done: Event, left: int = 0):
        self.done = done
        self.left = left  # flows not yet finished


@dataclass(eq=False, slots=True)
class Path:
    """A list of links built once: a flow over it needs no per-flow copies of it."""

    links: tuple[Link, ...]
    uniq: tuple[Link, ...]  # each link once (a path may cross one link twice: both ends in one DRAM)
    repeats: bool

    @classmethod
    def of(cls, links) -> "Path":
        links = tuple(links)
        uniq = tuple(dict.fromkeys(links))
        return cls(links, uniq, len(uniq) != len(links))


class Flow:
    __slots__ = ("nbytes", "links", "uniq", "cap", "transfer", "remaining", "rate", "started", "repeats", "kind")

    def __init__(self, nbytes: float, links: tuple[Link, ...], uniq: tuple[Link, ...], cap: float,
                 transfer: Transfer, remaining: float = 0.0, rate: float = 0.0, started: float = 0.0,
                 repeats: bool = False, kind: int = 0):
        self.nbytes = nbytes
        self.links = links
        self.uniq = uniq
        self.cap = cap  # the flow's own rate limit (bytes/s), inf if none
        self.transfer = transfer
        self.remaining = remaining
        self.rate = rate
        self.started = started
        self.repeats = repeats  # crosses some link twice
        self.kind = kind  # its (links, cap): flows of one kind always get the same rate


def _crosses_saturated(links: tuple[Link, ...]) -> bool:
    for link in links:
        if link.fill_saturated:
            return True
    return False


class Fabric:
    """All links of a simulated system and the flows on them."""

    def __init__(self, env: Environment):
        self.env = env
        self.links: dict[str, Link] = {}
        self._active: list[Flow] = []
        self._last_update = 0.0
        self._on_timer_cb = self._on_timer  # one bound method for every timer
        self._timer: Event | None = None  # the pending timer; older ones are stale
        # When the earliest active flow lands at the rates last assigned, and the slowest of
        # those rates: between reschedules no flow can be near done before then (_any_done)
        self._due = math.inf
        self._min_rate = math.inf
        # Rates by the kinds of flows in flight (see _assign_rates); a kind is a (links, cap)
        self._rates_seen: dict[tuple[int, ...], tuple[dict[int, float], float]] = {}
        self._kinds: dict[tuple[tuple[Link, ...], float], int] = {}
        self._kind_keys: list[tuple[tuple[Link, ...], float]] = []  # by kind: its (links, cap)
        self._in_flight: list[int] = []  # the kinds of the active flows, sorted: the key of their rates
        self.bytes_requested = 0.0  # asked of flow()
        self.bytes_delivered = 0.0  # the sizes of the flows that finished
        self.bytes_moved = 0.0  # rate integrated over time: what the links really carried
        self.max_residual = 0.0  # the most bytes a flow had left when called done (float drift)
        self.flows_started = 0
        self.flows_finished = 0
        self.transfer_log: list | None = None  # a list: every transfer's (nbytes, links) (probes)
        # Utilisation over time: bytes per link per bucket, integrated exactly from the
        # piecewise-constant rates. The bucket starts at 1 ms and doubles (merging pairs) when
        # the run outgrows max_buckets, so a run ends with between max_buckets/2 and max_buckets.
        self.record_series = False  # off: only the totals are kept (the series cost ~12% of a run)
        self.bucket_s = 1e-3
        self.max_buckets = 400
        self._busy: set[Link] = set()  # links with flows: the ones whose series grow
        # Gauges (a pool tier's chunks held, say): name -> (read(), capacity), sampled whenever
        # a flow starts or ends (when saves land and evictions happen); last value per bucket.
        self.gauges: dict = {}
        self.gauge_series: dict[str, list] = {}

    # -- topology -------------------------------------------------------------------
    def add_link(self, name: str, gbps: float) -> Link:
        if name in self.links:
            raise ValueError(f"duplicate link {name!r}")
        if not gbps > 0:
            raise ValueError(f"link {name!r} needs a positive capacity, got {gbps}")
        link = Link(name, gbps * 1e9)
        self.links[name] = link
        return link

    def link(self, name: str) -> Link:
        return self.links[name]

    def set_capacity(self, link: Link, bytes_per_s: float) -> None:
        """Change a link's capacity from now on (a copy kernel's rate while compute shares its
        SMs, say): the flows on it move at their old rates up to now and are re-shared."""
        if not bytes_per_s > 0:
            raise ValueError(f"link {link.name!r} needs a positive capacity, got {bytes_per_s}")
        if link.capacity == bytes_per_s:
            return
        self._rates_seen.clear()  # remembered rates assumed the old capacity
        if not link.crossings:
            link.capacity = bytes_per_s
            return
        self._advance()
        link.capacity = bytes_per_s
        self._reschedule()

    # -- flows ----------------------------------------------------------------------
    def flow(self, nbytes: float, links, cap_gbps: float = math.inf) -> Event:
        """Start moving nbytes over links; the returned event fires when the last byte lands."""
        return self.transfer([(nbytes, links if isinstance(links, Path) else Path.of(links))], cap_gbps)

    def transfer(self, parts: list[tuple[float, Path]], cap_gbps: float = math.inf) -> Event:
        """Start flows of (nbytes, path) at once; the returned event fires when the last of
        them has landed (with the seconds it took). One event for the lot, where waiting on
        each flow's own would cost an event per flow and one more to join them."""
        done: Event = self.env.event()
        if self.transfer_log is not None:
            self.transfer_log.extend([(nbytes, path.links) for nbytes, path in parts])
        t = Transfer(done)
        now = self.env.now
        cap = cap_gbps * 1e9
        started = tiny = False
        for nbytes, path in parts:
            self.bytes_requested += nbytes
            self.flows_started += 1
            if nbytes <= 0:
                self.flows_finished += 1
                continue
            if not path.links and not math.isfinite(cap_gbps):
                raise ValueError("a flow needs at least one link or a finite rate cap")
            if not cap_gbps > 0:
                raise ValueError(f"a flow's rate cap must be positive, got {cap_gbps}")
            if not started:
                self._advance()
                started = True
            key = (path.links, cap)
            kind = self._kinds.get(key)
            if kind is None:
                kind = self._kinds[key] = len(self._kind_keys)
                self._kind_keys.append(key)
            f = Flow(nbytes, path.links, path.uniq, cap, t, nbytes, 0.0, now, path.repeats, kind)
            insort(self._in_flight, kind)
            for link in path.links:
                n = link.crossings
                if not n:
                    link._busy_since = now
                    self._busy.add(link)
                link.crossings = n + 1
            self._active.append(f)
            t.left += 1
            if nbytes <= _EPS_BYTES:
                tiny = True
        if not started:
            done.succeed(0.0)
            return done
        # Rates once all have started: starting them one by one at the same instant moves
        # nothing in between, so the rates (and the next finish) are the same.
        self._reschedule(finish=tiny or self._any_done())
        return done

    def _advance(self) -> None:
        """Move every active flow forward to now at its current rate."""
        now = self.env.now
        dt = now - self._last_update
        self._last_update = now
        if dt <= 0:
            return
        total = self.bytes_moved
        for f in self._active:
            moved = f.rate * dt
            f.remaining -= moved
            total += moved
            for link in f.links:
                link.bytes_carried += moved
        self.bytes_moved = total
        if not self.record_series:
            return
        t0 = now - dt
        if self.gauges:
            self._sample(now)
        for link in self._busy:
            self._bin(link, t0, now, link.bytes_carried - link._binned)
            link._binned = link.bytes_carried

    def _bin(self, link: Link, t0: float, t1: float, nbytes: float) -> None:
        """Spread nbytes, carried at a constant rate over [t0, t1], into link's buckets."""
        w = self.bucket_s
        i1 = int(t1 / w)
        while i1 >= self.max_buckets:
            self._coarsen()
            w = self.bucket_s
            i1 = int(t1 / w)
        i0 = min(int(t0 / w), i1)
        s = link.series
        if len(s) <= i1:
            s.extend([0.0] * (i1 + 1 - len(s)))
        if i0 == i1:
            s[i0] += nbytes
            return
        rate = nbytes / (t1 - t0)
        s[i0] += rate * ((i0 + 1) * w - t0)
        for k in range(i0 + 1, i1):
            s[k] += rate * w
        s[i1] += rate * (t1 - i1 * w)

    def _sample(self, now: float) -> None:
        i = int(now / self.bucket_s)
        while i >= self.max_buckets:
            self._coarsen()
            i = int(now / self.bucket_s)
        for name, (read, _cap) in self.gauges.items():
            s = self.gauge_series.setdefault(name, [])
            if len(s) <= i:
                s.extend([None] * (i + 1 - len(s)))
            s[i] = read()

    def _coarsen(self) -> None:
        self.bucket_s *= 2
        for name, s in self.gauge_series.items():  # the later sample of each pair
            self.gauge_series[name] = [s[k + 1] if k + 1 < len(s) and s[k + 1] is not None else s[k]
                                       for k in range(0, len(s), 2)]
        for link in self.links.values():
            s = link.series
            if s:
                link.series = [sum(s[k:k + 2]) for k in range(0, len(s), 2)]

    def _any_done(self) -> bool:
        """Could an active flow be done now (_finish_done)? Not while the earliest one is more
        than a nanosecond and (at the slowest rate) 10 mB from landing: a flow started at the
        last reschedule or before has at least that long and (rate x that) bytes left."""
        left = self._due - self.env.now
        return not (left > 1e-9 and left * self._min_rate > 10 * _EPS_BYTES)

    def _reschedule(self, finish: bool = True) -> None:
        if finish:
            self._finish_done()
        active = self._active
        if not active:
            self._due = self._min_rate = math.inf
            return
        # Rates, and the next event: the earliest completion at those rates.
        dt = math.inf
        if len(active) == 1 and not active[0].repeats:
            # the usual case: progressive filling ends after one round; the same arithmetic
            f = active[0]
            inc = math.inf
            for link in f.links:
                inc = min(inc, link.capacity)
            slowest = f.rate = max(min(inc, f.cap), 0.0)
            dt = f.remaining / slowest
        else:
            rates, slowest = self._assign_rates()
            for f in active:
                r = f.rate = rates[f.kind]
                t = f.remaining / r
                if t < dt:
                    dt = t
        self._due, self._min_rate = self.env.now + dt, slowest
        ev = self._timer = self.env.timeout(max(dt, 0.0))
        ev.callbacks.append(self._on_timer_cb)  # type: ignore[union-attr]  # (a new timeout's is a list)

    def _on_timer(self, ev: Event) -> None:
        if ev is not self._timer:
            return  # a later start or finish already rescheduled
        self._advance()
        self._reschedule()

    def _finish_done(self) -> None:
        now = self.env.now
        busy = self._busy
        keep = []
        for f in self._active:
            rem = f.remaining
            # done: (nearly) no bytes left, or due within a picosecond or within the clock's
            # resolution (late in a long run, now + due == now: its timer would fire at this
            # same instant for ever)
            if rem <= _EPS_BYTES or (f.rate > 0 and ((due := rem / f.rate) < 1e-12 or now + due <= now)):
                for link in f.links:
                    link.bytes_carried += rem
                    n = link.crossings = link.crossings - 1
                    if not n:
                        link.busy_time += now - link._busy_since
                        busy.discard(link)
                if self.record_series:
                    for link in f.uniq:
                        self._bin(link, now, now, link.bytes_carried - link._binned)
                        link._binned = link.bytes_carried
                self._in_flight.remove(f.kind)
                self.bytes_delivered += f.nbytes
                self.max_residual = max(self.max_residual, rem)
                self.flows_finished += 1
                f.remaining = 0.0
                t = f.transfer
                t.left -= 1
                if not t.left:
                    t.done.succeed(now - f.started)
            else:
                keep.append(f)
        self._active = keep

    def _assign_rates(self) -> tuple[dict[int, float], float]:
        """The rate of each kind of flow in flight, and the least of them."""
        # Progressive filling's rates are a function of the multiset of the flows' kinds
        # (paths and caps) and the links' capacities, whatever the flows' order: each round
        # takes minima over links and flows and updates each link's spare capacity on its
        # own. The same transfers in flight get the same rates again (a lone transfer of a
        # few flows, the common case, every time its instance saves).
        key = tuple(self._in_flight)
        seen = self._rates_seen.get(key)
        if seen is None:
            rates = self._fill()
            seen = rates, min(rates.values())
            if len(self._rates_seen) >= _RATES_SEEN_MAX:
                self._rates_seen.clear()
            self._rates_seen[key] = seen
        return seen

    def _fill(self) -> dict[int, float]:
        """Progressive filling: raise all unfrozen rates together until a link or cap binds.
        Unfrozen flows all have the same rate (they rose together from 0): it is kept once,
        in r, with each link's count of unfrozen flows crossing it (at first, every flow in
        flight: the links' crossings). Flows of one kind freeze together: each kind once,
        taking its links' counts down by its flows' crossings. The working values live on
        the links (Link.fill_*), each kind's links and cap are kept from its first flow
        (_kind_keys); each link's arithmetic is the same."""
        inf = math.inf
        live: list[Link] = []  # the links some unfrozen flow crosses
        inc = inf  # the smallest fair increment any link allows
        for link in self._busy:
            n = link.crossings
            c = link.capacity
            link.fill_count = n
            link.fill_spare = c
            live.append(link)
            v = c / n
            if v < inc:
                inc = v
        # each kind once, (kind, cap, its links, its flows in flight), from the sorted kinds
        # in flight; the order of kinds changes no rate (every step below is a minimum, a
        # test per kind or an integer count)
        kind_keys = self._kind_keys
        unfrozen: list[tuple[int, float, tuple[Link, ...], int]] = []
        in_flight = self._in_flight
        j, n_in = 0, len(in_flight)
        while j < n_in:
            k = in_flight[j]
            j0 = j
            j += 1
            while j < n_in and in_flight[j] == k:
                j += 1
            links, kind_cap = kind_keys[k]
            unfrozen.append((k, kind_cap, links, j - j0))
        rates: dict[int, float] = {}
        r = 0.0
        while True:
            cap = min([u[1] for u in unfrozen])
            inc = max(min(inc, cap - r), 0.0)
            r += inc
            any_saturated = False
            for link in live:
                left = link.fill_spare - inc * link.fill_count
                link.fill_spare = left
                if left <= link.capacity * 1e-12:
                    link.fill_saturated = True
                    any_saturated = True
                else:
                    link.fill_saturated = False
            # freeze flows on saturated links or at their caps (an unfrozen kind's links are
            # all live, so their fill_saturated is this round's)
            keep = []
            frozen = []
            for u in unfrozen:
                ucap = u[1]
                if (ucap < inf and ucap - r <= ucap * 1e-12) or (any_saturated and _crosses_saturated(u[2])):
                    rates[u[0]] = r
                    frozen.append(u)
                else:
                    keep.append(u)
            if not keep or len(keep) == len(unfrozen):  # the second: cannot happen with exact arithmetic
                break
            unfrozen = keep
            for u in frozen:
                m = u[3]
                for link in u[2]:
                    link.fill_count -= m
            live = [link for link in live if link.fill_count]
            inc = inf
            for link in live:
                v = link.fill_spare / link.fill_count
                if v < inc:
                    inc = v
        for u in keep:
            rates[u[0]] = r
        return rates

    # -- accounting ----------------------------------------------------------------
    def conservation_problems(self) -> list[str]:
        """What does not add up at the end of a run: every flow finished, and the bytes the
        rates moved over time equal the bytes asked (up to float drift per flow)."""
        out = []
        if self._active or self.flows_started != self.flows_finished:
            out.append(f"{len(self._active)} flows still active at the end "
                       f"({self.flows_started} started, {self.flows_finished} finished)")
        if not math.isclose(self.bytes_requested, self.bytes_delivered, rel_tol=1e-9, abs_tol=1.0):
            out.append(f"bytes requested {self.bytes_requested:.0f} != bytes of finished flows "
                       f"{self.bytes_delivered:.0f}")
        # each finished flow may be called done with up to max(_EPS_BYTES, rate x 1 ps) left
        slack = self.flows_finished * max(_EPS_BYTES, self.max_residual) + 1e-9 * self.bytes_requested
        if abs(self.bytes_requested - self.bytes_moved) > slack + 1.0:
            out.append(f"bytes moved (rates integrated over time) {self.bytes_moved:.0f} != bytes requested "
                       f"{self.bytes_requested:.0f}: {self.bytes_requested - self.bytes_moved:.0f} bytes never moved")
        return out

    @property
    def active_flows(self) -> int:
        return len(self._active)

    def utilisation(self, makespan: float) -> dict[str, float]:
        """Mean utilisation of each link that carried bytes over [0, makespan]."""
        if makespan <= 0:
            return {}
        return {
            name: link.bytes_carried / (link.capacity * makespan)
            for name, link in self.links.items()
            if link.bytes_carried > 0
        }

    def utilisation_series(self, makespan: float, top: int | None = None) -> dict:
        """Utilisation of each link that carried bytes, per bucket of bucket_s seconds over
        [0, makespan] (the last bucket may be partial: its share is over its own length);
        `top` keeps the busiest links by bytes carried. Empty unless record_series was set."""
        if not self.record_series:
            return {}
        links = sorted((lk for lk in self.links.values() if lk.bytes_carried > 0),
                       key=lambda lk: -lk.bytes_carried)[:top]
        w = self.bucket_s
        n = max(1, math.ceil(makespan / w - 1e-9)) if makespan > 0 else 0
        out = {}
        for lk in links:
            s = lk.series + [0.0] * max(0, n - len(lk.series))
            out[lk.name] = [b / (lk.capacity * (min(w, makespan - k * w) if makespan - k * w > 1e-12 else w))
                            for k, b in enumerate(s)]
        pools = {}
        for name, (read, cap) in self.gauges.items():
            s = self.gauge_series.get(name, []) + [None] * max(0, n - len(self.gauge_series.get(name, [])))
            last, vals = 0, []
            for v in s:  # a bucket with no sample holds the last value seen
                last = last if v is None else v
                vals.append(last / cap)
            if vals:
                vals[-1] = read() / cap
            pools[name] = vals
        return {"bucket_s": w, "links": out, "pools": pools}
