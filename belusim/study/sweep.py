"""Studies built from runs: side-by-side comparison against a baseline, and sweeps of parameters
over lists of values (run on dask.distributed, see study.points), each written as a table (CSV and JSON)."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from belusim.config.lookup import find_scenario
from belusim.config.scenario import ConfigError, resolve_scenario
from belusim.inputs import parse_yaml, read_yaml
from belusim.outputs import OutputFiles, atomic_open, atomic_write, check_output_file
from belusim.report.metrics import json_safe
from belusim.sim.runner import RESULT_KEYS

RATIO_KEYS = ["mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "request_throughput"]


def add_ratios(rows: list[dict], baseline: str) -> list[dict]:
    """Each row gains `<metric>_vs_<baseline>`: its value over the baseline's in the same phase."""
    base = {r["phase"]: r for r in rows if r["system"] == baseline}
    if not base:
        raise ConfigError(f"baseline {baseline!r} is not among the systems run: {sorted({r['system'] for r in rows})}")
    out = []
    for r in rows:
        b = base.get(r["phase"])
        r = dict(r)
        for k in RATIO_KEYS:
            v, bv = r.get(k), (b or {}).get(k)
            ok = isinstance(v, (int, float)) and isinstance(bv, (int, float)) and bv and math.isfinite(bv)
            r[f"{k}_vs_baseline"] = v / bv if ok else math.nan
        out.append(r)
    return out


def compare_rows(report: dict, baseline: str) -> list[dict]:
    rows = []
    for d in report["details"]:
        for s in d["summaries"]:
            rows.append({k: s[k] for k in RESULT_KEYS})
    return add_ratios(rows, baseline)


class Sweep(BaseModel):
    """Parameters of a scenario varied over values (their cartesian product); every other field
    fixed."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    scenario: str = Field(description="scenario file, relative to the sweep file, or a packaged scenario name")
    systems: list[str] | None = Field(None, description="systems to run (default: all of the scenario's)")
    set: list[str] = Field(default_factory=list, description="fixed overrides, path=value")
    parameter: str | None = Field(None, description="dotted path varied by the sweep")
    values: list[Any] | None = Field(None, min_length=1)
    label: str | None = Field(None, description="column name for the value (default: the parameter)")
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="more dotted paths, each with its values: every combination runs")
    output: str = Field(description="table path (.csv; a .json beside it), relative to the working directory")

    @model_validator(mode="after")
    def _one_axis(self):
        if (self.parameter is None) != (self.values is None):
            raise ValueError("parameter and values go together")
        if self.parameter is None and not self.grid:
            raise ValueError("nothing varies: give parameter and values, or grid")
        for k, v in self.grid.items():
            if not v:
                raise ValueError(f"grid.{k}: no values")
        return self

    def axes(self) -> list[tuple[str, str, list[Any]]]:
        """(dotted path, column label, values) per varied parameter, outermost first."""
        out = []
        if self.parameter is not None:
            out.append((self.parameter, self.label or self.parameter, list(self.values)))
        out += [(k, k, list(v)) for k, v in self.grid.items() if k != self.parameter]
        return out


def find_sweep(name: str | Path) -> Path:
    """A path, or the name of a packaged sweep (`beluga/sweep-rate`, with or without .yaml)."""
    return find_scenario(name, "sweep")


def load_sweep(path: Path) -> Sweep:
    data = read_yaml(path, error=ConfigError)
    try:
        return Sweep.model_validate(data)
    except ValidationError as e:
        msgs = "\n".join(f"  {'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{path}: invalid sweep\n{msgs}") from None


def split_values(text: str) -> list[str]:
    """`a,b,{x: 1, y: 2}` to ["a", "b", "{x: 1, y: 2}"]: commas inside brackets stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_grid(items: list[str] | None) -> dict[str, list[Any]]:
    """`--grid key=v1,v2` options to {key: [v1, v2]} (each value read as YAML)."""
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        key, sep, vals = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--grid {item!r}: expected path=v1,v2,...")
        values = [parse_yaml(v, f"--grid {item!r}", error=ConfigError, lines=False) for v in split_values(vals)]
        if not values:
            raise ConfigError(f"--grid {item!r}: no values")
        grid[key.strip()] = values
    return grid


