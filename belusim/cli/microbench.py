"""`belusim microbench`: transfer-level studies from the command line.

    belusim microbench dense --out reports/dense_kv_latency.csv
    belusim microbench sparse --out reports/sparse_kv_latency.csv
    belusim microbench transfer --system rdma-pool --direction store -k 4

Every command resolves a scenario (default: the packaged quickstart; any path or packaged
name), applies --calibration and --set overrides, and prints a table; --json prints the rows
as JSON instead and --out writes them to a .csv or .json file. See docs/microbench.md.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from belusim.study import microbench as mb
from belusim.config.scenario import ConfigError, Scenario, resolve_scenario

microbench_app = typer.Typer(
    help="Transfer-level studies: single KV transfers timed through the simulator's data paths.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)

_SCENARIO = typer.Option(None, "--scenario", "-s", help="scenario file or packaged name (default: quickstart)")
_SET = typer.Option([], "--set", help="override a field: path.to.field=value (repeatable)")
_CAL = typer.Option(None, "--calibration", help="calibration profile name or path")
_JSON = typer.Option(False, "--json", help="print the rows as one JSON object")
_OUT = typer.Option(None, "--out", help="write the table to FILE (.csv or .json); parent folders are created")


def _fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True)
    raise typer.Exit(2)


def _load(scenario: Optional[str], set_: list[str], calibration: Optional[str]) -> tuple[Scenario, Path]:
    from belusim.cli.main import find_scenario  # here, not at import time: belusim.cli.main mounts this app

    path = find_scenario(scenario)
    sc, _ = resolve_scenario(path, set_, calibration)
    return sc, path


def _names(text: str) -> list[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    if not out:
        raise mb.MicrobenchError(f"expected a comma-separated list, got {text!r}")
    return out


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_rows(path: Path, payload: dict) -> None:
    """Write a study's rows: .csv (one line a row) or .json (the whole payload)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise mb.MicrobenchError(f"--out {path}: use a .csv or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        path.write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
        return
    rows = payload["rows"]
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)


# (row key, header, format)
def _ms(d: int):
    return lambda v: f"{v:.{d}f}"


def _us(v: float) -> str:
    return f"{v * 1e3:.2f}"


_DENSE_COLUMNS = [
    ("model", "model", str), ("system", "system", str), ("direction", "dir", str), ("tokens", "tokens", str),
    ("bytes", "MiB", lambda v: f"{v / 2**20:.0f}"), ("latency_ms", "latency ms", _ms(3)),
    ("gbps", "GB/s", _ms(1)), ("launch_ms", "launch", _ms(3)), ("coherence_ms", "coher.", _ms(3)),
    ("rpc_ms", "rpc", _ms(3)), ("cpu_ms", "cpu", _ms(3)), ("access_ms", "access", _ms(4)),
    ("wire_ms", "wire", _ms(3)), ("queueing_ms", "queue", _ms(3)), ("cpu_work_ms", "cpu work", _ms(3)),
    ("work_requests", "WRs", lambda v: f"{v:.0f}"), ("bottleneck", "bottleneck", str),
]
_CONCURRENT_COLUMNS = [
    ("concurrency", "K", str), ("latency_max_ms", "max ms", _ms(3)), ("agg_gbps", "agg GB/s", _ms(1)),
    ("busiest_link", "busiest link (K)", str),
]
_SPARSE_COLUMNS = [
    ("model", "model", str), ("system", "system", str), ("tokens", "tokens", str), ("pieces", "pieces", str),
    ("extents", "extents", str), ("work_requests", "WRs", str),
    ("bytes", "KiB", lambda v: f"{v / 1024:.0f}"), ("bytes_moved", "KiB moved", lambda v: f"{v / 1024:.0f}"),
    ("latency_ms", "latency µs", _us), ("gbps", "GB/s", _ms(2)), ("launch_ms", "launch", _us),
    ("coherence_ms", "coher.", _us), ("cpu_ms", "cpu", _us), ("access_ms", "access", _us),
    ("wire_ms", "wire", _us), ("queueing_ms", "queue", _us), ("cpu_work_ms", "cpu work", _us),
    ("bottleneck", "bottleneck", str),
]
_TEXT = {"model", "system", "direction", "bottleneck", "busiest_link"}


