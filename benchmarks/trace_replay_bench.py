"""Speed of a full trace replay: the Mooncake conversation trace (12,031 requests over
about an hour) on 2 servers x 8 GPUs with a CXL pool. Reports wall time, simulated time,
the real-time factor and engine steps per event (how much decode coalescing saves).

    python benchmarks/trace_replay_bench.py [--system cxl-pool] [--set path=value]...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from belusim.sim.cluster import simulate
from belusim.config.scenario import resolve_scenario
from belusim.report.metrics import Recorder

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "traces" / "mooncake-conversation-cxl.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(SCENARIO))
    ap.add_argument("--system", default="cxl-pool")
    ap.add_argument("--set", action="append", default=[], help="path=value overrides")
    args = ap.parse_args()
    sc, _ = resolve_scenario(Path(args.scenario), args.set)
    t0 = time.perf_counter()
    run = simulate(sc, sc.system(args.system), Recorder())
    wall = time.perf_counter() - t0
    s = run.summaries[0]
    print(f"scenario {sc.name}, system {args.system}, {sc.cluster.instances} instances")
    print(f"requests {s['requests']} (finished {s['completed']}, rejected {s['rejected']})")
    print(f"wall {wall:.1f} s, simulated {run.sim_s:.0f} s, real-time factor {run.sim_s / wall:.0f}, "
          f"{s['requests'] / wall:.0f} requests per wall-second")
    print(f"engine steps {run.steps}, step events {run.step_events} "
          f"({run.steps / max(run.step_events, 1):.1f} steps per event)")
    print(f"TTFT mean {s['mean_ttft_ms'] / 1e3:.2f} s, p99 {s['p99_ttft_ms'] / 1e3:.2f} s; TPOT mean {s['mean_tpot_ms']:.1f} ms; "
          f"QPS {s['request_throughput']:.2f}; hit ratio HBM {s['hbm_hit_ratio']:.3f}, tier {s['tier_hit_ratio']:.3f}; "
          f"preemptions {s['preemptions']}")


if __name__ == "__main__":
    main()
