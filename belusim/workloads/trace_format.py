"""belusim's own trace format: requests with their block keys, as JSONL or parquet.

A converted trace replays without the source data (LV-Eval texts, a tokenizer) and loads
fast. JSONL: a header line {"format": "belusim-trace", "version": 1, "block_size": B, ...}
then one object per request. Parquet: one row per request, block_keys as list<int64>, the
header in the schema metadata under b"belusim". Both round-trip RequestSpec exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from belusim.inputs import decode, iter_lines, parse_json
from belusim.outputs import atomic_open

from .errors import WorkloadError
from .spec import RequestSpec, Workload

FORMAT = "belusim-trace"
VERSION = 1
_META_KEY = b"belusim"
_REQ_FIELDS = ("req_id", "arrival_s", "prompt_tokens", "output_tokens", "block_size", "block_keys", "source")


def _json_default(o: object) -> object:
    """numpy scalars in tags become plain JSON numbers/bools."""
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"tags value of type {type(o).__name__} is not JSON serialisable")


def trace_kind(path: str | Path, fmt: str | None = None) -> str:
    """'jsonl' or 'parquet', from fmt or the file suffix."""
    if fmt is not None:
        if fmt not in ("jsonl", "parquet"):
            raise WorkloadError(f"unknown trace file format {fmt!r}; use 'jsonl' or 'parquet'")
        return fmt
    suf = Path(path).suffix.lower()
    if suf in (".parquet", ".pq"):
        return "parquet"
    if suf in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise WorkloadError.at(path, "cannot tell the trace format from the suffix; use .jsonl or .parquet")


def _header(workload: Workload | None, block_size: int, n: int) -> dict:
    h = {"format": FORMAT, "version": VERSION, "block_size": block_size, "requests": n}
    if workload is not None:
        h.update(mode=workload.mode, clients=workload.clients, think_time_s=workload.think_time_s)
    return h


def _as_requests(obj: Workload | Iterable[RequestSpec], block_size: int | None) -> tuple[list[RequestSpec], int, Workload | None]:
    if isinstance(obj, Workload):
        if block_size is not None and block_size != obj.block_size:
            raise WorkloadError(f"block_size {block_size} differs from the workload's {obj.block_size}")
        return obj.requests, obj.block_size, obj
    reqs = list(obj)
    if block_size is None:
        raise WorkloadError("block_size is required when writing a list of requests")
    return reqs, block_size, None


def _check_request(r: RequestSpec, bs: int) -> None:
    if len(r.block_keys) != r.prompt_tokens // bs:
        raise WorkloadError(
            f"request {r.req_id}: {len(r.block_keys)} block keys but prompt_tokens {r.prompt_tokens} "
            f"// block_size {bs} = {r.prompt_tokens // bs}"
        )


def write_trace(
    obj: Workload | Iterable[RequestSpec],
    path: str | Path,
    *,
    block_size: int | None = None,
    fmt: str | None = None,
) -> Path:
    """Write requests (or a whole Workload, keeping its mode) as JSONL or parquet."""
    path = Path(path)
    kind = trace_kind(path, fmt)
    reqs, bs, wl = _as_requests(obj, block_size)
    for r in reqs:
        _check_request(r, bs)
    header = _header(wl, bs, len(reqs))
    if kind == "jsonl":
        with atomic_open(path, "w") as f:
            f.write(json.dumps(header) + "\n")
            for r in reqs:
                d = {
                    "req_id": int(r.req_id),
                    "arrival_s": None if r.arrival_s is None else float(r.arrival_s),
                    "prompt_tokens": int(r.prompt_tokens),
                    "output_tokens": int(r.output_tokens),
                    "block_size": bs,
                    "block_keys": np.asarray(r.block_keys, dtype=np.int64).tolist(),
                    "source": r.source,
                }
                if r.tags:
                    d["tags"] = r.tags
                f.write(json.dumps(d, separators=(",", ":"), default=_json_default) + "\n")
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    lens = np.array([len(r.block_keys) for r in reqs], dtype=np.int64)
    offsets = np.zeros(len(reqs) + 1, dtype=np.int32 if lens.sum() < 2**31 else np.int64)
    np.cumsum(lens, out=offsets[1:])
    values = (
        np.concatenate([np.asarray(r.block_keys, dtype=np.int64) for r in reqs])
        if reqs
        else np.zeros(0, dtype=np.int64)
    )
    list_type = pa.list_ if offsets.dtype == np.int32 else pa.large_list
    keys_arr = (pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray).from_arrays(
        pa.array(offsets), pa.array(values, type=pa.int64())
    )
    table = pa.table(
        {
            "req_id": pa.array([int(r.req_id) for r in reqs], type=pa.int64()),
            "arrival_s": pa.array([r.arrival_s for r in reqs], type=pa.float64()),
            "prompt_tokens": pa.array([int(r.prompt_tokens) for r in reqs], type=pa.int64()),
            "output_tokens": pa.array([int(r.output_tokens) for r in reqs], type=pa.int64()),
            "block_size": pa.array(np.full(len(reqs), bs, dtype=np.int64), type=pa.int64()),
            "block_keys": keys_arr.cast(list_type(pa.int64())),
            "source": pa.array([r.source for r in reqs], type=pa.string()),
            "tags": pa.array([json.dumps(r.tags, default=_json_default) if r.tags else None for r in reqs], type=pa.string()),
        }
    )
    table = table.replace_schema_metadata({_META_KEY: json.dumps(header).encode()})
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh)
    return path


def _check_header(h: object, path: Path) -> dict:
    if not isinstance(h, dict) or h.get("format") != FORMAT:
        raise WorkloadError.at(path, f"not a belusim trace: the header must have format={FORMAT!r}", line=1, field="format")
    if h.get("version") != VERSION:
        raise WorkloadError.at(path, f"unsupported version {h.get('version')!r} (this reader knows {VERSION})", line=1, field="version")
    bs = h.get("block_size")
    if type(bs) is not int or bs < 1:
        raise WorkloadError.at(path, f"expected an integer >= 1, got {bs!r}", line=1, field="block_size")
    mode = h.get("mode")
    if mode is not None and mode not in ("open", "closed"):
        raise WorkloadError.at(path, f"expected 'open' or 'closed', got {mode!r}", line=1, field="mode")
    return h


def read_header(path: str | Path, fmt: str | None = None) -> dict:
    """The header of a belusim trace (validated)."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError.at(path, "trace file not found", field="path")
    if trace_kind(path, fmt) == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_schema(path).metadata or {}
        except Exception as e:
            raise WorkloadError.at(path, f"cannot read parquet: {e}") from None
        if _META_KEY not in meta:
            raise WorkloadError.at(path, "not a belusim trace: no 'belusim' schema metadata", field="format")
        text = decode(meta[_META_KEY], f"{path} (schema metadata)", error=WorkloadError)
        return _check_header(parse_json(text, f"{path} (schema metadata)", error=WorkloadError), path)
    for ln, line in iter_lines(path, error=WorkloadError):
        return _check_header(parse_json(line, path, line=ln, error=WorkloadError), path)
    raise WorkloadError.at(path, "empty trace: no header line")