def sweep_points(sweep: Sweep, path: Path, extra_set: list[str] | None = None,
                 grid: dict[str, list[Any]] | None = None):
    """The sweep's points in table order (the first axis outermost)."""
    from belusim.study.points import Point

    if grid:
        sweep = sweep.model_copy(update={"grid": {**sweep.grid, **grid}})
    cand = path.parent / sweep.scenario
    scenario = str((cand if cand.is_file() else find_scenario(sweep.scenario)).resolve())
    axes = sweep.axes()
    points = []
    for combo in itertools.product(*[vals for _p, _l, vals in axes]):
        overrides = list(sweep.set) + list(extra_set or []) + [
            f"{p}={_yaml_value(v)}" for (p, _l, _v), v in zip(axes, combo)]
        labels = {label: v for (_p, label, _v), v in zip(axes, combo)}
        points.append(Point(scenario, tuple(overrides), tuple(sweep.systems) if sweep.systems else None, labels))
    return sweep, points


def run_sweep(path: Path, extra_set: list[str] | None = None, output: Path | None = None, progress=None,
              grid: dict[str, list[Any]] | None = None, workers: int | None = 0, scheduler: str | None = None,
              restart: bool = False, on_start=None, on_result=None) -> dict:
    """Run every point of a sweep and write its table. Each point's result is appended to
    `<table>.points.jsonl` as it arrives; a rerun skips the points found there (`restart`
    discards them). `workers=0` runs in this process; otherwise on Dask (see study.points)."""
    from belusim.study.points import Executor, PointStore

    path = find_sweep(path)
    sweep = load_sweep(path)
    sweep, points = sweep_points(sweep, path, extra_set, grid)
    for p in points:  # fail on a bad override before starting workers
        resolve_scenario(Path(p.scenario), list(p.overrides))
    out = check_output_file(output or Path(sweep.output), inputs=[path, Path(points[0].scenario)])
    store_path = out.with_name(out.stem + ".points.jsonl")
    if restart and store_path.exists():
        store_path.unlink()
    store = PointStore(store_path)
    already = sum(1 for p in points if p.key in store.done)
    files = [out] + ([out.with_suffix(".json")] if out.suffix != ".json" else []) + [store_path]
    with OutputFiles(out, command="sweep", files=files) as manifest:
        manifest.note(sweep=sweep.name, points=len(points), resumed=already)
        with Executor(workers, scheduler) as ex:
            if on_start:
                on_start(len(points), already, ex.where)
            if progress:
                progress(f"{sweep.name}: {len(points)} points, {already} already done, {ex.where}")
            results = ex.run(points, store, on_result)
        rows = []
        for p, res in zip(points, results):
            for s in res["results"]:
                rows.append({**p.labels, **s})
        write_table(rows, out)
    axes = sweep.axes()
    return {"sweep": sweep.name, "parameter": axes[0][0], "parameters": [a[0] for a in axes],
            "labels": [a[1] for a in axes], "output": str(out), "points": str(store_path),
            "resumed": already, "rows": rows, "details": [r["details"] for r in results]}


def _yaml_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    if v is None:
        return "null"
    return str(v)


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = json.dumps(v)
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_table(rows: list[dict], path: Path) -> None:
    """CSV at `path` (or JSON if it ends in .json); with a CSV, the JSON goes beside it."""
    safe = json_safe(rows)
    if path.suffix == ".json":
        atomic_write(path, json.dumps(safe, indent=2))
        return
    flat = [_flatten(r) for r in safe]  # nested results (the TTFT breakdown) as dotted columns
    keys: list[str] = []
    for r in flat:
        keys += [k for k in r if k not in keys]
    with atomic_open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in flat:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic_write(path.with_suffix(".json"), json.dumps(safe, indent=2))
