"""CPU memory-path probes: Table-4 style 16 KB transfers, load-to-use latency, multi-thread
bandwidth and the shared-slot RPC, on a memory target (see `memory`)."""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from belusim.calibration.errors import CalibrationError
from belusim.calibration.memory import MiB, Target
from belusim.calibration.native import Native, status_text

Report = Callable[[str], None]


@dataclass
class CPUProbeConfig:
    quick: bool = False
    threads: int | None = None  # most threads for the bandwidth sweep (default: usable CPUs)
    transfer_sizes: tuple[int, ...] = (4096, 16384, 65536)
    transfer_iters: int = 400
    chase_bytes: int = 256 * MiB
    chase_steps: int = 2_000_000
    bw_bytes_per_thread: int = 64 * MiB
    bw_iters: int = 3
    rpc_iters: int = 20_000
    rpc_warmup: int = 2_000
    rpc_depth: int = 128
    rpc_pipelined_ops: int = 200_000
    seed: int = 1

    @classmethod
    def make(cls, quick: bool, threads: int | None = None) -> CPUProbeConfig:
        if not quick:
            return cls(threads=threads)
        return cls(quick=True, threads=threads, transfer_sizes=(16384,), transfer_iters=100, chase_bytes=32 * MiB,
                   chase_steps=200_000, bw_bytes_per_thread=16 * MiB, bw_iters=2, rpc_iters=2_000, rpc_warmup=200,
                   rpc_pipelined_ops=20_000)


@dataclass
class CPUResult:
    measurements: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _siblings(cpu: int) -> set[int]:
    p = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    out: set[int] = {cpu}
    try:
        for part in p.read_text().strip().split(","):
            if "-" in part:
                a, b = part.split("-")
                out.update(range(int(a), int(b) + 1))
            elif part:
                out.add(int(part))
    except (OSError, ValueError):
        pass
    return out


def rpc_cpus() -> tuple[int, int] | None:
    """Client and server CPUs for the RPC: two usable CPUs, on different cores when possible."""
    cpus = usable_cpus()
    if len(cpus) < 2:
        return None
    client = cpus[0]
    sib = _siblings(client)
    others = [c for c in cpus[1:] if c not in sib]
    return client, (others[0] if others else cpus[1])


def _stats_us(ns: np.ndarray) -> dict:
    us = ns / 1000.0
    return {
        "median_us": round(float(np.median(us)), 4),
        "mean_us": round(float(np.mean(us)), 4),
        "p10_us": round(float(np.percentile(us, 10)), 4),
        "p90_us": round(float(np.percentile(us, 90)), 4),
        "p99_us": round(float(np.percentile(us, 99)), 4),
        "min_us": round(float(np.min(us)), 4),
    }


