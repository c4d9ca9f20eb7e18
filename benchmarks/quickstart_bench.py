"""Speed of the simulator on the packaged quickstart: simulated requests per wall-second
and the real-time factor (simulated seconds per wall-second), per system and overall.

    python benchmarks/quickstart_bench.py [--repeat 3] [SCENARIO]
"""

from __future__ import annotations

import argparse
import time

from belusim.cli.main import find_scenario
from belusim.sim.cluster import simulate
from belusim.config.scenario import resolve_scenario
from belusim.report.metrics import Recorder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs per system; the best is reported")
    ap.add_argument("--set", action="append", default=[], help="path=value overrides")
    args = ap.parse_args()
    sc, _ = resolve_scenario(find_scenario(args.scenario), args.set)
    total_wall = total_sim = total_req = 0.0
    print(f"{'system':<12} {'requests':>8} {'sim s':>9} {'wall s':>8} {'req/wall-s':>11} {'real-time x':>12}")
    for system in sc.systems:
        best = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run = simulate(sc, system, Recorder())
            wall = time.perf_counter() - t0
            if best is None or wall < best[0]:
                best = (wall, run)
        wall, run = best
        reqs = sum(s["requests"] for s in run.summaries)
        total_wall += wall
        total_sim += run.sim_s
        total_req += reqs
        print(f"{system.name:<12} {reqs:>8} {run.sim_s:>9.1f} {wall:>8.3f} {reqs / wall:>11.0f} {run.sim_s / wall:>12.0f}")
    print(f"{'all':<12} {total_req:>8.0f} {total_sim:>9.1f} {total_wall:>8.3f} {total_req / total_wall:>11.0f} "
          f"{total_sim / total_wall:>12.0f}")


if __name__ == "__main__":
    main()
