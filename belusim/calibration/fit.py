"""Turn raw probe tables into profile parameters (dotted override paths of the scenario config).

Every function here is pure: measurements in, numbers out, so a profile can be re-fitted from
its own `measurements` (``belusim calibrate refit``) and tests can feed synthetic tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from belusim.calibration.models import ModelShape, compute_functions, gpu_namespace

# The parameters a profile may set, and the config card each belongs to.
FITTED_KEYS: dict[str, str] = {
    "hardware.host.sha256_gbps": "GB/s, one thread's sha256 over token ids (a stack's hash stage)",
    "hardware.host.memcpy_gbps": "GB/s, one thread's memcpy of one KV chunk (a stack's copy stages)",
    "gpu.host_h2d_gbps": "GB/s, large pinned host-to-GPU copies",
    "gpu.host_d2h_gbps": "GB/s, large pinned GPU-to-host copies",
    "gpu.pageable_h2d_gbps": "GB/s, pageable host-to-GPU copies",
    "gpu.pageable_d2h_gbps": "GB/s, pageable GPU-to-host copies",
    "gpu.memcpy_call_us": "us, fixed cost of one back-to-back cudaMemcpyAsync of a KV fragment",
    "gpu.copy_kernel_launch_us": "us, launch + completion sync of one gather/scatter kernel",
    "gpu.copy_kernel_gbps": "GB/s, the gather/scatter kernel's own top rate",
    "gpu.copy_kernel_compute_slowdown": "fraction, slowdown of compute while a copy kernel runs",
    "gpu.copy_kernel_beside_decode": "fraction of its rate a load copy kernel keeps beside a decode-like step",
    "gpu.copy_kernel_beside_prefill": "fraction of its rate a load copy kernel keeps beside a prefill-like step",
    "gpu.linear_efficiency": "fraction of dense bf16 peak reached by the linear layers",
    "attention.prefill_efficiency": "fraction of dense bf16 peak reached by prefill attention",
    "attention.decode_efficiency": "fraction of HBM bandwidth reached while decode attention reads the KV cache",
    "gpu.decode_bandwidth_efficiency": "fraction of HBM bandwidth reached streaming the weights in decode",
    "gpu.decode_efficiency_by_batch": "weight-streaming efficiency by tokens in the step",
    "gpu.request_overhead_us": "us, what each scheduled request adds to a step (LM head aside): sampling",
    "gpu.step_overhead_us": "us, fixed cost of one engine step",
    "interconnect.bus_gbps": "GB/s, NCCL all-reduce bus bandwidth between the GPUs (large messages)",
    "interconnect.ll_base_us": "us, fixed latency of the smallest all-reduce (NCCL's LL protocol)",
    "hardware.host.dram_gbps_per_socket": "GB/s, DRAM bandwidth of one socket",
    "hardware.host.dram_latency_ns": "ns, random load-to-use latency",
    "hardware.host.ntstore_16k_us": "us, 16 KB non-temporal store + sfence",
    "hardware.host.cached_write_flush_16k_us": "us, 16 KB cached write + flush",
    "hardware.host.flush_read_16k_us": "us, 16 KB flush then read",
    "hardware.host.uncacheable_write_16k_us": "us, 16 KB write to an uncacheable region",
    "hardware.host.uncacheable_read_16k_us": "us, 16 KB read from an uncacheable region",
    "hardware.cxl_rpc.rtt_us": "us, 64 B RPC round trip over shared slots, queue depth 1",
    "hardware.cxl_rpc.server_mops": "Mops, one server thread",
    "hardware.rdma_rpc.rtt_us": "us, 64 B RPC round trip over RDMA, queue depth 1",
    "hardware.rdma_rpc.server_mops": "Mops, one server thread",
    "hardware.cxl_adapter.cpu_read_gbps": "GB/s, CPU reads from the pool through one adapter",
    "hardware.cxl_adapter.cpu_write_gbps": "GB/s, CPU writes to the pool through one adapter",
    "hardware.cxl_switch.access_latency_ns": "ns, 64 B load through the switch",
    "hardware.cxl_memory.bandwidth_gbps": "GB/s, one CXL memory device",
    "hardware.root_complex.p2p_write_gbps_per_path": "GB/s, device-to-device writes through the RC",
    "hardware.root_complex.p2p_read_gbps_per_path": "GB/s, device-to-device reads through the RC",
    "hardware.root_complex.p2p_total_gbps": "GB/s, all peer-to-peer paths of one socket",
}


# Fitted keys of older profiles and what they are read as now (attention efficiency moved from
# the GPU card to the attention backend).
LEGACY_KEYS = {"gpu.attention_efficiency": "attention.prefill_efficiency"}

# most spread of the copy/compute interference across good copy-kernel setups that still yields
# one fitted slowdown
SLOWDOWN_SPREAD = 0.25


def sig(x: float, digits: int = 4) -> float:
    """Round to `digits` significant digits (plain float for JSON)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(round(x, digits - 1 - int(math.floor(math.log10(abs(x))))))


def entry(value: float | dict, source: str, **detail: Any) -> dict:
    v = {k: sig(x) for k, x in value.items()} if isinstance(value, dict) else sig(value)
    e: dict[str, Any] = {"value": v, "source": source}
    if detail:
        e["detail"] = detail
    return e


