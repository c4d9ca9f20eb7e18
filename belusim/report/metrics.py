"""Per-request records, written as the run goes, and per-phase summaries.

Summaries use the names and units of vLLM's `vllm bench serve` result
(vllm/benchmarks/serve.py: `completed`, `failed`, `duration`, `request_throughput`,
`output_throughput`, `total_token_throughput`, `request_goodput`, and
`{mean,median,std,p90,p99}_{ttft,tpot,itl,e2el}_ms`), so that a simulated figure sits beside a
measured one without translation. belusim's own figures (hit ratios, queueing, KV loads) have
names of their own, listed in BELUSIM_KEYS.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Sequence
import csv
import math
import struct
from pathlib import Path

import numpy as np

from belusim.config.scenario import ITL_EXACT_GAPS
from belusim.policy.request import TTFT_PARTS, Request, State
from belusim.report.gaps import GapHistogram

# Version of the output's layout (`belusim schema --output`); bumped when a key changes meaning.
SCHEMA_VERSION = 2

RECORD_FIELDS = [
    "system", "phase", "req_id", "instance", "status", "reason", "prompt_tokens", "output_tokens",
    "hbm_hit_tokens", "tier_hit_tokens", "preemptions", "arrival_s", "admitted_s", "load_start_s",
    "load_end_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "kv_load_s", "queue_s",
    "itl_mean_s", "itl_max_s",
] + [f"ttft_{p}_s" for p in TTFT_PARTS]  # where its TTFT went: the parts add up to ttft_s

# vLLM `bench serve` latency metrics and statistics (milliseconds).
LATENCY_METRICS = ["ttft", "tpot", "itl", "e2el"]
LATENCY_STATS = ["mean", "median", "std", "p90", "p99"]
VLLM_KEYS = [
    "completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput",
] + [f"{s}_{m}_ms" for m in LATENCY_METRICS for s in LATENCY_STATS]
BELUSIM_KEYS = [
    "requests", "rejected", "unfinished", "hbm_hit_ratio", "tier_hit_ratio", "mean_kv_load_ms",
    "mean_queue_ms", "p99_queue_ms", "preemptions", "arrival_span_s", "itl_rel_error", "breakdown",
]
SUMMARY_KEYS = ["system", "phase"] + VLLM_KEYS + BELUSIM_KEYS

# The goodput criteria vLLM accepts (`--goodput ttft:MS tpot:MS e2el:MS`).
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(items: list[str] | None) -> dict[str, float] | None:
    """`["ttft:500", "tpot:50"]` (or one string with spaces or commas) to {"ttft": 500.0, ...}, in ms."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        for part in item.replace(",", " ").split():
            key, sep, val = part.partition(":")
            if not sep or key not in GOODPUT_METRICS:
                raise ValueError(f"--goodput {part!r}: expected KEY:MS with KEY one of {', '.join(GOODPUT_METRICS)}")
            try:
                ms = float(val)
            except ValueError:
                raise ValueError(f"--goodput {part!r}: {val!r} is not a number of milliseconds") from None
            if ms < 0:
                raise ValueError(f"--goodput {part!r}: a negative bound")
            out[key] = ms
    return out


def _nan_if_none(x):
    return math.nan if x is None else x


def itl_ends(step_ends: Sequence[float], req: Request) -> Sequence[float] | None:
    """The ends of the engine steps that gave a finished request its tokens after the first
    (a copy: the instance's list of ends is trimmed as the run goes). A running request gets
    a token every step (vLLM V1 schedules every running request each step), so its last
    num_output - 1 tokens came at the last steps up to its finish. Preempted after its first
    token, it sat out steps unknown here: None unless the step count between first token and
    finish still matches."""
    n = req.num_output - 1
    if n < 1 or not step_ends:
        return None
    hi = bisect.bisect_right(step_ends, req.finish)
    if req.preemptions and not req.handed_off:
        if hi - bisect.bisect_right(step_ends, req.first_token) != n:
            return None
    elif req.preemptions or hi < n:
        return None
    if step_ends[hi - n] <= req.first_token:
        return None
    return step_ends[hi - n:hi]


