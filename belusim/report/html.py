"""Self-contained HTML reports (plotly.js inlined: the file opens offline) for run, compare,
sweep, plan and validate, and `html_report` for any other command that has figures to show."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Iterable

import numpy as np

from belusim.report.metrics import RECORD_FIELDS

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
p.note{color:#555;font-size:.9em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
"""


class Section:
    def __init__(self, title: str, figures: Iterable = (), note: str = "", table: list[dict] | None = None):
        self.title, self.figures, self.note, self.table = title, list(figures), note, table


def _table_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(k))}</th>" for k in keys) + "</tr>"]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            if isinstance(v, float):
                v = "-" if not math.isfinite(v) else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}")
            cells.append(f"<td>{html.escape('-' if v is None else str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def html_report(title: str, sections: list[Section], path: Path, subtitle: str = "") -> Path:
    """Write one HTML file with every section's note, table and figures; plotly.js inlined."""
    from plotly.offline import get_plotlyjs

    from belusim.outputs import atomic_write

    body, n = [], 0
    for sec in sections:
        body.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.note:
            body.append(f"<p class='note'>{html.escape(sec.note)}</p>")
        if sec.table:
            body.append(_table_html(sec.table))
        for fig in sec.figures:
            n += 1
            fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420)
            body.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{n}",
                                    config={"displaylogo": False}))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(subtitle)}</p>{''.join(body)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, page)
    return path


# ---------------------------------------------------------------------------------------- figures
def _go():
    import plotly.graph_objects as go

    return go


def _cdf_figure(records, column: str, title: str, scale: float, unit: str):
    go = _go()
    fig = go.Figure()
    done = records[records.status == "finished"]
    for (system, phase), g in done.groupby(["system", "phase"], sort=False):
        x = np.sort(g[column].dropna().to_numpy() * scale)
        if not x.size:
            continue
        fig.add_trace(go.Scatter(x=x, y=np.arange(1, x.size + 1) / x.size, mode="lines",
                                 name=f"{system} / {phase}", line_shape="hv"))
    fig.update_layout(title=title, xaxis_title=unit, yaxis_title="share of requests", yaxis_range=[0, 1.02])
    return fig


def _breakdown(records) -> list[dict]:
    """Mean time per finished request in each stage: where its TTFT went (the per-request
    parts, which add up to its TTFT; see policy.request.TTFT_PARTS), then decode (first to
    last token)."""
    from belusim.policy.request import TTFT_PARTS

    done = records[records.status == "finished"]
    rows = []
    for (system, phase), g in done.groupby(["system", "phase"], sort=False):
        row = {"system": system, "phase": phase}
        for part in TTFT_PARTS:
            row[part] = float(g[f"ttft_{part}_s"].fillna(0).mean())
        row["decode"] = float((g.e2e_s - g.ttft_s).clip(lower=0).mean())
        rows.append(row)
    return rows


def _breakdown_figure(rows: list[dict]):
    go = _go()
    fig = go.Figure()
    labels = [f"{r['system']} / {r['phase']}" for r in rows]
    for key in (k for k in (rows[0] if rows else {}) if k not in ("system", "phase")):
        if any(r[key] > 0 for r in rows):  # parts no system spent time in stay out of the legend
            fig.add_trace(go.Bar(x=labels, y=[r[key] for r in rows], name=key.replace("_", " ")))
    fig.update_layout(barmode="stack", title="Mean time per request by stage (TTFT parts, then decode)",
                      yaxis_title="s")
    return fig


def _link_figure(details: list[dict]):
    go = _go()
    fig = go.Figure()
    for d in details:
        util = d.get("link_utilisation") or {}
        if util:
            fig.add_trace(go.Bar(x=list(util), y=[100 * v for v in util.values()], name=d["system"]))
    if not fig.data:
        return None
    fig.update_layout(title="Link and pool utilisation (mean over the run)", yaxis_title="% busy", barmode="group")
    return fig


