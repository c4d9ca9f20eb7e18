"""The fits recover known parameters from synthetic measurements."""

from __future__ import annotations

import numpy as np
import pytest

from belusim.calibration import fit
from belusim.calibration.models import (
    BUILTIN_LLMS,
    _mirror_decode,
    _mirror_prefill,
    compute_functions,
    gpu_namespace,
    load_model_shape,
    nominal_gpu_peaks,
    shape_from_dict,
)

QWEN = shape_from_dict(BUILTIN_LLMS["qwen3-32b"], "test")
PEAKS = {"card": "h100", "dense_bf16_tflops": 989.0, "hbm_gbps": 3350.0, "source": "test"}


def test_affine_fit_recovers_latency_and_bandwidth():
    rng = np.random.default_rng(0)
    sizes = np.array([4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144], dtype=float) * 1024
    a, bw = 2.4e-6, 55e9
    t = (a + sizes / bw) * (1 + rng.normal(0, 0.02, len(sizes)))
    f = fit.fit_affine(sizes, t)
    assert f.a_us == pytest.approx(2.4, rel=0.08)
    assert f.gbps == pytest.approx(55, rel=0.03)
    assert f.rel_rmse < 0.05 and f.points == len(sizes)
    with pytest.raises(ValueError):
        fit.fit_affine([1024, 1024], [1e-6, 1.1e-6])


def test_mirror_formula_matches_belusim_compute():
    compute = pytest.importorskip("belusim.compute.roofline")
    g = gpu_namespace(989, 3350, 0.61, 0.43, 0.8)
    for n, c in [(2048, 0), (2048, 8192), (512, 16384)]:
        assert _mirror_prefill(QWEN, g, n, c) == pytest.approx(compute.layer_prefill_time(QWEN, g, n, c), rel=1e-12)
    for b, c in [(1, 16384), (16, 16384), (64, 16384), (256, 100)]:
        assert _mirror_decode(QWEN, g, b, c) == pytest.approx(compute.layer_decode_time(QWEN, g, b, c), rel=1e-12)


def test_model_shape_matches_llm_card():
    config = pytest.importorskip("belusim.config.scenario")
    card = config.load_card("llms", "qwen3-32b")
    shape, where = load_model_shape("qwen3-32b")
    assert "qwen3-32b" in where
    for attr in ("params_per_layer", "linear_flops_per_token", "kv_bytes_per_token", "fragments_per_block",
                 "weight_bytes"):
        assert getattr(shape, attr) == pytest.approx(getattr(card, attr))
    assert shape.fragment_bytes(16) == card.fragment_bytes(16) == 32 * 1024
    assert shape.fragments_per_block == 128


def test_compute_fit_recovers_efficiencies():
    prefill, decode, _ = compute_functions()
    truth = gpu_namespace(989, 3350, 0.58, 0.41, 0.82)
    rng = np.random.default_rng(1)
    pre = [{"chunk": 2048, "context": c, "ms": prefill(QWEN, truth, 2048, c) * 1e3 * (1 + rng.normal(0, 0.005))}
           for c in (0, 8192, 16384)]
    dec = [{"batch": b, "context": 16384, "ms": decode(QWEN, truth, b, 16384) * 1e3 * (1 + rng.normal(0, 0.005))}
           for b in (1, 16, 64)]
    cf = fit.fit_compute(QWEN, 989, 3350, pre, dec)
    assert cf.linear_efficiency == pytest.approx(0.58, rel=0.03)
    assert cf.attention_efficiency == pytest.approx(0.41, rel=0.03)
    assert cf.decode_bandwidth_efficiency == pytest.approx(0.82, rel=0.02)
    assert len(cf.prefill_table) == 3 and len(cf.decode_table) == 3
    with pytest.raises(ValueError):
        fit.fit_compute(QWEN, 989, 3350, pre[:1], dec)


