"""Workloads: LV-Eval (synthetic or from files), Mooncake traces and belusim's own traces.

Everything here is plain Python + numpy; the simulator only sees the RequestSpec/Workload
contract from spec.py.
"""

from __future__ import annotations

from .arrivals import gamma_arrivals, poisson_arrivals
from .builder import build_workload
from .config import WorkloadConfig, parse_workload_config
from .errors import WorkloadError
from .spec import RequestSpec, Workload
from .stats import trace_stats
from .trace_format import iter_trace, read_trace, write_trace

__all__ = [
    "RequestSpec",
    "Workload",
    "WorkloadConfig",
    "WorkloadError",
    "build_workload",
    "gamma_arrivals",
    "iter_trace",
    "parse_workload_config",
    "poisson_arrivals",
    "read_trace",
    "trace_stats",
    "write_trace",
]
