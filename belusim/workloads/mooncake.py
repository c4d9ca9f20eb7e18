"""Mooncake traces: a streaming, validating reader and the 512-token -> engine-block keys.

A line is {"timestamp": ms, "input_length": tokens, "output_length": tokens, "hash_ids":
[one id per 512-token block]}. Equal ids at equal positions mean an identical prefix block.
Lines are parsed one at a time and only numbers are kept, so a large trace never sits in
memory as JSON dicts. Timestamps must not decrease: a trace that is out of order is an
error, not something to re-sort silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from belusim.inputs import iter_lines, parse_json

from .errors import WorkloadError
from .keys import U64, chain_keys, combine, fmix64, hash_str, row_offsets_from_lengths

MOONCAKE_BLOCK = 512
_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_INT_ONLY = {int}  # the types of a line's ids, checked at C speed (bool is not an id)


@dataclass
class MooncakeRecord:
    line: int
    index: int  # 0-based record index in the file (stable under start/duration/max cuts)
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: list[int]


def _is_int(x: object) -> bool:
    return type(x) is int  # bool is not a count


def iter_mooncake(path: str | Path) -> Iterator[MooncakeRecord]:
    """Validated records of a Mooncake trace, one line at a time (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError.at(path, "trace file not found", field="path")
    prev_ts = -math.inf
    index = 0
    for ln, line in iter_lines(path, error=WorkloadError):
        d = parse_json(line, path, line=ln, error=WorkloadError)
        if not isinstance(d, dict):
            raise WorkloadError.at(path, f"expected a JSON object, got {type(d).__name__}", line=ln)
        for fld in _FIELDS:
            if fld not in d:
                raise WorkloadError.at(path, "missing", line=ln, field=fld)
        ts = d["timestamp"]
        if type(ts) not in (int, float) or not math.isfinite(ts):
            raise WorkloadError.at(path, f"expected a number of milliseconds, got {ts!r}", line=ln, field="timestamp")
        if ts < 0:
            raise WorkloadError.at(path, f"must be >= 0, got {ts}", line=ln, field="timestamp")
        if ts < prev_ts:
            raise WorkloadError.at(
                path, f"decreases ({ts} after {prev_ts}); traces must be in arrival order",
                line=ln, field="timestamp",
            )
        prev_ts = ts
        il, ol = d["input_length"], d["output_length"]
        if not _is_int(il) or il < 1:
            raise WorkloadError.at(path, f"expected an integer >= 1, got {il!r}", line=ln, field="input_length")
        if not _is_int(ol) or ol < 1:
            raise WorkloadError.at(path, f"expected an integer >= 1, got {ol!r}", line=ln, field="output_length")
        ids = d["hash_ids"]
        if not isinstance(ids, list):
            raise WorkloadError.at(path, f"expected a list of integers, got {type(ids).__name__}", line=ln, field="hash_ids")
        if ids and not (set(map(type, ids)) == _INT_ONLY and min(ids) >= 0 and max(ids) < 1 << 63):
            bad = next(x for x in ids if type(x) is not int or x < 0 or x >= 1 << 63)
            raise WorkloadError.at(path, f"expected non-negative 63-bit integers, got {bad!r}", line=ln, field="hash_ids")
        want = -(-il // MOONCAKE_BLOCK)
        if len(ids) != want:
            raise WorkloadError.at(
                path,
                f"has {len(ids)} ids but input_length {il} needs ceil({il}/{MOONCAKE_BLOCK}) = {want}",
                line=ln, field="hash_ids",
            )
        yield MooncakeRecord(ln, index, float(ts), il, ol, ids)
        index += 1


@dataclass
class MooncakeTrace:
    """A (possibly cut) Mooncake trace as flat numpy arrays."""

    path: Path
    index: np.ndarray  # int64 record index in the file
    timestamp_ms: np.ndarray  # float64
    input_length: np.ndarray  # int64
    output_length: np.ndarray  # int64
    hash_offsets: np.ndarray  # int64, len n+1
    hash_ids: np.ndarray  # int64, flat

    def __len__(self) -> int:
        return len(self.index)


def read_mooncake(
    path: str | Path,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    max_requests: int | None = None,
) -> MooncakeTrace:
    """Read a trace, keeping requests in [start_s, start_s + duration_s) of trace time.

    Stops reading as soon as the window or max_requests is passed (timestamps are sorted).
    """
    path = Path(path)
    # Columns kept as numpy chunks (8 bytes a number, for traces of millions of requests),
    # each made from a batch of Python numbers in one call: array.append and extend parse
    # every number on its own (about 400 instructions each, more than the JSON parse).
    dtypes = (np.int64, np.float64, np.int64, np.int64, np.int64, np.int64)
    chunks: list[list[np.ndarray]] = [[] for _ in dtypes]
    batch: list[list] = [[] for _ in dtypes]
    idx_b, ts_b, il_b, ol_b, nh_b, flat_b = batch  # + the flat ids
    count = 0

    def spill() -> None:
        for got, vals, t in zip(chunks, batch, dtypes):
            if vals:
                got.append(np.array(vals, dtype=t))
                vals.clear()

    seen_any = False
    start_ms = start_s * 1000.0
    end_ms = math.inf if duration_s is None else (start_s + duration_s) * 1000.0
    for r in iter_mooncake(path):
        seen_any = True
        if r.timestamp_ms < start_ms:
            continue
        if r.timestamp_ms >= end_ms or (max_requests is not None and count >= max_requests):
            break
        count += 1
        idx_b.append(r.index)
        ts_b.append(r.timestamp_ms)
        il_b.append(r.input_length)
        ol_b.append(r.output_length)
        nh_b.append(len(r.hash_ids))
        flat_b.extend(r.hash_ids)
        if len(flat_b) >= 1 << 16:
            spill()
    spill()
    if not seen_any:
        raise WorkloadError.at(path, "empty trace: no requests")
    if count == 0:
        raise WorkloadError.at(
            path, f"no requests in the selected window (start_s={start_s}, duration_s={duration_s})"
        )
    idx, ts, il, ol, nh, flat = (np.concatenate(c) if c else np.zeros(0, dtype=t) for c, t in zip(chunks, dtypes))
    return MooncakeTrace(
        path=path,
        index=idx,
        timestamp_ms=ts,
        input_length=il,
        output_length=ol,
        hash_offsets=row_offsets_from_lengths(nh),
        hash_ids=flat,
    )


def trace_slice(trace: MooncakeTrace, i0: int, i1: int) -> MooncakeTrace:
    """Requests [i0, i1) of a trace (views; keys per request do not depend on the others)."""
    h0, h1 = int(trace.hash_offsets[i0]), int(trace.hash_offsets[i1])
    return MooncakeTrace(trace.path, trace.index[i0:i1], trace.timestamp_ms[i0:i1], trace.input_length[i0:i1],
                         trace.output_length[i0:i1], trace.hash_offsets[i0:i1 + 1] - h0, trace.hash_ids[h0:h1])


def mooncake_namespace(path: Path) -> int:
    """Key namespace of one trace file: ids of different traces are unrelated numbers."""
    return hash_str("belusim-ns", "mooncake", Path(path).name)


def engine_block_keys(
    trace: MooncakeTrace, block_size: int, *, chunk_units: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Keys of every full engine block of every request: (flat int64 keys, row offsets).

    Each 512-token block splits into units of g = gcd(512, block_size) tokens. Unit j of a
    FULL 512-block with id h has content (h, j); the chain over units makes its key depend
    on every earlier id too, so two requests share an engine block exactly when their
    first k ids agree and the block lies within those k full 512-blocks. Units of a partial
    last 512-block mix in the record index: the trace only says such blocks differ.
    Works in chunks of requests to bound memory.
    """
    if block_size < 1:
        raise WorkloadError(f"block_size must be >= 1, got {block_size}")
    g = math.gcd(MOONCAKE_BLOCK, block_size)
    per512 = MOONCAKE_BLOCK // g  # units per 512-token block
    per_blk = block_size // g  # units per engine block
    n = len(trace)
    nblk = trace.input_length // block_size
    key_off = row_offsets_from_lengths(nblk)
    keys = np.empty(int(key_off[-1]), dtype=np.int64)
    ns = mooncake_namespace(trace.path)
    # Per 512-token block (a few hundred thousand): its content base and how many of its
    # units fall inside full engine blocks. A full block's base depends on its id only; a
    # partial last block's base on (record index, id), so its units are request-unique.
    nh = np.diff(trace.hash_offsets)
    brow = np.repeat(np.arange(n, dtype=np.int64), nh)
    bpos = np.arange(len(trace.hash_ids), dtype=np.int64) - trace.hash_offsets[:-1][brow]
    h = trace.hash_ids.astype(U64)
    full = (bpos + 1) * MOONCAKE_BLOCK <= trace.input_length[brow]
    base = fmix64(h ^ U64(hash_str("mooncake-full") & ((1 << 64) - 1)), inplace=True)
    part = ~full
    if part.any():
        base[part] = combine(combine(trace.index[brow[part]].astype(U64), h[part]), U64(0x5BD1E995))
    units_per_req = nblk * per_blk
    bunits = np.clip(units_per_req[brow] - bpos * per512, 0, per512)
    del brow, bpos, h, full, part
    i0 = 0
    while i0 < n:
        # Grow the chunk until it holds about chunk_units units.
        cum = np.cumsum(units_per_req[i0:])
        i1 = i0 + max(1, int(np.searchsorted(cum, chunk_units, side="right")))
        b0, b1 = int(trace.hash_offsets[i0]), int(trace.hash_offsets[i1])
        bu = bunits[b0:b1]
        m = int(bu.sum())
        if m:
            boff = row_offsets_from_lengths(bu)
            sub = np.arange(m, dtype=np.int64).view(U64)  # (an int64 arange is 3x faster)
            sub -= np.repeat(boff[:-1].astype(U64), bu)
            sub *= U64(0x9E3779B97F4A7C15)
            sub += np.repeat(base[b0:b1], bu)
            contents = fmix64(sub, inplace=True)
            uoff = row_offsets_from_lengths(units_per_req[i0:i1])
            ukeys = chain_keys(contents, uoff, ns, premixed=True, overwrite=True)
            # Key of an engine block = chain key at its last unit.
            if per_blk == 1:
                keys[key_off[i0] : key_off[i1]] = ukeys
            else:
                keys[key_off[i0] : key_off[i1]] = ukeys[per_blk - 1 :: per_blk]
        i0 = i1
    return keys, key_off


def chain512_keys(trace: MooncakeTrace) -> np.ndarray:
    """Chained keys at the trace's own 512-token granularity, one per hash id."""
    return chain_keys(
        trace.hash_ids.astype(U64), trace.hash_offsets, hash_str("belusim-ns", "mooncake512", trace.path.name)
    )
