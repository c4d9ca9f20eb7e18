"""Workload configuration: a pydantic union discriminated on `kind`.

A scenario file embeds one of these under its workload key; `build_workload` turns it into
requests. Nested unions pick the arrival process (`arrival.process`) and the output-length
rule (`output.mode`). Unknown fields are rejected so a typo fails loudly instead of being
silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

LEVELS: tuple[str, ...] = ("16k", "32k", "64k", "128k", "256k")
Level = Literal["16k", "32k", "64k", "128k", "256k"]

# The English subsets that components.md gives token statistics for.
DEFAULT_SYNTHETIC_SUBSETS = [
    "hotpotwikiqa_mixup",
    "multifieldqa_en_mixup",
    "loogle_SD_mixup",
    "factrecall_en",
]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- arrival processes -------------------------------------------------------------------


class ClosedArrival(_Base):
    """Closed loop: a fixed number of clients, each sending its next request when the last ends."""

    process: Literal["closed"] = Field("closed", description="Closed-loop clients.")
    clients: int = Field(16, ge=1, description="Number of concurrent clients.")
    think_time_s: float = Field(
        0.0, ge=0.0, description="Pause of a client between a reply and its next request (s)."
    )


class PoissonArrival(_Base):
    """Open loop with exponential gaps."""

    process: Literal["poisson"] = Field("poisson", description="Poisson arrivals.")
    rate_qps: float = Field(gt=0.0, description="Mean arrival rate (requests per second).")


class GammaArrival(_Base):
    """Open loop with gamma gaps: bursty (cv > 1) or regular (cv < 1) traffic."""

    process: Literal["gamma"] = Field("gamma", description="Gamma-distributed gaps.")
    rate_qps: float = Field(gt=0.0, description="Mean arrival rate (requests per second).")
    cv: float = Field(
        gt=0.0, description="Coefficient of variation of the gaps; 1 is Poisson, >1 burstier."
    )


class RateStage(_Base):
    rate_qps: float = Field(gt=0.0, description="Mean arrival rate in this stage (requests per second).")
    duration_s: float = Field(gt=0.0, description="Length of the stage (s).")


class StagesArrival(_Base):
    """Poisson stages, one after another (the inference-perf / llm-d load shape).

    Stage k sends round(rate_qps * duration_s) requests at Poisson times inside its window
    (uniform order statistics: a Poisson process given its count).
    """

    process: Literal["stages"] = Field("stages", description="Poisson stages.")
    stages: list[RateStage] = Field(min_length=1, description="Rate stages, in order.")

    @property
    def total_requests(self) -> int:
        return sum(int(round(s.rate_qps * s.duration_s)) for s in self.stages)


class TraceArrival(_Base):
    """Replay the timestamps recorded in the trace."""

    process: Literal["trace"] = Field("trace", description="Use the trace's own timestamps.")


ArrivalConfig = Annotated[
    Union[ClosedArrival, PoissonArrival, GammaArrival, StagesArrival, TraceArrival],
    Field(discriminator="process"),
]


# --- output lengths ----------------------------------------------------------------------


class LvevalCapsOutput(_Base):
    """LV-Eval answer lengths under its generation caps (64 tokens; 16 for factrecall)."""

    mode: Literal["lveval-caps"] = Field(
        "lveval-caps",
        description="Answer-length model capped at LV-Eval's max_gen (64; 16 for factrecall).",
    )


class FixedOutput(_Base):
    """Every request generates the same number of tokens."""

    mode: Literal["fixed"] = Field("fixed", description="Fixed output length.")
    tokens: int = Field(ge=1, description="Output tokens per request.")


class UniformOutput(_Base):
    """Output length drawn uniformly from [low, high] (inclusive)."""

    mode: Literal["uniform"] = Field("uniform", description="Uniform output length.")
    low: int = Field(ge=1, description="Smallest output length (tokens).")
    high: int = Field(ge=1, description="Largest output length (tokens), inclusive.")

    @model_validator(mode="after")
    def _order(self) -> "UniformOutput":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class TraceOutput(_Base):
    """Use the output lengths recorded in the trace."""

    mode: Literal["trace"] = Field("trace", description="Use the trace's output lengths.")


OutputConfig = Annotated[
    Union[LvevalCapsOutput, FixedOutput, UniformOutput, TraceOutput],
    Field(discriminator="mode"),
]


# --- workload kinds ----------------------------------------------------------------------


def _no_trace_modes(kind: str, arrival: object, output: object) -> None:
    if isinstance(arrival, TraceArrival):
        raise ValueError(f"{kind} has no timestamps: arrival.process must be closed, poisson or gamma")
    if isinstance(output, TraceOutput):
        raise ValueError(f"{kind} has no recorded output lengths: output.mode cannot be 'trace'")


class LvevalSyntheticConfig(_Base):
    """LV-Eval-like prompts synthesised from the published statistics (no data files needed)."""

    kind: Literal["lveval-synthetic"] = Field(description="Synthetic LV-Eval workload.")
    subsets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SYNTHETIC_SUBSETS),
        min_length=1,
        description="LV-Eval subsets to draw from; records are drawn in proportion to their QA pairs.",
    )
    level: Level = Field("16k", description="LV-Eval length level.")
    num_prompts: int = Field(64, ge=1, description="Number of requests to generate.")
    min_prompt_tokens: int = Field(
        0, ge=0, description="Drop prompts shorter than this (before truncation); the paper uses >15K."
    )
    truncate_tokens: int | None = Field(
        None, ge=1, description="Cut each prompt to at most N tokens: context head kept, question kept at the end."
    )
    length_cv: float = Field(
        0.15,
        ge=0.0,
        description="Coefficient of variation of prompt length around the subset mean (assumed).",
    )
    shared_context_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Probability that a record re-uses the context of an earlier record of its subset.",
    )
    reuse: Literal["none", "documented"] = Field(
        "none",
        description="documented: the reuse LV-Eval's construction implies (shared template header; "
        "factrecall contexts share one haystack up to the inserted fact)",
    )
    factrecall_insertions: int = Field(
        1, ge=1, description="Insertions (fact + confusing facts) per factrecall context at independent depths (assumed 1)."
    )
    output: OutputConfig = Field(
        default_factory=LvevalCapsOutput, description="Output-length rule."
    )
    arrival: ArrivalConfig = Field(
        default_factory=ClosedArrival, description="Arrival process."
    )

    @model_validator(mode="after")
    def _check(self) -> "LvevalSyntheticConfig":
        from .lveval import SUBSETS

        unknown = [s for s in self.subsets if s not in SUBSETS]
        if unknown:
            raise ValueError(f"unknown LV-Eval subset(s) {unknown}; known: {sorted(SUBSETS)}")
        if len(set(self.subsets)) != len(self.subsets):
            raise ValueError("subsets must not repeat")
        _no_trace_modes("lveval-synthetic", self.arrival, self.output)
        return self


class LvevalFilesConfig(_Base):
    """Real LV-Eval records read from local files in the Hugging Face layout."""

    kind: Literal["lveval-files"] = Field(description="LV-Eval records from local files.")
    path: Path = Field(
        description="Directory with {subset}_{level}.jsonl files and/or {subset}.zip archives (or one such file)."
    )
    subsets: list[str] | None = Field(
        None, description="Subsets to use, in this order; None = every subset found."
    )
    levels: list[Level] = Field(
        default_factory=lambda: ["16k"], min_length=1, description="Length levels to use."
    )
    tokenizer_json: Path | None = Field(
        None, description="A tokenizer.json to count tokens exactly; None = estimate from words/chars."
    )
    tokens_per_word_en: float = Field(
        1.3, gt=0.0, description="Token estimate per English word (typical)."
    )
    tokens_per_char_zh: float = Field(
        0.8, gt=0.0, description="Token estimate per Chinese character (midpoint of 0.6-1.0)."
    )
    min_prompt_tokens: int = Field(
        0, ge=0, description="Drop records whose prompt is shorter than this (before truncation)."
    )
    truncate_tokens: int | None = Field(
        None, ge=1, description="Cut each prompt to at most N tokens: context head kept, question kept at the end."
    )
    max_records: int | None = Field(
        None, ge=1, description="Use at most this many records (after filtering and shuffling)."
    )
    shuffle: bool = Field(
        False, description="Shuffle the records (seeded) instead of file order."
    )
    output: OutputConfig = Field(
        default_factory=LvevalCapsOutput, description="Output-length rule."
    )
    arrival: ArrivalConfig = Field(
        default_factory=ClosedArrival, description="Arrival process."
    )

    @model_validator(mode="after")
    def _check(self) -> "LvevalFilesConfig":
        if self.subsets is not None and len(self.subsets) == 0:
            raise ValueError("subsets must be None (all found) or a non-empty list")
        _no_trace_modes("lveval-files", self.arrival, self.output)
        return self


def _no_lveval_caps(kind: str, output: object) -> None:
    if isinstance(output, LvevalCapsOutput):
        raise ValueError(f"{kind}: output.mode 'lveval-caps' applies to LV-Eval workloads only")


class MooncakeConfig(_Base):
    """Replay of a Mooncake trace (timestamp, input_length, output_length, hash_ids)."""

    kind: Literal["mooncake"] = Field(description="Mooncake JSONL trace.")
    path: Path = Field(description="The trace file (JSON lines).")
    rate_scale: float = Field(
        1.0, gt=0.0, description="Divide timestamps by this: >1 replays faster."
    )
    max_requests: int | None = Field(None, ge=1, description="Keep at most this many requests.")
    duration_s: float | None = Field(
        None, gt=0.0, description="Keep requests in [start_s, start_s + duration_s) of trace time."
    )
    start_s: float = Field(
        0.0, ge=0.0, description="Skip requests before this trace time (s); arrivals count from here."
    )
    output: OutputConfig = Field(default_factory=TraceOutput, description="Output-length rule.")
    arrival: ArrivalConfig = Field(default_factory=TraceArrival, description="Arrival process.")

    @model_validator(mode="after")
    def _check(self) -> "MooncakeConfig":
        _no_lveval_caps("mooncake", self.output)
        return self


class BelusimTraceConfig(_Base):
    """Replay of a trace in belusim's own format (JSONL or parquet, see docs/workloads.md)."""

    kind: Literal["belusim-trace"] = Field(description="belusim trace file.")
    path: Path = Field(description="The trace (.jsonl or .parquet).")
    max_requests: int | None = Field(None, ge=1, description="Keep at most this many requests.")
    output: OutputConfig = Field(default_factory=TraceOutput, description="Output-length rule.")
    arrival: ArrivalConfig = Field(default_factory=TraceArrival, description="Arrival process.")

    @model_validator(mode="after")
    def _check(self) -> "BelusimTraceConfig":
        _no_lveval_caps("belusim-trace", self.output)
        return self


