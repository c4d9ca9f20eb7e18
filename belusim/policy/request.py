"""A request's life inside one engine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any


# Where a request's time to first token goes; the parts add up to its TTFT.
TTFT_PARTS = (
    "queue",                # waiting to be admitted (or re-admitted after a preemption or a load)
    "compute",              # forward passes of the steps it was in, up to its first token
    "kv_load_wire",         # its own tier load, less the parts below (the transfer itself)
    "kv_load_software",     # its load's software stages (models/stacks/)
    "kv_load_thread_wait",  # its load waiting for a busy connector thread
    "lookup_software",      # the steps' lookup stages (hashing, the connector's call)
    "rpc",                  # the steps' metadata RPCs to the tier's index
    "save_stall",           # steps waiting for their synchronous saves
    "others_loads",         # steps waiting for other requests' in-step loads
)


class State(Enum):
    WAITING = "waiting"
    LOADING = "loading"  # waiting for its KV from the external tier
    RUNNING = "running"
    FINISHED = "finished"
    REJECTED = "rejected"


class Request:
    __slots__ = (
        "req_id",
        "phase",
        "prompt_tokens",
        "output_tokens",
        "keys",
        "state",
        "num_computed",
        "num_output",
        "runs",
        "cached_blocks",
        "private_blocks",
        "hbm_hit_tokens",
        "tier_hit_tokens",
        "looked_up",
        "saved_chunks",
        "preemptions",
        "instance",
        "arrival",
        "admitted",
        "load_start",
        "load_end",
        "first_token",
        "finish",
        "reject_reason",
        "prefill_only",
        "on_finish",
        "probe",
        "saves_in_flight",
        "on_saved",
        "handed_off",
        "blocked_at",
        "tier_hint",
        "pool_hint",
        "ttft_parts",
        "ttft_mark",
    )

    def __init__(self, req_id: int, prompt_tokens: int, output_tokens: int, keys: Sequence[int], arrival: float,
                 phase: str = ""):
        if prompt_tokens <= 0 or output_tokens <= 0:
            raise ValueError(f"request {req_id}: prompt and output tokens must be positive")
        self.req_id = req_id
        self.phase = phase
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.keys = keys  # chain keys of the prompt's full blocks (the cluster gives an int64 array)
        self.state = State.WAITING
        self.num_computed = 0  # tokens whose KV is in HBM
        self.num_output = 0  # tokens sampled so far
        self.runs: list[tuple[int, int]] = []  # cached HBM blocks it holds: keys[a:b] for (a, b), in order
        self.cached_blocks = 0  # how many that is
        self.private_blocks = 0
        self.hbm_hit_tokens = 0
        self.tier_hit_tokens = 0
        self.looked_up = False
        self.saved_chunks = 0  # leading tier chunks known stored (or being stored)
        self.preemptions = 0
        self.instance = -1
        self.arrival = float(arrival)
        self.admitted = math.nan
        self.load_start = math.nan
        self.load_end = math.nan
        self.first_token = math.nan
        self.finish = math.nan
        self.reject_reason = ""
        self.prefill_only = False  # disaggregated prefill: stop after the first token
        self.on_finish: Any = None  # callback(request), set by the cluster
        # last prefix probe: hbm blocks, tier blocks matched, then the limit and the pool's
        # (evictions, promotions) and the tier's (evictions, inserts) it was answered at
        self.probe = (0, 0, -1, -1, -1, -1, -1)
        self.saves_in_flight = 0
        self.on_saved: Any = None  # callback(request) when its last save lands (disaggregation)
        self.handed_off = False  # moved from a prefill instance to a decode instance
        self.tier_hint: Any = None  # the last tier / HBM index run its walks reached (a shortcut only)
        self.pool_hint: Any = None
        self.blocked_at: tuple[int, int] | None = None  # (free blocks, blocks needed) when admission last failed (Scheduler._block)
        self.ttft_parts = [0.0] * len(TTFT_PARTS)  # filled by the executor, see TTFT_PARTS
        self.ttft_mark = arrival  # time up to which ttft_parts account for it

    @property
    def known_tokens(self) -> int:
        """Tokens the model has seen or sampled: the prompt plus the output so far."""
        return self.prompt_tokens + self.num_output

    @property
    def blocks_held(self) -> int:
        return self.cached_blocks + self.private_blocks

    @property
    def cached_keys(self) -> list[int]:
        """The keys of the cached blocks it holds, in prefix order."""
        return [k for a, b in self.runs for k in self.keys[a:b]]

    @property
    def remaining_outputs(self) -> int:
        return self.output_tokens - self.num_output

    def hand_off(self) -> None:
        """Reset the engine-side state so that a decode instance can take the request."""
        self.state = State.WAITING
        self.num_computed = 0
        self.runs = []
        self.cached_blocks = 0
        self.private_blocks = 0
        self.looked_up = False
        self.prefill_only = False
        self.handed_off = True
        self.probe = (0, 0, -1, -1, -1, -1, -1)

    def __repr__(self) -> str:
        return (f"Request({self.req_id}, {self.state.value}, prompt={self.prompt_tokens}, "
                f"computed={self.num_computed}, out={self.num_output}/{self.output_tokens})")
