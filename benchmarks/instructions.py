"""Instructions executed by a trace replay, counted by valgrind, to compare versions of the
code on a machine shared with other work, where CPU time varies by a third from run to run
and a change worth 1% cannot be seen. The count does not depend on the machine's load:
repeated runs of one tree agree to about 0.1% (PYTHONHASHSEED is fixed; addresses still
vary, and with them the order of a few id-keyed sets).

    python benchmarks/instructions.py [--tree DIR]... [--repeat N] [--jobs J] [-- ARGS...]

Each tree (a belusim checkout; by default this one; add another with `git worktree add
DIR REV`) runs `python benchmarks/trace_replay.py --json ARGS` from its own directory with
itself first on PYTHONPATH, under `valgrind --tool=cachegrind --cache-sim=no` (about 30x
slower than a plain run: the first 1,000 requests of the conversation trace take about 40
s). ARGS default to `--set workload.max_requests=1000`. The count includes the interpreter's
start, the imports and the replay's bare-SimPy yardstick (about 2.3 billion instructions),
nearly the same in every tree; --net subtracts each tree's run of the same ARGS cut to one
request, leaving what the requests cost. Prints one
line per tree: the least count, every run's, the difference from the first tree, and the
run's events, which must match (else the trees simulate differently and the comparison
means nothing: it stops with an error). Needs valgrind (a system package).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def count(tree: Path, args: list[str]) -> tuple[int, dict]:
    """(instructions, the replay's JSON) of one run of trace_replay.py from `tree`."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)}
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, "benchmarks/trace_replay.py", "--json", *args]
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    found = _IREFS.search(p.stderr)
    if p.returncode != 0 or not found:
        own = [x for x in (p.stderr + p.stdout).splitlines() if x.strip() and not x.startswith(("==", "--"))]
        tail = "\n".join(own[-5:])
        raise SystemExit(f"{tree}: the replay under valgrind failed (exit {p.returncode}):\n{tail}")
    return int(found.group(1).replace(",", "")), json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", type=Path, metavar="DIR",
                    help="a belusim checkout to count (repeatable; default: this one)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N", help="runs per tree (the least is reported)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J",
                    help="runs at once (counts do not depend on load)")
    ap.add_argument("--net", action="store_true",
                    help="subtract each tree's one-request run (start-up, imports, yardstick)")
    ap.add_argument("args", nargs="*", help="trace_replay.py arguments (after --)")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not installed (it is a system package: apt install valgrind)")
    if a.repeat < 1 or a.jobs < 1:
        ap.error("--repeat and --jobs must be at least 1")
    trees = [t.resolve() for t in (a.tree or [ROOT])]
    for t in trees:
        if not (t / "benchmarks" / "trace_replay.py").is_file():
            ap.error(f"--tree {t}: not a belusim checkout (no benchmarks/trace_replay.py)")
    args = a.args or ["--set", "workload.max_requests=1000"]
    jobs = [(t, r) for r in range(a.repeat) for t in trees]
    one = [*args, "--set", "workload.max_requests=1"]  # the last --set of a path wins
    with ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda job: count(job[0], args), jobs))
        fixed = dict(zip(trees, pool.map(lambda t: count(t, one)[0], trees))) if a.net else {}
    runs: dict[Path, list[int]] = {t: [] for t in trees}
    events: dict[Path, set] = {t: set() for t in trees}
    for (t, _r), (n, out) in zip(jobs, results):
        runs[t].append(n - fixed.get(t, 0))
        events[t].add((out["events"], out["steps"], out["simulated_s"]))
    if len({frozenset(e) for e in events.values()}) > 1 or any(len(e) > 1 for e in events.values()):
        raise SystemExit("the trees simulate differently (events, steps, simulated seconds): "
                         + "; ".join(f"{t}: {sorted(e)}" for t, e in events.items()))
    first = min(runs[trees[0]])
    for t in trees:
        least = min(runs[t])
        print(f"{t}: {least / 1e9:.4f} G instructions ({(least - first) / first:+.2%}), runs "
              f"{', '.join(f'{n / 1e9:.4f}' for n in runs[t])}; events {next(iter(events[t]))[0]}")


if __name__ == "__main__":
    main()