# ------------------------------------------------------------------------ generic fits


@dataclass
class AffineFit:
    """t = a + bytes / bw."""

    a_s: float
    bw_bytes_per_s: float
    rel_rmse: float
    points: int

    @property
    def a_us(self) -> float:
        return self.a_s * 1e6

    @property
    def gbps(self) -> float:
        return self.bw_bytes_per_s / 1e9

    def detail(self) -> dict:
        return {"intercept_us": sig(self.a_us), "gbps": sig(self.gbps), "rel_rmse": sig(self.rel_rmse, 3),
                "points": self.points}


def fit_affine(nbytes: Iterable[float], seconds: Iterable[float], relative: bool = True) -> AffineFit:
    """t = a + bytes/bw by least squares with a >= 0 and 1/bw > 0 (scipy lsq_linear), on relative
    residuals (every size counts alike) or absolute ones (the largest transfers dominate)."""
    x = np.asarray(list(nbytes), dtype=float)
    t = np.asarray(list(seconds), dtype=float)
    keep = np.isfinite(x) & np.isfinite(t) & (t > 0) & (x >= 0)
    x, t = x[keep], t[keep]
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError("an affine fit needs at least two distinct sizes")
    from scipy.optimize import lsq_linear  # here: every belusim command imports this module, few fit

    w = 1.0 / t if relative else np.full_like(t, 1.0 / t.max())
    A = np.column_stack([w, x * w])
    res = lsq_linear(A, t * w, bounds=([0.0, 1e-18], [np.inf, np.inf]))
    a, inv = res.x
    pred = a + x * inv
    rel = float(np.sqrt(np.mean(((pred - t) / t) ** 2)))
    return AffineFit(a_s=float(a), bw_bytes_per_s=float(1.0 / inv), rel_rmse=rel, points=int(len(x)))


@dataclass
class ComputeFit:
    linear_efficiency: float
    attention_efficiency: float
    decode_bandwidth_efficiency: float | None
    prefill_table: list[dict]
    decode_table: list[dict]
    formula: str


def _clip01(x: float) -> float:
    return float(min(1.0, max(1e-4, x)))


def fit_compute(model: ModelShape, tflops: float, hbm_gbps: float, prefill_rows: list[dict],
                decode_rows: list[dict]) -> ComputeFit:
    """Efficiencies such that belusim.compute.roofline's per-layer formulas reproduce measured times.

    prefill_rows: {"chunk": n, "context": c, "ms": t}; decode_rows: {"batch": b, "context": c, "ms": t}.
    Prefill: least squares on relative residuals over (linear, attention) efficiency.
    Decode: the HBM efficiency, least squares on absolute residuals (large batches, where the
    step is longest, weigh most), with the linear efficiency from the prefill fit."""
    from scipy.optimize import least_squares  # here: every belusim command imports this module, few fit

    prefill_fn, decode_fn, origin = compute_functions()
    pre = [(int(r["chunk"]), int(r["context"]), float(r["ms"]) * 1e-3) for r in prefill_rows
           if r.get("ms") and r["ms"] > 0]
    if len(pre) < 2 or len({c for _, c, _ in pre}) < 2:
        raise ValueError("the prefill fit needs at least two context lengths")

    def pre_res(x):
        g = gpu_namespace(tflops, hbm_gbps, x[0], x[1], 0.5)
        return [(prefill_fn(model, g, n, c) - t) / t for n, c, t in pre]

    sol = least_squares(pre_res, x0=[0.5, 0.5], bounds=([1e-4, 1e-4], [1.0, 1.0]))
    e_lin, e_attn = (_clip01(v) for v in sol.x)
    g = gpu_namespace(tflops, hbm_gbps, e_lin, e_attn, 0.5)
    pre_table = [{"chunk": n, "context": c, "measured_ms": sig(t * 1e3), "model_ms": sig(prefill_fn(model, g, n, c) * 1e3)}
                 for n, c, t in pre]

    dec = [(int(r["batch"]), int(r["context"]), float(r["ms"]) * 1e-3) for r in decode_rows
           if r.get("ms") and r["ms"] > 0]
    e_mem = None
    dec_table: list[dict] = []
    if dec:
        def dec_res(x):
            gg = gpu_namespace(tflops, hbm_gbps, e_lin, e_attn, x[0])
            return [(decode_fn(model, gg, b, c) - t) * 1e3 for b, c, t in dec]

        sol = least_squares(dec_res, x0=[0.6], bounds=([1e-4], [1.0]))
        e_mem = _clip01(sol.x[0])
        gg = gpu_namespace(tflops, hbm_gbps, e_lin, e_attn, e_mem)
        layer_w = model.params_per_layer * model.weight_bytes_per_param
        for b, c, t in dec:
            moved = layer_w + b * c * model.kv_bytes_per_token / model.layers
            dec_table.append({"batch": b, "context": c, "measured_ms": sig(t * 1e3),
                              "model_ms": sig(decode_fn(model, gg, b, c) * 1e3),
                              "effective_tbps": sig(moved / t / 1e12)})
    return ComputeFit(e_lin, e_attn, e_mem, pre_table, dec_table, origin)


