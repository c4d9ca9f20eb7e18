"""Microbenchmark of the CUDA replay's own step: one engine step of a given composition,
timed on the GPU (wall time, synchronized), beside the compute model's step time for it.

    python -m belusim.replay.bench SCENARIO [--calibration PROFILE] [--set k=v]... [--out FILE]

It places a miss of `belusim validate` on a component: the decode path (weights, paged KV
read, one CUDA-graph launch), the prefill path, or the fixed cost of a
step (kernel launches, Python), without using any replay's end-to-end result. Steps of up to
the largest piecewise capture size (chunks, mixed steps) are timed twice: as piecewise CUDA
graphs ("path": "piecewise") and eagerly ("path": "eager"), the replay's path before them.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace


def main(argv: list[str]) -> None:
    import argparse

    from belusim.compute.roofline import ComputeModel
    from belusim.config.scenario import resolve_scenario
    from belusim.replay.cuda import CudaBackend
    from belusim.replay.pool import PoolSpec

    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--calibration")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    sc, _ = resolve_scenario(a.scenario, a.set, a.calibration)
    system = sc.systems[0].model_copy(update={"kv": sc.systems[0].kv.model_copy(update={"kind": "hbm-only"})})
    nblocks = sc.engine.kv_blocks
    be = CudaBackend(sc, system, nblocks, PoolSpec())
    cm = ComputeModel.build(sc.model, sc.gpu, sc.cluster.tensor_parallel, sc.interconnect, sc.attention)
    bs = sc.engine.block_size
    rows = []
    cases = [("decode", 1, 16, 0), ("decode", 1, 1024, 0), ("decode", 1, 16384, 0), ("decode", 1, 65536, 0),
             ("decode", 8, 16384, 0), ("decode", 32, 4096, 0),
             # a loaded request's last 16 tokens, alone and beside 8 decodes at 4K (open4k's hit)
             ("prefill", 16, 4080, 0), ("mixed", 16, 4080, 8), ("prefill", 16, 16368, 0),
             ("prefill", 256, 0, 0), ("mixed", 256, 3840, 32), ("prefill", 512, 0, 0),
             ("prefill", 2048, 0, 0), ("prefill", 2048, 16384, 0), ("prefill", 2048, 63488, 0)]
    for kind, n, ctx, ndec in cases:
        if kind == "decode":
            per = -(-(ctx + 1) // bs)
            if per * n > nblocks:
                continue
            seqs = [(list(range(i * per, (i + 1) * per)), ctx, 1) for i in range(n)]
            plan = SimpleNamespace(tokens=n)
            model = cm.step_time(n, 0.0, n * (ctx + 1), n)
        else:
            per = -(-(ctx + n) // bs)
            dper = -(-(ctx + n + 1) // bs)
            if per + ndec * dper > nblocks:
                continue
            seqs = [(list(range(per)), ctx, n)]
            seqs += [(list(range(per + i * dper, per + (i + 1) * dper)), ctx + n, 1) for i in range(ndec)]
            plan = SimpleNamespace(tokens=n + ndec)
            model = cm.step_time(n + ndec, n * (ctx + n / 2), ndec * (ctx + n + 1), 1 + ndec)
        paths = ["graph" if kind == "decode" else "eager"]
        if kind != "decode" and be._pw_sizes and n + ndec <= be._pw_sizes[-1]:
            paths = ["eager", "piecewise"]
        for path in paths:
            be.piecewise = path == "piecewise"
            for _ in range(2):
                be.compute(seqs, plan)
            ts, issue = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                be.compute(seqs, plan)
                ts.append(time.perf_counter() - t0)
                issue.append(be.last_issue_s)
            ts.sort()
            issue.sort()
            rows.append({"step": kind, "batch_or_chunk": n, "context": ctx, "decodes_beside": ndec, "path": path,
                         "measured_ms": 1e3 * ts[2], "cpu_issue_ms": 1e3 * issue[2], "model_ms": 1e3 * model,
                         "model_over_measured": model / ts[2]})
            print(json.dumps(rows[-1]), flush=True)
        be.piecewise = True
    be.close()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"scenario": sc.name, "model": sc.model.id, "calibration": a.calibration, "rows": rows,
                       "backend": be.info}, f,
                      indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