def itl_samples(step_ends: Sequence[float], req: Request) -> np.ndarray | None:
    """The gaps between a finished request's tokens (see itl_ends): the first from its first
    token, the others between consecutive step ends."""
    ends = itl_ends(step_ends, req)
    if ends is None:
        return None
    ends = np.frombuffer(ends, dtype=np.float64) if isinstance(ends, array) else np.asarray(ends, dtype=np.float64)
    gaps = np.empty(len(ends))
    gaps[0] = ends[0] - req.first_token
    np.subtract(ends[1:], ends[:-1], out=gaps[1:])
    return gaps


# How each record column is kept (see Records): text as codes into a table of its values,
# counts as int64, times and durations as float64.
_TEXT_FIELDS = ("system", "phase", "status", "reason")
_RECORD_BATCH = 256  # rows appended before they go into the columns
_FLOAT_ONLY, _INT_ONLY = {float}, {int}
_INT_FIELDS = ("req_id", "instance", "prompt_tokens", "output_tokens", "hbm_hit_tokens", "tier_hit_tokens",
               "preemptions")


class Records(Sequence):
    """Request records kept by column, in record order: a row costs about 230 bytes (one
    machine word per field) where a tuple of Python floats cost about 800, which is most of
    what a million-request run keeps. Reading a row gives back exactly the tuple recorded:
    a value of another type than its column's (an int time, a None) is kept aside as it was."""

    def __init__(self, rows: Iterable[tuple] = ()):
        self._n = 0
        self._cols: list[array] = []
        self._text: dict[int, tuple[list, dict]] = {}  # column -> (values, value -> code)
        for c, name in enumerate(RECORD_FIELDS):
            if name in _TEXT_FIELDS:
                self._cols.append(array("I"))
                self._text[c] = ([], {})
            else:
                self._cols.append(array("q" if name in _INT_FIELDS else "d"))
        self._float_cols = [c for c, a in enumerate(self._cols) if a.typecode == "d"]
        self._int_cols = [c for c, a in enumerate(self._cols) if a.typecode == "q"]
        self._odd: dict[int, dict[int, object]] = {}  # column -> row -> the value as recorded
        self._inexact: set[int] = set()  # columns holding a value their array cannot stand for
        self._pending: list[tuple] = []  # rows appended, not yet in the columns
        for row in rows:
            self.append(row)

    def append(self, row: tuple) -> None:
        if len(row) != len(RECORD_FIELDS):
            raise ValueError(f"a record has {len(RECORD_FIELDS)} fields, got {len(row)}")
        # Rows wait in a batch and go into the columns a column at a time (a tenth of the
        # per-value work of storing each row as it comes); every reader flushes first.
        self._pending.append(row)
        self._n += 1
        if len(self._pending) >= _RECORD_BATCH:
            self._flush()

    def _flush(self) -> None:
        rows = self._pending
        if not rows:
            return
        self._pending = []
        first, cols = self._n - len(rows), self._cols
        by_column = list(zip(*rows))  # the batch transposed, in one pass
        for c in self._float_cols:
            vals = by_column[c]
            if set(map(type, vals)) == _FLOAT_ONLY:
                # as bytes: array.extend parses every value with PyArg_Parse, struct does not
                cols[c].frombytes(struct.pack(f"{len(vals)}d", *vals))
            else:
                for k, v in enumerate(vals):
                    self._put_float(c, first + k, v)
        for c in self._int_cols:
            vals = by_column[c]
            if set(map(type, vals)) == _INT_ONLY and -(1 << 63) <= min(vals) and max(vals) < (1 << 63):
                cols[c].frombytes(struct.pack(f"{len(vals)}q", *vals))
            else:
                for k, v in enumerate(vals):
                    self._put_int(c, first + k, v)
        for c, (values, codes) in self._text.items():
            out = []
            for v in by_column[c]:
                code = codes.get(v)
                if code is None:
                    code = codes[v] = len(values)
                    values.append(v)
                out.append(code)
            cols[c].fromlist(out)

    def _put_float(self, c: int, i: int, v) -> None:
        col = self._cols[c]
        if type(v) is float:
            col.append(v)
            return
        self._odd.setdefault(c, {})[i] = v
        try:
            col.append(math.nan if v is None else float(v))
        except (TypeError, ValueError):
            col.append(math.nan)
            self._inexact.add(c)

    def _put_int(self, c: int, i: int, v) -> None:
        col = self._cols[c]
        if type(v) is int and -(1 << 63) <= v < (1 << 63):
            col.append(v)
            return
        self._odd.setdefault(c, {})[i] = v
        try:
            exact = int(v) == v and -(1 << 63) <= int(v) < (1 << 63)
        except (TypeError, ValueError, OverflowError):
            exact = False
        col.append(int(v) if exact else 0)
        if not exact:
            self._inexact.add(c)

    def __len__(self) -> int:
        return self._n

    def _row(self, i: int) -> tuple:
        self._flush()
        row = [a[i] for a in self._cols]
        for c, (values, _) in self._text.items():
            row[c] = values[row[c]]
        for c, odd in self._odd.items():
            if i in odd:
                row[c] = odd[i]
        return tuple(row)

    def __getitem__(self, i):
        self._flush()
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._row(i)

    def __iter__(self):
        self._flush()
        return map(self._row, range(self._n))

    def values(self, name: str) -> list:
        """One column as the values recorded."""
        self._flush()
        c = RECORD_FIELDS.index(name)
        if c in self._text:
            values = self._text[c][0]
            out = [values[k] for k in self._cols[c]]
        else:
            out = self._cols[c].tolist()
        for i, v in self._odd.get(c, {}).items():
            out[i] = v
        return out

    def numbers(self, name: str) -> np.ndarray:
        """A numeric column as float64, as np.array(values, dtype=float) would give it."""
        self._flush()
        c = RECORD_FIELDS.index(name)
        if c in self._inexact:
            return np.array(self.values(name), dtype=float)
        a = self._cols[c]
        return np.array(a, dtype=float) if a.typecode == "q" else np.frombuffer(a, dtype=np.float64).copy()

    def equals(self, name: str, value) -> np.ndarray:
        """Which rows hold `value` in a text column."""
        self._flush()
        c = RECORD_FIELDS.index(name)
        code = self._text[c][1].get(value)
        if code is None:
            return np.zeros(self._n, dtype=bool)
        return np.frombuffer(self._cols[c], dtype=np.uint32) == code