def _synthetic_gpu(h2d=(2.4, 55.0), d2h=(2.6, 53.0), frag_us=3.1, kernel=(6.0, 50.0)) -> dict:
    sizes = [4096 * 4**i for i in range(9)]
    rows = []
    for d, (a, bw) in (("h2d", h2d), ("d2h", d2h)):
        rows += [{"dir": d, "bytes": s, "us_per_copy": a + s / (bw * 1e3)} for s in sizes]
    pageable = [{"dir": d, "bytes": s, "seconds": 20e-6 + s / (g * 1e9)}
                for d, g in (("h2d", 7.8), ("d2h", 13.6)) for s in (1 << 20, 16 << 20, 256 << 20)]
    block = 4 << 20
    memcpy_rows = [{"dir": d, "blocks": nb, "fragments": nb * 128, "us_per_fragment": frag_us, "verified": True}
                   for d in ("load", "store") for nb in (1, 4, 16, 64)]
    a, bw = kernel
    kernel_rows = [{"dir": d, "blocks": nb, "bytes": nb * block, "host_us": a + nb * block / (bw * 1e3),
                    "verified": True} for d in ("load", "store") for nb in (1, 4, 16, 64)]
    small = {d: {"bytes": 16384, "host_us": a + 16384 / (bw * 1e3)} for d in ("load", "store")}
    pre, dec, _ = compute_functions()
    truth = gpu_namespace(989, 3350, 0.55, 0.45, 0.8)
    return {
        "host_copy": {"method": "CUDA graph", "rows": rows},
        "pageable": {"rows": pageable},
        "kv_fragments": {"fragment_bytes": 32768, "fragments_per_block": 128, "memcpy_rows": memcpy_rows,
                         "kernel_rows": kernel_rows, "kernel_small": small, "kernel_ctas": 16},
        "interference": {"ctas": 16, "prefill_slowdown": 0.17, "decode_slowdown": 0.10, "decode_batch": 16,
                         "cta_rows": [{"ctas": 2, "copy_alone_gbps": 30.0, "prefill_slowdown": 0.0, "decode_slowdown": 0.0},
                                      {"ctas": 8, "copy_alone_gbps": 50.0, "prefill_slowdown": 0.3, "decode_slowdown": 0.1},
                                      {"ctas": 16, "copy_alone_gbps": 51.0, "prefill_slowdown": 0.17,
                                       "decode_slowdown": 0.10},
                                      {"ctas": 32, "copy_alone_gbps": 51.0, "prefill_slowdown": 0.0,
                                       "decode_slowdown": 0.1}]},
        "compute": {"attention_path": "test",
                    "prefill_rows": [{"chunk": 2048, "context": c, "ms": pre(QWEN, truth, 2048, c) * 1e3}
                                     for c in (0, 8192, 16384)],
                    "decode_rows": [{"batch": b, "context": 16384, "ms": dec(QWEN, truth, b, 16384) * 1e3}
                                    for b in (1, 16, 64)]},
    }


def test_fit_gpu_tables():
    fitted, notes = fit.fit_gpu(_synthetic_gpu(), QWEN, PEAKS)
    v = {k: e["value"] for k, e in fitted.items()}
    assert v["gpu.host_h2d_gbps"] == pytest.approx(55, rel=1e-3)
    assert v["gpu.host_d2h_gbps"] == pytest.approx(53, rel=1e-3)
    assert v["gpu.pageable_h2d_gbps"] == pytest.approx(7.8, rel=1e-3)
    assert v["gpu.pageable_d2h_gbps"] == pytest.approx(13.6, rel=1e-3)
    # 3.1 us per 32 KiB fragment minus its transfer time at ~54 GB/s
    want = np.mean([3.1 - 32768 / 55e9 * 1e6, 3.1 - 32768 / 53e9 * 1e6])
    assert v["gpu.memcpy_call_us"] == pytest.approx(want, rel=1e-3)
    assert v["gpu.copy_kernel_launch_us"] == pytest.approx(6.0, rel=1e-3)
    assert v["gpu.copy_kernel_gbps"] == pytest.approx(50.0, rel=1e-3)
    # median over the CTA counts at full copy rate (8, 16, 32) of mean(prefill, decode): 0.2, 0.135, 0.05
    assert v["gpu.copy_kernel_compute_slowdown"] == pytest.approx(0.135, rel=1e-3)
    assert v["gpu.linear_efficiency"] == pytest.approx(0.55, rel=1e-3)
    assert v["attention.prefill_efficiency"] == pytest.approx(0.45, rel=1e-3)
    assert v["gpu.decode_bandwidth_efficiency"] == pytest.approx(0.8, rel=1e-3)
    assert all(e["source"].startswith("measured:") for e in fitted.values())
    assert not notes
    # erratic interference across good setups: reported, not fitted
    g = _synthetic_gpu()
    g["interference"]["cta_rows"][1].update(prefill_slowdown=1.2, decode_slowdown=1.0)
    fitted, notes = fit.fit_gpu(g, QWEN, PEAKS)
    assert "gpu.copy_kernel_compute_slowdown" not in fitted
    assert any("copy_kernel_compute_slowdown not fitted" in n for n in notes)


