"""`belusim trace ...`: inspect and convert workload traces.

Bad input ends with a one-line message and exit code 2, never a traceback: these commands
are mostly run on files a user just downloaded.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from pydantic import ValidationError

from belusim.errors import InputError
from belusim.outputs import check_output_file

from .errors import WorkloadError

trace_app = typer.Typer(
    help="Inspect and convert workload traces (Mooncake, LV-Eval, belusim's own format).",
    no_args_is_help=True,
    add_completion=False,
)

_FORMATS = ("mooncake", "lveval", "belusim")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn input errors into a clear message and exit code 2."""
    try:
        yield
    except (InputError, ValidationError, OSError) as e:
        msg = str(e)
        if isinstance(e, ValidationError):
            msg = "invalid options:\n" + "\n".join(
                f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
            )
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None


def _check_format(fmt: Optional[str]) -> None:
    if fmt is not None and fmt not in _FORMATS:
        raise WorkloadError(f"unknown --format {fmt!r}; use one of {', '.join(_FORMATS)}")


def _fmt_num(x: object) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.3f}" if abs(x) < 100 else f"{x:,.1f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _print_stats(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{s['format']} trace: {s['path']}", show_header=True)
    t.add_column("statistic")
    t.add_column("value", justify="right")
    t.add_row("requests", _fmt_num(s["requests"]))
    t.add_row("time span (s)", _fmt_num(s["time_span_s"]))
    t.add_row("mean rate (req/s)", _fmt_num(s["mean_rate_qps"]))
    for name in ("input_tokens", "output_tokens"):
        d = s[name]
        t.add_row(
            name.replace("_", " "),
            " ".join(f"{k} {_fmt_num(d[k])}" for k in ("mean", "p50", "p90", "p99", "max")),
        )
    t.add_row("block size (tokens)", _fmt_num(s["block_size"]))
    t.add_row("unique prefix blocks", _fmt_num(s["unique_prefix_blocks"]))
    t.add_row("block references", _fmt_num(s["block_references"]))
    t.add_row("infinite-cache prefix hit ratio", f"{s['prefix_hit_ratio']:.4f}")
    t.add_row("  (granularity)", s["prefix_hit_granularity"])
    raw = s.get("mooncake_512")
    if raw:
        t.add_row("512-token ids: unique blocks", _fmt_num(raw["unique_prefix_blocks"]))
        t.add_row("512-token ids: block references", _fmt_num(raw["block_references"]))
        t.add_row("512-token ids: prefix hit ratio", f"{raw['prefix_hit_ratio']:.4f}")
    Console().print(t)


@trace_app.command("stats")
def stats_cmd(
    file: Path = typer.Argument(..., help="Trace file (Mooncake/belusim JSONL, parquet) or LV-Eval directory/zip."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="mooncake | lveval | belusim (default: detect)."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Engine block size in tokens (default 16; a belusim trace's own)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    tokenizer_json: Optional[Path] = typer.Option(
        None, "--tokenizer-json", help="LV-Eval: count tokens and key contexts with this tokenizer.json (needs 'tokenizers')."
    ),
) -> None:
    """Requests, rate, token percentiles, prefix blocks and the infinite-cache hit ratio."""
    from .stats import trace_stats

    with _user_errors():
        _check_format(format)
        s = trace_stats(file, format, block_size, tokenizer_json=tokenizer_json)
    if as_json:
        typer.echo(json.dumps(s))
    else:
        _print_stats(s)


@trace_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="Source trace (Mooncake JSONL, LV-Eval directory/zip/jsonl, belusim trace)."),
    out: Path = typer.Option(..., "--out", "-o", help="Destination: .jsonl or .parquet."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="Source format: mooncake | lveval | belusim (default: detect)."),
    block_size: int = typer.Option(16, "--block-size", help="Engine block size in tokens."),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Keep at most this many requests."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Divide arrival times by this (>1 = faster)."),
    level: Optional[list[str]] = typer.Option(None, "--level", help="LV-Eval levels to include (repeatable; default all found)."),
    seed: int = typer.Option(0, "--seed", help="Seed (for any drawn output lengths)."),
) -> None:
    """Convert a trace to belusim's format, with block keys precomputed."""
    from .builder import build_workload
    from .config import BelusimTraceConfig, LvevalFilesConfig, MooncakeConfig
    from .lveval import discover
    from .stats import detect_format
    from .trace_format import trace_kind, write_trace

    with _user_errors():
        _check_format(format)
        trace_kind(out)
        check_output_file(out, inputs=[src])
        if not rate_scale > 0:
            raise WorkloadError(f"--rate-scale must be > 0, got {rate_scale}")
        fmt = format or detect_format(src)
        if fmt == "mooncake":
            cfg = MooncakeConfig(kind="mooncake", path=src, rate_scale=rate_scale, max_requests=max_requests)
            wl = build_workload(cfg, block_size=block_size, seed=seed, base_dir=Path.cwd())
        elif fmt == "belusim":
            cfg = BelusimTraceConfig(kind="belusim-trace", path=src, max_requests=max_requests)
            wl = build_workload(cfg, block_size=block_size, seed=seed, base_dir=Path.cwd())
            if rate_scale != 1.0:
                for r in wl.requests:
                    if r.arrival_s is not None:
                        r.arrival_s = r.arrival_s / rate_scale
        else:
            levels = level or sorted({s.level for s in discover(src)}, key=lambda x: int(x[:-1]))
            cfg = LvevalFilesConfig(kind="lveval-files", path=src, levels=levels, max_records=max_requests)
            wl = build_workload(cfg, block_size=block_size, seed=seed, base_dir=Path.cwd())
        write_trace(wl, out)
    typer.echo(f"wrote {len(wl.requests)} requests ({wl.mode} loop, block size {wl.block_size}) to {out}")


