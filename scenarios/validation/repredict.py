"""Recompute the prediction side of committed validation reports (no GPU needed).

    python scenarios/validation/repredict.py reports/validation/NAME.json [...]
    python scenarios/validation/repredict.py --calibration PROFILE NAME.json [...]

--calibration: the profile to predict with, where the report's command names it by a path that
no longer exists (the machine's output folder, e.g. /root/out/r/h200x2-val.json); the report
records which profile was used.

For each report: re-read its command's scenario, --set overrides and calibration profile (as
they are now in the repository), simulate again, and rewrite NAME.json and NAME.md with the new
predictions and errors beside the unchanged measurements. For a change to the simulator or to
the scenario files' modelled semantics after a replay ran; the replay is not repeated.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def repredict(path: Path, calibration: str | None = None) -> None:
    from belusim.config.scenario import resolve_scenario
    from belusim.report.metrics import Recorder
    from belusim.sim.cluster import simulate
    from belusim.study.validate import compare, write_report

    rep = json.loads(path.read_text())
    args = shlex.split(rep["command"])
    if args[:2] != ["belusim", "validate"]:
        raise SystemExit(f"{path}: field 'command' is not a belusim validate command")
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    cal = args[args.index("--calibration") + 1] if "--calibration" in args else None
    if calibration is not None:
        cal = calibration
    elif cal is not None and not Path(cal).exists():
        raise SystemExit(f"{path}: its command's calibration profile {cal} does not exist here; "
                         "name the profile with --calibration PROFILE")
    sys_name = args[args.index("--system") + 1] if "--system" in args else None
    sc, _ = resolve_scenario(args[2], sets, cal)
    system = sc.system(sys_name) if sys_name else sc.systems[0]
    pred = Recorder()
    run = simulate(sc, system, pred)
    phases = []
    for ph in sc.run.phases:
        old = next(p for p in rep["phases"] if p["phase"] == ph.name)
        m = old["measured"]  # the replay's summary, as it wrote it
        p = next(s for s in run.summaries if s["phase"] == ph.name)
        phases.append({"phase": ph.name, "errors": compare(p, m), "predicted": p, "measured": m})
    rep["phases"] = phases
    rep["prediction"] = {"transfers": run.transfers, "engine_steps": run.steps, "checks": run.checks}
    rep["requests_predicted"] = [list(r) for r in pred.rows]
    rep["prediction_recomputed"] = ("python scenarios/validation/repredict.py "
                                    + (f"--calibration {calibration} " if calibration else "") + str(path))
    command = rep.pop("command")
    write_report(rep, path.parent, path.stem, command)


def main(argv: list[str]) -> None:
    calibration = None
    if argv[:1] == ["--calibration"]:
        if len(argv) < 2:
            raise SystemExit("--calibration needs a profile path")
        calibration, argv = argv[1], argv[2:]
    if not argv:
        raise SystemExit(__doc__)
    for a in argv:
        repredict(Path(a), calibration)
        print(f"re-predicted {a}")


if __name__ == "__main__":
    main(sys.argv[1:])