def _req_from_dict(d: object, path: Path, ln: int, bs: int) -> RequestSpec:
    def err(msg: str, fld: str | None = None) -> WorkloadError:
        return WorkloadError.at(path, msg, line=ln, field=fld)

    if not isinstance(d, dict):
        raise err(f"expected a JSON object, got {type(d).__name__}")
    for fld in _REQ_FIELDS:
        if fld not in d:
            raise err("missing", fld)
    for fld in ("req_id", "prompt_tokens", "output_tokens", "block_size"):
        v = d[fld]
        if type(v) is not int or v < 0:
            raise err(f"expected a non-negative integer, got {v!r}", fld)
    if d["block_size"] != bs:
        raise err(f"{d['block_size']} differs from the header's {bs}", "block_size")
    if d["prompt_tokens"] < 1:
        raise err("must be >= 1", "prompt_tokens")
    a = d["arrival_s"]
    if a is not None and (type(a) not in (int, float) or not math.isfinite(a) or a < 0):
        raise err(f"expected null or a finite number >= 0, got {a!r}", "arrival_s")
    if not isinstance(d["source"], str):
        raise err("expected a string", "source")
    tags = d.get("tags", {})
    if not isinstance(tags, dict):
        raise err("expected an object", "tags")
    kl = d["block_keys"]
    if not isinstance(kl, list):
        raise err("expected a list of integers", "block_keys")
    if not all(type(x) is int for x in kl):
        raise err("expected a list of integers", "block_keys")
    try:
        keys = np.array(kl, dtype=np.int64) if kl else np.zeros(0, dtype=np.int64)
    except OverflowError:
        raise err("expected 64-bit integers", "block_keys") from None
    if len(keys) != d["prompt_tokens"] // bs:
        raise err(f"has {len(keys)} keys but prompt_tokens // block_size = {d['prompt_tokens'] // bs}", "block_keys")
    return RequestSpec(
        req_id=d["req_id"],
        prompt_tokens=d["prompt_tokens"],
        output_tokens=d["output_tokens"],
        block_keys=keys,
        arrival_s=None if a is None else float(a),
        source=d["source"],
        tags=tags,
    )


