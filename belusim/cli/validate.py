"""`belusim validate`: replay a scenario for real and compare it with the prediction."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def validate_cmd(
    scenario: str = typer.Argument(..., help="scenario file or packaged name (one instance: 1 server, cluster.tensor_parallel GPUs)"),
    system: Optional[str] = typer.Option(None, "--system", help="the scenario's system to replay (default: its first)"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration profile name or path"),
    backend: str = typer.Option("cuda", "--backend", help="cuda: real GPU work and copies; emulated: no GPU"),
    pool: str = typer.Option("anon", "--pool", help="anon, file:PATH or dax:/dev/daxX.Y"),
    offset: int = typer.Option(0, "--offset", help="window start in the pool file or device (bytes)"),
    length: Optional[int] = typer.Option(None, "--length", help="window length (bytes)"),
    allow_write: bool = typer.Option(False, "--allow-write", help="let the replay write the pool window"),
    against: Optional[Path] = typer.Option(None, "--against", help="compare the prediction with a `vllm bench serve --save-result` file instead of replaying"),
    set_: list[str] = typer.Option([], "--set", help="override a field: path.to.field=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write NAME.json and NAME.md (the error table) here"),
    name: Optional[str] = typer.Option(None, "--name", help="file name stem under --out (default: the scenario's name)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    report_path: Optional[Path] = typer.Option(None, "--report", help="also write a self-contained HTML report here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines", metavar=""),
):
    """Replay SCENARIO in real time (same scheduler, block pool, prefix cache, tier index and
    connector as the simulator), simulate it with the same calibration, and print the errors."""
    from belusim.cli.main import _fail, check_output_file, err, load
    from belusim.config.scenario import ConfigError
    from belusim.report.metrics import json_safe
    from belusim.replay.emulated import ChecksumError
    from belusim.replay.engine import ReplayError
    from belusim.replay.pool import PoolError, PoolSpec
    from belusim.study.validate import ValidationError, against_result, table_markdown, validate, write_report
    from belusim.study.vllm_result import ResultFileError

    progress = None if quiet else (lambda msg: err.print(f"[dim]{msg}[/]"))
    try:
        sc, _ = load(scenario, set_, calibration)
        if report_path is not None:
            check_output_file(report_path, option="--report")
        if against is not None:
            report = against_result(sc, system, against)
        else:
            spec = PoolSpec.parse(pool, offset, length, allow_write)
            report = validate(sc, system, backend, spec, progress)
    except ChecksumError as e:
        err.print(f"[bold red]check failed:[/] {e}", highlight=False)
        raise typer.Exit(3)
    except (ConfigError, PoolError, ResultFileError, ValidationError, ReplayError, ValueError,
            FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    if out is not None:
        command = "belusim validate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        write_report(report, out, name or sc.name, command)
    if report_path is not None:
        from belusim.report.html import validate_report

        validate_report(report, report_path)
    if as_json:
        sys.stdout.write(json.dumps(json_safe(report)) + "\n")
        return
    console = Console(width=None if sys.stdout.isatty() else 150)
    for ph in report["phases"]:
        t = Table(title=f"{report['scenario']} / {report['system']}: phase {ph['phase']}")
        for c in ("metric", "predicted", "measured", "error", "target"):
            t.add_column(c, justify="left" if c in ("metric", "target") else "right")
        for r in ph["errors"]:
            e = r["rel_error"]
            es = "-" if e is None or e != e else f"{100 * e:+.1f}%"
            tg = "" if r["target"] is None else f"{100 * r['target']:.0f}% " + (
                "ok" if r["within"] else ("MISS" if r["within"] is False else ""))
            fm = (lambda x: "-" if x is None or x != x else f"{x:.3f}")
            t.add_row(r["metric"], fm(r["predicted"]), fm(r["measured"]), es, tg)
        console.print(t)
    if "replay" in report:
        console.print(table_markdown({**report, "phases": []}).strip())