def _table(title: str, rows: list[dict], columns: list, caption: str = "") -> Table:
    table = Table(title=title, caption=caption or None)
    for key, header, _f in columns:
        table.add_column(header, justify="left" if key in _TEXT else "right", no_wrap=key in _TEXT)
    for r in rows:
        table.add_row(*[("-" if r.get(k) is None else f(r[k])) for k, _h, f in columns])
    return table


def _emit(study: str, sc: Scenario, scenario_path: Path, params: dict, rows: list[dict], columns: list,
          as_json: bool, out: Optional[Path], caption: str) -> None:
    payload = {"study": study, "scenario": sc.name, "scenario_file": str(scenario_path), "params": params,
               "rows": rows}
    if out is not None:
        write_rows(out, payload)
    if as_json:
        sys.stdout.write(json.dumps(_json_safe(payload)) + "\n")
    else:
        console = Console(width=None if sys.stdout.isatty() else 220)
        console.print(_table(f"belusim microbench {study}: {sc.name}", rows, columns, caption))
        for r in rows:
            if r.get("note"):
                console.print(f"[dim]{r['model']} {r['system']} {r['direction']}: {r['note']}[/]")
    if out is not None:
        err.print(f"wrote {out}")


_DENSE_CAPTION = ("times in ms; latency = launch + coher. + rpc + cpu + access + wire + queue; "
                  "cpu = exposed part of the connector's posting work (cpu work); wire = bytes / lone bottleneck")
_SPARSE_CAPTION = ("times in µs; latency = launch + coher. + cpu + access + wire + queue; "
                   "CXL: launch + max(lines x 64 B / path rate, ceil(extents / outstanding) x access latency)")


def _run(fn):
    try:
        return fn()
    except (ConfigError, mb.MicrobenchError, ValueError, OSError) as e:
        _fail(str(e))


@microbench_app.command()
def transfer(
    system: str = typer.Option("cxl-pool", "--system", help="a system name of the scenario or a kind: cxl-pool, rdma-pool, local-dram"),
    model: Optional[str] = typer.Option(None, "--model", help="model card id (default: the scenario's)"),
    direction: str = typer.Option("load", "--direction", help="load (pool -> GPU) or store (GPU -> pool)"),
    tokens: int = typer.Option(8192, "--tokens", help="tokens of KV moved (rounded up to whole tier chunks)"),
    concurrency: int = typer.Option(1, "--concurrency", "-k", help="identical transfers at once, one per GPU"),
    placement: str = typer.Option("packed", "--placement", help="packed: GPUs 0..K-1; spread: one per PCIe switch first"),
    lookup: bool = typer.Option(False, "--lookup", help="a load starts with its metadata lookup RPC"),
    scenario: Optional[str] = _SCENARIO,
    set_: list[str] = _SET,
    calibration: Optional[str] = _CAL,
    as_json: bool = _JSON,
    out: Optional[Path] = _OUT,
):
    """One transfer (or K concurrent ones) of one model's KV through one system, with its breakdown."""
    def go():
        sc, path = _load(scenario, set_, calibration)
        rows = mb.transfer_study(sc, system, model, direction, tokens, concurrency, placement, lookup)
        params = {"system": system, "model": rows[0]["model"], "direction": direction, "tokens": tokens,
                  "concurrency": concurrency, "placement": placement, "lookup": lookup}
        cols = _DENSE_COLUMNS + (_CONCURRENT_COLUMNS if concurrency > 1 else [])
        _emit("transfer", sc, path, params, rows, cols, as_json, out, _DENSE_CAPTION)

    _run(go)


