"""Scenario runs as independent points, on dask.distributed or in this process.

A point is a scenario file plus `--set` overrides and a choice of systems; its result is the
run's summary rows and per-system details. Points run on a Dask LocalCluster of worker
processes (default), on a running Dask scheduler given by address (a real cluster), or in this
process (`workers=0`). Each result is appended to a JSONL store as it arrives, so that a killed
study resumes from what is done. A point's result depends only on its scenario and overrides
(the seed is one of them), so where it ran does not change it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from belusim.report.metrics import json_safe


@dataclass(frozen=True)
class Point:
    scenario: str  # absolute path of the scenario file
    overrides: tuple[str, ...] = ()
    systems: tuple[str, ...] | None = None
    labels: dict = field(default_factory=dict, compare=False, hash=False)  # table columns
    goodput: tuple[tuple[str, float], ...] | None = None  # vLLM goodput bounds, ms

    @property
    def key(self) -> str:
        """Stable identity of what the point computes (labels excluded)."""
        text = json.dumps([self.scenario, list(self.overrides), list(self.systems or [])]
                          + ([list(map(list, self.goodput))] if self.goodput else []))
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def run_point(scenario: str, overrides: list[str], systems: list[str] | None, goodput: dict | None = None) -> dict:
    """One point, in whichever process runs it; returns plain JSON-safe data."""
    from belusim.config.scenario import resolve_scenario
    from belusim.sim.runner import run_scenario

    sc, resolved = resolve_scenario(Path(scenario), list(overrides))
    report = run_scenario(sc, resolved, list(systems) if systems else None, goodput=goodput)
    details = [{k: d[k] for k in ("system", "wall_s", "simulated_s", "engine_steps", "transfers",
                                  "link_utilisation")} for d in report["details"]]
    return json_safe({"results": report["results"], "details": details})


class PointStore:
    """Results by point key, one JSON object a line, appended and flushed as each arrives."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, dict] = {}
        if path.exists():
            good = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if isinstance(rec, dict) and "key" in rec and "result" in rec:
                    self.done[rec["key"]] = rec["result"]
                    good.append(line)
            # rewrite without a torn last line, so that appends start on a line of their own
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(g + "\n" for g in good))
            tmp.replace(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, point: Point, result: dict) -> None:
        self.done[point.key] = result
        line = json.dumps({"key": point.key, "overrides": list(point.overrides),
                           "labels": json_safe(point.labels), "result": result})
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class Executor:
    """Runs points: `workers=0` in this process; otherwise on Dask (a LocalCluster of `workers`
    single-threaded processes, or the scheduler at `scheduler`)."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None):
        self.workers = workers
        self.scheduler = scheduler
        self.client = None
        self._cluster = None

    def __enter__(self) -> "Executor":
        if self.scheduler is None and self.workers == 0:
            return self
        from distributed import Client, LocalCluster

        if self.scheduler is not None:
            self.client = Client(self.scheduler)
        else:
            n = self.workers or os.cpu_count() or 1
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self._cluster)
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    @property
    def where(self) -> str:
        if self.client is None:
            return "in this process"
        if self.scheduler is not None:
            return f"on the Dask scheduler at {self.scheduler}"
        return f"on a local Dask cluster of {len(self.client.scheduler_info()['workers'])} worker processes"

    def run(self, points: Iterable[Point], store: PointStore | None = None,
            on_result: Callable[[Point, dict], None] | None = None) -> list[dict]:
        """Every point's result, in the order given; points already in `store` are not rerun."""
        points = list(points)
        results: dict[str, dict] = {}
        todo: list[Point] = []
        for p in points:
            if store is not None and p.key in store.done:
                results[p.key] = store.done[p.key]
            elif p.key not in results and p not in todo:
                todo.append(p)

        def got(p: Point, res: dict) -> None:
            results[p.key] = res
            if store is not None:
                store.add(p, res)
            if on_result is not None:
                on_result(p, res)

        if self.client is None:
            for p in todo:
                got(p, run_point(p.scenario, list(p.overrides), list(p.systems) if p.systems else None,
                                 dict(p.goodput) if p.goodput else None))
        elif todo:
            from distributed import as_completed

            futures = {}
            for p in todo:
                fut = self.client.submit(run_point, p.scenario, list(p.overrides),
                                         list(p.systems) if p.systems else None,
                                         dict(p.goodput) if p.goodput else None, key=f"belusim-point-{p.key}",
                                         pure=False)
                futures[fut] = p
            for fut in as_completed(list(futures)):
                try:
                    res = fut.result()
                except Exception as e:  # a point's error names the point
                    for other in futures:
                        other.cancel()
                    p = futures[fut]
                    raise RuntimeError(f"point {' '.join(p.overrides) or '(no overrides)'}: {e}") from None
                got(futures[fut], res)
        return [results[p.key] for p in points]
