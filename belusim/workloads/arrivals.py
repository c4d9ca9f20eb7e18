"""Arrival-time generators for open-loop load: pure functions returning numpy arrays.

The first request arrives at t=0 and each later one after an independent gap, as benchmark
clients (e.g. vLLM's benchmark_serving) do, so n arrivals span n-1 gaps.
"""

from __future__ import annotations

import numpy as np

from .errors import WorkloadError


def _times_from_gaps(gaps: np.ndarray) -> np.ndarray:
    t = np.zeros(len(gaps) + 1, dtype=np.float64)
    np.cumsum(gaps, out=t[1:])
    return t


def _check(n: int, rate_qps: float) -> None:
    if n < 0:
        raise WorkloadError(f"number of arrivals must be >= 0, got {n}")
    if not (rate_qps > 0 and np.isfinite(rate_qps)):
        raise WorkloadError(f"rate_qps must be a positive finite number, got {rate_qps}")


def poisson_arrivals(n: int, rate_qps: float, rng: np.random.Generator) -> np.ndarray:
    """n arrival times (s) of a Poisson process: exponential gaps of mean 1/rate_qps."""
    _check(n, rate_qps)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    return _times_from_gaps(rng.exponential(1.0 / rate_qps, size=n - 1))


def gamma_arrivals(n: int, rate_qps: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """n arrival times (s) with gamma gaps of mean 1/rate_qps and coefficient of variation cv.

    cv = 1 is Poisson; cv > 1 is burstier, cv < 1 more regular (shape = 1/cv**2).
    """
    _check(n, rate_qps)
    if not (cv > 0 and np.isfinite(cv)):
        raise WorkloadError(f"cv must be a positive finite number, got {cv}")
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate_qps * shape)
    return _times_from_gaps(rng.gamma(shape, scale, size=n - 1))


def stage_arrivals(stages: list[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of Poisson stages [(rate_qps, duration_s), ...] run back to back.

    Stage k sends round(rate * duration) requests at sorted uniform times inside its
    window: the arrival times of a Poisson process given how many arrived.
    """
    out = []
    t0 = 0.0
    for rate, duration in stages:
        _check(0, rate)
        if not (duration > 0 and np.isfinite(duration)):
            raise WorkloadError(f"stage duration_s must be a positive finite number, got {duration}")
        k = int(round(rate * duration))
        out.append(t0 + np.sort(rng.uniform(0.0, duration, size=k)))
        t0 += duration
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)
