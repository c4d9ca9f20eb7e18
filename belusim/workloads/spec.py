"""What a workload hands to the simulator: requests as token-block keys.

A request is described by its prompt length, its output length and one integer key per
full KV block of its prompt. Keys are chained: two requests share a key at position i only
if their prompts are identical up to and including block i, so a prefix cache can compare
keys alone. The last partial block of a prompt (prompt_tokens % block_size tokens) has no
key: it is never cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class RequestList(Sequence):
    """Requests built when they are read, from per-request arrays: a long trace keeps a few
    numbers per request rather than a RequestSpec and its block keys (a million-request run
    would hold gigabytes). Each read builds a fresh spec, so specs are read-only: arrival
    times live in `arrival_s` (None: closed loop)."""

    def __init__(self, n: int, build: Callable[[int, float | None], RequestSpec]):
        self._n = n
        self._build = build
        self.arrival_s: np.ndarray | None = None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        t = self.arrival_s
        return self._build(i, None if t is None else float(t[i]))

    def __iter__(self):
        build, t = self._build, self.arrival_s
        if t is None:
            return (build(i, None) for i in range(self._n))
        return map(build, range(self._n), t.tolist())


@dataclass(slots=True)
class Workload:
    """The requests of one phase, in the order they are issued."""

    requests: Sequence[RequestSpec]  # a list, or a RequestList built as it is read
    block_size: int
    # "open": requests carry arrival_s; "closed": clients issue them back to back;
    # "sessions": requests tagged session/turn: a session starts at its first turn's
    # arrival_s and sends each later turn tags["think_s"] after the previous one finished.
    mode: str = "open"
    clients: int = 0
    think_time_s: float = 0.0

    def arrival_times(self) -> list[float]:
        """Arrival times of the requests that have one, without building the requests."""
        reqs = self.requests
        if isinstance(reqs, RequestList):
            return [] if reqs.arrival_s is None else reqs.arrival_s.tolist()
        return [r.arrival_s for r in reqs if r.arrival_s is not None]
