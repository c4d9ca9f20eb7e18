"""All-reduce probe: NCCL all-reduce time between the machine's GPUs, at the sizes a
tensor-parallel layer all-reduces (tokens x hidden bf16 activations) and at large sizes for
the bus bandwidth, as nccl-tests reports it (busBw = bytes / time x 2(n-1)/n).

One process per GPU (spawned; each sees only its own GPU), NCCL through torch.distributed,
NVLink multicast (NVLS) off. Each size is timed two ways: eagerly (CUDA events around `reps`
back-to-back all-reduces: what an eager prefill step sees) and replayed from a CUDA graph that
holds `reps` all-reduces (what a graph-captured decode step sees). Medians of `rounds`.
"""

from __future__ import annotations

import os
import traceback

NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
LAYER_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 8192)
LARGE_BYTES = (64 << 20, 256 << 20, 1 << 30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def sizes_for(hidden: int) -> list[int]:
    return sorted({t * hidden * 2 for t in LAYER_TOKENS} | set(LARGE_BYTES))


def _rank(rank: int, n: int, addr: str, sizes: list[int], reps: int, rounds: int, q) -> None:
    for k, v in NCCL_ENV.items():
        os.environ[k] = v
    os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)
    try:
        from datetime import timedelta
        from statistics import median

        import torch
        import torch.distributed as dist

        torch.cuda.set_device(0)
        dist.init_process_group("nccl", init_method=addr, rank=rank, world_size=n,
                                timeout=timedelta(seconds=120), device_id=torch.device("cuda", 0))
        t = torch.full((1 << 20,), float(rank + 1), device="cuda")
        dist.all_reduce(t)
        torch.cuda.synchronize()
        ok = float(t.min()) == float(t.max()) == n * (n + 1) / 2
        rows, graph_error = [], None
        for nbytes in sizes:
            x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
            k = reps if nbytes <= (64 << 20) else max(2, reps // 10)

            def fill():
                x.uniform_(-1e-3, 1e-3)

            fill()
            for _ in range(3):
                dist.all_reduce(x)
            def per_call_s(run):
                """Median over rounds of one call's seconds, k back-to-back calls timed by CUDA events."""
                out = []
                for _ in range(rounds):
                    fill()
                    dist.barrier()
                    torch.cuda.synchronize()
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    run()
                    e1.record()
                    e1.synchronize()
                    out.append(e0.elapsed_time(e1) * 1e-3 / k)
                return median(out)

            def eager_calls():
                for _ in range(k):
                    dist.all_reduce(x)

            row = {"bytes": nbytes, "eager_us": per_call_s(eager_calls) * 1e6}
            if graph_error is None:
                try:
                    g = torch.cuda.CUDAGraph()
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.graph(g, stream=s):
                        for _ in range(k):
                            dist.all_reduce(x)
                    torch.cuda.synchronize()
                    row["graph_us"] = per_call_s(g.replay) * 1e6
                    del g
                except Exception as e:  # capture unsupported here: eager only
                    graph_error = f"{type(e).__name__}: {e}"
            best = row.get("graph_us", row["eager_us"])
            row["bus_gbps"] = nbytes / (best * 1e-6) * 2 * (n - 1) / n / 1e9
            rows.append(row)
            del x
        # the graph replays must leave the communicator usable by eager calls
        t.fill_(float(rank + 1))
        dist.all_reduce(t)
        torch.cuda.synchronize()
        ok = ok and float(t.min()) == float(t.max()) == n * (n + 1) / 2
        if rank == 0:
            q.put({"ranks": n, "rows": rows, "reps": reps, "rounds": rounds, "sum_check": ok,
                   "graph_error": graph_error, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
                   "torch": torch.__version__, "method": "torch.distributed all_reduce (NCCL), one process per GPU, "
                   "in-place bf16, NVLS off; eager: CUDA events around back-to-back calls; graph: one CUDA graph of "
                   "back-to-back calls"})
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001
        q.put({"error": f"rank {rank}: {type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)})


def probe_all_reduce(hidden: int, ranks: int = 2, reps: int = 50, rounds: int = 5, timeout_s: float = 300) -> dict:
    """Time NCCL all-reduces over `ranks` GPUs. Returns the measurement table, or {"error": ...}."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    addr = f"tcp://127.0.0.1:{free_port()}"
    sizes = sizes_for(hidden)
    procs = [ctx.Process(target=_rank, args=(r, ranks, addr, sizes, reps, rounds, q), daemon=True)
             for r in range(ranks)]
    for p in procs:
        p.start()
    try:
        res = q.get(timeout=timeout_s)
    except queue.Empty:
        res = {"error": f"no result within {timeout_s:.0f} s"}
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join(5)
    res["hidden"] = hidden
    return res