def _interp_log2(table: dict[int, float], x: float) -> float:
    """belusim.compute.roofline's interpolation of decode_efficiency_by_batch."""
    pts = sorted(table.items())
    lx = math.log2(max(x, 1))
    xs = [math.log2(b) for b, _ in pts]
    if lx <= xs[0]:
        return pts[0][1]
    if lx >= xs[-1]:
        return pts[-1][1]
    for i in range(1, len(xs)):
        if lx <= xs[i]:
            f = (lx - xs[i - 1]) / (xs[i] - xs[i - 1])
            return pts[i - 1][1] + f * (pts[i][1] - pts[i - 1][1])
    return pts[-1][1]


# decode attention rows below this batch are not used for the backend's decode efficiency: the
# probe's kernel (PyTorch SDPA) has no split-KV, so at batch x KV heads < SM count it leaves most
# SMs idle, where vLLM's FlashAttention/FlashInfer decode kernels split the context over SMs
DECODE_ATTENTION_MIN_BATCH = 16


def fit_compute_split(model: ModelShape, tflops: float, hbm_gbps: float, comp: dict) -> tuple[dict, list[str]]:
    """Efficiencies from layer timings with the attention kernel timed alone, as
    belusim.compute.roofline uses them: attention (prefill: FLOP/s; decode: KV bytes/s) from the
    attention rows; the linear efficiency from prefill layers minus their attention; the
    weight-streaming efficiency at each decode batch from decode layers minus their attention;
    the per-request cost from the LM head + sampling rows beyond the LM head's own roofline."""
    peak, hbm = tflops * 1e12, hbm_gbps * 1e9
    qh, hd, ppl = model.q_heads, model.head_dim, model.params_per_layer
    layer_w = ppl * model.weight_bytes_per_param
    kv_tok = model.kv_bytes_per_token / model.layers
    notes: list[str] = []
    out: dict[str, dict] = {}
    pa = {(int(r["chunk"]), int(r["context"])): float(r["ms"]) * 1e-3 for r in comp["prefill_attention_rows"]}
    flops_a = {k: 4.0 * qh * hd * k[0] * (k[1] + k[0] / 2) for k in pa}
    e_pa = _clip01(sum(flops_a.values()) / sum(pa.values()) / peak)
    pre = [(int(r["chunk"]), int(r["context"]), float(r["ms"]) * 1e-3) for r in comp["prefill_rows"]
           if (int(r["chunk"]), int(r["context"])) in pa]
    lin_f = sum(2.0 * n * ppl for n, _, _ in pre)
    lin_t = sum(t - pa[(n, c)] for n, c, t in pre)
    e_lin = _clip01(lin_f / lin_t / peak)
    pre_table = []
    for n, c, t in pre:
        m = 2.0 * n * ppl / (peak * e_lin) + flops_a[(n, c)] / (peak * e_pa)
        pre_table.append({"chunk": n, "context": c, "measured_ms": sig(t * 1e3), "attention_ms": sig(pa[(n, c)] * 1e3),
                          "model_ms": sig(m * 1e3), "residual": sig((m - t) / t, 3)})
    da = {int(r["batch"]): (int(r["context"]), float(r["ms"]) * 1e-3) for r in comp["decode_attention_rows"]}
    used = {b: v for b, v in da.items() if b >= DECODE_ATTENTION_MIN_BATCH}
    if not used:
        raise ValueError(f"the decode attention fit needs a batch of at least {DECODE_ATTENTION_MIN_BATCH}")
    e_da = _clip01(sum(b * c * kv_tok for b, (c, _) in used.items()) / sum(t for _, t in used.values()) / hbm)
    by_batch: dict[int, float] = {}
    dec = [(int(r["batch"]), int(r["context"]), float(r["ms"]) * 1e-3) for r in comp["decode_rows"]
           if int(r["batch"]) in da]
    for b, c, t in dec:
        lin = t - da[b][1]
        if lin <= 0:
            notes.append(f"decode batch {b}: the attention alone took as long as the layer; not fitted")
            continue
        by_batch[b] = sig(_clip01(layer_w / hbm / lin), 4)
    if not by_batch:
        raise ValueError("no decode batch left a positive non-attention time")
    dec_table = []
    for b, c, t in dec:
        if b not in by_batch:
            continue
        w = max(2.0 * b * ppl / (peak * e_lin), layer_w / (hbm * by_batch[b]))
        m = w + b * c * kv_tok / (hbm * e_da)
        dec_table.append({"batch": b, "context": c, "measured_ms": sig(t * 1e3), "attention_ms": sig(da[b][1] * 1e3),
                          "attention_model_ms": sig(b * c * kv_tok / (hbm * e_da) * 1e3),
                          "model_ms": sig(m * 1e3), "residual": sig((m - t) / t, 3),
                          "attention_used": b >= DECODE_ATTENTION_MIN_BATCH})
    e_bw = max(by_batch.values())
    src = (f"measured: one {model.id} layer (bf16, attention {comp.get('attention_path')}: "
           f"{comp.get('attention_backend', 'PyTorch SDPA')})")
    out["attention.prefill_efficiency"] = entry(
        e_pa, f"{src}, the attention kernel alone over {len(pa)} prefill chunks (FLOP-weighted)", prefill=pre_table)
    out["gpu.linear_efficiency"] = entry(
        e_lin, f"{src}, prefill layers minus their attention (FLOP-weighted; norms and KV writes count as linear)",
        prefill=pre_table)
    out["attention.decode_efficiency"] = entry(
        e_da, f"{src}, decode attention alone at batch >= {DECODE_ATTENTION_MIN_BATCH} (KV bytes over time; smaller "
              "batches are not used: the probe's SDPA kernel has no split-KV)", decode=dec_table)
    out["gpu.decode_efficiency_by_batch"] = entry(
        by_batch, f"{src}, per decode batch: layer weights / HBM bandwidth over (layer time - attention time)",
        decode=dec_table)
    out["gpu.decode_bandwidth_efficiency"] = entry(
        e_bw, "measured: the highest of gpu.decode_efficiency_by_batch (used where no table is given)")
    samp = [(int(r["batch"]), float(r["ms"]) * 1e-3) for r in comp.get("sampler_rows", [])]
    if samp:
        head_b = model.hidden * model.vocab * model.weight_bytes_per_param
        rows, per = [], []
        for b, t in samp:
            base = max(2.0 * b * model.hidden * model.vocab / (peak * e_lin), head_b / (hbm * _interp_log2(by_batch, b)))
            r = (t - base) / b
            rows.append({"batch": b, "measured_ms": sig(t * 1e3), "lm_head_model_ms": sig(base * 1e3),
                         "per_request_us": sig(r * 1e6, 3)})
            if b >= 16:
                per.append(r)
        if per:
            out["gpu.request_overhead_us"] = entry(
                max(0.0, float(np.median(per)) * 1e6),
                f"measured: {comp.get('sampler')}, at batch >= 16: median of (time - the LM head's roofline) / "
                "batch; GPU work only: the engine's CPU work per request is not measured", sampler=rows)
    return out, notes