# Inter-token gaps are kept one by one per (system, phase) (8 bytes each) up to a budget
# (config ITL_EXACT_GAPS; a scenario's run.itl_exact_gaps sets it for its runs), then the rest
# go to a histogram (report/gaps.py).
_FOLD_BATCH = 1 << 20  # once folding, gaps go into the histogram this many at a time
ITL_HISTOGRAM_REL = 1e-3


_FINISHED, _REJECTED = State.FINISHED, State.REJECTED
_FINISHED_S, _REJECTED_S = _FINISHED.value, _REJECTED.value  # (an Enum's .value is a Python call)


def _fields(system: str, req: Request) -> tuple[str, float, float, tuple, tuple]:
    """(status, TTFT, TPOT, the record's fields before its ITL statistics, those after)."""
    state = req.state
    status = _FINISHED_S if state is _FINISHED else (_REJECTED_S if state is _REJECTED else "unfinished")
    first, finish = req.first_token, req.finish
    ttft = first - req.arrival
    tpot = (finish - first) / (req.num_output - 1) if req.num_output > 1 else math.nan
    head = (
        system, req.phase, req.req_id, req.instance, status, req.reject_reason, req.prompt_tokens,
        req.output_tokens, req.hbm_hit_tokens, req.tier_hit_tokens, req.preemptions, req.arrival,
        req.admitted, req.load_start, req.load_end, first, finish, ttft, tpot,
        finish - req.arrival, req.load_end - req.load_start, req.admitted - req.arrival,
    )
    return status, ttft, tpot, head, tuple(req.ttft_parts) if ttft == ttft else _NAN_PARTS


