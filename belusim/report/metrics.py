"""Per-request records, written as the run goes, and per-phase summaries."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from belusim.policy.request import Request, State

RECORD_FIELDS = [
    "system", "phase", "req_id", "instance", "status", "reason", "prompt_tokens", "output_tokens",
    "hbm_hit_tokens", "tier_hit_tokens", "preemptions", "arrival_s", "admitted_s", "load_start_s",
    "load_end_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "kv_load_s",
]

SUMMARY_KEYS = [
    "system", "phase", "requests", "completed", "rejected", "unfinished", "ttft_mean_s", "ttft_p50_s",
    "ttft_p90_s", "ttft_p99_s", "tpot_mean_s", "tpot_p99_s", "e2e_mean_s", "qps", "output_tokens_per_s",
    "hbm_hit_ratio", "tier_hit_ratio", "kv_load_mean_s", "makespan_s", "preemptions",
]


def _nan_if_none(x):
    return math.nan if x is None else x


class Recorder:
    """Collects finished (or rejected) requests; streams them to CSV when given a path."""

    def __init__(self, csv_path: Path | None = None):
        self.rows: list[tuple] = []
        self._fh = None
        self._writer = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(csv_path, "w", newline="")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(RECORD_FIELDS)

    def record(self, system: str, req: Request) -> None:
        status = req.state.value if req.state in (State.FINISHED, State.REJECTED) else "unfinished"
        ttft = req.first_token - req.arrival
        tpot = (req.finish - req.first_token) / (req.num_output - 1) if req.num_output > 1 else math.nan
        row = (
            system, req.phase, req.req_id, req.instance, status, req.reject_reason, req.prompt_tokens,
            req.output_tokens, req.hbm_hit_tokens, req.tier_hit_tokens, req.preemptions, req.arrival,
            req.admitted, req.load_start, req.load_end, req.first_token, req.finish, ttft, tpot,
            req.finish - req.arrival, req.load_end - req.load_start,
        )
        self.rows.append(row)
        if self._writer is not None:
            self._writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=RECORD_FIELDS)


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else math.nan


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def summarize(rows: list[tuple], system: str, phase: str) -> dict:
    """Summary of one system's phase from its request records."""
    idx = {k: i for i, k in enumerate(RECORD_FIELDS)}
    mine = [r for r in rows if r[0] == system and r[1] == phase]
    done = [r for r in mine if r[idx["status"]] == "finished"]

    def col(name, src=done):
        return np.array([r[idx[name]] for r in src], dtype=float)

    ttft, tpot, e2e = col("ttft_s"), col("tpot_s"), col("e2e_s")
    tpot = tpot[~np.isnan(tpot)]
    prompt = col("prompt_tokens")
    outputs = col("output_tokens")
    kv_load = col("kv_load_s")
    kv_load = kv_load[~np.isnan(kv_load)]
    arrivals = col("arrival_s", mine) if mine else np.array([])
    finishes = col("finish_s")
    makespan = float(finishes.max() - arrivals.min()) if done else math.nan
    total_prompt = prompt.sum()
    return {
        "system": system,
        "phase": phase,
        "requests": len(mine),
        "completed": len(done),
        "rejected": sum(1 for r in mine if r[idx["status"]] == "rejected"),
        "unfinished": sum(1 for r in mine if r[idx["status"]] == "unfinished"),
        "ttft_mean_s": _mean(ttft),
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p90_s": _pct(ttft, 90),
        "ttft_p99_s": _pct(ttft, 99),
        "tpot_mean_s": _mean(tpot),
        "tpot_p99_s": _pct(tpot, 99),
        "e2e_mean_s": _mean(e2e),
        "qps": len(done) / makespan if done and makespan > 0 else math.nan,
        "output_tokens_per_s": float(outputs.sum()) / makespan if done and makespan > 0 else math.nan,
        "hbm_hit_ratio": float(col("hbm_hit_tokens").sum() / total_prompt) if total_prompt else math.nan,
        "tier_hit_ratio": float(col("tier_hit_tokens").sum() / total_prompt) if total_prompt else math.nan,
        "kv_load_mean_s": _mean(kv_load),
        "makespan_s": makespan,
        "preemptions": int(col("preemptions").sum()) if done else 0,
    }


def json_safe(x):
    """NaN and inf become null so that the JSON is valid."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x
