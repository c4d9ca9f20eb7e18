"""`belusim calibrate`: measure this machine into a calibration profile, and show profiles."""

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from belusim.calibration import profile as prof_mod
from belusim.calibration.errors import CalibrationError
from belusim.calibration.fit import FITTED_KEYS
from belusim.errors import InputError
from belusim.inputs import read_json
from belusim.outputs import check_output_file

calibrate_app = typer.Typer(
    name="calibrate",
    help="Measure this machine (CPU memory paths, host<->GPU copies, GPU compute) into a calibration profile.",
    no_args_is_help=True,
    add_completion=False,
)

_err = Console(stderr=True)


def _fail(message: str) -> None:
    _err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _config_error_types() -> tuple[type[BaseException], ...]:
    try:
        from belusim.config.scenario import ConfigError

        return (CalibrationError, ConfigError, InputError)
    except Exception:
        return (CalibrationError, InputError)


class _RichReporter:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = progress.add_task("starting", total=None)

    def step(self, label: str) -> None:
        self.progress.update(self.task, description=label)
        self.progress.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {label}", highlight=False)

    def log(self, message: str) -> None:
        self.progress.console.print(f"  [yellow]{message}[/]", highlight=False)


def summary_table(prof: dict, title: str | None = None, sources: bool = True, width: int = 100) -> Table:
    t = Table(title=title or f"calibration profile {prof.get('name')!r}", show_lines=False)
    key_width = max((len(k) for k in prof.get("fitted", {})), default=10)
    t.add_column("parameter", style="cyan", no_wrap=True, min_width=key_width)
    t.add_column("value", justify="right", no_wrap=True, min_width=8)
    rest = max(16, width - key_width - 20)
    t.add_column("source" if sources else "meaning", overflow="ellipsis", no_wrap=True, max_width=rest)
    for key, v in prof.get("fitted", {}).items():
        value = v.get("value") if isinstance(v, dict) else v
        source = v.get("source", "") if isinstance(v, dict) else ""
        shown = (", ".join(f"{k}: {x:.3g}" for k, x in value.items()) if isinstance(value, dict)
                 else f"{value:.4g}")
        t.add_row(key, shown, source if sources else FITTED_KEYS.get(key, ""))
    return t


@calibrate_app.command("probe")
def probe(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the profile (JSON)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes and fewer repetitions (a smoke test)."),
    skip_gpu: bool = typer.Option(False, "--skip-gpu", help="Do not run the GPU probes."),
    skip_cpu: bool = typer.Option(False, "--skip-cpu", help="Do not run the CPU memory probes."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Most threads for the bandwidth probe "
                                                                  "(default: every usable CPU)."),
    dax: Optional[str] = typer.Option(None, "--dax", help="Probe a device-DAX window, e.g. /dev/dax0.0 (a CXL pool)."),
    file: Optional[Path] = typer.Option(None, "--file", help="Probe a window of a file (tmpfs, DAX filesystem...)."),
    offset: str = typer.Option("0", "--offset", help="Window start in the DAX device or file (bytes, K/M/G)."),
    length: Optional[str] = typer.Option(None, "--length", help="Window length (bytes, K/M/G); required with --dax."),
    allow_write: bool = typer.Option(False, "--allow-write", help="Allow the probes to overwrite the window."),
    model: str = typer.Option("qwen3-32b", "--model", help="Model card whose KV layout and layer shapes to use."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: the output file's stem)."),
    gpu_peak_tflops: Optional[float] = typer.Option(None, "--gpu-peak-tflops",
                                                    help="Nominal dense bf16 TFLOP/s (default: from the GPU's card)."),
    gpu_hbm_gbps: Optional[float] = typer.Option(None, "--gpu-hbm-gbps",
                                                 help="Nominal HBM GB/s (default: from the GPU's card)."),
) -> None:
    """Run the probes and write a calibration profile."""
    from belusim.calibration.memory import TargetSpec
    from belusim.calibration.runner import ProbeOptions, run_probe

    errors = _config_error_types()
    console = Console(stderr=False)
    try:
        check_output_file(out)  # before minutes of probing
        spec = TargetSpec.from_options(dax, str(file) if file else None, offset, length, allow_write)
        opts = ProbeOptions(out=out, quick=quick, skip_gpu=skip_gpu, skip_cpu=skip_cpu, threads=threads,
                            target=spec, model=model, name=name, gpu_peak_tflops=gpu_peak_tflops,
                            gpu_hbm_gbps=gpu_hbm_gbps)
        t0 = time.perf_counter()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True, disable=not console.is_terminal) as progress:
            prof = run_probe(opts, _RichReporter(progress))
        prof_mod.save(prof, out)
    except errors as e:
        _fail(str(e))
        return
    console.print(summary_table(prof, width=console.width))
    for note in prof.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"wrote {out} ({len(prof['fitted'])} fitted parameters, {time.perf_counter() - t0:.1f} s)",
                  highlight=False)


