"""Own CPU time of a cProfile by module, the largest first: where a run's time goes when no
single function stands out.

    python benchmarks/trace_replay.py --set workload.max_requests=4000 --profile run.prof
    python benchmarks/profile_modules.py run.prof [--top 12] [--functions 10]

belusim's modules by their path (policy/scheduler.py), SimPy's as `simpy`, C built-ins by the
module that called them (`built-ins from policy/blocks.py`), everything else as `other`.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from collections import defaultdict


def module_of(filename: str) -> str:
    if "/belusim/" in filename:
        return filename.split("/belusim/", 1)[1]
    if "/simpy/" in filename:
        return "simpy"
    return "other"


def by_module(stats: pstats.Stats) -> tuple[dict[str, float], float]:
    """(own seconds per module, total own seconds)."""
    own: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, _name), (_cc, _nc, tt, _ct, callers) in stats.stats.items():
        total += tt
        if filename == "~":  # a built-in: charge its callers' modules, by their share of calls
            calls = sum(v[1] for v in callers.values()) or 1
            for (cf, _cl, _cn), v in callers.items():
                own["built-ins from " + module_of(cf)] += tt * v[1] / calls
        else:
            own[module_of(filename)] += tt
    return own, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="a file written by cProfile (trace_replay.py --profile)")
    ap.add_argument("--top", type=int, default=12, help="modules to list")
    ap.add_argument("--functions", type=int, default=10, help="largest functions by own time to list")
    args = ap.parse_args()
    try:
        stats = pstats.Stats(args.profile)
    except (OSError, TypeError, ValueError, EOFError) as e:
        raise SystemExit(f"{args.profile}: not a cProfile output ({e})")
    own, total = by_module(stats)
    print(f"{total:.2f} s of own time profiled")
    for name, t in sorted(own.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{100 * t / total:6.1f}%  {t:7.2f} s  {name}")
    if args.functions:
        print("largest functions:")
        funcs = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:args.functions]
        for (filename, line, name), (_cc, nc, tt, _ct, _callers) in funcs:
            print(f"{100 * tt / total:6.1f}%  {nc:9d} calls  {module_of(filename) if filename != '~' else 'built-in'}"
                  f":{line} {name}")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        sys.stderr.close()