# ------------------------------------------------------------------------ profile fits


def _row(rows: list[dict], **match) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and "median_us" in r:
            return r
    return None


def fit_cpu(cpu: dict, target_kind: str) -> tuple[dict, list[str]]:
    fitted: dict[str, dict] = {}
    notes: list[str] = []
    where = {"anon": "host DRAM (anonymous memory)", "file": "the file window", "dax": "the DAX window"}[target_kind]
    tr = (cpu.get("transfer_16k") or {}).get("rows", [])
    if tr:
        r = _row(tr, op="nt_copy", bytes=16384)
        if r:
            fitted["hardware.host.ntstore_16k_us"] = entry(
                r["median_us"], f"measured: 16 KiB streaming-store copy + sfence into {where}, median of {r['iters']}")
        cands = [(m, _row(tr, op="copy_flush", flush=m, bytes=16384)) for m in ("clflushopt", "clwb", "clflush")]
        best = [(m, r) for m, r in cands[:2] if r]
        if not best and cands[2][1]:
            best = [cands[2]]
        if best:
            m, r = min(best, key=lambda mr: mr[1]["median_us"])
            others = ", ".join(f"{mm} {rr['median_us']:.3g} us" for mm, rr in cands if rr)
            fitted["hardware.host.cached_write_flush_16k_us"] = entry(
                r["median_us"], f"measured: 16 KiB memcpy + {m} + fence into {where}, median "
                                f"(best available flush; {others})")
        r = _row(tr, op="flush_read", flush="clflushopt", bytes=16384) or _row(tr, op="flush_read", flush="clflush",
                                                                               bytes=16384)
        if r:
            fitted["hardware.host.flush_read_16k_us"] = entry(
                r["median_us"], f"measured: {r['flush']} of 16 KiB of stale cached lines + mfence + read from "
                                f"{where}, median of {r['iters']}")
    chase = (cpu.get("pointer_chase") or {}).get("rows", [])
    good = [r for r in chase if r.get("single_cycle") and r.get("ns_per_load")]
    if good:
        thp = [r for r in good if r["pages"] == "thp" and (r.get("thp_kib") or 0) > 0]
        pick = thp[0] if thp else good[0]
        desc = ", ".join(f"{r['pages']} {r['ns_per_load']:.4g} ns" for r in good)
        src = (f"measured: dependent loads over a random cycle of {pick['nodes']} 64 B nodes in "
               f"{pick['buffer_bytes'] >> 20} MiB ({pick['pages']} pages; {desc})")
        key = "hardware.cxl_switch.access_latency_ns" if target_kind == "dax" else "hardware.host.dram_latency_ns"
        fitted[key] = entry(pick["ns_per_load"], src)
        if not thp and target_kind == "anon":
            notes.append("dram_latency_ns includes TLB misses: transparent huge pages were not granted")
    bw = (cpu.get("bandwidth") or {}).get("rows", [])
    okbw = [r for r in bw if r.get("gbps") and r.get("verified")]
    if okbw:
        tmax = max(r["threads"] for r in okbw)
        by = {r["kind"]: r for r in okbw if r["threads"] == tmax}
        if target_kind == "dax":
            if "read" in by:
                fitted["hardware.cxl_adapter.cpu_read_gbps"] = entry(
                    by["read"]["gbps"], f"measured: {tmax}-thread reads from the DAX window")
            wr = by.get("ntwrite") or by.get("write")
            if wr:
                fitted["hardware.cxl_adapter.cpu_write_gbps"] = entry(
                    wr["gbps"], f"measured: {tmax}-thread {wr['kind']} to the DAX window")
        else:
            if "read" in by:
                extra = ", ".join(f"{k} {by[k]['gbps']:.3g}" for k in ("copy", "ntcopy", "ntwrite") if k in by)
                fitted["hardware.host.dram_gbps_per_socket"] = entry(
                    by["read"]["gbps"], f"measured: {tmax}-thread read bandwidth of {where} "
                                        f"(same threads, GB/s: {extra})")
    rpc = cpu.get("rpc") or {}
    pp = rpc.get("pingpong") or {}
    if "median_us" in pp:
        fitted["hardware.cxl_rpc.rtt_us"] = entry(
            pp["median_us"], f"measured: 64 B shared-slot ping-pong between two processes over {where} "
                             f"(ntstore + sfence writes, {rpc.get('flush')} + mfence before each poll), median of "
                             f"{pp['iters']}")
        if target_kind != "dax":
            notes.append("cxl_rpc was measured over local memory: a CXL pool adds the switch round trip")
    pl = rpc.get("pipelined") or {}
    if pl.get("mops"):
        fitted["hardware.cxl_rpc.server_mops"] = entry(
            pl["mops"], f"measured: one server process polling {pl['depth']} slots, {pl['ops']} requests "
                        f"kept {pl['depth']} deep by one client")
    return fitted, notes