def _series_figure(details: list[dict]):
    """Utilisation over time of each system's busiest links, one line per link."""
    go = _go()
    fig = go.Figure()
    for d in details:
        ser = d.get("utilisation_series") or {}
        w = ser.get("bucket_s")
        for name, u in (ser.get("links") or {}).items():
            fig.add_trace(go.Scatter(x=[(k + 0.5) * w for k in range(len(u))], y=[100 * v for v in u],
                                     mode="lines", name=f"{d['system']}: {name}"))
        for name, u in (ser.get("pools") or {}).items():
            fig.add_trace(go.Scatter(x=[(k + 0.5) * w for k in range(len(u))], y=[100 * v for v in u],
                                     mode="lines", line_dash="dot", name=f"{d['system']}: {name} (chunks held)"))
    if not fig.data:
        return None
    fig.update_layout(title="Link utilisation and pool occupancy over time (busiest links per system; dotted: "
                            "pool tiers, share of chunks held)", xaxis_title="simulated time (s)",
                      yaxis_title="% of capacity")
    return fig


def run_sections(report: dict, records) -> list[Section]:
    """Sections for a run or compare: the summary table, CDFs, breakdown and utilisation."""
    cols = ["system", "phase", "completed", "failed", "request_throughput", "mean_ttft_ms", "p99_ttft_ms",
            "mean_tpot_ms", "p99_tpot_ms", "p99_itl_ms", "hbm_hit_ratio", "tier_hit_ratio"]
    table = [{k: r.get(k) for k in cols} for r in report["results"]]
    secs = [Section("Summary (vLLM bench serve names, ms)", table=table),
            Section("Latency distributions", [
                _cdf_figure(records, "ttft_s", "TTFT CDF per system and phase", 1.0, "TTFT (s)"),
                _cdf_figure(records, "tpot_s", "TPOT CDF per system and phase", 1e3, "TPOT (ms)")]),
            Section("Where the time goes", [_breakdown_figure(_breakdown(records))],
                    note="Per finished request, the parts its TTFT is made of (queueing, compute, its own KV "
                         "load: wire, software stages, connector-thread wait; lookups, metadata RPC, save "
                         "stalls, other requests' loads), then decode; means per system and phase.")]
    link = _link_figure(report.get("details", []))
    series = _series_figure(report.get("details", []))
    figs = [f for f in (link, series) if f is not None]
    if figs:
        secs.append(Section("Links and pool", figs))
    return secs


def records_frame(rows: list[tuple]):
    import pandas as pd

    return pd.DataFrame(rows, columns=RECORD_FIELDS)


def run_report(report: dict, rows: list[tuple], path: Path, title: str | None = None) -> Path:
    return html_report(title or f"belusim run: {report['scenario']}", run_sections(report, records_frame(rows)), path,
                       subtitle="Simulated with belusim; every figure traces to a card or an assumption (docs/).")


def compare_report(report: dict, rows: list[tuple], ratio_rows: list[dict], baseline: str, path: Path) -> Path:
    secs = run_sections(report, records_frame(rows))
    ratio_cols = ["system", "phase"] + [k for k in ratio_rows[0] if k.endswith("_vs_baseline")] if ratio_rows else []
    secs.insert(1, Section(f"Ratios against {baseline}", table=[{k: r.get(k) for k in ratio_cols} for r in ratio_rows]))
    return html_report(f"belusim compare: {report['scenario']}", secs, path,
                       subtitle="Same workload and seed on every system.")


