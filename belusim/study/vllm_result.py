"""Read a `vllm bench serve --save-result` JSON file into belusim's summary keys.

vLLM writes (vllm/benchmarks/serve.py): completed, duration (s), request_throughput (req/s),
mean/median/std/pXX of ttft, tpot, itl and e2el in ms (the pXX keys for the percentiles
asked with --metric-percentiles, 99 by default; e2el only when --percentile-metrics names
it), and per-request arrays ttfts (s), itls (lists, s), input_lens, output_lens. Where a
p99 key is missing but the per-request array is there, the p99 is computed from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


class ResultFileError(ValueError):
    pass


REQUIRED = ["completed", "duration", "request_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms"]
OPTIONAL = ["p99_ttft_ms", "p99_tpot_ms", "median_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms",
            "median_e2el_ms", "p99_e2el_ms", "total_input_tokens", "total_output_tokens", "output_throughput"]


def _number(data: dict, key: str, path: Path, required: bool):
    if key not in data:
        if required:
            raise ResultFileError(f"{path}: field '{key}' is missing (not a complete `vllm bench serve "
                                  "--save-result` file)")
        return None
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ResultFileError(f"{path}: field '{key}' must be a finite number, got {v!r}")
    if v < 0:
        raise ResultFileError(f"{path}: field '{key}' must not be negative, got {v!r}")
    return float(v)


def _array(data: dict, key: str, path: Path, n: int | None):
    if key not in data:
        return None
    v = data[key]
    if not isinstance(v, list):
        raise ResultFileError(f"{path}: field '{key}' must be a list")
    if n is not None and len(v) < n:
        raise ResultFileError(f"{path}: field '{key}' has {len(v)} entries for {n} completed requests")
    return v


def read_bench_result(path: Path) -> dict:
    """The file's figures under belusim's summary keys (ms latencies, request_throughput)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultFileError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: expected a JSON object at the top level")
    out = {k: _number(data, k, path, True) for k in REQUIRED}
    out.update({k: _number(data, k, path, False) for k in OPTIONAL})
    completed = int(out["completed"])
    if completed < 1:
        raise ResultFileError(f"{path}: field 'completed' is 0: no request finished")
    if out["duration"] <= 0:
        raise ResultFileError(f"{path}: field 'duration' must be positive")
    ttfts = _array(data, "ttfts", path, None)
    if ttfts is not None:
        good = [t for t in ttfts if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0]
        if out["p99_ttft_ms"] is None and good:
            out["p99_ttft_ms"] = float(np.percentile(np.array(good) * 1e3, 99))
    itls = _array(data, "itls", path, None)
    if itls is not None and out["p99_tpot_ms"] is None:
        olens = _array(data, "output_lens", path, None)
        if olens is not None and ttfts is not None:
            tpots = [sum(i) / (o - 1) * 1e3 for i, o in zip(itls, olens)
                     if isinstance(i, list) and isinstance(o, int) and o > 1]
            if tpots:
                out["p99_tpot_ms"] = float(np.percentile(tpots, 99))
    out["mean_kv_load_ms"] = None  # vLLM's benchmark does not report it
    return out