class SharedPrefixConfig(_Base):
    """N groups x M prompts: each group's prompts share a system prompt, then a unique question
    (inference-perf's shared_prefix data shape, used by llm-d's prefix-cache benchmarks)."""

    kind: Literal["shared-prefix"] = Field(description="Shared-prefix groups.")
    name: str = Field("shared-prefix", description="Namespace: workloads of different names share no blocks.")
    num_groups: int = Field(ge=1, description="Number of groups (distinct system prompts).")
    prompts_per_group: int = Field(ge=1, description="Distinct questions per group.")
    system_prompt_tokens: int = Field(ge=0, description="Shared system-prompt length (tokens).")
    question_tokens: int = Field(ge=0, description="Question length (tokens), unique per prompt (0: a group's prompts are identical).")
    num_requests: int | None = Field(
        None, ge=1, description="Requests to send; None = the stages' count, else each prompt once."
    )
    order: Literal["random", "sequential"] = Field(
        "random", description="random: seeded shuffles of all prompts, one pass after another; sequential: group by group."
    )
    output: OutputConfig = Field(description="Output-length rule (fixed or uniform).")
    arrival: ArrivalConfig = Field(default_factory=ClosedArrival, description="Arrival process.")

    @model_validator(mode="after")
    def _check(self) -> "SharedPrefixConfig":
        if self.system_prompt_tokens + self.question_tokens < 1:
            raise ValueError("shared-prefix: system_prompt_tokens + question_tokens must be at least 1")
        _no_trace_modes("shared-prefix", self.arrival, self.output)
        _no_lveval_caps("shared-prefix", self.output)
        return self