def sweep_report(res: dict, path: Path) -> Path:
    go = _go()
    label = res["labels"][0]
    rows = res["rows"]
    figs = []
    for metric, unit in (("request_throughput", "req/s"), ("p99_ttft_ms", "ms"), ("mean_tpot_ms", "ms")):
        fig = go.Figure()
        groups: dict = {}
        for r in rows:
            others = ", ".join(f"{lb}={_short(r[lb])}" for lb in res["labels"][1:])
            groups.setdefault((r["system"], r["phase"], others), []).append(r)
        for (system, phase, others), g in groups.items():
            name = f"{system} / {phase}" + (f" ({others})" if others else "")
            fig.add_trace(go.Scatter(x=[_short(r[label]) for r in g], y=[r.get(metric) for r in g],
                                     mode="lines+markers", name=name))
        fig.update_layout(title=f"{metric} against {label}", xaxis_title=str(label), yaxis_title=unit)
        figs.append(fig)
    link = _link_figure([d for ds in res.get("details", []) for d in ds][:8])
    secs = [Section(f"Sweep {res['sweep']}: {', '.join(res['parameters'])}", figs)]
    if link is not None:
        secs.append(Section("Links and pool (first points)", [link]))
    return html_report(f"belusim sweep: {res['sweep']}", secs, path)


def _short(v):
    if isinstance(v, dict):
        if "rate_qps" in v:
            return v["rate_qps"]
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return v


def plan_report(res: dict, path: Path) -> Path:
    go = _go()
    systems = [r["system"] for r in res["systems"]]
    pts = [p for p in res["points"] if p.get("stage", "max") == "max"]
    slo = res["slo"]
    figs = []
    for key, limit in slo.items():
        fig = go.Figure()
        for s in systems:
            mine = sorted((p for p in pts if p["system"] == s and p.get(key) is not None), key=lambda p: p["rate_qps"])
            if mine:
                fig.add_trace(go.Scatter(x=[p["rate_qps"] for p in mine], y=[p[key] for p in mine], mode="markers",
                                         name=s, marker=dict(symbol=["circle" if p["pass"] else "x" for p in mine],
                                                             size=9)))
        fig.add_hline(y=limit, line_dash="dash", line_color="red", annotation_text=f"SLO {key} = {limit:g} ms")
        fig.update_layout(title=f"{key} against offered rate (circle: passed, x: failed)", xaxis_title="offered QPS",
                          yaxis_title="ms", xaxis_type="log", yaxis_type="log")
        figs.append(fig)
    fig = go.Figure()
    for s in systems:
        mine = sorted((p for p in pts if p["system"] == s and p.get("request_throughput") is not None),
                      key=lambda p: p["rate_qps"])
        if mine:
            fig.add_trace(go.Scatter(x=[p["rate_qps"] for p in mine], y=[p["request_throughput"] for p in mine],
                                     mode="markers", name=s))
    fig.update_layout(title="Achieved request throughput against offered rate", xaxis_title="offered QPS",
                      yaxis_title="req/s", xaxis_type="log", yaxis_type="log")
    figs.append(fig)
    rows = res["systems"]
    qps = go.Figure(go.Bar(x=systems, y=[r["max_qps"] for r in rows],
                           error_y=dict(type="data", symmetric=False,
                                        array=[r["max_qps_max"] - r["max_qps"] for r in rows],
                                        arrayminus=[r["max_qps"] - r["max_qps_min"] for r in rows])))
    qps.update_layout(title=f"Highest rate meeting the SLO (median of {len(res['seeds'])} seeds, bars: min to max)",
                      yaxis_title="QPS")
    cost = go.Figure(go.Bar(x=systems, y=[r["usd_per_qps"] for r in rows]))
    cost.update_layout(title="Hardware cost per sustained QPS", yaxis_title="USD per QPS")
    parts = go.Figure()
    names = []
    for r in rows:
        for p in r["cost_parts"]:
            if p["part"] not in names:
                names.append(p["part"])
    for name in names:
        parts.add_trace(go.Bar(x=systems, y=[sum(p["usd"] for p in r["cost_parts"] if p["part"] == name) for r in rows],
                               name=name))
    parts.update_layout(barmode="stack", title="Hardware cost by part", yaxis_title="USD")
    table = [{"system": r["system"], "max QPS": r["max_qps"], "min": r["max_qps_min"], "max": r["max_qps_max"],
              "goodput req/s": r["goodput_at_max"], "cost USD": r["cost_usd"], "USD per QPS": r["usd_per_qps"],
              f"extra USD vs {res['baseline']}": res["break_even"][r["system"]]["extra_usd"],
              "extra its QPS pays for": res["break_even"][r["system"]]["extra_paid_for_usd"]} for r in rows]
    price_rows = [{"part": p["part"], "unit USD": p["unit_usd"], "source": p["source"]}
                  for p in {p["part"]: p for r in rows for p in r["cost_parts"]}.values()]
    secs = [
        Section("Answer", table=table,
                note=f"SLO {res['slo_text']} in phase {res['phase']}; a rate passes when every request is served, "
                     f"every bound holds and throughput keeps up; bisection to {res['tolerance']:.0%}."),
        Section("Latency and throughput against rate", figs),
        Section("Capacity and cost", [qps, cost, parts]),
        Section("Prices and their sources", table=price_rows),
    ]
    if res.get("target"):
        secs.append(Section(f"Cheapest configuration at {res['target_qps']:g} QPS",
                            table=[{"system": k, "configuration": ", ".join(f"{a}={b}" for a, b in
                                                                            (v["config"] or {}).items())
                                    or v.get("note", ""), "cost USD": v.get("cost_usd")}
                                   for k, v in res["target"].items()]))
    return html_report(f"belusim plan: {res['scenario']}", secs, path,
                       subtitle=f"{len(res['points'])} simulated runs.")


