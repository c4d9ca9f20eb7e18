"""Run a scenario's systems and write what they produce."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import yaml

from belusim.sim.cluster import SystemRun, simulate
from belusim.config.scenario import Scenario
from belusim.outputs import OutputDir, atomic_open, atomic_write
from belusim.report.metrics import RECORD_FIELDS, SCHEMA_VERSION, SUMMARY_KEYS, Recorder, json_safe

# The row of `belusim run --json`, in this order (vLLM `bench serve` names, then belusim's).
RESULT_KEYS = SUMMARY_KEYS


# What `run --out` wrote before outputs carried a manifest: such a directory may be replaced.
RUN_OUTPUT_FILES = ("requests.csv", "requests.parquet", "summary.json", "summary.json.tmp", "scenario.resolved.yaml")


def select_systems(scenario: Scenario, names: list[str] | None):
    if not names:
        return list(scenario.systems)
    return [scenario.system(n) for n in names]


def run_scenario(scenario: Scenario, resolved: dict, systems: list[str] | None = None,
                 out_dir: Path | None = None, progress=None, goodput: dict[str, float] | None = None,
                 recorder: Recorder | None = None) -> dict:
    """Simulate the chosen systems one after another on the same workload and seed. Pass a
    `recorder` to keep the per-request records.

    With `out_dir`, the files are staged in `<out_dir>.partial` (its manifest says
    incomplete) and moved to `out_dir` only once every system has run and passed its checks.
    """
    chosen = select_systems(scenario, systems)
    staging = OutputDir(out_dir, command="run", known=RUN_OUTPUT_FILES) if out_dir is not None else None
    with staging or contextlib.nullcontext():
        where = staging.path if staging is not None else None
        if where is not None:
            staging.note(scenario=scenario.name, systems=[s.name for s in chosen], systems_done=[])
            atomic_write(where / "scenario.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))
        streaming = recorder is None
        if recorder is None:
            recorder = Recorder(where / "requests.csv" if where is not None else None)
        runs: list[SystemRun] = []
        try:
            for system in chosen:
                run = simulate(scenario, system, recorder, progress=progress, goodput=goodput)
                runs.append(run)
                if progress:
                    progress(f"{system.name}: done in {run.wall_s:.1f} s wall, {run.sim_s:.0f} s simulated")
                if where is not None:  # written as the run goes: one system at a time
                    _write_summary(where, scenario, runs, goodput)
                    staging.note(systems_done=[r.system for r in runs])
        finally:
            if streaming:
                recorder.close()
        if where is not None:
            if not streaming:  # the caller's recorder kept the rows in memory
                _write_csv(where / "requests.csv", recorder.rows)
            recorder.write_parquet(where / "requests.parquet")
    return build_report(scenario, runs, goodput)


def build_report(scenario: Scenario, runs: list[SystemRun], goodput: dict[str, float] | None = None) -> dict:
    rows = [s for run in runs for s in run.summaries]
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.name,
        "goodput": goodput,
        "results": [{k: row[k] for k in RESULT_KEYS} for row in rows],
        "details": [
            {
                "system": run.system,
                "summaries": run.summaries,
                "wall_s": run.wall_s,
                "simulated_s": run.sim_s,
                "engine_steps": run.steps,
                "step_events": run.step_events,
                "transfers": run.transfers,
                "link_utilisation": run.link_utilisation,
                "utilisation_series": run.utilisation_series,
                "checks": run.checks,
                "warnings": run.warnings,
            }
            for run in runs
        ],
    }


def _write_summary(out_dir: Path, scenario: Scenario, runs: list[SystemRun], goodput=None) -> None:
    atomic_write(out_dir / "summary.json", json.dumps(json_safe(build_report(scenario, runs, goodput)), indent=2))


def _write_csv(path: Path, rows: list[tuple]) -> None:
    import csv
    import math

    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RECORD_FIELDS)
        w.writerows(["" if isinstance(v, float) and math.isnan(v) else v for v in r] for r in rows)