def _thp_kib(ptr: int) -> int | None:
    """AnonHugePages of the mapping holding ptr (from /proc/self/smaps), None if unknown."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    inside = False
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= ptr < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return None


def _flush_methods(feats: dict[str, bool]) -> list[str]:
    return [m for m in ("clflush", "clflushopt", "clwb") if feats.get(m)]


# ------------------------------------------------------------------------ sub-probes


def probe_transfers(native: Native, target: Target, cfg: CPUProbeConfig) -> dict:
    """Table-4 style costs of one small CPU transfer into/out of the target."""
    feats = native.features()
    flushes = _flush_methods(feats)
    size_max = max(cfg.transfer_sizes)
    rows = []
    with target.local(size_max) as src, target.buffer(size_max, align=4096) as dst:
        native.view(src.ptr, size_max)[:] = np.random.default_rng(cfg.seed).integers(0, 256, size_max, dtype=np.uint8)
        plan: list[tuple[str, str | None]] = [("nt_copy", None), ("cached_copy", None)]
        plan += [("copy_flush", m) for m in flushes]
        plan += [("flush", m) for m in flushes]
        plan += [("flush_read", m) for m in flushes if m != "clwb"]
        plan += [("read", None)]
        for n in cfg.transfer_sizes:
            for op, method in plan:
                reading = op in ("flush_read", "read")
                rc, ns = native.bench_op(op, 0 if reading else dst.ptr, dst.ptr if reading else src.ptr, n,
                                         method or "none", cfg.transfer_iters)
                row = {"op": op, "flush": method, "bytes": n, "iters": cfg.transfer_iters}
                if rc != 0:
                    row["status"] = status_text(rc)
                else:
                    row.update(_stats_us(ns))
                rows.append(row)
        # the copies above must have moved the right bytes
        native.copy_nt(dst.ptr, src.ptr, size_max)
        ok = bool(np.array_equal(native.view(dst.ptr, size_max), native.view(src.ptr, size_max)))
    return {
        "description": "time of one transfer of `bytes` (median of `iters`); writes go from local memory "
                       "into the target, reads come from the target. nt_copy: streaming stores + sfence; "
                       "cached_copy: memcpy; copy_flush: memcpy + flush of the destination + fence; flush: "
                       "the flush of dirty lines alone; flush_read: flush of stale cached lines + mfence + "
                       "read; read: read from memory (lines evicted first)",
        "timer_overhead_ns": round(native.timer_overhead_ns(), 2),
        "verified": ok,
        "rows": rows,
    }


def probe_pointer_chase(native: Native, target: Target, cfg: CPUProbeConfig) -> dict:
    stride = 64
    rows = []
    size = min(cfg.chase_bytes, target.capacity(align=4096) // stride * stride)
    if size < 64 * stride:
        raise CalibrationError("target window too small for the pointer chase")
    variants = ["target"] if target.is_window else ["thp", "4k"]
    for v in variants:
        thp = None if v == "target" else v
        with target.buffer(size, align=2 * MiB if not target.is_window else 4096, thp=thp) as buf:
            t0 = time.perf_counter()
            rc, nodes = native.chase_build(buf.ptr, size, stride, cfg.seed + 17)
            if rc != 0:
                raise CalibrationError(f"pointer chase build: {status_text(rc)}")
            build_s = time.perf_counter() - t0
            rc, distinct, cycle = native.chase_count(buf.ptr, size, stride)
            steps = cfg.chase_steps
            native.chase_run(buf.ptr, min(steps // 10 + 1, 100_000))  # warm the TLB and page tables
            rc2, ns = native.chase_run(buf.ptr, steps)
            row = {
                "pages": v,
                "buffer_bytes": size,
                "stride": stride,
                "nodes": nodes,
                "distinct": distinct,
                "cycle": cycle,
                "single_cycle": rc == 0 and distinct == nodes == cycle,
                "steps": steps,
                "ns_per_load": round(ns, 2),
                "build_s": round(build_s, 3),
            }
            if v == "thp":
                row["thp_kib"] = _thp_kib(buf.ptr)
            if rc2 != 0:
                row["status"] = status_text(rc2)
            rows.append(row)
    return {
        "description": "dependent loads over one random cyclic permutation of 64-byte nodes (load-to-use "
                       "latency incl. TLB misses); 'thp' asks for transparent huge pages, '4k' forbids them",
        "rows": rows,
    }


def thread_counts(max_threads: int) -> list[int]:
    counts = {1, max_threads}
    if max_threads >= 4:
        counts.add(max_threads // 2)
    return sorted(counts)


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def probe_bandwidth(native: Native, target: Target, cfg: CPUProbeConfig) -> dict:
    max_threads = cfg.threads or len(usable_cpus())
    if max_threads < 1:
        raise CalibrationError("--threads must be at least 1")
    per = cfg.bw_bytes_per_thread
    # keep the buffers (target + local) within half of the free memory
    avail = _mem_available()
    if avail and not target.is_window:
        per = min(per, max(MiB, avail // 4 // max_threads // MiB * MiB))
    if target.is_window:
        per = min(per, target.capacity(align=4096) // max_threads // 4096 * 4096)
    if per < 64 * 1024:
        raise CalibrationError("too little memory (or too small a window) for the bandwidth probe")
    total = per * max_threads
    rows = []
    kinds = ["read", "write", "ntwrite", "copy", "ntcopy"]
    feats = native.features()
    with target.buffer(total, align=2 * MiB if not target.is_window else 4096) as tbuf, \
            target.local(total) as lbuf:
        tv, lv = native.view(tbuf.ptr, total), native.view(lbuf.ptr, total)
        lv[:] = np.random.default_rng(cfg.seed).integers(0, 256, total, dtype=np.uint8)
        tv[:] = lv
        for t in thread_counts(max_threads):
            for kind in kinds:
                if kind in ("ntwrite", "ntcopy") and not (feats["sse2"] and feats["clflush"]):
                    rows.append({"kind": kind, "threads": t, "status": "unsupported on this CPU"})
                    continue
                # copies go from local memory into the target (the write direction of the pool)
                src = tbuf.ptr if kind == "read" else lbuf.ptr
                dst = tbuf.ptr
                if kind in ("copy", "ntcopy"):
                    tv[: per * t] = 0
                rc, secs, s = native.bandwidth(kind, dst if kind != "read" else None, src, per, t, cfg.bw_iters)
                row = {"kind": kind, "threads": t, "bytes_per_thread": per, "iters": cfg.bw_iters}
                if rc != 0:
                    row["status"] = status_text(rc)
                    rows.append(row)
                    continue
                row["seconds"] = round(secs, 6)
                row["gbps"] = round(per * t * cfg.bw_iters / secs / 1e9, 3)
                row["verified"] = _verify_bw(native, kind, tv, lv, per, t, s)
                rows.append(row)
                if kind in ("write", "ntwrite"):
                    tv[: per * t] = lv[: per * t]  # restore the data for the next read
    return {
        "description": "GB/s of bytes read (read), written (write: cached stores, ntwrite: streaming stores) "
                       "or copied (copy: memcpy, ntcopy: streaming-store copy; each byte read once and "
                       "written once) by `threads` threads, each on its own slice, local memory -> target",
        "bytes_per_thread": per,
        "rows": rows,
    }


def _verify_bw(native: Native, kind: str, tv: np.ndarray, lv: np.ndarray, per: int, t: int, s: int) -> bool:
    n = per * t
    if kind == "read":
        return int(np.sum(lv[:n].view(np.uint64), dtype=np.uint64)) == s
    if kind in ("copy", "ntcopy"):
        return bool(np.array_equal(tv[:n], lv[:n]))
    words = tv[:n].view(np.uint64).reshape(t, per // 8)
    want = (np.uint64(0x5A5A5A5A00000000) | (np.arange(t, dtype=np.uint64) + np.uint64(1)))[:, None]
    return bool(np.all(words == want))


def probe_rpc(native: Native, target: Target, cfg: CPUProbeConfig) -> dict:
    cpus = rpc_cpus()
    if cpus is None:
        raise CalibrationError("the RPC probe needs two usable CPUs (client and server spin on their own)")
    feats = native.features()
    flush = "clflushopt" if feats["clflushopt"] else ("clflush" if feats["clflush"] else "none")
    size = max(cfg.rpc_depth, 1) * 256
    out: dict = {
        "description": "64-byte request/response over shared slots between two processes: messages written "
                       "with streaming stores + sfence, polled with a flush + mfence before each read. "
                       "pingpong: queue depth 1; pipelined: one server process polling `depth` slots",
        "flush": flush,
        "client_cpu": cpus[0],
        "server_cpu": cpus[1],
    }
    with target.buffer(size, align=4096, shared=True) as buf:
        rc, rtt, elapsed, torn = native.rpc_run(buf.ptr, size, 1, cfg.rpc_iters, cfg.rpc_warmup, flush, *cpus)
        if rc != 0:
            out["pingpong"] = {"status": status_text(rc)}
        else:
            out["pingpong"] = {"iters": cfg.rpc_iters, "warmup": cfg.rpc_warmup, "torn_reads": torn, **_stats_us(rtt)}
        rc, _, elapsed, torn = native.rpc_run(buf.ptr, size, cfg.rpc_depth, cfg.rpc_pipelined_ops, 0, flush, *cpus)
        if rc != 0:
            out["pipelined"] = {"depth": cfg.rpc_depth, "status": status_text(rc)}
        else:
            out["pipelined"] = {
                "depth": cfg.rpc_depth,
                "ops": cfg.rpc_pipelined_ops,
                "seconds": round(elapsed, 6),
                "mops": round(cfg.rpc_pipelined_ops / elapsed / 1e6, 4),
                "torn_reads": torn,
            }
    return out


SUBPROBES: list[tuple[str, str, Callable]] = [
    ("transfer_16k", "16 KB transfers", probe_transfers),
    ("pointer_chase", "pointer chase", probe_pointer_chase),
    ("bandwidth", "multi-thread bandwidth", probe_bandwidth),
    ("rpc", "shared-slot RPC", probe_rpc),
]


def run_cpu_probes(native: Native, target: Target, cfg: CPUProbeConfig, report: Report | None = None,
                   step: Callable[[str], None] | None = None) -> CPUResult:
    res = CPUResult()
    res.measurements["features"] = native.features()
    for key, label, fn in SUBPROBES:
        if step:
            step(label)
        t0 = time.perf_counter()
        try:
            res.measurements[key] = fn(native, target, cfg)
            res.measurements[key]["wall_s"] = round(time.perf_counter() - t0, 3)
        except CalibrationError as e:
            res.errors[f"cpu.{key}"] = str(e)
            if report:
                report(f"cpu {label}: skipped: {e}")
        except Exception as e:  # one failing sub-probe must not lose the others
            res.errors[f"cpu.{key}"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            if report:
                report(f"cpu {label}: failed: {type(e).__name__}: {e}")
    if target.is_window:
        res.measurements["window_check"] = target.verify_window()
    return res