def _synthetic_cpu() -> dict:
    rows = [{"op": "nt_copy", "flush": None, "bytes": 16384, "iters": 100, "median_us": 1.2},
            {"op": "copy_flush", "flush": "clflush", "bytes": 16384, "iters": 100, "median_us": 36.0},
            {"op": "copy_flush", "flush": "clflushopt", "bytes": 16384, "iters": 100, "median_us": 4.0},
            {"op": "copy_flush", "flush": "clwb", "bytes": 16384, "iters": 100, "median_us": 3.8},
            {"op": "flush_read", "flush": "clflushopt", "bytes": 16384, "iters": 100, "median_us": 2.4},
            {"op": "flush_read", "flush": "clflush", "bytes": 16384, "iters": 100, "median_us": 9.0}]
    chase = [{"pages": "thp", "thp_kib": 262144, "nodes": 4, "buffer_bytes": 256 << 20, "single_cycle": True,
              "ns_per_load": 125.0},
             {"pages": "4k", "nodes": 4, "buffer_bytes": 256 << 20, "single_cycle": True, "ns_per_load": 190.0}]
    bw = [{"kind": k, "threads": t, "gbps": g, "verified": True}
          for t, k, g in [(1, "read", 10.0), (16, "read", 45.0), (16, "copy", 40.0), (16, "ntwrite", 50.0)]]
    rpc = {"flush": "clflushopt", "pingpong": {"iters": 1000, "median_us": 0.9},
           "pipelined": {"depth": 128, "ops": 1000, "mops": 6.0}}
    return {"transfer_16k": {"rows": rows}, "pointer_chase": {"rows": chase}, "bandwidth": {"rows": bw}, "rpc": rpc}


def test_fit_cpu_tables():
    fitted, _ = fit.fit_cpu(_synthetic_cpu(), "anon")
    v = {k: e["value"] for k, e in fitted.items()}
    assert v == {
        "hardware.host.ntstore_16k_us": 1.2,
        "hardware.host.cached_write_flush_16k_us": 3.8,  # the best available flush (clwb here)
        "hardware.host.flush_read_16k_us": 2.4,  # an invalidating flush: clflushopt
        "hardware.host.dram_latency_ns": 125.0,  # huge pages granted
        "hardware.host.dram_gbps_per_socket": 45.0,  # most threads
        "hardware.cxl_rpc.rtt_us": 0.9,
        "hardware.cxl_rpc.server_mops": 6.0,
    }
    dax, _ = fit.fit_cpu(_synthetic_cpu(), "dax")
    assert dax["hardware.cxl_switch.access_latency_ns"]["value"] == 125.0
    assert dax["hardware.cxl_adapter.cpu_read_gbps"]["value"] == 45.0
    assert dax["hardware.cxl_adapter.cpu_write_gbps"]["value"] == 50.0
    assert "hardware.host.dram_latency_ns" not in dax


def test_fitted_keys_exist_in_the_config():
    config = pytest.importorskip("belusim.config.scenario")
    cards = {"gpu": config.GPUCard, "hardware.host": config.HostCard, "hardware.cxl_rpc": config.RPCCard,
             "hardware.rdma_rpc": config.RPCCard, "hardware.cxl_adapter": config.CXLAdapterCard,
             "hardware.cxl_switch": config.CXLSwitchCard, "hardware.cxl_memory": config.CXLMemoryCard,
             "hardware.root_complex": config.RootComplexCard, "attention": config.AttentionBackendCard,
             "interconnect": config.InterconnectCard}
    for key in [*fit.FITTED_KEYS, *fit.LEGACY_KEYS.values()]:
        parent, _, leaf = key.rpartition(".")
        assert leaf in cards[parent].model_fields, key


def test_fit_all_only_measured_keys():
    fitted, _ = fit.fit_all({"cpu": {"transfer_16k": {"rows": _synthetic_cpu()["transfer_16k"]["rows"][:1]}}})
    assert list(fitted) == ["hardware.host.ntstore_16k_us"]
    assert fit.fit_all({})[0] == {}


def test_nominal_peaks():
    assert nominal_gpu_peaks("NVIDIA H100 80GB HBM3")[1:3] == (989.0, 3350.0)
    assert nominal_gpu_peaks("NVIDIA H20")[1:3] == (148.0, 4000.0)
    assert nominal_gpu_peaks("NVIDIA H100 PCIe")[1:3] == (756.0, 2000.0)
    assert nominal_gpu_peaks("Some GPU") is None


def test_sig_rounding():
    assert fit.sig(55.04321) == 55.04
    assert fit.sig(0.000123456) == 0.0001235
    assert fit.sig(0.0) == 0.0


