"""The belusim command line."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from belusim.config.lookup import find_scenario
from belusim.config.scenario import ConfigError, Scenario, resolve_scenario
from belusim.errors import CheckFailed
from belusim.outputs import check_output_file
from belusim.paths import scenarios_dir

app = typer.Typer(
    help="Simulate LLM serving with KV caches in HBM, host DRAM, an RDMA pool or a CXL pool.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)

try:  # sub-apps live beside the layers they drive
    from belusim.workloads.cli import trace_app

    app.add_typer(trace_app, name="trace", help="Inspect and convert request traces.")
except ImportError:  # pragma: no cover - only while a layer is being built
    pass
try:
    from belusim.cli.microbench import microbench_app

    app.add_typer(microbench_app, name="microbench", help="Transfer-level studies: one transfer and its breakdown.")
except ImportError:  # pragma: no cover
    pass
try:
    from belusim.cli.validate import validate_cmd

    app.command("validate")(validate_cmd)
except ImportError:  # pragma: no cover
    pass
try:
    from belusim.calibration.cli import calibrate_app

    app.add_typer(calibrate_app, name="calibrate", help="Measure this machine and fit a calibration profile.")
except ImportError:  # pragma: no cover
    pass


def load(name: str | None, overrides: list[str], calibration: str | None = None) -> tuple[Scenario, dict]:
    sc, resolved = resolve_scenario(find_scenario(name), overrides, calibration)
    for w in sc.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    return sc, resolved


@contextlib.contextmanager
def _live_progress(quiet: bool):
    """The progress callback of a run: phase lines on stderr and, on a terminal, a rich
    spinner with the elapsed time, so that a run of minutes never looks hung."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        yield lambda msg: err.print(f"[dim]{msg}[/]")
        return
    t0 = time.perf_counter()
    with err.status("starting", spinner="dots") as status:
        def update(msg: str) -> None:
            err.print(f"[dim]{msg}[/]")
            status.update(f"{msg} [dim](running for {time.perf_counter() - t0:.0f} s)[/]")

        yield update


def _fail(e: str | BaseException) -> None:
    """Exit 3 with `belusim: check failed: ...` when an end-of-run check failed (a bug, not
    the user's input); otherwise exit 2 with the error (bad input: file, field, option)."""
    if isinstance(e, CheckFailed):
        err.print(f"belusim: check failed: {e}", highlight=False, markup=False)
        raise typer.Exit(3)
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
    raise typer.Exit(2)


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ms(x, digits=1) -> str:
    return _fmt(x, digits)


def _top_parts(breakdown: dict | None, n: int = 3) -> str:
    """The largest parts of the mean TTFT, e.g. 'load software 52%, others' loads 18%'."""
    if not breakdown:
        return ""
    short = {"kv_load_wire": "load wire", "kv_load_software": "load sw", "kv_load_thread_wait": "thread wait",
             "lookup_software": "lookup", "others_loads": "others' loads", "save_stall": "save stall"}
    return ", ".join(f"{short.get(t['part'], t['part'])} {t['share']:.0%}"
                     for t in breakdown["top"][:n] if t["share"] >= 0.005)


def print_results(report: dict, console: Console) -> None:
    table = Table(title=f"belusim: {report['scenario']}")
    cols = ["system", "phase", "done", "TTFT mean s", "TTFT p99 s", "TPOT mean ms", "TPOT p99 ms", "ITL p99 ms",
            "req/s", "HBM hit", "tier hit", "TTFT mostly"]
    if report.get("goodput"):
        cols.insert(9, "goodput req/s")
    for col in cols:
        left = col in ("system", "phase", "TTFT mostly")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for d in report["details"]:
        for s in d["summaries"]:
            sec = lambda k: s[k] / 1e3 if s[k] == s[k] else None  # noqa: E731 - ms to s
            cells = [
                s["system"], s["phase"], f"{s['completed']}/{s['requests']}",
                _fmt(sec("mean_ttft_ms")), _fmt(sec("p99_ttft_ms")), _ms(s["mean_tpot_ms"]), _ms(s["p99_tpot_ms"]),
                _ms(s["p99_itl_ms"]), _fmt(s["request_throughput"]), _fmt(s["hbm_hit_ratio"], 2),
                _fmt(s["tier_hit_ratio"], 2), _top_parts(s.get("breakdown"), 1),
            ]
            if report.get("goodput"):
                cells.insert(9, _fmt(s["request_goodput"]))
            table.add_row(*cells)
    console.print(table)
    # the full split of the mean TTFT, one line per row, so the table stays narrow
    parts = [(s["system"], s["phase"], _top_parts(s.get("breakdown"), 4))
             for d in report["details"] for s in d["summaries"]]
    if any(p for _, _, p in parts):
        console.print("[dim]mean TTFT went to:[/]")
        for system, phase, p in parts:
            if p:
                console.print(f"[dim]  {system} {phase}: {p}[/]")
    for d in report["details"]:
        console.print(
            f"[dim]{d['system']}: {d['simulated_s']:.0f} s simulated in {d['wall_s']:.1f} s, "
            f"{d['engine_steps']} engine steps, tier loads {d['transfers']['loads']}, "
            f"saves {d['transfers']['saves']}[/]"
        )


