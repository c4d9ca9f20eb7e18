"""Studies built from runs: side-by-side comparison against a baseline, and sweeps of one
parameter over a list of values, each written as a table (CSV and JSON)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from belusim.config.scenario import ConfigError, resolve_scenario
from belusim.outputs import atomic_open, atomic_write, check_output_file
from belusim.report.metrics import json_safe
from belusim.sim.runner import RESULT_KEYS, run_scenario

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
    """One parameter of a scenario varied over values; every other field fixed."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    scenario: str = Field(description="scenario file, relative to the sweep file")
    systems: list[str] | None = Field(None, description="systems to run (default: all of the scenario's)")
    set: list[str] = Field(default_factory=list, description="fixed overrides, path=value")
    parameter: str = Field(description="dotted path varied by the sweep")
    values: list[Any] = Field(min_length=1)
    label: str | None = Field(None, description="column name for the value (default: the parameter)")
    output: str = Field(description="table path (.csv; a .json beside it), relative to the working directory")


def load_sweep(path: Path) -> Sweep:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    try:
        return Sweep.model_validate(data)
    except ValidationError as e:
        msgs = "\n".join(f"  {'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{path}: invalid sweep\n{msgs}") from None


def run_sweep(path: Path, extra_set: list[str] | None = None, output: Path | None = None, progress=None) -> dict:
    sweep = load_sweep(path)
    scenario_path = (path.parent / sweep.scenario).resolve()
    out = check_output_file(output or Path(sweep.output), inputs=[path, scenario_path])
    label = sweep.label or sweep.parameter
    rows = []
    for value in sweep.values:
        overrides = list(sweep.set) + list(extra_set or []) + [f"{sweep.parameter}={_yaml_value(value)}"]
        sc, resolved = resolve_scenario(scenario_path, overrides)
        if progress:
            progress(f"{sweep.name}: {label} = {value}")
        report = run_scenario(sc, resolved, sweep.systems, None, progress)
        for d in report["details"]:
            for s in d["summaries"]:
                rows.append({label: value, **{k: s[k] for k in s}})
    write_table(rows, out)
    return {"sweep": sweep.name, "parameter": sweep.parameter, "output": str(out), "rows": rows}


def _yaml_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    if v is None:
        return "null"
    return str(v)


def write_table(rows: list[dict], path: Path) -> None:
    """CSV at `path` (or JSON if it ends in .json); with a CSV, the JSON goes beside it."""
    safe = json_safe(rows)
    if path.suffix == ".json":
        atomic_write(path, json.dumps(safe, indent=2))
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in safe:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic_write(path.with_suffix(".json"), json.dumps(safe, indent=2))
