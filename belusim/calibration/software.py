"""Software-stage probes that run on any host: what a serving stack's CPU side costs here.

- chunk hashing over real token ids: hashlib.sha256 (vLLM's and LMCache 0.3's hash) and, when
  the xxhash package is installed, xxh64 (LMCache's later rolling hash);
- one thread's memcpy of one 256-token chunk of the model's KV (numpy.copyto);
- pinned host buffer allocation for one chunk (torch with CUDA only; skipped otherwise);
- the Python per-call overhead of a lookup (a function call probing a set for one chunk name).

The fit turns the first two into the host card's sha256_gbps and memcpy_gbps, which a stack's
software stages use, so a profile overrides the card figures.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np


def _median_s(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return float(np.median(out))


def run_software_probes(kv_bytes_per_token: float, quick: bool = False, token_ids: np.ndarray | None = None) -> dict:
    """Measurements of the software stages (see the module doc). `token_ids`: the ids to hash
    (default: 16,384 random ids below a 151,936-token vocabulary, Qwen3's)."""
    repeat = 5 if quick else 21
    ids = token_ids if token_ids is not None else np.random.default_rng(0).integers(0, 151_936, 16_384)
    raw = np.ascontiguousarray(ids, dtype=np.int32).tobytes()
    meas: dict = {"token_ids": len(raw) // 4}
    t = _median_s(lambda: hashlib.sha256(raw).digest(), repeat)
    meas["sha256"] = {"bytes": len(raw), "median_s": t, "gbps": len(raw) / t / 1e9, "ns_per_token": t / (len(raw) / 4) * 1e9}
    try:
        import xxhash  # optional: LMCache's rolling xxh64
    except ImportError:
        meas["xxh64"] = {"skipped": "the xxhash package is not installed"}
    else:
        t = _median_s(lambda: xxhash.xxh64(raw).intdigest(), repeat)
        meas["xxh64"] = {"bytes": len(raw), "median_s": t, "gbps": len(raw) / t / 1e9}
    chunk = int(kv_bytes_per_token * 256)
    if quick:
        chunk = min(chunk, 16 << 20)
    src = np.ones(chunk, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages first
    t = _median_s(lambda: np.copyto(dst, src), max(3, repeat // 3))
    meas["chunk_memcpy"] = {"bytes": chunk, "median_s": t, "gbps": chunk / t / 1e9, "threads": 1}
    meas["pinned_alloc"] = _pinned_alloc(chunk, repeat)
    names = set(range(0, 4096, 2))

    def lookup(key: int) -> bool:
        return key in names

    n = 20_000
    t = _median_s(lambda: [lookup(k) for k in range(n)], max(3, repeat // 3))
    meas["lookup_call"] = {"calls": n, "us_per_call": t / n * 1e6}
    return meas


def _pinned_alloc(nbytes: int, repeat: int) -> dict:
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    t = _median_s(lambda: torch.empty(nbytes, dtype=torch.uint8, pin_memory=True), max(3, repeat // 3))
    return {"bytes": nbytes, "median_s": t}
