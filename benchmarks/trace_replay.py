"""Speed of a full trace replay, as one JSON object: the Mooncake conversation trace
(12,031 requests over about an hour) on 2 servers x 8 GPUs with a CXL pool.

    python benchmarks/trace_replay.py --json [--repeat N] [--system cxl-pool] [--set gpu=h100]...

Fields: wall_s and cpu_s (this process, whole simulate() call, workload reading
included; with --repeat N the least of N runs in this process, each run's in cpu_s_runs:
on a shared machine the least is the one least disturbed by others), simulated_s, requests, events (events scheduled), steps (engine steps),
step_events, real_time_factor_cpu (simulated seconds per CPU second), peak_rss_mb (the
process's high-water mark) and bare_simpy_us_per_event (a loop of plain env.timeout on
this machine now, for scale) and compiled_modules (how many of belusim's modules run compiled,
see hatch_build.py; 0 for an editable install). Without --json it prints the same as lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import simpy

from belusim import compiled_modules
from belusim.config.scenario import ConfigError, resolve_scenario
from belusim.errors import InputError
from belusim.report.metrics import Recorder
from belusim.sim.cluster import simulate

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "traces" / "mooncake-conversation-cxl.yaml"


def bare_simpy_us_per_event(n: int = 200_000) -> float:
    """CPU microseconds per event of a process doing nothing but env.timeout."""
    env = simpy.Environment()

    def ticker():
        timeout = env.timeout
        for _ in range(n):
            yield timeout(1.0)

    env.process(ticker())
    t0 = time.process_time()
    env.run()
    return (time.process_time() - t0) / n * 1e6


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(SCENARIO))
    ap.add_argument("--system", default="cxl-pool")
    ap.add_argument("--set", action="append", default=[], help="path=value overrides")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the run to FILE")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run N times; report the least CPU and wall time (and every run's CPU)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    try:
        sc, _ = resolve_scenario(Path(args.scenario), args.set)
    except ConfigError as e:
        sys.exit(str(e))
    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
    cpus, walls, run = [], [], None
    for _ in range(args.repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        try:
            again = simulate(sc, sc.system(args.system), Recorder())
        except InputError as e:  # a trace that is not where the scenario says, say
            sys.exit(str(e))
        if prof:
            prof.disable()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if run is not None and (again.sim_s, again.events, again.steps) != (run.sim_s, run.events, run.steps):
            sys.exit(f"runs of the same scenario and seed differ: {run.sim_s} s, {run.events} events "
                     f"then {again.sim_s} s, {again.events} events")
        run = again
    if prof:
        prof.dump_stats(args.profile)
    wall, cpu = min(walls), min(cpus)
    s = run.summaries[0]
    out = {
        "scenario": sc.name,
        "system": args.system,
        "overrides": args.set,
        "instances": sc.cluster.instances,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cpu_s_runs": [round(c, 3) for c in cpus],
        "simulated_s": round(run.sim_s, 3),
        "requests": s["requests"],
        "completed": s.get("completed"),
        "rejected": s.get("rejected"),
        "events": getattr(run, "events", None),  # absent before SystemRun counted them
        "steps": run.steps,
        "step_events": run.step_events,
        "real_time_factor_cpu": round(run.sim_s / cpu, 1),
        "cpu_us_per_event": round(cpu / run.events * 1e6, 2) if getattr(run, "events", 0) else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bare_simpy_us_per_event": round(bare_simpy_us_per_event(), 3),
        "compiled_modules": len(compiled_modules()),  # 0: pure Python (an editable install, say)
        # a few outcomes, to see that a faster run simulated the same thing
        **{k: s.get(k) for k in ("mean_ttft_ms", "mean_tpot_ms", "hbm_hit_ratio", "tier_hit_ratio",
                                 "preemptions")},
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>24}  {v}")


if __name__ == "__main__":
    main()
