"""`belusim validate`: replay a scenario on real hardware (or the emulated backend), simulate
the same scenario with the same calibration, and compare; or compare the prediction with a
`vllm bench serve --save-result` file.

The error table has, per phase: mean/p50/p99 TTFT, mean/p99 TPOT, QPS and mean KV load
latency, each predicted, measured and as relative error (predicted - measured) / measured.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

from belusim.config.scenario import Scenario
from belusim.report.metrics import Recorder, itl_samples, json_safe, summarize
from belusim.sim.cluster import hbm_kv_blocks, simulate

# (label, summary key, scale to the unit shown)
COMPARED = [
    ("TTFT mean (ms)", "mean_ttft_ms"),
    ("TTFT p50 (ms)", "median_ttft_ms"),
    ("TTFT p99 (ms)", "p99_ttft_ms"),
    ("TPOT mean (ms)", "mean_tpot_ms"),
    ("TPOT p99 (ms)", "p99_tpot_ms"),
    ("QPS (req/s)", "request_throughput"),
    ("KV load mean (ms)", "mean_kv_load_ms"),
]
TARGETS = {"mean_ttft_ms": 0.10, "p99_ttft_ms": 0.20, "mean_tpot_ms": 0.10, "request_throughput": 0.10}


class ValidationError(RuntimeError):
    pass


def rel_err(pred, meas) -> float:
    if pred is None or meas is None or not (math.isfinite(pred) and math.isfinite(meas)) or meas == 0:
        return math.nan
    return (pred - meas) / meas


def compare(predicted: dict, measured: dict) -> list[dict]:
    rows = []
    for label, key in COMPARED:
        p, m = predicted.get(key), measured.get(key)
        e = rel_err(p, m)
        target = TARGETS.get(key)
        rows.append({"metric": label, "key": key, "predicted": p, "measured": m, "rel_error": e,
                     "target": target, "within": (abs(e) <= target) if (target and math.isfinite(e)) else None})
    return rows


def make_backend(kind: str, scenario: Scenario, system, kv_blocks: int, pool_spec, progress=None):
    if kind not in ("cuda", "emulated"):
        raise ValidationError(f"--backend {kind!r}: expected cuda or emulated")
    if scenario.cluster.tensor_parallel > 1:  # one process per rank, the policy loop here
        from belusim.replay.tp import TPBackend

        return TPBackend(kind, scenario, system, kv_blocks, pool_spec, progress=progress)
    if kind == "emulated":
        from belusim.replay.emulated import EmulatedBackend

        return EmulatedBackend(scenario, system, kv_blocks, pool_spec)
    if kind == "cuda":
        from belusim.replay.cuda import CudaBackend

        return CudaBackend(scenario, system, kv_blocks, pool_spec)
    raise ValidationError(f"--backend {kind!r}: expected cuda or emulated")


def validate(scenario: Scenario, system_name: str | None, backend_kind: str, pool_spec, progress=None) -> dict:
    """Replay, predict, compare. Returns the report (JSON-ready after json_safe)."""
    from belusim.replay.engine import replay_scenario

    system = scenario.system(system_name) if system_name else scenario.systems[0]
    kv_blocks = hbm_kv_blocks(scenario)
    t0 = time.perf_counter()
    backend = make_backend(backend_kind, scenario, system, kv_blocks, pool_spec, progress)
    setup_s = time.perf_counter() - t0
    meas = Recorder(itl_exact_gaps=scenario.run.itl_exact_gaps)

    def record(req, inst):
        itl = itl_samples(inst.step_ends, req) if req.state.value == "finished" else None
        meas.record(system.name, req, itl)

    try:
        t1 = time.perf_counter()
        replay = replay_scenario(scenario, system, backend, kv_blocks, record, progress)
        replay["wall_s"] = time.perf_counter() - t1
    finally:
        backend.close()
    replay["setup_s"] = setup_s
    replay["backend"] = getattr(backend, "description", backend_kind)
    replay.update(getattr(backend, "info", {}))
    step_ends = replay.pop("step_ends")
    replay["step_ends_count"] = len(step_ends)
    if progress:
        progress(f"{system.name}: simulating the same scenario")
    pred = Recorder()
    run = simulate(scenario, system, pred)
    phases = []
    for ph in scenario.run.phases:
        m = summarize(meas.rows, system.name, ph.name, meas.itl.get((system.name, ph.name)))
        p = next(s for s in run.summaries if s["phase"] == ph.name)
        phases.append({"phase": ph.name, "errors": compare(p, m), "predicted": p, "measured": m})
    return {
        "scenario": scenario.name,
        "system": system.name,
        "model": scenario.model.id,
        "gpu_card": scenario.gpu.id,
        "calibration": scenario.calibration,
        "kv_blocks": kv_blocks,
        "host": platform.node(),
        "phases": phases,
        "replay": replay,
        "prediction": {"transfers": run.transfers, "engine_steps": run.steps, "checks": run.checks},
        "requests_measured": [list(r) for r in meas.rows],
        "requests_predicted": [list(r) for r in pred.rows],
    }


def against_result(scenario: Scenario, system_name: str | None, result_path: Path) -> dict:
    """Compare the prediction for `scenario` with a `vllm bench serve --save-result` file."""
    from belusim.study.vllm_result import read_bench_result

    measured = read_bench_result(result_path)
    system = scenario.system(system_name) if system_name else scenario.systems[0]
    run = simulate(scenario, system, Recorder())
    last = run.summaries[-1]  # the phase the benchmark measured: the scenario's last
    return {
        "scenario": scenario.name, "system": system.name, "against": str(result_path),
        "phases": [{"phase": last["phase"], "errors": compare(last, measured), "predicted": last,
                    "measured": measured}],
    }


def fmt(x, nd=2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}" if abs(x) < 1e5 else f"{x:.4g}"


def table_markdown(report: dict) -> str:
    lines = []
    for ph in report["phases"]:
        lines.append(f"**{report['scenario']} / {report['system']} / phase {ph['phase']}**\n")
        lines.append("| metric | predicted | measured | error | target |")
        lines.append("|---|---:|---:|---:|---|")
        for r in ph["errors"]:
            err = "-" if not math.isfinite(r["rel_error"] if r["rel_error"] is not None else math.nan) \
                else f"{100 * r['rel_error']:+.1f}%"
            tgt = "" if r["target"] is None else f"{100 * r['target']:.0f}% " + ("ok" if r["within"] else
                                                                                ("MISS" if r["within"] is False else ""))
            lines.append(f"| {r['metric']} | {fmt(r['predicted'], 3)} | {fmt(r['measured'], 3)} | {err} | {tgt} |")
        lines.append("")
    rp = report.get("replay")
    if rp:
        lines.append(f"Replay: {rp.get('steps')} steps, executor CPU overhead per step mean "
                     f"{fmt(1e3 * (rp.get('step_overhead_mean_s') or math.nan), 3)} ms (p99 "
                     f"{fmt(1e3 * (rp.get('step_overhead_p99_s') or math.nan), 3)} ms); {rp.get('loads')} loads "
                     f"(mean {fmt(1e3 * (rp.get('mean_load_s') or math.nan), 3)} ms), {rp.get('saves')} saves; "
                     f"{rp.get('blocks_verified')} blocks read back and checksum-verified. Backend: {rp.get('backend')}.")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out: Path, name: str, command: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rep = dict(report)
    if command:
        rep["command"] = command
    j = out / f"{name}.json"
    tmp = j.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(rep), indent=1))
    tmp.replace(j)
    md = out / f"{name}.md"
    head = f"# Validation: {report['scenario']} ({report['system']})\n\n"
    if command:
        head += f"Command: `{command}`\n\n"
    md.write_text(head + table_markdown(report))
    return [j, md]
