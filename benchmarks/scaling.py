"""How the cost of a replay grows with requests and instances: the Mooncake conversation
trace tiled in time (0.25x-4x its requests) on 4-64 instances, as a table (or JSON lines).

    python benchmarks/scaling.py [--factors 0.25,0.5,1,2,4] [--instances 4,16,64]
                                 [--base-requests N] [--repeat R] [--json] [--set gpu=h100]...

A factor f < 1 keeps the first f of the trace's requests; f > 1 plays f copies back to back
in time, each copy with its own block ids (so copies do not hit each other's caches) and
its own arrival times shifted by the trace's length. --base-requests cuts the trace to its
first N requests before tiling (the whole grid on the full trace takes an hour or more).
The arrival rate scales with the instance count (workload.rate_scale = instances / 16), so
every point has the load per instance of the 16-instance replay and differs only in size.
Instances are servers x 8 GPUs (4: one server of 4). Each point runs in a fresh process,
so peak_rss_mb is that point's own. Cost should grow linearly: cpu_ms_per_request should
stay flat along each row (more requests) and down each column (more instances, same load
per instance). --repeat R runs each point R times and keeps the least CPU time (on a shared
machine one run's CPU time varies by a third), checking that the runs simulate the same.
--instructions counts instructions under valgrind instead (see benchmarks/instructions.py):
slower, but other load on the machine does not move it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

from belusim.config.scenario import resolve_scenario
from belusim.report.metrics import Recorder
from belusim.sim.cluster import simulate

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "traces" / "mooncake-conversation-cxl.yaml"
TRACE = ROOT.parent / "shared" / "data" / "mooncake" / "conversation_trace.jsonl"


def tile(src: Path, factor: float, dst: Path, base: int | None = None) -> int:
    """Write `factor` x the trace's (first `base`) requests to dst; returns the number written."""
    lines = [json.loads(x) for x in src.read_text().splitlines() if x.strip()][:base]
    if factor <= 1:
        keep = lines[: max(1, math.floor(len(lines) * factor))]
        dst.write_text("".join(json.dumps(d) + "\n" for d in keep))
        return len(keep)
    span = lines[-1]["timestamp"] + 1
    id_span = 1 + max(max(d["hash_ids"], default=0) for d in lines)
    copies = math.ceil(factor)
    n = round(len(lines) * factor)
    out = []
    for c in range(copies):
        for d in lines:
            if len(out) == n:
                break
            out.append({**d, "timestamp": d["timestamp"] + c * span,
                        "hash_ids": [h + c * id_span for h in d["hash_ids"]]})
    dst.write_text("".join(json.dumps(d) + "\n" for d in out))
    return len(out)


def cluster_for(instances: int) -> list[str]:
    if instances < 8:
        return ["cluster.servers=1", f"cluster.gpus_per_server={instances}"]
    return [f"cluster.servers={instances // 8}", "cluster.gpus_per_server=8"]


