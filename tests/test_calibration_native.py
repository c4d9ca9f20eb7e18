"""The native probe library: copies, flushes, pointer chase, bandwidth, RPC, unsupported paths."""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest

from belusim.calibration import native as native_mod
from belusim.calibration.errors import CalibrationError

X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.fixture(scope="module")
def nat():
    try:
        return native_mod.load()
    except CalibrationError as e:  # no C compiler on this machine
        pytest.skip(str(e))


@pytest.fixture
def bufs(nat):
    size = 1 << 20
    a, b = nat.map_anon(size), nat.map_anon(size)
    try:
        yield a, b, size
    finally:
        nat.unmap(a)
        nat.unmap(b)


@pytest.fixture
def all_features(nat):
    yield
    nat.set_feature_mask(None)


def _fill_random(nat, ptr, n, seed=0):
    v = nat.view(ptr, n)
    v[:] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    return v


def test_build_is_cached_and_keyed(nat):
    p1 = native_mod.build()
    p2 = native_mod.build()
    assert p1 == p2 == nat.path and p1.is_file()
    assert p1.name.startswith("probe-") and p1.suffix == ".so"


def test_no_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(CalibrationError, match="not an executable compiler"):
        native_mod.find_compiler()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CalibrationError, match="no C compiler found"):
        native_mod.find_compiler()


@pytest.mark.parametrize("variant", ["auto", "sse2", "avx", "avx512"])
def test_nt_copy_odd_sizes_and_alignments(nat, bufs, variant):
    a, b, size = bufs
    src = _fill_random(nat, b.ptr, size, seed=1)
    dst = nat.view(a.ptr, size)
    feats = nat.features()
    supported = X86 and feats["clflush"] and {"auto": True, "sse2": feats["sse2"], "avx": feats["avx"],
                                              "avx512": feats["avx512f"]}[variant]
    for dst_off in (0, 1, 3, 8, 13, 63):
        for src_off in (0, 5):
            for n in (0, 1, 3, 7, 15, 17, 63, 64, 65, 127, 1000, 4097, 16384, 65537):
                dst[:] = 0xEE
                rc = nat.copy_nt(a.ptr + dst_off, b.ptr + src_off, n, variant)
                if not supported:
                    assert rc == native_mod.EUNSUPPORTED
                    return
                assert rc == 0
                assert np.array_equal(dst[dst_off:dst_off + n], src[src_off:src_off + n])
                assert (dst[:dst_off] == 0xEE).all() and (dst[dst_off + n:] == 0xEE).all()


def test_cached_copy(nat, bufs):
    a, b, size = bufs
    src = _fill_random(nat, b.ptr, size, seed=2)
    dst = nat.view(a.ptr, size)
    for off, n in [(0, 0), (1, 1), (7, 4099), (33, 65536)]:
        dst[:] = 0
        assert nat.copy_cached(a.ptr + off, b.ptr, n) == 0
        assert np.array_equal(dst[off:off + n], src[:n]) and (dst[off + n:] == 0).all()


def test_flushes_leave_data_unchanged(nat, bufs):
    a, _, size = bufs
    data = _fill_random(nat, a.ptr, size, seed=3)
    before = data.copy()
    feats = nat.features()
    for method in ("clflush", "clflushopt", "clwb"):
        rc = nat.flush(a.ptr + 5, 16384 + 3, method)
        assert rc == (0 if feats[method] else native_mod.EUNSUPPORTED)
        assert np.array_equal(data, before)
    for method in ("clflush", "clflushopt"):
        rc, s = nat.flush_read(a.ptr, 16384, method)
        if feats[method]:
            assert rc == 0
            assert s == int(np.sum(before[:16384].view(np.uint64), dtype=np.uint64))
    # CLWB does not invalidate: refused for a reader
    assert nat.flush_read(a.ptr, 64, "clwb")[0] == native_mod.EINVAL
    assert np.array_equal(data, before)


def test_bench_ops_run_and_report_unsupported(nat, bufs, all_features):
    a, b, _ = bufs
    _fill_random(nat, b.ptr, 16384)
    feats = nat.features()
    rc, t = nat.bench_op("nt_copy", a.ptr, b.ptr, 16384, "none", 20)
    if X86:
        assert rc == 0 and (t > 0).all()
    for method in ("clflush", "clflushopt", "clwb"):
        rc, t = nat.bench_op("copy_flush", a.ptr, b.ptr, 16384, method, 10)
        assert rc == (0 if feats[method] else native_mod.EUNSUPPORTED)
    # hide every feature: each x86-only operation answers "unsupported", nothing crashes
    nat.set_feature_mask([])
    assert not any(nat.features().values())
    assert nat.copy_nt(a.ptr, b.ptr, 4096) == native_mod.EUNSUPPORTED
    for method in ("clflush", "clflushopt", "clwb"):
        assert nat.flush(a.ptr, 4096, method) == native_mod.EUNSUPPORTED
        assert nat.bench_op("copy_flush", a.ptr, b.ptr, 16384, method, 3)[0] == native_mod.EUNSUPPORTED
    assert nat.flush_read(a.ptr, 4096, "clflushopt")[0] == native_mod.EUNSUPPORTED
    assert nat.bench_op("nt_copy", a.ptr, b.ptr, 16384, "none", 3)[0] == native_mod.EUNSUPPORTED
    assert nat.bandwidth("ntwrite", a.ptr, None, 4096, 1, 1)[0] == native_mod.EUNSUPPORTED
    rc, _, _, _ = nat.rpc_run(a.ptr, 4096, 1, 10, 0, "clflushopt")
    assert rc == native_mod.EUNSUPPORTED
    # plain cached paths still work without any feature
    assert nat.copy_cached(a.ptr, b.ptr, 4096) == 0
    assert nat.bench_op("cached_copy", a.ptr, b.ptr, 16384, "none", 3)[0] == 0
    nat.set_feature_mask(None)
    assert nat.features() == nat.detected_features()