@calibrate_app.command("show")
def show(
    name_or_path: str = typer.Argument(..., help="Profile name (in the calibration folder) or path."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole profile as JSON."),
    meaning: bool = typer.Option(False, "--meaning", help="Show what each parameter means instead of its source."),
) -> None:
    """Show a calibration profile's fitted parameters (or all of it with --json)."""
    try:
        path = prof_mod.resolve(name_or_path)
        prof = prof_mod.load(path)
    except _config_error_types() as e:
        _fail(str(e))
        return
    if as_json:
        sys.stdout.write(json.dumps(prof, indent=1) + "\n")
        return
    console = Console()
    m = prof.get("machine", {})
    gpu = m.get("gpu") or {}
    console.print(f"[bold]{prof.get('name')}[/]  created {prof.get('created')}  ({path})", highlight=False)
    desc = m.get("description") or ", ".join(
        x for x in [m.get("cpu_model"), f"{m.get('cpus')} CPUs" if m.get("cpus") else None,
                    gpu.get("name")] if x)
    if desc:
        console.print(desc, highlight=False)
    console.print(summary_table(prof, sources=not meaning, width=console.width))
    for note in prof.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)


@calibrate_app.command("refit")
def refit_cmd(
    name_or_path: str = typer.Argument(..., help="Profile name or path."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default: print the table only)."),
) -> None:
    """Recompute a profile's fitted parameters from its own measurements."""
    from belusim.calibration.runner import refit

    try:
        path = prof_mod.resolve(name_or_path)
        if out:
            check_output_file(out)
        prof = refit(prof_mod.load(path))
        if out:
            prof_mod.save(prof, out)
    except _config_error_types() as e:
        _fail(str(e))
        return
    _show_profile(prof, out)


def _show_profile(prof: dict, out: Path | None) -> None:
    """A profile's fitted parameters as a table, and where it was written (if it was)."""
    console = Console()
    console.print(summary_table(prof, width=console.width))
    if out:
        console.print(f"wrote {out}")


@calibrate_app.command("add-copy-bench")
def add_copy_bench_cmd(
    name_or_path: str = typer.Argument(..., help="Profile name or path."),
    bench: Path = typer.Argument(..., help="JSON written by `python -m belusim.replay.bench_copies --out`."),
    command: str = typer.Option(..., "--command", help="The bench command that made it (kept as its source)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the profile."),
) -> None:
    """Add a measurement of the copy kernel's rate beside engine steps to a profile, and refit."""
    from belusim.calibration.fit import copy_beside_steps_from_bench
    from belusim.calibration.runner import refit

    try:
        prof = prof_mod.load(prof_mod.resolve(name_or_path))
        check_output_file(out)
        data = read_json(bench)  # InputError names the file, line and column
        try:
            rec = copy_beside_steps_from_bench(data, command)
        except (ValueError, AttributeError, TypeError) as e:
            raise CalibrationError(f"{bench}: {e}") from None
        prof.setdefault("measurements", {}).setdefault("gpu", {})["copy_beside_steps"] = rec
        prof = refit(prof)
        prof_mod.save(prof, out)
    except _config_error_types() as e:
        _fail(str(e))
        return
    _show_profile(prof, out)


@calibrate_app.command("paper")
def paper_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the paper-derived profile."),
) -> None:
    """Write the profile derived from the Beluga paper's component figures."""
    from belusim.calibration.paper import paper_profile

    try:
        prof_mod.save(paper_profile(), out)
    except _config_error_types() as e:
        _fail(str(e))
        return
    Console().print(f"wrote {out}")