GOODPUT_HELP = ("SLO bounds in ms as vLLM bench serve takes them, KEY:MS with KEY ttft, tpot or e2el "
                "(repeatable, or space-separated in one value): adds request_goodput")


@app.command()
def run(
    scenario: Optional[str] = typer.Argument(None, help="scenario file or packaged name (default: quickstart)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: path.to.field=value (repeatable)"),
    systems: Optional[str] = typer.Option(None, "--systems", help="comma-separated subset of the scenario's systems"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration profile name or path"),
    out: Optional[Path] = typer.Option(None, "--out", help="write requests.csv, summary.json and the resolved scenario here"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object (`belusim schema --output`)", metavar=""),
    goodput: list[str] = typer.Option([], "--goodput", help=GOODPUT_HELP),
    report_path: Optional[Path] = typer.Option(None, "--report", help="also write a self-contained HTML report here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines", metavar=""),
):
    """Simulate every system of a scenario and print TTFT, TPOT and QPS per phase."""
    from belusim.outputs import check_output_dir
    from belusim.report.metrics import json_safe, parse_goodput
    from belusim.sim.runner import RUN_OUTPUT_FILES, run_scenario

    try:
        if out is not None:
            check_output_dir(out, known=RUN_OUTPUT_FILES)
        slo = parse_goodput(goodput)
        sc, resolved = load(scenario, set_, calibration)
        names = [s.strip() for s in systems.split(",")] if systems else None
        recorder = None
        if report_path is not None:
            from belusim.outputs import check_output_file
            from belusim.report.metrics import Recorder

            check_output_file(report_path, option="--report")
            recorder = Recorder()
        with _live_progress(quiet) as progress:
            report = run_scenario(sc, resolved, names, out, progress, goodput=slo, recorder=recorder)
        if report_path is not None:
            from belusim.report.html import run_report

            run_report(report, recorder.rows, report_path)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        _fail(e)
    for d in report["details"]:
        for w in d.get("warnings", []):
            err.print(f"[yellow]warning:[/] {w}", highlight=False)
    if as_json:
        keep = ("schema_version", "scenario", "goodput", "results")
        sys.stdout.write(json.dumps(json_safe({k: report[k] for k in keep})) + "\n")
    else:
        print_results(report, Console(width=None if sys.stdout.isatty() else 132))
        if out is not None:
            Console().print(f"wrote {out}/requests.csv, {out}/requests.parquet, {out}/summary.json, "
                            f"{out}/scenario.resolved.yaml, {out}/manifest.json")


@app.command()
def compare(
    scenario: str = typer.Argument(..., help="scenario file or packaged name"),
    systems: Optional[str] = typer.Option(None, "--systems", help="comma-separated subset of the scenario's systems"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="system the ratios are taken against (default: the first)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: path.to.field=value (repeatable)"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration profile name or path"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the table (.csv with a .json beside it, or .json)"),
    as_json: bool = typer.Option(False, "--json", help="print {scenario, baseline, results} as JSON", metavar=""),
    goodput: list[str] = typer.Option([], "--goodput", help=GOODPUT_HELP),
    report_path: Optional[Path] = typer.Option(None, "--report", help="also write a self-contained HTML report here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines", metavar=""),
):
    """Run systems on the same workload and seed; compare them side by side per phase."""
    from belusim.report.metrics import json_safe, parse_goodput
    from belusim.sim.runner import run_scenario
    from belusim.study.sweep import RATIO_KEYS, compare_rows, write_table

    from belusim.outputs import OutputFiles

    manifest = None
    try:
        if out is not None:
            check_output_file(out)
            if out.suffix != ".json":
                check_output_file(out.with_suffix(".json"))
            files = [out] + ([out.with_suffix(".json")] if out.suffix != ".json" else [])
            manifest = OutputFiles(out, command="compare", files=files).__enter__()  # incomplete until written
        slo = parse_goodput(goodput)
        sc, resolved = load(scenario, set_, calibration)
        names = [s.strip() for s in systems.split(",")] if systems else [s.name for s in sc.systems]
        base = baseline or names[0]
        if base not in names:
            names.append(base)
        if report_path is not None:
            check_output_file(report_path, option="--report")
        from belusim.report.metrics import Recorder

        recorder = Recorder()
        with _live_progress(quiet) as progress:
            report = run_scenario(sc, resolved, names, None, progress, goodput=slo, recorder=recorder)
        rows = compare_rows(report, base)
        if report_path is not None:
            from belusim.report.html import compare_report

            compare_report(report, recorder.rows, rows, base, report_path)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        if manifest is not None:
            manifest.__exit__(type(e), e, None)
        _fail(e)
    if manifest is not None:
        with manifest:
            write_table(rows, out)
    if as_json:
        sys.stdout.write(json.dumps(json_safe({"scenario": sc.name, "baseline": base, "results": rows})) + "\n")
        return
    console = Console(width=None if sys.stdout.isatty() else 150)
    for phase in [p.name for p in sc.run.phases]:
        table = Table(title=f"{sc.name}: phase {phase} (ratios against {base})")
        cols = ["system", "TTFT mean ms", "x", "TTFT p99 ms", "x", "TPOT mean ms", "x", "TPOT p99 ms", "x", "req/s",
                "x", "HBM hit", "tier hit"]
        for c in cols:
            table.add_column(c, justify="left" if c == "system" else "right", no_wrap=c == "system")
        for r in rows:
            if r["phase"] != phase:
                continue
            cells = [r["system"]]
            for k in RATIO_KEYS:
                cells += [_fmt(r[k], 1 if k.endswith("_ms") else 3), _fmt(r[f"{k}_vs_baseline"], 2)]
            cells += [_fmt(r["hbm_hit_ratio"], 2), _fmt(r["tier_hit_ratio"], 2)]
            table.add_row(*cells)
        console.print(table)


@app.command()
def sweep(
    study: str = typer.Argument(..., help="sweep file (YAML) or packaged sweep name, e.g. beluga/sweep-rate"),
    grid: list[str] = typer.Option([], "--grid", help="vary one more field: path=v1,v2,... (repeatable; "
                                   "every combination runs; commas inside {} or [] stay)"),
    set_: list[str] = typer.Option([], "--set", help="extra fixed overrides"),
    out: Optional[Path] = typer.Option(None, "--out", help="table path (default: the sweep's output)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="local Dask worker processes (default: one per "
                                          "CPU; 0: run in this process without Dask)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of a running Dask scheduler "
                                            "(tcp://host:8786) to run the points on instead"),
    restart: bool = typer.Option(False, "--restart", help="discard points finished by an earlier run", metavar=""),
    report_path: Optional[Path] = typer.Option(None, "--report", help="also write a self-contained HTML report here"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON", metavar=""),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines", metavar=""),
):
    """Run a scenario once per combination of values and write the table. Each point's result is
    appended to <table>.points.jsonl as it arrives; run the same command again after an
    interruption and only the missing points run."""
    from belusim.report.metrics import json_safe
    from belusim.study.sweep import parse_grid, run_sweep

    try:
        extra = parse_grid(grid)
        with _points_progress(quiet) as (on_start, on_result):
            res = run_sweep(study, set_, out, None, extra, workers, scheduler, restart, on_start, on_result)
        if report_path is not None:
            from belusim.report.html import sweep_report

            sweep_report(res, report_path)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps(json_safe({k: v for k, v in res.items() if k != "details"})) + "\n")
        return
    labels = res["labels"]
    table = Table(title=f"sweep {res['sweep']}: {', '.join(res['parameters'])}")
    for c in [*labels, "system", "phase", "TTFT mean ms", "TTFT p99 ms", "TPOT mean ms", "req/s", "tier hit"]:
        table.add_column(str(c))
    for r in res["rows"]:
        table.add_row(*[_cell(r[lb]) for lb in labels], r["system"], r["phase"], _fmt(r["mean_ttft_ms"], 1),
                      _fmt(r["p99_ttft_ms"], 1), _fmt(r["mean_tpot_ms"], 1), _fmt(r["request_throughput"]),
                      _fmt(r["tier_hit_ratio"], 2))
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    Console().print(f"wrote {res['output']} (points in {res['points']})")


def _cell(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


class _points_progress:
    """A rich progress bar over points on stderr; (on_start, on_result) for the study."""

    def __init__(self, quiet: bool, what: str = "points"):
        self.quiet = quiet
        self.what = what
        self.bar = None
        self.task = None

    def __enter__(self):
        if self.quiet:
            return None, None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err, transient=False)

        def on_start(total: int, done: int, where: str) -> None:
            err.print(f"[dim]{total} {self.what}, {done} already done, {where}[/]")
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=total, completed=done)

        def on_result(_point, _res) -> None:
            self.bar.advance(self.task)

        return on_start, on_result

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


@app.command()
def plan(
    scenario: str = typer.Argument(..., help="scenario file or packaged name"),
    slo: str = typer.Option(..., "--slo", help="bounds, comma-separated: METRIC_STAT=VALUE with METRIC ttft, tpot, "
                            "itl or e2el, STAT mean, median, p90 or p99, VALUE in s or ms (ttft_p99=5s,tpot_p99=200ms)"),
    systems: Optional[str] = typer.Option(None, "--systems", help="comma-separated subset of the scenario's systems"),
    target_qps: Optional[float] = typer.Option(None, "--target-qps", help="also find the cheapest configuration "
                                               "meeting the SLO at this rate, over the scenario's plan.sizeable knobs"),
    seeds: int = typer.Option(3, "--seeds", help="independent searches (seeds run.seed, +1, ...); the answer is "
                              "their median, min and max"),
    tolerance: float = typer.Option(0.1, "--tolerance", help="stop a search when first failing / last passing "
                                    "rate <= 1 + this"),
    start_qps: float = typer.Option(1.0, "--start-qps", help="first rate tried; doubled or halved until bracketed"),
    max_qps: float = typer.Option(1000.0, "--max-qps", help="highest rate tried"),
    keep_up: float = typer.Option(0.9, "--keep-up", help="throughput must reach this share of what a system that "
                                  "keeps up delivers (n / (arrival span + mean e2e))"),
    phase: Optional[str] = typer.Option(None, "--phase", help="phase the SLO applies to and the rate drives "
                                        "(default: the last; earlier phases run as the scenario has them)"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="system the break-even is taken against "
                                           "(default: the first)"),
    prices: Optional[str] = typer.Option(None, "--prices", help="price card id (models/prices/) or file"),
    set_: list[str] = typer.Option([], "--set", help="override a field: path.to.field=value (repeatable)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="local Dask worker processes (default: one per "
                                          "CPU; 0: in this process)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of a running Dask scheduler"),
    out: Optional[Path] = typer.Option(None, "--out", help="directory for plan.json and plan.points.jsonl (a rerun "
                                       "with the same --out reuses the points already run)"),
    report_path: Optional[Path] = typer.Option(None, "--report", help="also write a self-contained HTML report here"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as one JSON object", metavar=""),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines", metavar=""),
):
    """Highest sustainable request rate per system under an SLO, cost per QPS and break-even.

    Each system and seed is searched separately: open-loop Poisson arrivals in the SLO phase,
    the rate doubled or halved until bracketed, then bisected until the bracket is within
    --tolerance. The defaults (3 seeds, 10%) take about 6 rounds of systems x seeds runs; on
    2 cores the Beluga testbed scenario (beluga/e2e) takes a few minutes. Use --seeds 1 or
    --tolerance 0.2 for a quicker look, more seeds for a tighter spread.
    """
    from belusim.outputs import atomic_write
    from belusim.report.metrics import json_safe
    from belusim.study.plan import run_plan

    try:
        names = [s.strip() for s in systems.split(",")] if systems else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        progress = None if quiet else (lambda msg: err.print(f"[dim]{msg}[/]"))
        res = run_plan(find_scenario(scenario), set_, slo, names, target_qps, seeds, tolerance, start_qps, max_qps,
                       keep_up, phase, baseline, prices, workers, scheduler,
                       out / "plan.points.jsonl" if out is not None else None, on_round=progress,
                       on_start=(lambda where: progress(f"planning {where}")) if progress else None)
        if out is not None:
            atomic_write(out / "plan.json", json.dumps(json_safe(res), indent=2))
        if report_path is not None:
            from belusim.report.html import plan_report

            plan_report(res, report_path)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps(json_safe(res)) + "\n")
        return
    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"{res['scenario']}: highest rate meeting {res['slo_text']} in phase {res['phase']} "
                        f"({len(res['seeds'])} seeds, median \\[min-max])")
    for c in ["system", "max QPS", "min", "max", "goodput req/s", "cost USD", "USD per QPS", "extra USD",
              f"extra paid for (vs {res['baseline']})"]:
        table.add_column(c, justify="left" if c == "system" else "right")
    for r in res["systems"]:
        be = res["break_even"][r["system"]]
        table.add_row(r["system"], _fmt(r["max_qps"]), _fmt(r["max_qps_min"]), _fmt(r["max_qps_max"]),
                      _fmt(r["goodput_at_max"]), f"{r['cost_usd']:,.0f}",
                      f"{r['usd_per_qps']:,.0f}" if r["usd_per_qps"] else "-", f"{be['extra_usd']:,.0f}",
                      f"{be['extra_paid_for_usd']:,.0f}" if be["extra_paid_for_usd"] is not None else "-")
    console.print(table)
    if res.get("target"):
        for name, t in res["target"].items():
            what = ", ".join(f"{k}={v}" for k, v in (t["config"] or {}).items()) or t.get("note", "")
            console.print(f"{name}: at {res['target_qps']:g} QPS -> {what}"
                          + (f" (USD {t['cost_usd']:,.0f})" if t.get("cost_usd") else ""))
    console.print(f"[dim]{len(res['points'])} runs in {res['wall_s']:.0f} s[/]")