def test_invalid_arguments(nat, bufs):
    a, b, _ = bufs
    assert nat.bench_op("flush_read", 0, a.ptr, 16384, "none", 3)[0] == native_mod.EINVAL
    assert nat.bandwidth("write", a.ptr + 8, None, 4096, 1, 1)[0] == native_mod.EINVAL  # unaligned
    assert nat.chase_build(a.ptr, 64, 64, 1)[0] == native_mod.EINVAL  # one node
    assert nat.rpc_run(a.ptr, 100, 1, 10, 0, "none")[0] == native_mod.EINVAL  # region too small


def test_pointer_chase_visits_every_node(nat):
    size, stride = 8 << 20, 64
    m = nat.map_anon(size)
    try:
        rc, n = nat.chase_build(m.ptr, size, stride, seed=42)
        assert rc == 0 and n == size // stride
        rc, distinct, cycle = nat.chase_count(m.ptr, size, stride)
        assert rc == 0 and distinct == n and cycle == n
        rc, ns = nat.chase_run(m.ptr, 200_000)
        assert rc == 0 and 0 < ns < 100_000
        # a corrupted chain (one node pointing at itself) is detected
        view = nat.view(m.ptr, size).view(np.uint64)
        view[0] = m.ptr
        rc, distinct, _ = nat.chase_count(m.ptr, size, stride)
        assert distinct == 1
    finally:
        nat.unmap(m)


@pytest.mark.parametrize("kind", ["read", "write", "ntwrite", "copy", "ntcopy"])
def test_bandwidth_positive_and_correct(nat, kind):
    threads, per = 2, 2 << 20
    src, dst = nat.map_anon(threads * per), nat.map_anon(threads * per)
    try:
        sv = _fill_random(nat, src.ptr, threads * per, seed=5)
        dv = nat.view(dst.ptr, threads * per)
        dv[:] = 0
        rc, secs, s = nat.bandwidth(kind, dst.ptr if kind != "read" else None, src.ptr, per, threads, 2)
        if kind.startswith("nt") and not (X86 and nat.features()["clflush"]):
            assert rc == native_mod.EUNSUPPORTED
            return
        assert rc == 0 and secs > 0
        assert threads * per * 2 / secs > 1e6  # bytes/s: positive and not absurd
        if kind == "read":
            assert s == int(np.sum(sv.view(np.uint64), dtype=np.uint64))
        elif kind in ("copy", "ntcopy"):
            assert np.array_equal(dv, sv)
        else:
            words = dv.view(np.uint64).reshape(threads, -1)
            for t in range(threads):
                assert (words[t] == (0x5A5A5A5A00000000 | (t + 1))).all()
    finally:
        nat.unmap(src)
        nat.unmap(dst)


def test_pattern_fill_and_check(nat, bufs):
    a, _, size = bufs
    assert nat.fill_pattern(a.ptr, size, 99) == 0
    assert nat.check_pattern(a.ptr, size, 99) == -1
    nat.view(a.ptr, size)[4096 + 3] ^= 1
    assert nat.check_pattern(a.ptr, size, 99) == 4096
    assert nat.check_pattern(a.ptr + 1, 64, 99) == -2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the RPC needs two CPUs")
def test_rpc_pingpong_and_pipelined(nat):
    from belusim.calibration.cpu import rpc_cpus

    feats = nat.features()
    flush = "clflushopt" if feats["clflushopt"] else ("clflush" if feats["clflush"] else "none")
    region = nat.map_anon(64 << 10, shared=True)
    try:
        rc, rtt, elapsed, torn = nat.rpc_run(region.ptr, 64 << 10, 1, 2000, 100, flush, *rpc_cpus())
        assert rc == 0
        assert len(rtt) == 2000 and (rtt > 0).all()
        # ns: above a cache hit; below 20 ms, the bound a busy 2-core machine can still keep
        # (a spinning partner thread descheduled for a time slice costs milliseconds)
        assert 50 < np.median(rtt) < 2e7
        assert elapsed > 0
        rc, _, elapsed, torn = nat.rpc_run(region.ptr, 64 << 10, 32, 20_000, 0, flush, *rpc_cpus())
        assert rc == 0 and elapsed > 0
        assert 20_000 / elapsed > 500  # ops/s, loaded-machine bound as above
    finally:
        nat.unmap(region)