def point(args, path: Path, factor: float, n: int, inst: int) -> dict:
    """One grid point (run in a child process: its peak RSS is its own)."""
    sc, _ = resolve_scenario(SCENARIO, [f"workload.path={path}", f"workload.rate_scale={inst / 16}",
                                        *cluster_for(inst), *args.set])
    c0 = time.process_time()
    run = simulate(sc, sc.system(args.system), Recorder())
    cpu = time.process_time() - c0
    return {
        "factor": factor, "instances": inst, "requests": n, "cpu_s": round(cpu, 3),
        "cpu_ms_per_request": round(cpu / n * 1e3, 3), "simulated_s": round(run.sim_s, 1),
        "real_time_factor_cpu": round(run.sim_s / cpu, 1), "events": run.events, "steps": run.steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def print_table(title: str, rows: list[dict], factors: list[float], instances: list[int], width: int,
                cell) -> None:
    """One line per factor, one column per instance count: cell(row) in each."""
    print(title)
    print(f"{'requests':>16} | " + " | ".join(f"{f'{i} instances':>{width}}" for i in instances))
    for factor in factors:
        line = [r for r in rows if r["factor"] == factor]
        label = f"{factor:g}x ({line[0]['requests']})"
        print(f"{label:>16} | " + " | ".join(cell(r) for r in line))


def count_grid(args, factors: list[float], instances: list[int]) -> None:
    """The grid in instructions per request (see --instructions)."""
    import os
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from instructions import count

    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (a system package: apt install valgrind)")

    def replay_args(path: Path, inst: int) -> list[str]:
        sets = [f"workload.path={path}", f"workload.rate_scale={inst / 16}", *cluster_for(inst), *args.set]
        return ["--system", args.system, *[x for v in sets for x in ("--set", v)]]

    with tempfile.TemporaryDirectory() as tmp:
        jobs, sizes = [], {}
        for factor in factors:
            path = Path(tmp) / f"trace-{factor}.jsonl"
            sizes[factor] = tile(Path(args.trace), factor, path, args.base_requests)
            jobs += [(factor, inst, replay_args(path, inst)) for inst in instances]
        # the start-up, imports and yardstick of each cluster size: the same replay cut to one request
        fixed_jobs = {inst: [*replay_args(Path(tmp) / f"trace-{factors[0]}.jsonl", inst),
                             "--set", "workload.max_requests=1"] for inst in instances}
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            fixed = dict(zip(instances, pool.map(lambda a: count(ROOT, a)[0], fixed_jobs.values())))
            counted = list(pool.map(lambda job: count(ROOT, job[2]), jobs))
    rows = []
    for (factor, inst, _a), (n, out) in zip(jobs, counted):
        req = sizes[factor]
        rows.append({"factor": factor, "instances": inst, "requests": req,
                     "instructions_per_request": round((n - fixed[inst]) / req),
                     "events_per_request": round(out["events"] / req, 2), "events": out["events"]})
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print_table("Instructions per request, thousands (events per request)", rows, factors,
                    instances, 18, lambda r: f"{r['instructions_per_request'] / 1e3:>9,.0f} "
                                             f"({r['events_per_request']:>5.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--factors", default="0.25,0.5,1,2,4")
    ap.add_argument("--instances", default="4,16,64")
    ap.add_argument("--base-requests", type=int, default=None, help="cut the trace to its first N requests")
    ap.add_argument("--system", default="cxl-pool")
    ap.add_argument("--set", action="append", default=[], help="path=value overrides")
    ap.add_argument("--json", action="store_true", help="one JSON line per point instead of a table")
    ap.add_argument("--repeat", type=int, default=1, metavar="R", help="runs per point; the least CPU time is kept")
    ap.add_argument("--instructions", action="store_true",
                    help="count each point's instructions under valgrind (benchmarks/instructions.py), less "
                         "a one-request run of the same cluster, instead of timing it: a figure that other "
                         "load on the machine does not move (about 30x slower; points run in parallel)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    factors = [float(x) for x in args.factors.split(",")]
    instances = [int(x) for x in args.instances.split(",")]
    if args.instructions:
        count_grid(args, factors, instances)
        return
    rows = []
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        for factor in factors:
            path = Path(tmp) / f"trace-{factor}.jsonl"
            n = tile(Path(args.trace), factor, path, args.base_requests)
            for inst in instances:
                row = None
                for _ in range(args.repeat):
                    with ctx.Pool(1) as pool:
                        again = pool.apply(point, (args, path, factor, n, inst))
                    if row is not None and (again["simulated_s"], again["events"]) != (row["simulated_s"], row["events"]):
                        sys.exit(f"{factor:g}x on {inst}: runs differ ({row['events']} then {again['events']} events)")
                    if row is None or again["cpu_s"] < row["cpu_s"]:
                        row = again
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"  {factor:g}x on {inst}: {row['cpu_s']:.1f} s CPU", file=sys.stderr, flush=True)
    if not args.json:
        print_table("CPU ms per request (real-time factor by CPU; peak RSS MB)", rows, factors, instances, 24,
                    lambda r: f"{r['cpu_ms_per_request']:>8.2f} ({r['real_time_factor_cpu']:>6.0f}x; "
                              f"{r['peak_rss_mb']:>4.0f})")


if __name__ == "__main__":
    main()