_NAN_PARTS = (math.nan,) * len(TTFT_PARTS)


class Recorder:
    """Collects finished (or rejected) requests; streams them to CSV when given a path. Keeps
    every inter-token gap per (system, phase) for the ITL statistics, up to itl_exact_gaps of
    them; a longer phase's gaps are folded into a histogram (ITL quantiles to within
    ITL_HISTOGRAM_REL, the summary's itl_rel_error)."""

    def __init__(self, csv_path: Path | None = None, itl_exact_gaps: int = ITL_EXACT_GAPS):
        self._rows = Records()
        self.itl_exact_gaps = itl_exact_gaps
        # every gap, per (system, phase), in one flat array (not an array per request) ...
        self._itl: dict[tuple[str, str], array] = {}
        # ... or, past itl_exact_gaps, a histogram of them (the array then holds the next batch)
        self._itl_hist: dict[tuple[str, str], GapHistogram] = {}
        # Records given their tokens' step ends (record_ends) wait here, the ends of them all
        # in one array, until _RECORD_BATCH of them are computed together: numpy costs a few
        # microseconds a call, which per request was most of a request's recording
        self._waiting: list[tuple] = []
        self._waiting_ends = array("d")
        self._waiting_at: list[int] = []  # where each waiting record's ends start in them
        self._waiting_first: list[float] = []  # and its first token's time
        self._fh = None
        self._writer = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(csv_path, "w", newline="")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(RECORD_FIELDS)

    @property
    def rows(self) -> Records:
        """Every record so far, in record order."""
        self.flush()
        return self._rows

    def record(self, system: str, req: Request, itl: np.ndarray | None = None) -> None:
        """Record a request that finished (or was rejected, or never finished); itl: the gaps
        between its tokens, if known (itl_samples)."""
        self.flush()
        status, ttft, tpot, head, tail = _fields(system, req)
        if itl is None and status == "finished" and req.num_output > 1:
            # Gaps unknown (preempted after its first token): each counts as the mean gap.
            itl = np.full(req.num_output - 1, tpot)
        # sum / size is what ndarray.mean computes (the same pairwise sum, one division);
        # the reductions called as ndarray.sum and .max call them, without their wrappers
        if itl is not None and itl.size:
            itl_mean = float(np.add.reduce(itl)) / itl.size
            itl_max = float(np.maximum.reduce(itl))
        else:
            itl_mean = itl_max = math.nan
        self._add(head + (itl_mean, itl_max) + tail, itl if status == "finished" else None, (system, req.phase))

    def record_ends(self, system: str, req: Request, ends: Sequence[float] | None) -> None:
        """record() for a request whose tokens after the first came at these step ends
        (itl_ends; None if unknown): the same record, its gap statistics computed with the
        next batch's."""
        status, ttft, tpot, head, tail = _fields(system, req)
        if ends is not None and len(ends):
            self._waiting_at.append(len(self._waiting_ends))
            self._waiting_first.append(req.first_token)
            self._waiting_ends.extend(ends)
            n = len(ends)
        else:
            n = 0
        self._waiting.append((head, tail, status, n, tpot, req.num_output, (system, req.phase)))
        if len(self._waiting) >= _RECORD_BATCH:
            self.flush()

    def flush(self) -> None:
        """Add the records waiting for their gap statistics, in record order. The gaps and
        their maxima are computed for the batch at once; each mean is its own np.add.reduce
        (a pairwise sum, whose rounding depends on where it starts: the same as record()'s)."""
        waiting = self._waiting
        if not waiting:
            return
        self._waiting = []
        ends = np.frombuffer(self._waiting_ends, dtype=np.float64)
        self._waiting_ends = array("d")
        gaps = np.empty(len(ends))
        maxes: list[float] = []
        if len(ends):
            at = np.array(self._waiting_at, dtype=np.intp)
            np.subtract(ends[1:], ends[:-1], out=gaps[1:])
            gaps[at] = ends[at] - np.array(self._waiting_first, dtype=np.float64)
            maxes = np.maximum.reduceat(gaps, at).tolist()  # a maximum is exact in any order
        del ends
        self._waiting_at, self._waiting_first = [], []
        add, nan = np.add.reduce, math.nan
        pos = k = 0
        for head, tail, status, n, tpot, num_output, key in waiting:
            itl = None
            if n:
                itl = gaps[pos:pos + n]
                itl_mean, itl_max = float(add(itl)) / n, maxes[k]
                pos += n
                k += 1
            elif status == "finished" and num_output > 1:
                itl = np.full(num_output - 1, tpot)  # as record(): gaps unknown
                itl_mean, itl_max = float(add(itl)) / itl.size, float(np.maximum.reduce(itl))
            else:
                itl_mean = itl_max = nan
            self._add(head + (itl_mean, itl_max) + tail, itl if status == "finished" else None, key)

    def _add(self, row: tuple, itl: np.ndarray | None, key: tuple[str, str]) -> None:
        """A record's row, and its gaps (if it finished) among its phase's."""
        self._rows.append(row)
        if itl is not None:
            gaps = self._itl.get(key)
            if gaps is None:
                gaps = self._itl[key] = array("d")
            if itl.dtype == np.float64 and itl.flags.c_contiguous:
                gaps.frombytes(memoryview(itl).cast("B"))  # its buffer, without a copy
            else:
                gaps.frombytes(np.ascontiguousarray(itl, dtype=np.float64).tobytes())
            if len(gaps) > (_FOLD_BATCH if key in self._itl_hist else self.itl_exact_gaps):
                self._fold(key)
        if self._writer is not None:
            self._writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])

    def _fold(self, key: tuple[str, str]) -> GapHistogram:
        """Move the gaps kept one by one for `key` into its histogram."""
        hist = self._itl_hist.get(key)
        if hist is None:
            hist = self._itl_hist[key] = GapHistogram(ITL_HISTOGRAM_REL)
        hist.add(np.frombuffer(self._itl[key], dtype=np.float64))
        self._itl[key] = array("d")
        return hist

    @property
    def itl(self) -> dict[tuple[str, str], list[np.ndarray] | GapHistogram]:
        """The inter-token gaps of finished requests per (system, phase), in record order (or,
        for a phase with more than itl_exact_gaps of them, their histogram)."""
        self.flush()
        return {k: self._fold(k) if k in self._itl_hist else [np.array(v, dtype=np.float64)]
                for k, v in self._itl.items()}

    def gaps_view(self, system: str, phase: str) -> list[np.ndarray] | GapHistogram | None:
        """`itl[(system, phase)]` without copying the gaps (a million requests have millions):
        a view of the recorder's own array, to be dropped before the next record."""
        self.flush()
        key = (system, phase)
        if key in self._itl_hist:
            return self._fold(key)
        gaps = self._itl.get(key)
        return None if gaps is None else [np.frombuffer(gaps, dtype=np.float64)]

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def frame(self):
        import pandas as pd

        return pd.DataFrame(list(self.rows), columns=RECORD_FIELDS)

    def write_parquet(self, path: Path) -> None:
        """Every request record as one parquet table (the CSV's columns, typed)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"system": pa.string(), "phase": pa.string(), "status": pa.string(), "reason": pa.string(),
                 "req_id": pa.int64(), "instance": pa.int64(), "prompt_tokens": pa.int64(),
                 "output_tokens": pa.int64(), "hbm_hit_tokens": pa.int64(), "tier_hit_tokens": pa.int64(),
                 "preemptions": pa.int64()}
        arrays = [pa.array(self.rows.values(name), type=types.get(name, pa.float64())) for name in RECORD_FIELDS]
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.Table.from_arrays(arrays, names=RECORD_FIELDS), tmp)
        tmp.replace(path)


def _ms_stats(x: np.ndarray, name: str) -> dict:
    """mean/median/std/p90/p99 of seconds, in ms, as vLLM names them (std: numpy's, ddof=0)."""
    if not x.size:
        return {f"{s}_{name}_ms": math.nan for s in LATENCY_STATS}
    ms = x * 1e3
    mean, std = float(ms.mean()), float(ms.std())
    median, p90, p99 = _median_p90_p99(ms)
    return _named_ms(name, mean, median, std, p90, p99)


_Q90_99 = np.true_divide(np.asarray([90, 99]), 100)  # as np.percentile turns [90, 99] into quantiles


def _median_p90_p99(ms: np.ndarray) -> tuple[float, float, float]:
    """np.median(ms) and np.percentile(ms, [90, 99]) from one partition of ms (reordered in
    place) instead of two: a million ITL gaps took two full partitions. The values are
    numpy's by construction: the same order statistics, taken and combined with numpy's own
    operations in its order (np.median: the mean of the middle one or two; np.percentile's
    linear method: (n - 1) q, floor, and _lerp's two-sided formula); a test compares them with
    numpy's at every size up to 120 and two larger, with ties. With a NaN, numpy's own functions."""
    n = ms.size
    virtual = (n - 1) * _Q90_99
    prev_f = np.floor(virtual)
    next_f = prev_f + 1
    above = virtual >= n - 1
    prev_f[above] = -1
    next_f[above] = -1
    prev, nxt = prev_f.astype(np.intp), next_f.astype(np.intp)
    half = n // 2
    middle = slice(half, half + 1) if n % 2 else slice(half - 1, half + 1)
    kth = {0, n - 1, middle.start, middle.stop - 1}
    kth.update(int(i) % n for i in (*prev, *nxt))
    ms.partition(sorted(kth))
    if np.isnan(ms[-1]):
        p90, p99 = np.percentile(ms, [90, 99]).tolist()
        return float(np.median(ms)), p90, p99
    gamma = np.asanyarray(virtual - prev, dtype=virtual.dtype)
    a, b = ms[prev], ms[nxt]
    diff = b - a
    lerp = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=lerp, where=gamma >= 0.5)
    p90, p99 = lerp.tolist()
    return float(np.mean(ms[middle])), p90, p99


