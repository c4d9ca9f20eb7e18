"""The GPU probes' bookkeeping without a GPU: a CPU stand-in for the slice of CuPy they use
(copies are memmove, graphs replay recorded calls, the copy kernel is a loop) checks the
fragment tables, the verification and the fits; the layer code runs on a CPU torch if present."""

from __future__ import annotations

import ctypes
import sys
import time
import types

import numpy as np
import pytest

from belusim.calibration import gpu
from belusim.calibration.fit import fit_gpu
from belusim.calibration.models import ModelShape

TINY = ModelShape(id="tiny", layers=2, hidden=256, q_heads=8, kv_heads=2, head_dim=32, ffn=512, vocab=1000)


def _fake_cupy() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__version__ = "stand-in"
    cp.uint8, cp.uint32, cp.int32, cp.uint64 = np.uint8, np.uint32, np.int32, np.uint64

    class Arr(np.ndarray):
        @property
        def data(self):
            return types.SimpleNamespace(ptr=self.ctypes.data)

    def wrap(a):
        return np.asarray(a).view(Arr)

    cp.empty = lambda n, dtype=np.uint8: wrap(np.zeros(n, dtype=dtype))
    cp.zeros = cp.empty
    cp.asarray = lambda x: wrap(np.array(x))
    cp.asnumpy = lambda x: np.array(np.asarray(x))
    cp.arange = lambda *a, **k: wrap(np.arange(*a, **k))
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    cp.random = types.SimpleNamespace(
        randint=lambda lo, hi, size, dtype: wrap(np.random.default_rng(0).integers(lo, hi, size, dtype=dtype)))
    streams: dict[int, object] = {}

    class Graph:
        def __init__(self, ops):
            self.ops = ops

        def launch(self, stream=None):
            for op in self.ops:
                op()

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = len(streams) + 1
            self.ops = None
            streams[self.ptr] = self

        def begin_capture(self, mode=None):
            self.ops = []

        def end_capture(self):
            g, self.ops = Graph(self.ops), None
            return g

        def synchronize(self):
            pass

        def run(self, fn):
            (self.ops.append if self.ops is not None else lambda f: f())(fn)

    class Event:
        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    class Runtime:
        memcpyHostToDevice, memcpyDeviceToHost, memcpyDeviceToDevice = 1, 2, 3

        def __init__(self):
            self.keep = {}

        def hostAlloc(self, n, flags):
            b = (ctypes.c_uint8 * n)()
            self.keep[ctypes.addressof(b)] = b
            return ctypes.addressof(b)

        def freeHost(self, p):
            self.keep.pop(p)

        def memcpyAsync(self, dst, src, n, kind, stream):
            streams[stream].run(lambda: ctypes.memmove(dst, src, n))

        def memcpy(self, dst, src, n, kind):
            ctypes.memmove(dst, src, n)

        def deviceSynchronize(self):
            pass

    class RawKernel:
        def __init__(self, code, name):
            assert name in code

        def __call__(self, grid, block, args, stream=None, shared_mem=0):
            src, dst, nfrag, vec = (np.asarray(args[0]).copy(), np.asarray(args[1]).copy(), int(args[2]),
                                    int(args[3]) * 16)

            def run():
                for i in range(nfrag):
                    ctypes.memmove(int(dst[i]), int(src[i]), vec)

            stream.run(run)

    cp.RawKernel = RawKernel
    cp.cuda = types.SimpleNamespace(Stream=Stream, Event=Event, runtime=Runtime(),
                                    get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3 + 1e-3)
    return cp


@pytest.fixture
def shared(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    cfg = gpu.GPUProbeConfig(quick=True, copy_sizes=(4096, 65536, 1 << 20), copy_buffer=4 << 20,
                             pageable_sizes=(1 << 20, 4 << 20), kv_blocks=(1, 4), kernel_ctas=(2, 8), reps=3)
    sh = gpu.Shared(torch=None, cfg=cfg, model=TINY)
    sh.cu = gpu.CupyCtx()
    yield sh
    sh.cu.free()


def test_copy_probes_move_the_right_bytes(shared):
    hc = gpu.probe_host_copy(shared)
    assert hc["verified"] == {"h2d": True, "d2h": True}
    assert {r["dir"] for r in hc["rows"]} == {"h2d", "d2h"}
    pg = gpu.probe_pageable(shared)
    assert len(pg["rows"]) == 4
    kv = gpu.probe_kv_fragments(shared)
    assert kv["fragment_bytes"] == 16 * 2 * 32 * 2 and kv["fragments_per_block"] == 4
    for table in ("memcpy_rows", "kernel_rows", "contiguous_rows"):
        rows = kv[table]
        assert {r["dir"] for r in rows} == {"load", "store"}
        checked = [r["verified"] for r in rows if r["blocks"] == 4]
        assert checked == [True, True], table  # every method, both directions, moved every fragment
    assert kv["kernel_ctas"] in (2, 8)
    assert shared.store_launch is not None and shared.store_bytes == 4 * kv["block_bytes"]
    fitted, _ = fit_gpu({"host_copy": hc, "pageable": pg, "kv_fragments": kv}, TINY, None)
    for key in ("gpu.host_h2d_gbps", "gpu.host_d2h_gbps", "gpu.pageable_h2d_gbps", "gpu.memcpy_call_us",
                "gpu.copy_kernel_launch_us", "gpu.copy_kernel_gbps"):
        assert key in fitted and fitted[key]["value"] >= 0


def test_gpu_probes_skip_cleanly_without_cuda(monkeypatch):
    ok, why = gpu.gpu_available()
    if ok:
        pytest.skip("a CUDA GPU is present")
    res = gpu.run_gpu_probes(gpu.GPUProbeConfig.make(quick=True), TINY)
    assert res.skipped == why and not res.measurements and not res.errors
    assert "PyTorch" in why


def test_layer_code_on_cpu():
    torch = pytest.importorskip("torch")
    name, attn, tried = gpu.pick_attention(torch, TINY, "cpu", torch.float32)
    assert name
    w = gpu.LayerWeights(torch, TINY, "cpu", torch.float32, 1)
    for c in (0, 48):
        out = gpu.make_prefill(torch, TINY, w, attn, 16, c, "cpu", torch.float32)()
        assert out.shape == (16, TINY.hidden) and torch.isfinite(out).all()
    run, _ = gpu.make_decode(torch, TINY, w, 3, 40, "cpu", torch.float32)
    assert run().shape == (3, TINY.hidden)
    # grouping the queries per KV head is exact attention for one new token
    F = torch.nn.functional
    q, k, v = torch.randn(2, 8, 1, 32), torch.randn(2, 2, 40, 32), torch.randn(2, 2, 40, 32)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1))
    alt = F.scaled_dot_product_attention(q.view(2, 2, 4, 32), k, v).reshape(2, 8, 1, 32)
    assert torch.allclose(ref, alt, atol=1e-5)
