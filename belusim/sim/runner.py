"""Run a scenario's systems and write what they produce."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from belusim.sim.cluster import SystemRun, simulate
from belusim.config.scenario import Scenario
from belusim.report.metrics import SCHEMA_VERSION, SUMMARY_KEYS, Recorder, json_safe

# The row of `belusim run --json`, in this order (vLLM `bench serve` names, then belusim's).
RESULT_KEYS = SUMMARY_KEYS


def select_systems(scenario: Scenario, names: list[str] | None):
    if not names:
        return list(scenario.systems)
    return [scenario.system(n) for n in names]


def run_scenario(scenario: Scenario, resolved: dict, systems: list[str] | None = None,
                 out_dir: Path | None = None, progress=None, goodput: dict[str, float] | None = None,
                 recorder: Recorder | None = None) -> dict:
    """Simulate the chosen systems one after another on the same workload and seed. Pass a
    `recorder` to keep the per-request records (with `out_dir`, it must stream to requests.csv)."""
    chosen = select_systems(scenario, systems)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scenario.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    if recorder is None:
        recorder = Recorder(out_dir / "requests.csv" if out_dir is not None else None)
    runs: list[SystemRun] = []
    try:
        for system in chosen:
            run = simulate(scenario, system, recorder, progress=progress, goodput=goodput)
            runs.append(run)
            if progress:
                progress(f"{system.name}: done in {run.wall_s:.1f} s wall, {run.sim_s:.0f} s simulated")
            if out_dir is not None:  # written as the run goes: one system at a time
                _write_summary(out_dir, scenario, runs, goodput)
    finally:
        recorder.close()
    if out_dir is not None:
        recorder.write_parquet(out_dir / "requests.parquet")
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
                "checks": run.checks,
            }
            for run in runs
        ],
    }


def _write_summary(out_dir: Path, scenario: Scenario, runs: list[SystemRun], goodput=None) -> None:
    report = json_safe(build_report(scenario, runs, goodput))
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out_dir / "summary.json")

