"""What a workload hands to the simulator: requests as token-block keys.

A request is described by its prompt length, its output length and one integer key per
full KV block of its prompt. Keys are chained: two requests share a key at position i only
if their prompts are identical up to and including block i, so a prefix cache can compare
keys alone. The last partial block of a prompt (prompt_tokens % block_size tokens) has no
key: it is never cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class RequestSpec:
    req_id: int
    prompt_tokens: int
    output_tokens: int
    # One int64 key per full block of the prompt (len == prompt_tokens // block_size).
    block_keys: np.ndarray
    # Arrival time in seconds from the start of the phase (open loop / trace replay);
    # None when a closed-loop client decides when it is sent.
    arrival_s: float | None = None
    # Free-form provenance, e.g. "lveval:factrecall_en:16k:17" or "mooncake:123".
    source: str = ""
    tags: dict = field(default_factory=dict)


@dataclass(slots=True)
class Workload:
    """The requests of one phase, in the order they are issued."""

    requests: list[RequestSpec]
    block_size: int
    # "open": requests carry arrival_s; "closed": clients issue them back to back;
    # "sessions": requests tagged session/turn: a session starts at its first turn's
    # arrival_s and sends each later turn tags["think_s"] after the previous one finished.
    mode: str = "open"
    clients: int = 0
    think_time_s: float = 0.0