def fit_gpu(gpu: dict, model: ModelShape | None, peaks: dict | None) -> tuple[dict, list[str]]:
    fitted: dict[str, dict] = {}
    notes: list[str] = []
    bw_dir: dict[str, float] = {}
    hc = gpu.get("host_copy") or {}
    for d, key in (("h2d", "gpu.host_h2d_gbps"), ("d2h", "gpu.host_d2h_gbps")):
        rows = [r for r in hc.get("rows", []) if r.get("dir") == d and r.get("us_per_copy")]
        if len(rows) >= 2:
            try:
                f = fit_affine([r["bytes"] for r in rows], [r["us_per_copy"] * 1e-6 for r in rows])
            except ValueError:
                continue
            bw_dir[d] = f.bw_bytes_per_s
            sizes = f"{min(r['bytes'] for r in rows) >> 10} KiB-{max(r['bytes'] for r in rows) >> 20} MiB"
            fitted[key] = entry(f.gbps, f"measured: back-to-back pinned cudaMemcpyAsync {d.upper()} ({hc.get('method')}"
                                        f"), fit t = a + bytes/bw over {sizes}; a = {f.a_us:.3g} us",
                                **f.detail())
    pg = gpu.get("pageable") or {}
    for d, key in (("h2d", "gpu.pageable_h2d_gbps"), ("d2h", "gpu.pageable_d2h_gbps")):
        rows = [r for r in pg.get("rows", []) if r.get("dir") == d and r.get("seconds")]
        if len(rows) >= 2:
            try:
                f = fit_affine([r["bytes"] for r in rows], [r["seconds"] for r in rows], relative=False)
            except ValueError:
                continue
            fitted[key] = entry(f.gbps, f"measured: pageable cudaMemcpy {d.upper()} from/to a touched numpy buffer, "
                                        f"fit t = a + bytes/bw (absolute residuals: large copies dominate) over "
                                        f"{len(rows)} sizes up to {max(r['bytes'] for r in rows) >> 20} MiB",
                                **f.detail())
    kv = gpu.get("kv_fragments") or {}
    mrows = [r for r in kv.get("memcpy_rows", []) if r.get("us_per_fragment") and r.get("verified", True)]
    if mrows and bw_dir:
        big = [r for r in mrows if r["blocks"] >= 4] or mrows
        fb = kv.get("fragment_bytes")
        costs = []
        for r in big:
            bw = bw_dir.get("h2d" if r["dir"] == "load" else "d2h")
            if bw:
                costs.append(r["us_per_fragment"] - fb / bw * 1e6)
        if costs:
            per = {d: np.mean([r["us_per_fragment"] for r in big if r["dir"] == d]) for d in ("load", "store")
                   if any(r["dir"] == d for r in big)}
            fitted["gpu.memcpy_call_us"] = entry(
                max(0.0, float(np.mean(costs))),
                f"measured: one cudaMemcpyAsync per {fb >> 10} KiB KV fragment ({kv.get('fragments_per_block')} per "
                f"16-token block), back to back in a {kv.get('memcpy_method', 'CUDA graph')}; per-fragment time "
                f"minus bytes/bandwidth (" + ", ".join(f"{d} {v:.3g} us/fragment" for d, v in per.items()) + ")")
    krows = [r for r in kv.get("kernel_rows", []) if r.get("host_us") and r.get("verified", True)]
    small = kv.get("kernel_small") or {}
    fits = {}
    for d in ("load", "store"):
        rows = [r for r in krows if r["dir"] == d]
        pts = [(r["bytes"], r["host_us"] * 1e-6) for r in rows]
        s = small.get(d) or {}
        if s.get("host_us"):
            pts.append((s["bytes"], s["host_us"] * 1e-6))
        if len(pts) >= 2:
            try:
                fits[d] = fit_affine([p[0] for p in pts], [p[1] for p in pts])
            except ValueError:
                pass
    if fits:
        a = float(np.mean([f.a_us for f in fits.values()]))
        g = float(np.mean([f.gbps for f in fits.values()]))
        desc = "; ".join(f"{d}: a = {f.a_us:.3g} us, {f.gbps:.3g} GB/s" for d, f in fits.items())
        ctas = kv.get("kernel_ctas")
        py = [small[d]["host_us_python_launch"] - small[d]["host_us"] for d in ("load", "store")
              if (small.get(d) or {}).get("host_us_python_launch") and small[d].get("host_us")]
        py_txt = f"; a kernel launched through CuPy from Python costs {np.median(py):.3g} us more" if py else ""
        fitted["gpu.copy_kernel_launch_us"] = entry(
            a, f"measured: one gather/scatter kernel ({ctas} CTAs of {kv.get('kernel_threads', 256)} threads) "
               f"reading/writing mapped pinned host memory, launched as a one-kernel CUDA graph, issue to stream "
               f"synchronize on the host; fit t = a + bytes/bw over one 16 KiB piece and 1-{max(r['blocks'] for r in krows)} "
               f"KV blocks ({desc}{py_txt})")
        fitted["gpu.copy_kernel_gbps"] = entry(
            g, f"measured: same fit, mean of load and store ({desc})")
    inter = gpu.get("interference") or {}
    crows = [r for r in inter.get("cta_rows", []) if isinstance(r.get("prefill_slowdown"), (int, float))]
    if crows:
        # How much a copy kernel slows compute beside it depends on how its CTAs land on SMs next
        # to the compute kernels' waves. Over the CTA counts that reach (nearly) the copy kernel's
        # full rate, a single slowdown is fitted (their median) only when they agree; otherwise the
        # spread is reported and the parameter is left to the card.
        top = max(r.get("copy_alone_gbps") or 0 for r in crows)
        fast = [r for r in crows if (r.get("copy_alone_gbps") or 0) >= 0.95 * top]
        per = [float(np.mean([v for v in (r.get("prefill_slowdown"), r.get("decode_slowdown"))
                              if isinstance(v, (int, float))])) for r in fast]
        rows = ", ".join(f"{r['ctas']}: {r.get('prefill_slowdown')}/{r.get('decode_slowdown')}" for r in crows)
        dma = inter.get("prefill_slowdown_dma")
        dma_txt = (f"; DMA copies instead: prefill {dma}, decode {inter.get('decode_slowdown_dma')}"
                   if dma is not None else "")
        what = (f"slowdown of a prefill layer (16k context) and a decode step (batch {inter.get('decode_batch')}) "
                f"while copy kernels stream KV blocks to host memory on another stream (CTAs: prefill/decode "
                f"{rows}{dma_txt})")
        spread = max(per) - min(per)
        if spread <= SLOWDOWN_SPREAD:
            fitted["gpu.copy_kernel_compute_slowdown"] = entry(
                max(0.0, float(np.median(per))),
                f"measured: median over the CTA counts within 5% of the top copy rate "
                f"({', '.join(str(r['ctas']) for r in fast)}) of the mean {what}",
                per_cta=[{"ctas": r["ctas"], "slowdown": sig(v, 3)} for r, v in zip(fast, per)])
        else:
            notes.append(
                f"gpu.copy_kernel_compute_slowdown not fitted: at full copy rate it ranges from {min(per):.2f} to "
                f"{max(per):.2f} with the kernel's CTA count, too erratic for one value; measured {what}")
    f, n = fit_copy_beside_steps(gpu.get("copy_beside_steps") or {})
    fitted.update(f)
    notes += n
    comp = gpu.get("compute") or {}
    split = model is not None and peaks and comp.get("prefill_attention_rows") and comp.get("decode_attention_rows")
    if split:
        try:
            f, n = fit_compute_split(model, peaks["dense_bf16_tflops"], peaks["hbm_gbps"], comp)
        except (ValueError, ZeroDivisionError, KeyError) as e:
            notes.append(f"compute fit (attention apart) skipped: {e}")
        else:
            fitted.update(f)
            notes += n
    elif model is not None and peaks and comp.get("prefill_rows"):
        try:
            cf = fit_compute(model, peaks["dense_bf16_tflops"], peaks["hbm_gbps"], comp.get("prefill_rows", []),
                             comp.get("decode_rows", []))
        except ValueError as e:
            notes.append(f"compute fit skipped: {e}")
        else:
            peak_txt = (f"nominal {peaks['dense_bf16_tflops']:g} TFLOP/s bf16 and {peaks['hbm_gbps']:g} GB/s HBM "
                        f"({peaks.get('card')}: {peaks.get('source')})")
            ctx = ", ".join(str(r["context"]) for r in cf.prefill_table)
            fitted["gpu.linear_efficiency"] = entry(
                cf.linear_efficiency,
                f"measured: one {model.id} layer (bf16, eager PyTorch, attention {comp.get('attention_path')}), "
                f"{cf.prefill_table[0]['chunk']}-token prefill chunks at contexts {ctx}, fitted with "
                f"{cf.formula}.layer_prefill_time against {peak_txt}", prefill=cf.prefill_table)
            fitted["attention.prefill_efficiency"] = entry(
                cf.attention_efficiency, "measured: same prefill fit (the attention term)", prefill=cf.prefill_table)
            if cf.decode_bandwidth_efficiency is not None:
                bs = ", ".join(str(r["batch"]) for r in cf.decode_table)
                fitted["gpu.decode_bandwidth_efficiency"] = entry(
                    cf.decode_bandwidth_efficiency,
                    f"measured: one {model.id} decode layer at batch {bs}, context "
                    f"{cf.decode_table[0]['context']} ({comp.get('decode_mode')}), fitted with "
                    f"{cf.formula}.layer_decode_time (least squares on absolute times) against {peak_txt}",
                    decode=cf.decode_table)
    return fitted, notes


