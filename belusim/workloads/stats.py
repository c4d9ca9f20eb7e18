"""Trace statistics, including the prefix-hit ratio of an unbounded prefix cache.

The infinite-cache hit ratio is the share of prompt tokens such a cache would serve: for
each request in arrival order, the leading run of its blocks already seen before (whole
blocks only) times the block size, summed over requests, over total prompt tokens. It is
the ceiling that any real cache size, eviction or pool tier can reach.

Mooncake traces are read line by line and the prefix structure is kept as a trie over
512-token ids (a few hundred thousand nodes), which gives the engine-block figure exactly
when block_size divides 512 (all sub-blocks of a shared full 512-block are shared; those
of a partial last block are unique). Other formats go through the block keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from belusim.inputs import iter_lines, parse_json

from .errors import WorkloadError
from .mooncake import MOONCAKE_BLOCK, engine_block_keys, iter_mooncake, read_mooncake

FORMATS = ("mooncake", "lveval", "belusim")


def summary(values: np.ndarray) -> dict:
    """mean, p50, p90, p99, max and total of a count array."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0, "total": 0}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {
        "mean": float(v.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": int(v.max()),
        "total": int(v.sum()),
    }


def leading_hits(keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per row (in order): how many of its leading keys appeared in an earlier row.

    Vectorised: a stable sort finds each key's first row; a key is "seen" when that row is
    earlier than its own; the run stops at the first unseen key of the row.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lens = np.diff(offsets)
    nrows = len(lens)
    out = np.zeros(nrows, dtype=np.int64)
    n = len(keys)
    if n == 0:
        return out
    row = np.repeat(np.arange(nrows, dtype=np.int64), lens)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    first_flat = order[new][np.cumsum(new) - 1]  # per sorted position: first flat index of its key
    first_row = np.empty(n, dtype=np.int64)
    first_row[order] = row[first_flat]
    seen = first_row < row
    local = np.arange(n, dtype=np.int64) - offsets[:-1][row]
    val = np.where(seen, lens[row], local)
    nz = lens > 0
    out[nz] = np.minimum.reduceat(val, offsets[:-1][nz])
    return out


def _arrival_summary(arr: np.ndarray | None) -> dict:
    if arr is None or len(arr) == 0:
        return {"time_span_s": None, "mean_rate_qps": None}
    span = float(arr.max() - arr.min())
    return {"time_span_s": span, "mean_rate_qps": (len(arr) / span) if span > 0 else None}


def unique_count(keys: np.ndarray) -> int:
    """Number of distinct keys (a plain sort is several times faster than np.unique here)."""
    if len(keys) == 0:
        return 0
    s = np.sort(keys)
    return int(np.count_nonzero(s[1:] != s[:-1])) + 1


def _key_stats(keys: np.ndarray, offsets: np.ndarray, prompt: np.ndarray, block_size: int) -> dict:
    """Block statistics from chained keys in arrival order.

    With chained keys a block seen before implies its whole prefix was seen before, so the
    leading runs of all requests together hold exactly the repeated references: hit blocks
    = references - unique keys (what leading_hits computes row by row, only faster).
    """
    total = int(prompt.sum())
    uniq = unique_count(keys)
    hit_blocks = len(keys) - uniq
    return {
        "unique_prefix_blocks": uniq,
        "block_references": int(len(keys)),
        "prefix_hit_ratio": (hit_blocks * block_size / total) if total else 0.0,
    }


def mooncake_stats(path: str | Path, block_size: int = 16) -> dict:
    """Statistics of a Mooncake trace; the hit ratio at engine blocks is the main figure."""
    path = Path(path)
    trie: dict[tuple[int, int], int] = {}
    full_seen: set[int] = set()
    ts, il_l, ol_l = [], [], []
    raw_hit_tokens = 0
    eng_hit_tokens = 0
    raw_refs = 0
    partial_unique_blocks = 0
    divides = MOONCAKE_BLOCK % block_size == 0
    for r in iter_mooncake(path):
        il = r.input_length
        ts.append(r.timestamp_ms)
        il_l.append(il)
        ol_l.append(r.output_length)
        raw_refs += len(r.hash_ids)
        nfull = il // MOONCAKE_BLOCK
        parent = 0
        raw_run = True
        eng_run = True
        for i, h in enumerate(r.hash_ids):
            k = (parent, h)
            node = trie.get(k)
            existed = node is not None
            if not existed:
                node = len(trie) + 1
                trie[k] = node
            if raw_run:
                if existed:
                    raw_hit_tokens += min(MOONCAKE_BLOCK, il - i * MOONCAKE_BLOCK)
                else:
                    raw_run = False
            if i < nfull:
                if eng_run:
                    if node in full_seen:
                        eng_hit_tokens += MOONCAKE_BLOCK
                    else:
                        eng_run = False
                full_seen.add(node)
            parent = node
        if divides:
            partial_unique_blocks += (il - nfull * MOONCAKE_BLOCK) // block_size
    if not il_l:
        raise WorkloadError.at(path, "empty trace: no requests")
    il_a = np.array(il_l, dtype=np.int64)
    total = int(il_a.sum())
    out = {
        "format": "mooncake",
        "path": str(path),
        "requests": len(il_l),
        **_arrival_summary(np.array(ts) / 1000.0),
        "input_tokens": summary(il_a),
        "output_tokens": summary(np.array(ol_l, dtype=np.int64)),
        "block_size": block_size,
    }
    if divides:
        out.update(
            unique_prefix_blocks=len(full_seen) * (MOONCAKE_BLOCK // block_size) + partial_unique_blocks,
            block_references=int((il_a // block_size).sum()),
            prefix_hit_ratio=eng_hit_tokens / total,
        )
    else:
        tr = read_mooncake(path)
        keys, off = engine_block_keys(tr, block_size)
        out.update(_key_stats(keys, off, tr.input_length, block_size))
    out["prefix_hit_granularity"] = (
        f"engine blocks of {block_size} tokens; sub-blocks of a partial last 512-token block "
        "are unique to their request"
    )
    out["mooncake_512"] = {
        "unique_prefix_blocks": len(trie),
        "block_references": raw_refs,
        "prefix_hit_ratio": raw_hit_tokens / total,
        "note": "raw hash_ids at 512 tokens; a repeated id of a partial last block counts its tokens",
    }
    return out


def workload_stats(workload, *, fmt: str, path: str | Path) -> dict:
    """Statistics of requests already built (belusim traces, LV-Eval)."""
    reqs = workload.requests
    if not reqs:
        raise WorkloadError.at(path, "empty trace: no requests")
    bs = workload.block_size
    arr = [r.arrival_s for r in reqs]
    order = np.arange(len(reqs))
    arr_np = None
    if all(a is not None for a in arr):
        arr_np = np.array(arr, dtype=np.float64)
        order = np.argsort(arr_np, kind="stable")  # arrival order
    prompt = np.array([r.prompt_tokens for r in reqs], dtype=np.int64)
    lens = np.array([len(reqs[i].block_keys) for i in order], dtype=np.int64)
    off = np.zeros(len(reqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    keys = (
        np.concatenate([np.asarray(reqs[i].block_keys, dtype=np.int64) for i in order])
        if off[-1]
        else np.zeros(0, dtype=np.int64)
    )
    out = {
        "format": fmt,
        "path": str(path),
        "requests": len(reqs),
        **_arrival_summary(arr_np),
        "input_tokens": summary(prompt),
        "output_tokens": summary(np.array([r.output_tokens for r in reqs], dtype=np.int64)),
        "block_size": bs,
        **_key_stats(keys, off, prompt, bs),
        "prefix_hit_granularity": f"engine blocks of {bs} tokens",
    }
    return out


def detect_format(path: str | Path) -> str:
    """Guess 'mooncake', 'lveval' or 'belusim' from a path and its first line."""
    path = Path(path)
    if not path.exists():
        raise WorkloadError.at(path, "file not found")
    if path.is_dir() or path.suffix.lower() == ".zip":
        return "lveval"
    if path.suffix.lower() in (".parquet", ".pq"):
        return "belusim"
    for ln, line in iter_lines(path, error=WorkloadError):
        try:
            d = parse_json(line, path, line=ln, error=WorkloadError)
        except WorkloadError as e:
            raise WorkloadError(f"cannot detect the format: {e}") from None
        if isinstance(d, dict):
            if d.get("format") == "belusim-trace":
                return "belusim"
            if "hash_ids" in d:
                return "mooncake"
            if "context" in d and "input" in d:
                return "lveval"
        raise WorkloadError.at(
            path, "cannot detect the format (expected mooncake, LV-Eval or belusim-trace); pass --format", line=ln
        )
    raise WorkloadError.at(path, "empty trace: no requests")


def trace_stats(
    path: str | Path, fmt: str | None = None, block_size: int | None = 16, tokenizer_json: str | Path | None = None
) -> dict:
    """Statistics of a trace file in any supported format (auto-detected when fmt is None).

    block_size None means 16, or the trace's own block size for belusim traces.
    """
    from .lveval import TokenCounter, load_files
    from .trace_format import read_header, read_trace

    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise WorkloadError(f"unknown format {fmt!r}; use one of {list(FORMATS)}")
    if block_size is not None and block_size < 1:
        raise WorkloadError(f"block_size must be >= 1, got {block_size}")
    if fmt == "mooncake":
        return mooncake_stats(path, block_size or 16)
    if fmt == "belusim":
        read_header(path)
        wl = read_trace(path, block_size=block_size)
        return workload_stats(wl, fmt="belusim", path=path)
    bs = block_size or 16
    prompts = load_files(path, levels=None, counter=TokenCounter(tokenizer_json), block_size=bs)
    if not prompts:
        raise WorkloadError.at(path, "empty trace: no records")
    from .builder import lveval_requests

    reqs = lveval_requests(prompts, bs, np.array([p.answer_tokens or 1 for p in prompts]))
    from .spec import Workload

    out = workload_stats(Workload(requests=reqs, block_size=bs, mode="closed"), fmt="lveval", path=path)
    out["note"] = (
        f"LV-Eval tokens counted with {Path(tokenizer_json).name}; contexts keyed by their token ids"
        if tokenizer_json
        else "LV-Eval tokens estimated from words (en) / characters (zh); output = reference answer tokens"
    )
    return out
