"""Predictions of the public scenarios (scenarios/public/) beside the published figures.

Runs `belusim run scenarios/public/<name>.yaml --json` for each scenario named in
benchmarks/public_figures.json (or reads saved outputs with --from DIR, where DIR holds
<name>.json), and prints one markdown table per scenario: the published figure, the
prediction and the relative error (prediction / published - 1), then the median absolute
relative error. Published figures are as their sources print them; the sources are named in
the JSON file.

    python benchmarks/public_validation.py [--only NAME] [--from DIR] [--save DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = Path(__file__).resolve().parent / "public_figures.json"


def metric(row: dict, name: str) -> float:
    if name == "input_tokens_per_s":
        return row["total_input_tokens"] / row["duration"]
    if name.endswith("_s") and not name.endswith("_per_s"):
        return row[name[:-2] + "_ms"] / 1000.0  # mean_ttft_s <- mean_ttft_ms
    return row[name]


def run(name: str) -> dict:
    path = ROOT / "scenarios" / "public" / f"{name}.yaml"
    out = subprocess.run([sys.executable, "-m", "belusim", "run", str(path), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"belusim run {path} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", help="scenario name (repeatable)")
    ap.add_argument("--from", dest="src", type=Path, help="read <name>.json outputs from this folder")
    ap.add_argument("--save", type=Path, help="save each run's JSON output here")
    args = ap.parse_args()
    spec = json.loads(FIGURES.read_text())
    for name, entry in spec.items():
        if args.only and name not in args.only:
            continue
        result = json.loads((args.src / f"{name}.json").read_text()) if args.src else run(name)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{name}.json").write_text(json.dumps(result))
        rows = {(r["system"], r["phase"]): r for r in result["results"]}
        print(f"\n#### {name}\n\nPublished: {entry['source']}.\n")
        print("| system | phase | metric | published | predicted | error |")
        print("|---|---|---|---:|---:|---:|")
        errs = []
        for f in entry["figures"]:
            pred = metric(rows[(f["system"], f["phase"])], f["metric"])
            err = pred / f["published"] - 1.0
            errs.append(abs(err))
            print(f"| {f['system']} | {f['phase']} | {f['metric']} | {f['published']:,.6g} | {pred:,.6g} | {err:+.1%} |")
        print(f"\nMedian absolute relative error: {statistics.median(errs):.1%} over {len(errs)} figures.")


if __name__ == "__main__":
    main()