def fit_software(sw: dict) -> tuple[dict, list[str]]:
    """The host card's software-stage rates from calibration/software.py's measurements."""
    fitted: dict[str, dict] = {}
    notes: list[str] = []
    sha = sw.get("sha256") or {}
    if sha.get("gbps"):
        fitted["hardware.host.sha256_gbps"] = entry(
            sha["gbps"], f"measured: hashlib.sha256 over {sw.get('token_ids')} int32 token ids, one thread "
            f"({sig(sha['ns_per_token'], 3)} ns a token)")
    cp = sw.get("chunk_memcpy") or {}
    if cp.get("gbps"):
        fitted["hardware.host.memcpy_gbps"] = entry(
            cp["gbps"], f"measured: one thread's numpy.copyto of one {cp['bytes'] / 2**20:.0f} MiB KV chunk")
    xx = sw.get("xxh64") or {}
    if xx.get("skipped"):
        notes.append(f"xxh64 not measured: {xx['skipped']}")
    return fitted, notes


# NCCL's ring constants the interconnect cards share (NVIDIA/nccl src/graph/tuning.cc): the
# LL protocol's per-step NVLink latency and its share of the bus bandwidth
NCCL_LL_STEP_US = 0.47
NCCL_LL_BW_FRACTION = 0.25
NCCL_SIMPLE_BASE_US, NCCL_SIMPLE_STEP_US = 8.4, 3.4


