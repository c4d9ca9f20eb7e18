"""Every packaged scenario (and every point of every packaged sweep) at its fixed seed, as
one JSON line per system: summaries, transfer counts, steps and a digest of every
per-request record. Two commits give identical output exactly when they simulate the same.

    python benchmarks/scenario_digest.py > before.jsonl    # on one commit
    python benchmarks/scenario_digest.py > after.jsonl     # on another
    diff before.jsonl after.jsonl

--quick shrinks the workloads (fewer prompts, the trace cut to its first requests) so
that the whole set runs in a few minutes; the identity check holds either way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from belusim.config.scenario import resolve_scenario
from belusim.report.metrics import Recorder
from belusim.sim.cluster import simulate
from belusim.study.sweep import _yaml_value, load_sweep

ROOT = Path(__file__).resolve().parents[1] / "scenarios"


def cases(quick: bool):
    """(label, scenario path, overrides) for every packaged scenario and sweep point."""
    small = {
        "lveval-synthetic": ["workload.num_prompts=32"],
        "mooncake": ["workload.max_requests=300"],
    }
    for path in sorted(ROOT.rglob("*.yaml")):
        if path.name.startswith("sweep-"):
            sweep = load_sweep(path)
            base = (path.parent / sweep.scenario).resolve()
            for value in sweep.values:
                yield (f"{path.relative_to(ROOT)}:{sweep.parameter}={_yaml_value(value)}", base,
                       list(sweep.set) + [f"{sweep.parameter}={_yaml_value(value)}"], sweep.systems, small)
        else:
            yield str(path.relative_to(ROOT)), path, [], None, small
            if "traces" in path.parts:
                yield f"{path.relative_to(ROOT)}:gpu=h100", path, ["gpu=h100"], None, small


def digest_rows(rows) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(row).encode())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shrink workloads (see above)")
    ap.add_argument("--only", default="", help="run only cases whose label contains one of these (comma-separated)")
    ap.add_argument("--set", action="append", default=[], help="path=value overrides for every case")
    args = ap.parse_args()
    for label, path, overrides, systems, small in cases(args.quick):
        if args.only and not any(part in label for part in args.only.split(",")):
            continue
        overrides = overrides + [s for s in args.set if s.split("=")[0].split(".")[0] != "workload"]
        sc, _ = resolve_scenario(path, overrides)
        extra = small.get(sc.workload.kind, []) if args.quick else []
        # a workload override applies where the case's workload has that field (a trace path)
        extra += [s for s in args.set if s.startswith("workload.")
                  and s.split("=")[0].split(".")[1] in type(sc.workload).model_fields]
        sc, _ = resolve_scenario(path, overrides + extra)
        for system in sc.systems:
            if systems and system.name not in systems:
                continue
            rec = Recorder()
            t0 = time.process_time()
            run = simulate(sc, system, rec)
            cpu = time.process_time() - t0
            print(json.dumps({
                "case": label, "system": system.name, "sim_s": run.sim_s, "steps": run.steps,
                "step_events": run.step_events, "records": digest_rows(rec.rows),
                "summaries": run.summaries, "transfers": run.transfers, "checks": run.checks,
            }, sort_keys=True, default=str), flush=True)
            print(f"{label} {system.name}: {cpu:.1f} s CPU", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
