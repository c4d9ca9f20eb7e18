"""The layout of belusim's output (`run --json`, `summary.json`), as pydantic models so that
`belusim schema --output` can print it as JSON Schema and tests can hold the output to it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from belusim.report.metrics import LATENCY_METRICS, LATENCY_STATS, SCHEMA_VERSION

_LATENCY_WHAT = {
    "ttft": "time to first token",
    "tpot": "time per output token after the first, per request (requests with one output token excluded)",
    "itl": "inter-token latency: every gap between consecutive tokens of every finished request",
    "e2el": "end-to-end latency, arrival to last token",
}
_STAT_WHAT = {"mean": "mean", "median": "median", "std": "standard deviation (numpy, ddof=0)",
              "p90": "90th percentile", "p99": "99th percentile"}

_fields: dict[str, Any] = {
    "system": (str, Field(description="system name from the scenario")),
    "phase": (str, Field(description="phase name from the scenario")),
    "completed": (int, Field(description="requests finished (vLLM: completed)")),
    "failed": (int, Field(description="requests rejected or unfinished (vLLM: failed)")),
    "duration": (float | None, Field(description="s, first arrival to last finish of the phase (vLLM: duration)")),
    "total_input_tokens": (int, Field(description="prompt tokens of finished requests")),
    "total_output_tokens": (int, Field(description="output tokens of finished requests")),
    "request_throughput": (float | None, Field(description="req/s: completed / duration")),
    "request_goodput": (float | None, Field(
        description="req/s meeting every --goodput bound (ms) / duration; null without --goodput")),
    "output_throughput": (float | None, Field(description="output tok/s")),
    "total_token_throughput": (float | None, Field(description="(input + output) tok/s")),
}
for _m in LATENCY_METRICS:
    for _s in LATENCY_STATS:
        _fields[f"{_s}_{_m}_ms"] = (float | None, Field(description=f"ms, {_STAT_WHAT[_s]} of {_LATENCY_WHAT[_m]}"))
_fields.update({
    "requests": (int, Field(description="belusim: requests of the phase (completed + failed)")),
    "rejected": (int, Field(description="belusim: requests that can never fit an instance's KV cache")),
    "unfinished": (int, Field(description="belusim: requests still in flight at max_sim_time_s")),
    "hbm_hit_ratio": (float | None, Field(description="belusim: prompt tokens found in HBM / prompt tokens")),
    "tier_hit_ratio": (float | None, Field(description="belusim: prompt tokens loaded from the KV tier / prompt tokens")),
    "mean_kv_load_ms": (float | None, Field(description="belusim: ms, mean tier-to-HBM load per request that loaded")),
    "mean_queue_ms": (float | None, Field(description="belusim: ms, mean arrival-to-admission wait")),
    "p99_queue_ms": (float | None, Field(description="belusim: ms, 99th percentile arrival-to-admission wait")),
    "preemptions": (int, Field(description="belusim: preemptions of finished requests")),
    "arrival_span_s": (float | None, Field(description="belusim: s, first to last arrival of the phase")),
    "itl_rel_error": (float, Field(description=(
        "belusim: how far the ITL statistics may be from exact: 0 when every gap was kept; past "
        "run.itl_exact_gaps gaps in the phase, the relative resolution of the histogram they were "
        "folded into (quantiles within it; mean and std exact up to rounding)"))),
    "breakdown": (dict[str, Any], Field(description=(
        "belusim: where the time to first token went. ttft_ms: per part (queue, compute, kv_load_wire, "
        "kv_load_software, kv_load_thread_wait, lookup_software, rpc, save_stall, others_loads) the mean "
        "and p99 in ms over finished requests (the means add up to mean_ttft_ms); top: the parts by "
        "their share of the mean"))),
})

PhaseResult = create_model(
    "PhaseResult", __config__=ConfigDict(extra="allow"), __doc__="One system's phase.", **_fields)


class RunOutput(BaseModel):
    """`belusim run --json`: one row per system and phase."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SCHEMA_VERSION, description="version of this layout")
    scenario: str
    goodput: dict[str, float] | None = Field(None, description="the --goodput bounds in ms, if any")
    results: list[PhaseResult]  # type: ignore[valid-type]


class Summary(RunOutput):
    """`summary.json` (run --out): the rows plus per-system details (wall time, transfers,
    link utilisation, conservation checks)."""

    model_config = ConfigDict(extra="allow")
    details: list[dict[str, Any]]


def output_schema() -> dict:
    return Summary.model_json_schema()