def _named_ms(name: str, *values: float) -> dict:
    """{mean,median,std,p90,p99}_{name}_ms from the values in that order."""
    return {f"{s}_{name}_ms": v for s, v in zip(LATENCY_STATS, values, strict=True)}


def _histogram_ms_stats(hist: GapHistogram, name: str) -> dict:
    """_ms_stats from a histogram: count, mean and std exact (running moments), quantiles to
    within its relative resolution."""
    if not hist.n:
        return {f"{s}_{name}_ms": math.nan for s in LATENCY_STATS}
    return _named_ms(name, hist.mean * 1e3, hist.percentile(50) * 1e3, hist.std * 1e3,
                     hist.percentile(90) * 1e3, hist.percentile(99) * 1e3)


def summarize(rows: Records | Sequence[tuple], system: str, phase: str,
              itl: list[np.ndarray] | GapHistogram | None = None,
              goodput: dict[str, float] | None = None) -> dict:
    """Summary of one system's phase from its request records (a Recorder's `rows`, or
    record tuples). `itl`: the inter-token gaps of its finished requests (or a histogram of
    them, see Recorder); `goodput`: SLO
    bounds in ms ({"ttft": 500, "tpot": 50}), a request being good when it meets all of them
    (vLLM's definition)."""
    if not isinstance(rows, Records):
        rows = Records(rows)
    mine_at = rows.equals("system", system) & rows.equals("phase", phase)
    done_at = mine_at & rows.equals("status", "finished")
    mine = int(mine_at.sum())
    done = int(done_at.sum())

    def col(name, at=done_at):
        return rows.numbers(name)[at]

    ttft, tpot_all, e2e = col("ttft_s"), col("tpot_s"), col("e2e_s")
    tpot = tpot_all[~np.isnan(tpot_all)]
    prompt, outputs = col("prompt_tokens"), col("output_tokens")
    kv_load = col("kv_load_s")
    kv_load = kv_load[~np.isnan(kv_load)]
    queue = col("queue_s")
    queue = queue[~np.isnan(queue)]
    arrivals = col("arrival_s", mine_at) if mine else np.array([])
    duration = float(col("finish_s").max() - arrivals.min()) if done else math.nan
    # the gaps' statistics now, so that their temporaries are gone before the breakdown's
    if isinstance(itl, GapHistogram):
        itl_stats, itl_rel_error = _histogram_ms_stats(itl, "itl"), itl.rel
    else:
        gaps = (np.asarray(itl[0]) if len(itl) == 1 else np.concatenate(itl)) if itl else np.array([])
        itl_stats, itl_rel_error = _ms_stats(gaps, "itl"), 0.0
        del gaps
    total_prompt = prompt.sum()
    rate = (lambda n: n / duration) if done and duration > 0 else (lambda n: math.nan)
    good = math.nan
    if goodput is not None:
        ok = np.ones(done, dtype=bool)
        # vLLM counts a one-token request's TPOT as 0
        got = {"ttft": ttft, "tpot": np.nan_to_num(tpot_all, nan=0.0), "e2el": e2e}
        for key, bound_ms in goodput.items():
            ok &= got[key] * 1e3 <= bound_ms
        good = rate(int(ok.sum()))
    rejected = int((mine_at & rows.equals("status", "rejected")).sum())
    unfinished = int((mine_at & rows.equals("status", "unfinished")).sum())
    out = {
        "system": system,
        "phase": phase,
        "completed": done,
        "failed": rejected + unfinished,
        "duration": duration,
        "total_input_tokens": int(total_prompt),
        "total_output_tokens": int(outputs.sum()),
        "request_throughput": rate(done),
        "request_goodput": good if goodput is not None else None,
        "output_throughput": rate(float(outputs.sum())),
        "total_token_throughput": rate(float(outputs.sum() + total_prompt)),
        **_ms_stats(ttft, "ttft"),
        **_ms_stats(tpot, "tpot"),
        **itl_stats,
        **_ms_stats(e2e, "e2el"),
        "requests": mine,
        "rejected": rejected,
        "unfinished": unfinished,
        "hbm_hit_ratio": float(col("hbm_hit_tokens").sum() / total_prompt) if total_prompt else math.nan,
        "tier_hit_ratio": float(col("tier_hit_tokens").sum() / total_prompt) if total_prompt else math.nan,
        "mean_kv_load_ms": float(kv_load.mean() * 1e3) if kv_load.size else math.nan,
        "mean_queue_ms": float(queue.mean() * 1e3) if queue.size else math.nan,
        "p99_queue_ms": float(np.percentile(queue, 99) * 1e3) if queue.size else math.nan,
        "preemptions": int(col("preemptions").sum()) if done else 0,
        "arrival_span_s": float(arrivals.max() - arrivals.min()) if arrivals.size else math.nan,
        "itl_rel_error": itl_rel_error,
        "breakdown": ttft_breakdown(np.stack([col(f"ttft_{p}_s") for p in TTFT_PARTS], axis=1)),
    }
    return out


def ttft_breakdown(parts: np.ndarray) -> dict:
    """Where the finished requests' TTFT went: per part, the mean and p99 in ms, and the parts
    ordered by their share of the mean TTFT. `parts`: one row per request (TTFT_PARTS)."""
    if not parts.size:
        return {"ttft_ms": {p: {"mean": math.nan, "p99": math.nan} for p in TTFT_PARTS}, "top": []}
    ms = parts * 1e3
    means = ms.mean(axis=0)
    total = float(means.sum())
    return {
        "ttft_ms": {p: {"mean": float(means[i]), "p99": float(np.percentile(ms[:, i], 99))}
                    for i, p in enumerate(TTFT_PARTS)},
        "top": [{"part": TTFT_PARTS[i], "mean_ms": float(means[i]),
                 "share": float(means[i] / total) if total > 0 else math.nan}
                for i in np.argsort(-means, kind="stable") if means[i] > 0],
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
