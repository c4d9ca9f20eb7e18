"""Microbenchmark of the CUDA replay's transfer path beside its compute, component by component.

    python -m belusim.replay.bench_copies SCENARIO [--calibration PROFILE] [--set k=v]... [--out FILE]

It separates the mechanisms that can make loads slow, or steps slow while loads run, without
using any replay's end-to-end result:
  issue      CPU time to issue one load while earlier loads are still queued on the copy
             stream: the replay's load (index arrays by cp.asarray, which CuPy stages through
             its pinned pool; gather kernel; checksum kernel), and the copy kernel alone
  alone      one load of a 4K-token request alone on an idle GPU (GB/s)
  overlap    an engine step alone, then steps run back to back while loads stream on the copy
             stream: each step's time, and the copy rate meanwhile; for the gather kernel and
             for one cudaMemcpyAsync of the same bytes (copy engine)
  devsync    a step that ends with a device-wide synchronize while loads are queued (it waits
             for them)
  gemm       the decode step's weight GEMMs alone at 1 and 8 rows (CUDA graph), as GB/s of weights
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from types import SimpleNamespace


def _med(xs):
    return float(statistics.median(xs))


def main(argv: list[str]) -> None:
    import argparse

    import numpy as np

    from belusim.config.scenario import resolve_scenario
    from belusim.replay.cuda import CudaBackend
    from belusim.replay.pool import PoolSpec

    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--calibration")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--gemm-only", action="store_true")
    a = ap.parse_args(argv)
    sc, _ = resolve_scenario(a.scenario, a.set, a.calibration)
    out: dict = {"scenario": sc.name, "model": sc.model.id}
    if not a.gemm_only:
        out.update(_copies(sc, CudaBackend, PoolSpec, np))
    out["gemm"] = _gemm(sc)
    print(json.dumps(out["gemm"]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


def _copies(sc, CudaBackend, PoolSpec, np) -> dict:
    import cupy as cp
    import torch

    system = sc.systems[0]
    system = system.model_copy(update={"kv": system.kv.model_copy(update={"capacity_gb": 6.0})})
    nblocks = sc.engine.kv_blocks
    be = CudaBackend(sc, system, nblocks, PoolSpec())
    bs, c = be.bs, be.chunk_blocks
    nload = 4096 // bs  # a 4K-token request
    nbytes = nload * be.block_bytes
    res: dict = {"load_blocks": nload, "load_bytes": nbytes}
    slots = [i // c for i in range(0, nload, c)]
    h = be.save(list(range(nload)), slots, c)  # give the slots valid contents
    be.wait(h)

    def load(first=0):
        return be.load(list(range(first, first + nload)), slots, c)

    # alone
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        h = load(nload)
        be.wait(h)
        ts.append(time.perf_counter() - t0)
        be.verify_load(h)
    res["alone_ms"] = 1e3 * _med(ts)
    res["alone_gbps"] = nbytes / _med(ts) / 1e9
    print("alone", res["alone_ms"], res["alone_gbps"], flush=True)

    # issue cost with loads queued
    issue, hs = [], []
    for i in range(8):
        t0 = time.perf_counter()
        hs.append(load(nload))
        issue.append(time.perf_counter() - t0)
    be.wait(hs[-1])
    res["issue_load_ms"] = [1e3 * x for x in issue]
    st = be.copy_stream
    g = be._gpu_frags(list(range(nload, 2 * nload)))
    p = be._pool_frags(list(range(nload)))
    issue = []
    for i in range(8):
        t0 = time.perf_counter()
        with st:
            s_, d_ = cp.asarray(p), cp.asarray(g)
        be.copy_kernel((8,), (be.copy_threads,), (s_, d_, np.int32(len(p)), np.int64(be.frag_bytes // 16)), stream=st)
        issue.append(time.perf_counter() - t0)
    st.synchronize()
    res["issue_copy_kernel_only_ms"] = [1e3 * x for x in issue]
    print("issue", res["issue_load_ms"], res["issue_copy_kernel_only_ms"], flush=True)

    # steps alone and with copies
    ctx = 4096
    per = -(-(ctx + 1) // bs)
    first = 2 * nload + 8
    cases = {
        "decode8x4096": ([(list(range(first + i * per, first + (i + 1) * per)), ctx, 1) for i in range(8)], 8),
        "prefill2048": ([(list(range(first, first + 2048 // bs)), 0, 2048)], 2048),
        "mixed": ([(list(range(first, first + per)), ctx - 16, 16)]
                  + [(list(range(first + (i + 1) * per, first + (i + 2) * per)), ctx, 1) for i in range(8)], 24),
    }
    dma_dst = cp.empty(nbytes, dtype=cp.uint8)
    rows = []
    for name, (seqs, tokens) in cases.items():
        plan = SimpleNamespace(tokens=tokens)
        for _ in range(2):
            be.compute(seqs, plan)
        alone = []
        for _ in range(7):
            t0 = time.perf_counter()
            be.compute(seqs, plan)
            alone.append(time.perf_counter() - t0)
        row = {"step": name, "alone_ms": 1e3 * _med(alone)}
        for method in ("gather-kernel", "dma"):
            k = max(6, int(5 * _med(alone) / (res["alone_ms"] * 1e-3)) + 1)  # copies outlast about 5 steps
            torch.cuda.synchronize()
            ev0 = cp.cuda.Event()
            ev0.record(st)
            if method == "gather-kernel":
                hs = [load(nload) for _ in range(k)]
                last = cp.cuda.Event()
                last.record(st)
            else:
                for _ in range(k):  # one contiguous host-to-GPU copy of the same bytes, on a copy engine
                    cp.cuda.runtime.memcpyAsync(dma_dst.data.ptr, be.pool_base, nbytes,
                                                cp.cuda.runtime.memcpyHostToDevice, st.ptr)
                last = cp.cuda.Event()
                last.record(st)
            during = []
            while not last.done:
                t0 = time.perf_counter()
                be.compute(seqs, plan)
                t1 = time.perf_counter()
                if not last.done:
                    during.append(t1 - t0)
            last.synchronize()
            copy_s = cp.cuda.get_elapsed_time(ev0, last) * 1e-3
            row[f"{method}_during_ms"] = 1e3 * _med(during) if during else None
            row[f"{method}_steps_overlapped"] = len(during)
            row[f"{method}_slowdown"] = (_med(during) / _med(alone) - 1) if during else None
            row[f"{method}_copy_gbps_during_steps"] = k * nbytes / copy_s / 1e9
        # a step ending with a device-wide synchronize while loads are queued (the old replay)
        hs = [load(nload) for _ in range(6)]
        t0 = time.perf_counter()
        be.compute(seqs, plan)
        torch.cuda.synchronize()
        row["devsync_step_with_6_loads_queued_ms"] = 1e3 * (time.perf_counter() - t0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    res["overlap"] = rows
    be.close()
    return res


def _gemm(sc) -> list[dict]:
    import torch

    m = sc.model
    dev, dt = torch.device("cuda"), torch.bfloat16
    qd, kvd, h = m.q_heads * m.head_dim, m.kv_heads * m.head_dim, m.hidden
    shapes = {"qkv": (h, qd + 2 * kvd), "o": (qd, h), "gate_up": (h, 2 * m.ffn), "down": (m.ffn, h)}
    rows = []
    for rows_n in (1, 8):
        tot_bytes = tot_s = 0.0
        for name, (k, n) in shapes.items():
            w = torch.randn(k, n, device=dev, dtype=dt)
            x = torch.randn(rows_n, k, device=dev, dtype=dt)
            reps = 50
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    x @ w
            torch.cuda.current_stream().wait_stream(s)
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr):
                for _ in range(reps):
                    x @ w
            gr.replay()
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ts = []
            for _ in range(5):
                e0.record()
                gr.replay()
                e1.record()
                e1.synchronize()
                ts.append(e0.elapsed_time(e1) * 1e-3 / reps)
            t = _med(ts)
            b = k * n * 2
            tot_bytes += b
            tot_s += t
            rows.append({"rows": rows_n, "gemm": name, "k": k, "n": n, "us": 1e6 * t, "weight_gbps": b / t / 1e9})
            del w, x, gr
        rows.append({"rows": rows_n, "gemm": "layer_total", "us": 1e6 * tot_s, "weight_gbps": tot_bytes / tot_s / 1e9,
                     "model_layers_ms": 1e3 * tot_s * m.layers})
    torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