def _pred_meas_cdf(frames: dict, column: str, phase: str, title: str, scale: float, unit: str):
    """One CDF per source (predicted, measured) of `column` over the phase's finished requests."""
    go = _go()
    fig = go.Figure()
    for source, df in frames.items():
        g = df[(df.status == "finished") & (df.phase == phase)]
        x = np.sort(g[column].dropna().to_numpy() * scale)
        if x.size:
            fig.add_trace(go.Scatter(x=x, y=np.arange(1, x.size + 1) / x.size, mode="lines", name=source,
                                     line_shape="hv", line_dash="solid" if source == "measured" else "dash"))
    fig.update_layout(title=title, xaxis_title=unit, yaxis_title="share of requests", yaxis_range=[0, 1.02])
    return fig if fig.data else None


def validate_report(report: dict, path: Path) -> Path:
    """Predicted against measured: the error table and TTFT/TPOT CDFs per phase. A comparison
    with a `vllm bench serve` result file (no per-request records) has the table only."""
    frames = {src: records_frame([tuple(r) for r in report[key]])
              for src, key in (("predicted", "requests_predicted"), ("measured", "requests_measured"))
              if report.get(key)}
    secs = []
    for ph in report["phases"]:
        table = [{"metric": r["metric"], "predicted": r["predicted"], "measured": r["measured"],
                  "error": "-" if r["rel_error"] is None or r["rel_error"] != r["rel_error"]
                  else f"{100 * r['rel_error']:+.1f}%",
                  "target": "" if r["target"] is None else f"{100 * r['target']:.0f}% " + (
                      "ok" if r["within"] else ("MISS" if r["within"] is False else ""))}
                 for r in ph["errors"]]
        figs = [f for f in (
            _pred_meas_cdf(frames, "ttft_s", ph["phase"], f"TTFT CDF, phase {ph['phase']}", 1e3, "TTFT (ms)"),
            _pred_meas_cdf(frames, "tpot_s", ph["phase"], f"TPOT CDF, phase {ph['phase']}", 1e3, "TPOT (ms)"))
            if f is not None] if len(frames) == 2 else []
        secs.append(Section(f"Phase {ph['phase']}", figs, table=table,
                            note="error = (predicted - measured) / measured; dashed: predicted, solid: measured."))
    rp = report.get("replay") or {}
    sub = (f"Replay backend: {rp.get('backend')}; {rp.get('steps')} steps." if rp
           else f"Prediction against {report.get('against')}.")
    return html_report(f"belusim validate: {report['scenario']} ({report['system']})", secs, path, subtitle=sub)
