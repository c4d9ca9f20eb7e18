"""Time `belusim trace stats` and `build_workload` on the real Mooncake traces.

Usage: python benchmarks/trace_stats_bench.py [--path DIR] [--block-size 16] [--repeat 3]

`trace stats` is timed as a fresh process (what a user waits for, imports included) and
in-process (the work alone); build_workload in-process. Prints seconds (best of --repeat).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mooncake"
TRACES = ("conversation_trace.jsonl", "synthetic_trace.jsonl")


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, default=DEFAULT_DATA, help="directory holding the Mooncake traces")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from belusim.workloads import build_workload, trace_stats

    found = [args.path / t for t in TRACES if (args.path / t).is_file()]
    if not found:
        print(f"no Mooncake traces under {args.path}", file=sys.stderr)
        return 2
    cli = (
        "import sys; from belusim.workloads.cli import trace_app; "
        "trace_app(['stats', sys.argv[1], '--format', 'mooncake', '--block-size', sys.argv[2], '--json'])"
    )
    print(f"{'trace':28s} {'stats (process)':>16s} {'stats (in-proc)':>16s} {'build_workload':>15s}  requests  hit ratio")
    for path in found:
        proc_s, _ = best_of(
            lambda: subprocess.run(
                [sys.executable, "-c", cli, str(path), str(args.block_size)],
                cwd=REPO, check=True, capture_output=True,
            ),
            args.repeat,
        )
        stats_s, s = best_of(lambda: trace_stats(path, "mooncake", args.block_size), args.repeat)
        cfg = {"kind": "mooncake", "path": str(path)}
        build_s, wl = best_of(
            lambda: build_workload(cfg, block_size=args.block_size, seed=0, base_dir=path.parent), args.repeat
        )
        print(
            f"{path.name:28s} {proc_s:15.3f}s {stats_s:15.3f}s {build_s:14.3f}s  {len(wl.requests):8d}  "
            f"{s['prefix_hit_ratio']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