def iter_trace(path: str | Path, fmt: str | None = None) -> Iterator[RequestSpec]:
    """Requests of a belusim trace, streamed line by line (JSONL) or by row group (parquet)."""
    path = Path(path)
    header = read_header(path, fmt)
    bs = header["block_size"]
    if trace_kind(path, fmt) == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        missing = [c for c in _REQ_FIELDS if c not in pf.schema_arrow.names]
        if missing:
            raise WorkloadError.at(path, "missing column", field=missing[0])
        rows = (r for rg in range(pf.num_row_groups) for r in _rows_from_table(pf.read_row_group(rg), path, bs))
        yield from _in_arrival_order(((i + 1, r) for i, r in enumerate(rows)), path, header, "row")
        return
    lines = iter_lines(path, error=WorkloadError)
    next(lines, None)  # the header
    reqs = ((ln, _req_from_dict(parse_json(line, path, line=ln, error=WorkloadError), path, ln, bs))
            for ln, line in lines)
    yield from _in_arrival_order(reqs, path, header, "line")


def _in_arrival_order(reqs, path: Path, header: dict, unit: str) -> Iterator[RequestSpec]:
    """An open-loop trace must list requests in arrival order (as the Mooncake reader
    demands): a later line with an earlier arrival is an error, not silently reordered."""
    check = header.get("mode") == "open"
    prev = -math.inf
    for n, r in reqs:
        if check and r.arrival_s is not None:
            if r.arrival_s < prev:
                where = dict(line=n) if unit == "line" else {}
                raise WorkloadError.at(
                    path, (f"row {n}: " if unit == "row" else "") +
                    f"decreases ({r.arrival_s} after {prev}); traces must be in arrival order",
                    field="arrival_s", **where)
            prev = r.arrival_s
        yield r


def _rows_from_table(t, path: Path, bs: int) -> Iterator[RequestSpec]:
    import pyarrow as pa

    n = t.num_rows
    if n == 0:
        return
    col = t.column("block_keys").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or not pa.types.is_int64(col.type.value_type):
        raise WorkloadError.at(path, f"expected list<int64>, got {col.type}", field="block_keys")
    if col.null_count:
        raise WorkloadError.at(path, "null block_keys", field="block_keys")
    offs = np.asarray(col.offsets, dtype=np.int64)
    vals = np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.int64)
    cols = {}
    for c in ("req_id", "prompt_tokens", "output_tokens", "block_size"):
        a = t.column(c)
        if a.null_count:
            raise WorkloadError.at(path, "null values", field=c)
        cols[c] = a.to_numpy().astype(np.int64)
    arr = t.column("arrival_s").to_pylist()
    src = t.column("source").to_pylist()
    tags = t.column("tags").to_pylist() if "tags" in t.column_names else [None] * n
    for i in range(n):
        if cols["block_size"][i] != bs:
            raise WorkloadError.at(path, f"row {i}: {cols['block_size'][i]} differs from the header's {bs}", field="block_size")
        pt = int(cols["prompt_tokens"][i])
        keys = vals[offs[i] : offs[i + 1]]
        if len(keys) != pt // bs:
            raise WorkloadError.at(path, f"row {i}: {len(keys)} keys but prompt_tokens // block_size = {pt // bs}", field="block_keys")
        yield RequestSpec(
            req_id=int(cols["req_id"][i]),
            prompt_tokens=pt,
            output_tokens=int(cols["output_tokens"][i]),
            block_keys=keys,
            arrival_s=arr[i],
            source=src[i] or "",
            tags=json.loads(tags[i]) if tags[i] else {},
        )


def rekey(keys: np.ndarray, from_bs: int, to_bs: int) -> np.ndarray:
    """Keys at a coarser block size: a chained key names its whole prefix, so the key of
    a to_bs block is the key of the last from_bs block inside it."""
    if to_bs == from_bs:
        return keys
    if to_bs % from_bs:
        raise WorkloadError(
            f"cannot re-block keys from block_size {from_bs} to {to_bs}: {to_bs} is not a multiple "
            f"of {from_bs}; re-convert the trace from its source"
        )
    m = to_bs // from_bs
    return keys[m - 1 :: m][: len(keys) // m]


def read_trace(path: str | Path, fmt: str | None = None, *, block_size: int | None = None) -> Workload:
    """A belusim trace as a Workload (mode from the header, else from the arrivals).

    block_size may be a multiple of the trace's own (keys are re-blocked exactly).
    """
    path = Path(path)
    header = read_header(path, fmt)
    bs = header["block_size"]
    reqs = list(iter_trace(path, fmt))
    if not reqs:
        raise WorkloadError.at(path, "empty trace: no requests")
    if block_size is not None and block_size != bs:
        for r in reqs:
            r.block_keys = rekey(r.block_keys, bs, block_size)
        bs = block_size
    n_null = sum(r.arrival_s is None for r in reqs)
    mode = header.get("mode")
    if mode is None:
        mode = "closed" if n_null == len(reqs) else "open"
    if mode == "open" and n_null:
        raise WorkloadError.at(path, f"{n_null} requests have arrival_s null in an open-loop trace", field="arrival_s")
    clients = header.get("clients", 0)
    think = header.get("think_time_s", 0.0)
    return Workload(
        requests=reqs,
        block_size=bs,
        mode=mode,
        clients=int(clients) if type(clients) is int else 0,
        think_time_s=float(think) if type(think) in (int, float) else 0.0,
    )