def all_reduce_model_s(nbytes: float, ranks: int, bus_gbps: float, ll_base_us: float,
                       simple_base_us: float = NCCL_SIMPLE_BASE_US, simple_step_us: float = NCCL_SIMPLE_STEP_US) -> float:
    """The interconnect card's formula (config.scenario.InterconnectCard.all_reduce_s)."""
    steps = 2 * (ranks - 1)
    wire = nbytes * steps / ranks
    ll = (ll_base_us + steps * NCCL_LL_STEP_US) * 1e-6 + wire / (bus_gbps * NCCL_LL_BW_FRACTION * 1e9)
    simple = (simple_base_us + steps * simple_step_us) * 1e-6 + wire / (bus_gbps * 1e9)
    return min(ll, simple)


def fit_all_reduce(ar: dict) -> tuple[dict, list[str]]:
    """bus_gbps: nccl-tests' busBw at the largest size; ll_base_us: the smallest all-reduce's
    time less the LL formula's other terms (NCCL's step latency and LL bandwidth share). Graph
    replay times where the probe has them (decode steps run as CUDA graphs), else eager ones.
    The layer sizes in between are not fitted: the detail shows the formula against them."""
    rows = [r for r in ar.get("rows", []) if r.get("eager_us")]
    if ar.get("error") or len(rows) < 2:
        return {}, [f"all-reduce probe: {ar.get('error') or 'too few sizes'}; interconnect card kept"]
    if not ar.get("sum_check", False):
        return {}, ["all-reduce probe: the sums were wrong; interconnect card kept"]
    n = int(ar.get("ranks", 2))
    how = "graph_us" if all(r.get("graph_us") for r in rows) else "eager_us"
    big, small = max(rows, key=lambda r: r["bytes"]), min(rows, key=lambda r: r["bytes"])
    # the Simple protocol's latency (NCCL's constants, as the cards) taken off the largest
    # message: at 1 GiB it is under 1% of the time
    simple_lat = NCCL_SIMPLE_BASE_US + 2 * (n - 1) * NCCL_SIMPLE_STEP_US
    bus = big["bytes"] * 2 * (n - 1) / n / ((big[how] - simple_lat) * 1e-6) / 1e9
    wire = small["bytes"] * 2 * (n - 1) / n
    base = small[how] - 2 * (n - 1) * NCCL_LL_STEP_US - wire / (bus * NCCL_LL_BW_FRACTION * 1e9) * 1e6
    notes = []
    if base < 0:
        notes.append(f"all-reduce probe: the smallest all-reduce ({small[how]:.1f} us) is under NCCL's step "
                     "latencies; ll_base_us set to 0")
        base = 0.0
    table = [{"bytes": r["bytes"], "measured_us": round(r[how], 2),
              "model_us": round(1e6 * all_reduce_model_s(r["bytes"], n, bus, base), 2)} for r in rows]
    timing = "replayed from a CUDA graph" if how == "graph_us" else "eager, CUDA events"
    fitted = {
        "interconnect.bus_gbps": entry(bus, f"measured: NCCL all-reduce of {big['bytes'] >> 20} MiB over {n} GPUs, "
                                            f"{big[how]:.0f} us {timing}; bus bytes 2(n-1)/n x size over the time "
                                            f"less NCCL's Simple-protocol latency ({simple_lat:.1f} us)", ranks=n),
        "interconnect.ll_base_us": entry(base, f"measured: {small['bytes']} B all-reduce over {n} GPUs, "
                                               f"{small[how]:.2f} us {timing}, less NCCL's {2 * (n - 1)} LL steps "
                                               f"of {NCCL_LL_STEP_US} us and its wire time at a quarter of "
                                               f"bus_gbps", model_vs_measured=table),
    }
    return fitted, notes