class MultiTurnConfig(_Base):
    """Conversations: turn t's prompt is the whole history (system prompt, every earlier
    question and answer) plus a new question; the next turn is sent a think time after the
    reply ends."""

    kind: Literal["multi-turn"] = Field(description="Multi-turn sessions.")
    name: str = Field("multi-turn", description="Namespace: workloads of different names share no blocks.")
    num_sessions: int = Field(ge=1, description="Number of conversations.")
    turns: int = Field(ge=1, description="Turns per conversation.")
    system_prompt_tokens: int = Field(0, ge=0, description="System prompt at the head of every turn.")
    shared_system_prompt: bool = Field(False, description="One system prompt for all sessions (else one each).")
    user_tokens: int = Field(ge=1, description="Mean new user tokens per turn.")
    user_tokens_cv: float = Field(0.0, ge=0.0, description="Coefficient of variation of user tokens (lognormal).")
    think_time_s: float = Field(0.0, ge=0.0, description="Mean pause between a reply and the next turn (s).")
    think_time_dist: Literal["fixed", "exponential"] = Field("fixed", description="Think-time distribution.")
    output: OutputConfig = Field(description="Answer length per turn (fixed or uniform); answers join the history.")
    arrival: ArrivalConfig = Field(description="When sessions start (poisson, gamma or stages; one start per session).")

    @model_validator(mode="after")
    def _check(self) -> "MultiTurnConfig":
        _no_trace_modes("multi-turn", self.arrival, self.output)
        _no_lveval_caps("multi-turn", self.output)
        if isinstance(self.arrival, ClosedArrival):
            raise ValueError("multi-turn: arrival gives session start times (poisson, gamma or stages), not closed")
        if isinstance(self.arrival, StagesArrival) and self.arrival.total_requests != self.num_sessions:
            raise ValueError(
                f"multi-turn: the stages start {self.arrival.total_requests} sessions but num_sessions is {self.num_sessions}"
            )
        return self


WorkloadConfig = Annotated[
    Union[
        LvevalSyntheticConfig, LvevalFilesConfig, MooncakeConfig, BelusimTraceConfig, SharedPrefixConfig, MultiTurnConfig
    ],
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter = TypeAdapter(WorkloadConfig)


def parse_workload_config(data: object) -> BaseModel:
    """Validate a dict (e.g. from YAML) into one of the WorkloadConfig models."""
    if isinstance(data, BaseModel):
        return data
    return _ADAPTER.validate_python(data)