@trace_app.command("export-synthetic")
def export_synthetic_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Destination: .jsonl or .parquet."),
    num_prompts: int = typer.Option(64, "--num-prompts", help="Number of prompts."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed -> identical trace)."),
    level: str = typer.Option("16k", "--level", help="LV-Eval length level: 16k|32k|64k|128k|256k."),
    subset: Optional[list[str]] = typer.Option(None, "--subset", help="Subsets (repeatable; default the 4 English ones with statistics)."),
    block_size: int = typer.Option(16, "--block-size", help="Engine block size in tokens."),
    min_prompt_tokens: int = typer.Option(0, "--min-prompt-tokens", help="Drop prompts shorter than this."),
    truncate_tokens: Optional[int] = typer.Option(None, "--truncate-tokens", help="Cut prompts to at most N tokens."),
    shared_context_fraction: float = typer.Option(0.0, "--shared-context-fraction", help="Probability of re-using an earlier context."),
    length_cv: float = typer.Option(0.15, "--length-cv", help="Spread of prompt length around the subset mean."),
    rate_qps: Optional[float] = typer.Option(None, "--rate-qps", help="Poisson arrivals at this rate; default closed loop (no timestamps)."),
    clients: int = typer.Option(16, "--clients", help="Closed-loop clients recorded in the header."),
) -> None:
    """Write a synthetic LV-Eval workload as a belusim trace."""
    from .builder import build_workload
    from .config import LvevalSyntheticConfig
    from .trace_format import trace_kind, write_trace

    with _user_errors():
        trace_kind(out)
        check_output_file(out)
        data = dict(
            kind="lveval-synthetic",
            level=level,
            num_prompts=num_prompts,
            min_prompt_tokens=min_prompt_tokens,
            truncate_tokens=truncate_tokens,
            shared_context_fraction=shared_context_fraction,
            length_cv=length_cv,
            arrival={"process": "poisson", "rate_qps": rate_qps} if rate_qps is not None else {"process": "closed", "clients": clients},
        )
        if subset:
            data["subsets"] = subset
        cfg = LvevalSyntheticConfig.model_validate(data)
        wl = build_workload(cfg, block_size=block_size, seed=seed, base_dir=Path.cwd())
        write_trace(wl, out)
    typer.echo(f"wrote {len(wl.requests)} requests ({wl.mode} loop, block size {wl.block_size}) to {out}")


def main() -> None:  # pragma: no cover - convenience for `python -m belusim.workloads.cli`
    trace_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