@app.command()
def schema(
    output: bool = typer.Option(False, "--output", help="the schema of the output (run --json, summary.json) instead", metavar=""),
):
    """Print the JSON schema of a resolved scenario (card fields also accept a card id)."""
    if output:
        from belusim.report.schema import output_schema

        sys.stdout.write(json.dumps(output_schema(), indent=2) + "\n")
        return
    sys.stdout.write(json.dumps(Scenario.model_json_schema(), indent=2) + "\n")


@app.command()
def show(
    scenario: Optional[str] = typer.Argument(None, help="scenario file or packaged name"),
    set_: list[str] = typer.Option([], "--set", help="override a field: path.to.field=value"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration profile name or path"),
):
    """Print the fully resolved scenario (cards expanded, overrides applied)."""
    import yaml

    try:
        _sc, resolved = load(scenario, set_, calibration)
    except ConfigError as e:
        _fail(e)
    sys.stdout.write(yaml.safe_dump(resolved, sort_keys=False))


@app.command()
def cards(
    kind: Optional[str] = typer.Argument(None, help="one folder of models/ (default: all)"),
    markdown: bool = typer.Option(False, "--markdown", help="print Markdown tables (for docs)", metavar=""),
):
    """Every figure of every model card with its source."""
    from belusim.config.scenario import CARD_KINDS, list_cards, load_card

    kinds = [kind] if kind else list(CARD_KINDS)
    for k in kinds:
        if k not in CARD_KINDS:
            _fail(f"no card kind {k!r}; kinds: {list(CARD_KINDS)}")
        for cid in list_cards(k):
            try:
                card = load_card(k, cid)
            except ConfigError as e:
                _fail(e)
            rows = card.figure_rows()
            if markdown:
                sys.stdout.write(f"\n### {k}/{cid}\n\n{card.description}\n\n| field | value | source |\n|---|---|---|\n")
                for f, v, src in rows:
                    sys.stdout.write(f"| {f} | {v} | {src} |\n")
            else:
                table = Table(title=f"{k}/{cid}: {card.description}")
                for c in ("field", "value", "source"):
                    table.add_column(c)
                for f, v, src in rows:
                    table.add_row(f, v, src)
                Console().print(table)


@app.command("list")
def list_():
    """List the packaged scenarios and model cards."""
    from belusim.config.scenario import CARD_KINDS, list_cards

    console = Console()
    console.print("[bold]scenarios[/]")
    for p in sorted(scenarios_dir().rglob("*.yaml")):
        console.print(f"  {p.relative_to(scenarios_dir())}")
    for kind in CARD_KINDS:
        console.print(f"[bold]{kind}[/]: {', '.join(list_cards(kind))}")


if __name__ == "__main__":  # pragma: no cover
    app()
