"""Simulator speed under tensor parallelism: the packaged quickstart (one server of 8 GPUs)
at TP 1, 2, 4 and 8, per system. A TP-t instance moves every tier transfer as t concurrent
flows, so the work per transfer grows t-fold; this checks that the wall time per simulated
request grows by no more than that factor.

    python benchmarks/tp_bench.py [--repeat 3] [--systems cxl,dram] [SCENARIO]

Prints, per system and TP: requests, engine step events, fabric flows, wall seconds, wall
per request relative to TP 1, and the bound (flows per transfer relative to TP 1). Exits 1
when a ratio exceeds its bound.
"""

from __future__ import annotations

import argparse
import sys
import time

from belusim.cli.main import find_scenario
from belusim.config.scenario import resolve_scenario
from belusim.report.metrics import Recorder
from belusim.sim.cluster import Cluster, simulate


def _run(sc, system, repeat: int):
    best = None
    for _ in range(repeat):
        flows = []
        real_init = Cluster.__init__

        def spy(self, *a, **k):  # keep the cluster's fabric to count its flows
            real_init(self, *a, **k)
            flows.append(self.paths.fabric)

        Cluster.__init__ = spy
        try:
            t0 = time.perf_counter()
            run = simulate(sc, system, Recorder())
            wall = time.perf_counter() - t0
        finally:
            Cluster.__init__ = real_init
        if best is None or wall < best[0]:
            best = (wall, run, sum(f.flows_started for f in flows))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs per point; the fastest is reported")
    ap.add_argument("--tp", default="1,2,4,8")
    ap.add_argument("--systems", default=None, help="comma-separated system names (default: all with a tier)")
    ap.add_argument("--set", action="append", default=[], help="path=value overrides")
    args = ap.parse_args()
    tps = [int(x) for x in args.tp.split(",")]
    base, _ = resolve_scenario(find_scenario(args.scenario), args.set)
    names = args.systems.split(",") if args.systems else [s.name for s in base.systems if s.kv.kind != "hbm-only"]
    ok = True
    print(f"{'system':<10} {'TP':>3} {'requests':>8} {'steps':>7} {'flows':>7} {'wall s':>8} "
          f"{'wall/req vs TP1':>16} {'bound':>6}")
    for name in names:
        ref = None
        for tp in tps:
            sc, _ = resolve_scenario(find_scenario(args.scenario), [*args.set, f"cluster.tensor_parallel={tp}"])
            wall, run, flows = _run(sc, sc.system(name), args.repeat)
            reqs = sum(s["requests"] for s in run.summaries)
            per_req = wall / reqs
            if ref is None:
                ref = (per_req, tp)
            ratio = per_req / ref[0]
            bound = tp / ref[1]
            ok &= ratio <= bound
            print(f"{name:<10} {tp:>3} {reqs:>8} {run.step_events:>7} {flows:>7} {wall:>8.3f} {ratio:>16.2f} {bound:>6.0f}")
    print("within bounds" if ok else "a ratio exceeds its bound")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