def copy_beside_steps_from_bench(bench: dict, command: str) -> dict:
    """The measurement record of `python -m belusim.replay.bench_copies` (its JSON) kept in a
    profile as measurements.gpu.copy_beside_steps: the gather kernel's rate moving back-to-back
    loads alone and beside back-to-back engine steps of each kind (DMA copies beside them too)."""
    kinds = {"decode": "decode", "prefill": "prefill", "mixed": "mixed"}
    alone = bench.get("alone_gbps")
    if not isinstance(alone, (int, float)) or alone <= 0:
        raise ValueError("bench result: 'alone_gbps' must be a positive number")
    rows = []
    for i, r in enumerate(bench.get("overlap") or []):
        step = str(r.get("step", ""))
        kind = next((k for p, k in kinds.items() if step.startswith(p)), None)
        gbps = r.get("gather-kernel_copy_gbps_during_steps")
        if kind is None or not isinstance(gbps, (int, float)) or gbps <= 0:
            raise ValueError(f"bench result: overlap[{i}] needs a step named decode*/prefill*/mixed* and a positive "
                             f"'gather-kernel_copy_gbps_during_steps'")
        rows.append({"step": step, "kind": kind, "step_alone_ms": r.get("alone_ms"),
                     "copy_gbps": gbps, "steps_overlapped": r.get("gather-kernel_steps_overlapped"),
                     "step_slowdown": r.get("gather-kernel_slowdown"),
                     "dma_copy_gbps": r.get("dma_copy_gbps_during_steps"),
                     "dma_steps_overlapped": r.get("dma_steps_overlapped")})
    if not rows:
        raise ValueError("bench result: no 'overlap' rows")
    return {"command": command, "model": bench.get("model"), "load_bytes": bench.get("load_bytes"),
            "alone_gbps": alone, "rows": rows}


def fit_copy_beside_steps(rec: dict) -> tuple[dict, list[str]]:
    """gpu.copy_kernel_beside_{decode,prefill}: the load kernel's rate beside back-to-back steps
    of that kind over its rate alone, from the same measurement; both or neither."""
    if not rec:
        return {}, []
    by = {r["kind"]: r for r in rec.get("rows", [])}
    alone = rec.get("alone_gbps")
    if not (alone and "decode" in by and "prefill" in by):
        return {}, ["gpu.copy_kernel_beside_* not fitted: the copy-beside-steps record needs the rate alone and "
                    "rows beside decode and prefill steps"]
    mixed = by.get("mixed")
    mixed_txt = (f"; beside eager mixed steps ({mixed['step']}, {mixed['step_alone_ms']:.3g} ms) "
                 f"{mixed['copy_gbps']:.3g} GB/s, not fitted" if mixed and mixed.get("step_alone_ms") else "")
    fitted = {}
    for key, r in (("gpu.copy_kernel_beside_decode", by["decode"]), ("gpu.copy_kernel_beside_prefill", by["prefill"])):
        fitted[key] = entry(
            min(1.0, r["copy_gbps"] / alone),
            f"measured: a component microbenchmark (not a replay): the gather kernel moving back-to-back "
            f"{rec.get('load_bytes', 0) / 1e9:.2f} GB loads at {r['copy_gbps']:.3g} GB/s beside back-to-back {r['step']} engine steps "
            f"({r['steps_overlapped']} overlapped), over {alone:.3g} GB/s alone ({rec.get('model')} shape; "
            f"`{rec.get('command')}`){mixed_txt}",
            copy_gbps=sig(r["copy_gbps"]), alone_gbps=sig(alone),
            dma_copy_gbps=sig(r["dma_copy_gbps"]) if isinstance(r.get("dma_copy_gbps"), (int, float)) else None)
    return fitted, []


def fit_all(measurements: dict, target_kind: str = "anon", model: ModelShape | None = None,
            peaks: dict | None = None) -> tuple[dict, list[str]]:
    fitted: dict[str, dict] = {}
    notes: list[str] = []
    if measurements.get("cpu"):
        f, n = fit_cpu(measurements["cpu"], target_kind)
        fitted.update(f)
        notes += n
    if measurements.get("gpu"):
        f, n = fit_gpu(measurements["gpu"], model, peaks)
        fitted.update(f)
        notes += n
    ar = (measurements.get("gpu") or {}).get("all_reduce")
    if ar:
        f, n = fit_all_reduce(ar)
        fitted.update(f)
        notes += n
    if measurements.get("software"):
        f, n = fit_software(measurements["software"])
        fitted.update(f)
        notes += n
    unknown = sorted(set(fitted) - set(FITTED_KEYS))
    if unknown:  # a programming error: keep profiles loadable
        raise AssertionError(f"fit produced unknown keys {unknown}")
    return dict(sorted(fitted.items())), notes
