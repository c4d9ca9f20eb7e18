"""Capacity planning: per system, the highest open-loop Poisson rate that meets an SLO, what
the hardware costs per sustained QPS, the break-even against a baseline, and (with a target
rate) the cheapest configuration that meets the SLO at that rate.

The rate is found by bisection, one search per seed: starting at `start_qps`, doubling or
halving until one rate passes and one fails, then halving the bracket geometrically until
fail/pass <= 1 + tolerance. A rate passes when, in the SLO phase, every request was served,
every SLO bound holds and the system kept up with the offered rate (see `keeps_up`). Each seed
gives its own maximum; the answer is their median with the min and max as its spread. Every
search round runs all systems and seeds at once on the sweep machinery (study.points), so
points spread over Dask workers and a rerun with the same --out resumes.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from belusim.config.scenario import ConfigError, Scenario, resolve_scenario
from belusim.report.metrics import SCHEMA_VERSION, json_safe
from belusim.study.cost import PriceCard, break_even, load_prices, system_cost
from belusim.study.points import Executor, Point, PointStore

_SLO_RE = re.compile(r"^(ttft|tpot|itl|e2el)_(mean|median|p50|p90|p99)$")
_STAT = {"p50": "median"}


@dataclass(frozen=True)
class Bound:
    text: str
    key: str  # summary key, e.g. p99_ttft_ms
    metric: str  # ttft | tpot | itl | e2el
    stat: str
    limit_ms: float


def parse_slo(text: str) -> list[Bound]:
    """`ttft_p99=5s,tpot_p99=200ms` to bounds on summary keys (p99_ttft_ms <= 5000, ...)."""
    bounds = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, val = part.partition("=")
        m = _SLO_RE.match(name.strip())
        if not sep or not m:
            raise ConfigError(f"--slo {part!r}: expected METRIC_STAT=VALUE with METRIC ttft, tpot, itl or e2el "
                              "and STAT mean, median, p50, p90 or p99 (e.g. ttft_p99=5s)")
        vm = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)\s*", val)
        if not vm:
            raise ConfigError(f"--slo {part!r}: {val!r} needs a unit, s or ms (e.g. 5s, 200ms)")
        limit = float(vm.group(1)) * (1000.0 if vm.group(2) == "s" else 1.0)
        metric, stat = m.group(1), _STAT.get(m.group(2), m.group(2))
        bounds.append(Bound(part, f"{stat}_{metric}_ms", metric, stat, limit))
    if not bounds:
        raise ConfigError("--slo: no bound given (e.g. --slo ttft_p99=5s)")
    return bounds


def keeps_up(row: dict, ratio: float) -> bool:
    """Did the phase's throughput keep up with its arrivals? A system that keeps up finishes
    the last of n requests about a mean latency after the last arrival, so its throughput is
    near n / (arrival span + mean e2e). Past saturation the backlog grows and the throughput
    falls to the service rate: below `ratio` of that figure the rate is not sustained (0.9
    flags a service rate about 20% short of the arrival rate)."""
    n = row["completed"]
    e2e_s = (row.get("mean_e2el_ms") or 0.0) / 1e3
    thr, span = row.get("request_throughput"), row.get("arrival_span_s")
    if not n or thr is None or not math.isfinite(thr) or span is None:
        return False
    return thr >= ratio * n / (span + e2e_s)


@dataclass
class Search:
    """One bisection: one system, one seed."""

    system: str
    seed: int
    start: float
    min_qps: float
    max_qps: float
    tol: float
    lo: float | None = None  # highest rate that passed
    hi: float | None = None  # lowest rate that failed
    lo_row: dict | None = None
    tried: list[tuple[float, bool]] = field(default_factory=list)
    note: str = ""

    def next_rate(self) -> float | None:
        if self.lo is None and self.hi is None:
            return self.start
        if self.hi is None:
            r = self.lo * 2
            if r > self.max_qps:
                self.note = f"meets the SLO at the largest rate tried ({self.lo:g} QPS, --max-qps)"
                return None
            return _round(r)
        if self.lo is None:
            r = self.hi / 2
            if r < self.min_qps:
                self.note = f"misses the SLO even at {self.hi:g} QPS"
                return None
            return _round(r)
        if self.hi / self.lo <= 1 + self.tol:
            return None
        return _round(math.sqrt(self.lo * self.hi))

    def record(self, rate: float, ok: bool, row: dict) -> None:
        self.tried.append((rate, ok))
        if ok and (self.lo is None or rate > self.lo):
            self.lo, self.lo_row = rate, row
        elif not ok and (self.hi is None or rate < self.hi):
            self.hi = rate


def _round(x: float) -> float:
    return float(f"{x:.4g}")


class Planner:
    def __init__(self, scenario_path: Path, overrides: list[str], bounds: list[Bound], systems: list[str] | None,
                 seeds: int, tol: float, start_qps: float, max_qps: float, keep_up: float, phase: str | None,
                 prices: PriceCard, executor: Executor, store: PointStore | None, on_round=None):
        self.path = str(scenario_path.resolve())
        self.overrides = list(overrides)
        self.sc, self.resolved = resolve_scenario(scenario_path, self.overrides)
        names = [s.name for s in self.sc.systems]
        self.systems = systems or names
        for s in self.systems:
            self.sc.system(s)  # fails naming the unknown system
        phases = [p.name for p in self.sc.run.phases]
        self.phase = phase or phases[-1]
        if self.phase not in phases:
            raise ConfigError(f"--phase {self.phase!r}: the scenario's phases are {phases}")
        self.bounds = bounds
        self.seeds = [self.sc.run.seed + i for i in range(seeds)]
        self.tol, self.start, self.max_qps, self.keep_up = tol, start_qps, max_qps, keep_up
        self.prices = prices
        self.ex = executor
        self.store = store
        self.on_round = on_round
        gp = {b.metric: b.limit_ms for b in bounds if b.metric in ("ttft", "tpot", "e2el")}
        self.goodput = tuple(sorted(gp.items())) or None
        self.evaluated: list[dict] = []

    # -- points ---------------------------------------------------------------------------
    def point(self, system: str, seed: int, rate: float, extra: tuple[str, ...] = (), resolved=None) -> Point:
        """The scenario with the SLO phase's arrivals Poisson at `rate` (earlier phases as
        the scenario has them: they warm the caches)."""
        res = resolved or self.resolved
        phases = [ph.model_dump(mode="json", exclude_none=True) for ph in self.sc.run.phases]
        for ph in phases:
            if ph["name"] == self.phase:
                wl = copy.deepcopy(ph.get("workload") or res["workload"])
                wl["arrival"] = {"process": "poisson", "rate_qps": rate}
                ph["workload"] = wl
        ov = tuple(self.overrides) + tuple(extra) + (f"run.seed={seed}", f"run.phases={json.dumps(phases)}")
        return Point(self.path, ov, (system,), {"system": system, "seed": seed, "rate_qps": rate}, self.goodput)

    def judge(self, res: dict, system: str, rate: float) -> tuple[bool, dict, list[str]]:
        row = next(r for r in res["results"] if r["system"] == system and r["phase"] == self.phase)
        why = []
        if row["failed"]:
            why.append(f"{row['failed']} requests not served")
        for b in self.bounds:
            v = row.get(b.key)
            if v is None or v > b.limit_ms:
                why.append(f"{b.key} {v if v is None else round(v, 1)} > {b.limit_ms:g}")
        if not keeps_up(row, self.keep_up):
            why.append("throughput fell behind the offered rate")
        return not why, row, why

    def run_round(self, items: list[tuple[Any, Point]], stage: str = "max") -> list[tuple[Any, bool, dict]]:
        results = self.ex.run([p for _k, p in items], self.store)
        out = []
        for (k, p), res in zip(items, results):
            ok, row, why = self.judge(res, p.labels["system"], p.labels["rate_qps"])
            self.evaluated.append({"stage": stage, **p.labels, "pass": ok, "why": "; ".join(why),
                                   **{key: row.get(key) for key in _CURVE_KEYS}})
            out.append((k, ok, row))
        return out

    # -- max rate ---------------------------------------------------------------------------
    def max_rates(self) -> dict[str, list[Search]]:
        searches = [Search(s, seed, self.start, self.start / 64, self.max_qps, self.tol)
                    for s in self.systems for seed in self.seeds]
        rnd = 0
        while True:
            todo = []
            for s in searches:
                r = s.next_rate()
                if r is not None:
                    todo.append((s, self.point(s.system, s.seed, r)))
            if not todo:
                break
            rnd += 1
            if self.on_round:
                self.on_round(f"round {rnd}: {len(todo)} runs")
            for s, ok, row in self.run_round(todo):
                s.record(row_rate(todo, s), ok, row)
        by: dict[str, list[Search]] = {}
        for s in searches:
            by.setdefault(s.system, []).append(s)
        return by

    # -- target rate -------------------------------------------------------------------------
    def smallest_config(self, target: float, batch: int) -> dict[str, dict]:
        sizeable = self.sc.plan.sizeable
        if not sizeable:
            raise ConfigError(f"{self.sc.name}: --target-qps needs the scenario to mark what may be sized "
                              "(plan: {sizeable: {cluster.servers: [1, 2, 4], ...}})")
        out = {}
        for system in self.systems:
            kind = self.sc.system(system).kv.kind
            knobs = {k: v for k, v in sizeable.items() if _relevant(k, system, kind)}
            cands = []
            for combo in itertools.product(*knobs.values()):
                extra = tuple(f"{k}={_yaml(v)}" for k, v in zip(knobs, combo))
                sc, resolved = resolve_scenario(Path(self.path), self.overrides + list(extra))
                cands.append((system_cost(sc, sc.system(system), self.prices)["total_usd"],
                              dict(zip(knobs, combo)), extra, resolved))
            cands.sort(key=lambda c: (c[0], json.dumps(c[1], sort_keys=True, default=str)))
            found = None
            tried = 0
            for i in range(0, len(cands), batch):
                group = cands[i:i + batch]
                items = [((j, seed), self.point(system, seed, target, extra, resolved))
                         for j, (_c, _k, extra, resolved) in enumerate(group) for seed in self.seeds]
                for (j, _s), p in items:
                    p.labels["config"] = group[j][1]
                res = self.run_round(items, "target")
                tried += len(group)
                passed = {j for j in range(len(group))
                          if all(ok for (jj, _s), ok, _r in res if jj == j)}
                if passed:
                    j = min(passed)
                    cost, knob_values, _e, _r = group[j]
                    found = {"config": knob_values, "cost_usd": cost}
                    break
            out[system] = found or {"config": None, "cost_usd": None,
                                    "note": f"no configuration among {len(cands)} meets the SLO at {target:g} QPS"}
            out[system]["candidates_tried"] = tried
        return out


def row_rate(todo, search) -> float:
    return next(p.labels["rate_qps"] for s, p in todo if s is search)


def _relevant(knob: str, system: str, kind: str) -> bool:
    if knob.startswith("systems."):
        return knob.split(".")[1] == system
    if knob.startswith("cluster.cxl_"):
        return kind == "cxl-pool"
    if knob == "cluster.nics_per_server":
        return kind == "rdma-pool"
    return True


def _yaml(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


_CURVE_KEYS = ["request_throughput", "request_goodput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
               "p99_itl_ms", "p99_e2el_ms", "tier_hit_ratio", "failed"]


def run_plan(scenario_path: Path, overrides: list[str], slo: str, systems: list[str] | None = None,
             target_qps: float | None = None, seeds: int = 3, tol: float = 0.1, start_qps: float = 1.0,
             max_qps: float = 1000.0, keep_up: float = 0.9, phase: str | None = None, baseline: str | None = None,
             prices: str | None = None, workers: int | None = None, scheduler: str | None = None,
             store_path: Path | None = None, on_round=None, on_start=None) -> dict:
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if not 0 < tol < 1:
        raise ConfigError("--tolerance must be between 0 and 1")
    if start_qps <= 0 or max_qps <= start_qps:
        raise ConfigError("--start-qps must be positive and below --max-qps")
    t0 = time.perf_counter()
    bounds = parse_slo(slo)
    price_card = load_prices(prices)
    store = PointStore(store_path) if store_path is not None else None
    with Executor(workers, scheduler) as ex:
        pl = Planner(scenario_path, overrides, bounds, systems, seeds, tol, start_qps, max_qps, keep_up, phase,
                     price_card, ex, store, on_round)
        if on_start:
            on_start(ex.where)
        by = pl.max_rates()
        base = baseline or pl.systems[0]
        if base not in pl.systems:
            raise ConfigError(f"--baseline {base!r} is not among the systems planned: {pl.systems}")
        rows, cost, qps = [], {}, {}
        for name in pl.systems:
            ss = by[name]
            maxes = [s.lo or 0.0 for s in ss]
            med = statistics.median(maxes)
            c = system_cost(pl.sc, pl.sc.system(name), price_card)
            cost[name], qps[name] = c["total_usd"], med
            good = [s.lo_row.get("request_goodput") for s in ss if s.lo_row and s.lo_row.get("request_goodput") is not None]
            rows.append({
                "system": name,
                "kind": pl.sc.system(name).kv.kind,
                "max_qps": med,
                "max_qps_min": min(maxes),
                "max_qps_max": max(maxes),
                "spread_qps": max(maxes) - min(maxes),
                "goodput_at_max": statistics.median(good) if good else None,
                "cost_usd": c["total_usd"],
                "usd_per_qps": c["total_usd"] / med if med > 0 else None,
                "per_seed": [{"seed": s.seed, "max_qps": s.lo or 0.0, "first_fail_qps": s.hi, "note": s.note,
                              "tried": [{"rate_qps": r, "pass": ok} for r, ok in s.tried],
                              "at_max": {k: (s.lo_row or {}).get(k) for k in _CURVE_KEYS}} for s in ss],
                "cost_parts": c["parts"],
            })
        out = {
            "schema_version": SCHEMA_VERSION,
            "scenario": pl.sc.name,
            "slo": {b.key: b.limit_ms for b in bounds},
            "slo_text": slo,
            "phase": pl.phase,
            "seeds": pl.seeds,
            "tolerance": tol,
            "keep_up_ratio": keep_up,
            "baseline": base,
            "systems": rows,
            "break_even": break_even(cost, qps, base),
            "points": pl.evaluated,
            "prices": price_card.model_dump(),
        }
        if target_qps is not None:
            out["target_qps"] = target_qps
            out["target"] = pl.smallest_config(target_qps, max(2, len(ex.client.scheduler_info()["workers"])
                                                               if ex.client is not None else 1))
    out["wall_s"] = time.perf_counter() - t0
    return json_safe(out)