def test_split_compute_fit_recovers_attention_linear_and_batch_efficiencies():
    """Rows made from known efficiencies with attention timed apart come back as those efficiencies."""
    peak, hbm = 989e12, 4800e9
    e_pa, e_lin, e_da = 0.33, 0.7, 0.9
    e_w = {1: 0.72, 4: 0.71, 16: 0.72, 64: 0.61, 256: 0.56}
    m = QWEN
    lw = m.params_per_layer * m.weight_bytes_per_param
    kv_tok = m.kv_bytes_per_token / m.layers
    pre, pre_a, dec, dec_a = [], [], [], []
    for c in (0, 8192, 16384):
        a = 4.0 * m.q_heads * m.head_dim * 2048 * (c + 1024) / (peak * e_pa)
        lin = 2.0 * 2048 * m.params_per_layer / (peak * e_lin)
        pre.append({"chunk": 2048, "context": c, "ms": (a + lin) * 1e3})
        pre_a.append({"chunk": 2048, "context": c, "ms": a * 1e3})
    for b, e in e_w.items():
        # small batches: the probe's attention kernel is slower than the KV bandwidth says
        a = b * 16384 * kv_tok / (hbm * e_da) * (1 if b >= 16 else 5)
        w = max(2.0 * b * m.params_per_layer / (peak * e_lin), lw / (hbm * e))
        dec.append({"batch": b, "context": 16384, "ms": (a + w) * 1e3})
        dec_a.append({"batch": b, "context": 16384, "ms": a * 1e3})
    head = m.hidden * m.vocab * 2
    samp = [{"batch": b, "ms": (max(2.0 * b * m.hidden * m.vocab / (peak * e_lin),
                                    head / (hbm * fit._interp_log2(e_w, b))) + b * 2.5e-6) * 1e3}
            for b in (1, 16, 64, 256)]
    comp = {"prefill_rows": pre, "prefill_attention_rows": pre_a, "decode_rows": dec,
            "decode_attention_rows": dec_a, "sampler_rows": samp}
    out, _ = fit.fit_compute_split(m, 989, 4800, comp)
    v = {k: e["value"] for k, e in out.items()}
    assert v["attention.prefill_efficiency"] == pytest.approx(e_pa, rel=1e-3)
    assert v["gpu.linear_efficiency"] == pytest.approx(e_lin, rel=1e-3)
    assert v["attention.decode_efficiency"] == pytest.approx(e_da, rel=1e-3)
    for b, e in e_w.items():
        if b < 256:  # batch 256 is GEMM-bound here: its table entry only has to reproduce the time
            assert v["gpu.decode_efficiency_by_batch"][b] == pytest.approx(e, rel=1e-3)
    assert v["gpu.decode_bandwidth_efficiency"] == pytest.approx(max(e_w.values()), rel=1e-3)
    assert v["gpu.request_overhead_us"] == pytest.approx(2.5, rel=1e-2)
    rows = out["attention.decode_efficiency"]["detail"]["decode"]
    assert all(abs(r["residual"]) < 1e-2 for r in rows if r["attention_used"])


def _bench_copies(decode=35.0, prefill=20.0):
    rows = [{"step": "decode8x4096", "alone_ms": 7.5, "gather-kernel_copy_gbps_during_steps": decode,
             "gather-kernel_steps_overlapped": 10, "dma_copy_gbps_during_steps": 55.0},
            {"step": "prefill2048", "alone_ms": 51.0, "gather-kernel_copy_gbps_during_steps": prefill,
             "gather-kernel_steps_overlapped": 9},
            {"step": "mixed", "alone_ms": 17.7, "gather-kernel_copy_gbps_during_steps": 42.0,
             "gather-kernel_steps_overlapped": 5}]
    return {"model": "llama-3.1-8b", "load_bytes": 1 << 29, "alone_gbps": 50.0, "overlap": rows}


def test_copy_rate_beside_steps_is_fitted_as_shares_of_the_rate_alone():
    rec = fit.copy_beside_steps_from_bench(_bench_copies(), "bench cmd")
    fitted, notes = fit.fit_copy_beside_steps(rec)
    assert fitted["gpu.copy_kernel_beside_decode"]["value"] == pytest.approx(0.7)
    assert fitted["gpu.copy_kernel_beside_prefill"]["value"] == pytest.approx(0.4)
    assert "bench cmd" in fitted["gpu.copy_kernel_beside_decode"]["source"] and not notes
    # only through the profile's measurements, and both or neither
    out, _ = fit.fit_all({"gpu": {"copy_beside_steps": rec}})
    assert {"gpu.copy_kernel_beside_decode", "gpu.copy_kernel_beside_prefill"} <= set(out)
    rec["rows"] = [r for r in rec["rows"] if r["kind"] != "prefill"]
    fitted, notes = fit.fit_copy_beside_steps(rec)
    assert not fitted and "not fitted" in notes[0]


def test_a_broken_copy_bench_result_is_rejected_naming_the_field():
    bad = _bench_copies()
    del bad["alone_gbps"]
    with pytest.raises(ValueError, match="alone_gbps"):
        fit.copy_beside_steps_from_bench(bad, "x")
    bad = _bench_copies()
    bad["overlap"][0]["gather-kernel_copy_gbps_during_steps"] = None
    with pytest.raises(ValueError, match=r"overlap\[0\]"):
        fit.copy_beside_steps_from_bench(bad, "x")