@microbench_app.command()
def dense(
    models: str = typer.Option(",".join(mb.DENSE_MODELS), "--models", help="comma-separated model card ids"),
    systems: str = typer.Option(",".join(mb.TRANSFER_KINDS), "--systems", help="comma-separated system names or kinds"),
    directions: str = typer.Option("store,load", "--directions", help="store, load or both"),
    tokens: int = typer.Option(8192, "--tokens", help="tokens of one request's KV"),
    concurrency: int = typer.Option(1, "--concurrency", "-k", help="identical transfers at once, one per GPU"),
    placement: str = typer.Option("packed", "--placement", help="packed or spread (see transfer)"),
    lookup: bool = typer.Option(False, "--lookup", help="loads start with their metadata lookup RPC"),
    scenario: Optional[str] = _SCENARIO,
    set_: list[str] = _SET,
    calibration: Optional[str] = _CAL,
    as_json: bool = _JSON,
    out: Optional[Path] = _OUT,
):
    """Dense KV transfer latency per model: store and load of one request's KV on each system."""
    def go():
        sc, path = _load(scenario, set_, calibration)
        ms, ss, ds = _names(models), _names(systems), _names(directions)
        rows = mb.dense_study(sc, ms, ss, ds, tokens, concurrency, placement, lookup)
        params = {"models": ms, "systems": ss, "directions": ds, "tokens": tokens, "concurrency": concurrency,
                  "placement": placement, "lookup": lookup}
        cols = _DENSE_COLUMNS + (_CONCURRENT_COLUMNS if concurrency > 1 else [])
        _emit("dense", sc, path, params, rows, cols, as_json, out, _DENSE_CAPTION)

    _run(go)


@microbench_app.command()
def sparse(
    models: str = typer.Option(",".join(mb.SPARSE_MODELS), "--models", help="comma-separated model card ids"),
    systems: str = typer.Option("cxl-pool,rdma-pool", "--systems", help="comma-separated system names or kinds"),
    tokens: int = typer.Option(mb.SPARSE_TOKENS, "--tokens", help="tokens' worth of selected KV"),
    piece_bytes: str = typer.Option(
        str(mb.SPARSE_PIECE_BYTES), "--piece-bytes",
        help="bytes per piece (assumed 144 = midpoint of the paper's 128-160 B) or 'card' for head_dim x dtype"),
    contiguous_fraction: float = typer.Option(
        mb.SPARSE_CONTIGUOUS_FRACTION, "--contiguous-fraction", help="share of pieces merged with a neighbour"),
    outstanding_reads: int = typer.Option(
        mb.SPARSE_OUTSTANDING_READS, "--outstanding-reads", help="CXL/DRAM: piece reads in flight for the kernel (assumed)"),
    rdma_copy: str = typer.Option("memcpy", "--rdma-copy", help="bounce buffer -> GPU: memcpy or scatter-kernel"),
    rdma_wr: str = typer.Option("sge", "--rdma-wr", help="sge: max_sge pieces per work request; per-piece: one WR each"),
    scenario: Optional[str] = _SCENARIO,
    set_: list[str] = _SET,
    calibration: Optional[str] = _CAL,
    as_json: bool = _JSON,
    out: Optional[Path] = _OUT,
):
    """Sparse KV loads: a few tokens' worth of selected KV as many small non-contiguous pieces."""
    def go():
        if piece_bytes.strip().lower() == "card":
            pb = None
        else:
            try:
                pb = float(piece_bytes)
            except ValueError:
                raise mb.MicrobenchError(f"--piece-bytes must be a number or 'card', got {piece_bytes!r}") from None
        sc, path = _load(scenario, set_, calibration)
        ms, ss = _names(models), _names(systems)
        rows = mb.sparse_study(sc, ms, ss, tokens, pb, contiguous_fraction, outstanding_reads, rdma_copy, rdma_wr)
        params = {"models": ms, "systems": ss, **mb.sparse_params(tokens, pb, contiguous_fraction, outstanding_reads,
                                                                   rdma_copy, rdma_wr)}
        _emit("sparse", sc, path, params, rows, _SPARSE_COLUMNS, as_json, out, _SPARSE_CAPTION)

    _run(go)


if __name__ == "__main__":  # pragma: no cover
    microbench_app()
