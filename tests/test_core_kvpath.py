"""KV data paths: one transfer's time and bytes, from the cards, on each kind of tier."""

from __future__ import annotations

import math

import pytest
from belusim.sim.kernel import Environment

from belusim.config.scenario import GB, KiB, MiB, load_card
from belusim.transport.kvpath import KB16, KVPaths, RPCServer
from belusim.policy.request import Request
from belusim.policy.scheduler import Load, Save


def _cluster(**over) -> dict:
    base = {"servers": 1, "gpus_per_server": 2, "gpus_per_pcie_switch": 2, "cxl_adapters_per_server": 2,
            "cxl_devices": 32, "nics_per_server": 4}
    base.update(over)
    return base


def _paths(resolve, kv: dict, model="qwen3-32b", cluster=None, hardware=None):
    over = {"model": model, "cluster": cluster or _cluster(),
            "systems": [{"name": "s", "kv": kv}]}
    if hardware:
        over["hardware"] = hardware
    sc = resolve(**over)
    env = Environment()
    return sc, env, KVPaths(env, sc, sc.systems[0].kv)


def _request(nblocks: int, key0: int = 0) -> Request:
    return Request(1, nblocks * 16 + 1, 1, list(range(key0, key0 + nblocks)), 0.0)


def _timed(env, gen) -> dict:
    out = {}

    def proc():
        t0 = env.now
        yield from gen
        out["t"] = env.now - t0

    env.process(proc())
    return out


def _load(paths: KVPaths, env, nblocks: int, place: int = 0, key0: int = 0) -> float:
    out = _timed(env, paths.load(paths.places[place], Load(_request(nblocks, key0), 0, nblocks)))
    env.run()
    return out["t"]


def _save(paths: KVPaths, env, nblocks: int, place: int = 0) -> float:
    """Save nblocks (a whole number of the tier's chunks): Save names chunks by index and last key."""
    req = _request(nblocks)
    c = paths._chunk_blocks
    assert nblocks % c == 0
    idx = list(range(nblocks // c))
    keys = [req.keys[(i + 1) * c - 1] for i in idx]
    out = _timed(env, paths.save(paths.places[place], Save(req, idx, keys)))
    env.run()
    return out["t"]


# --------------------------------------------------------------------------- model geometry


def test_qwen3_32b_block_is_128_fragments_of_32_kib():
    m = load_card("llms", "qwen3-32b")
    assert m.kv_bytes_per_token == 256 * KiB
    assert m.fragment_bytes(16) == 32 * KiB
    assert m.fragments_per_block == 128
    assert m.fragments_per_block * m.fragment_bytes(16) == 16 * m.kv_bytes_per_token == 4 * MiB


def test_llama_and_fp8_fragments():
    llama = load_card("llms", "llama-3.1-8b")
    assert llama.fragments_per_block == 64
    assert llama.fragment_bytes(16) == 32 * KiB
    fp8 = load_card("llms", "qwen3-32b-fp8")
    assert fp8.fragment_bytes(16) == 16 * KiB
    assert fp8.kv_bytes_per_token == 128 * KiB


# --------------------------------------------------------------------------- local DRAM


def test_local_dram_gather_kernel_load_time(resolve):
    sc, env, p = _paths(resolve, {"kind": "local-dram", "copy_method": "gather-kernel"})
    n = 8
    t = _load(p, env, n)
    gpu, hw = sc.gpu, sc.hardware
    bw = min(gpu.host_h2d_gbps, hw.pcie_switch.uplink_gbps, hw.host.dram_gbps_per_socket, gpu.copy_kernel_gbps)
    assert bw == gpu.copy_kernel_gbps  # on H20 the kernel's own rate binds
    latency = hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
    expected = gpu.copy_kernel_launch_us * 1e-6 + latency + n * 4 * MiB / (bw * GB)
    assert t == pytest.approx(expected, rel=1e-9)
    assert p.stats.loads == 1 and p.stats.load_bytes == n * 4 * MiB
    assert p.fabric.link("s0.gpu0.load").bytes_carried == pytest.approx(n * 4 * MiB)
    assert p.fabric.link("s0.gpu0.store").bytes_carried == 0


def test_local_dram_memcpy_per_fragment_costs_one_call_per_fragment(resolve):
    sc, env, p = _paths(resolve, {"kind": "local-dram", "copy_method": "memcpy-per-fragment"})
    n = 8
    t = _save(p, env, n)
    gpu, hw = sc.gpu, sc.hardware
    bw = min(gpu.host_d2h_gbps, hw.pcie_switch.uplink_gbps, hw.host.dram_gbps_per_socket)  # no kernel cap
    latency = hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
    n_frag = n * 128
    expected = n_frag * gpu.memcpy_call_us * 1e-6 + latency + n * 4 * MiB / (bw * GB)
    assert t == pytest.approx(expected, rel=1e-9)
    # local DRAM is not CXL: no uncacheable fallback even for small fragments, no RPC
    assert p.stats.rpc_calls == 0
    assert p.stats.saves == 1


# --------------------------------------------------------------------------- CXL pool


def test_cxl_single_path_is_capped_by_root_complex_p2p(resolve):
    kv = {"kind": "cxl-pool", "copy_method": "gather-kernel", "coherence": "uncacheable", "interleave": True}
    n = 4
    sc, env, p = _paths(resolve, kv, cluster=_cluster(cxl_adapters_per_server=1))
    t_load = _load(p, env, n)
    rc = sc.hardware.root_complex
    assert rc.p2p_read_gbps_per_path == 23 and rc.p2p_write_gbps_per_path == 33
    fixed = sc.gpu.copy_kernel_launch_us * 1e-6 + sc.hardware.cxl_switch.access_latency_ns * 1e-9
    assert t_load == pytest.approx(fixed + n * 4 * MiB / (23 * GB), rel=1e-9)

    sc, env, p = _paths(resolve, kv, cluster=_cluster(cxl_adapters_per_server=1))
    t_save = _save(p, env, n)
    rpc = sc.hardware.cxl_rpc
    rpc_t = rpc.rtt_us * 1e-6 + 1 / (rpc.server_mops * 1e6)  # one call for 4 keys
    assert t_save == pytest.approx(fixed + n * 4 * MiB / (33 * GB) + rpc_t, rel=1e-9)


def _interleaved_expected(sc, direction: str, kernel: bool) -> float:
    gpu, hw, cl = sc.gpu, sc.hardware, sc.cluster
    rc = hw.root_complex
    per_path = rc.p2p_write_gbps_per_path if direction == "store" else rc.p2p_read_gbps_per_path
    per_adapter = min(per_path, rc.p2p_total_gbps, hw.cxl_adapter.link_gbps)
    shared = [gpu.host_d2h_gbps if direction == "store" else gpu.host_h2d_gbps, hw.pcie_switch.uplink_gbps,
              hw.cxl_switch.forwarding_gbps * cl.cxl_switches, hw.cxl_memory.bandwidth_gbps * cl.cxl_devices]
    if kernel:
        shared.append(gpu.copy_kernel_gbps)
    return min(2 * per_adapter, *shared)


@pytest.mark.parametrize("method", ["gather-kernel", "memcpy-per-fragment"])
def test_cxl_interleave_over_two_adapters_sums_paths_under_shared_caps(resolve, method):
    kv = {"kind": "cxl-pool", "copy_method": method, "coherence": "uncacheable", "interleave": True}
    n = 4
    nbytes = n * 4 * MiB
    sc, env, p = _paths(resolve, kv)
    t = _load(p, env, n)
    bw = _interleaved_expected(sc, "load", method == "gather-kernel")
    gpu = sc.gpu
    launch = gpu.copy_kernel_launch_us * 1e-6 if method == "gather-kernel" else n * 128 * gpu.memcpy_call_us * 1e-6
    lat = sc.hardware.cxl_switch.access_latency_ns * 1e-9
    assert t == pytest.approx(launch + lat + nbytes / (bw * GB), rel=1e-9)
    if method == "gather-kernel":
        assert bw == gpu.copy_kernel_gbps  # 2 x 23 = 46 > 45: the kernel binds
    else:
        assert bw == 2 * 23  # the two RC read paths bind (below the 55.4 GB/s GPU link)
    # half the bytes over each adapter
    assert p.fabric.link("s0.adp0.load").bytes_carried == pytest.approx(nbytes / 2)
    assert p.fabric.link("s0.adp1.load").bytes_carried == pytest.approx(nbytes / 2)
    assert p.fabric.link("s0.rc0.p2p.load").bytes_carried == pytest.approx(nbytes / 2)
    assert p.fabric.link("s0.rc1.p2p.load").bytes_carried == pytest.approx(nbytes / 2)

    sc, env, p = _paths(resolve, kv)
    t = _save(p, env, n)
    bw = _interleaved_expected(sc, "store", method == "gather-kernel")
    if method == "memcpy-per-fragment":
        assert bw == sc.gpu.host_d2h_gbps  # 2 x 33 = 66 > 55.4: the GPU link binds
    rpc = sc.hardware.cxl_rpc
    rpc_t = rpc.rtt_us * 1e-6 + 1 / (rpc.server_mops * 1e6)
    assert t == pytest.approx(launch + lat + nbytes / (bw * GB) + rpc_t, rel=1e-9)


def test_root_complex_total_binds_two_gpus_sharing_one_adapter(resolve):
    # two GPUs behind two PCIe switches, one adapter: two 33 GB/s write paths through one RC
    # whose P2P total is 46 GB/s -> 23 GB/s each.
    kv = {"kind": "cxl-pool", "copy_method": "gather-kernel", "interleave": True, "save": True}
    sc, env, p = _paths(resolve, kv, cluster=_cluster(gpus_per_pcie_switch=1, cxl_adapters_per_server=1))
    n = 4
    outs = []
    for g in (0, 1):
        req = _request(n, key0=100 * g)
        outs.append(_timed(env, p._move(p.places[g], n * 4 * MiB, n, "store", req.keys)))
    env.run()
    rc = sc.hardware.root_complex
    fixed = sc.gpu.copy_kernel_launch_us * 1e-6 + sc.hardware.cxl_switch.access_latency_ns * 1e-9
    for o in outs:
        assert o["t"] == pytest.approx(fixed + n * 4 * MiB / (rc.p2p_total_gbps / 2 * GB), rel=1e-9)
    assert p.fabric.link("s0.rc0.p2p.store").bytes_carried == pytest.approx(2 * n * 4 * MiB)


def test_cpu_side_adapter_rates_are_not_on_gpu_paths(resolve):
    kv = {"kind": "cxl-pool", "copy_method": "gather-kernel", "interleave": True}
    times = []
    for hw in (None, {"cxl_adapter": {"card": "pcie5-x16-cxl", "cpu_read_gbps": 0.5, "cpu_write_gbps": 0.25}}):
        _sc, env, p = _paths(resolve, kv, hardware=hw)
        times.append(_load(p, env, 4))
        assert all(link.capacity not in (0.5e9, 0.25e9) for link in p.fabric.links.values())
    assert times[0] == times[1]


def test_interleaving_spreads_a_64mb_transfer_over_devices(resolve):
    n = 16  # 16 blocks x 4 MiB = 64 MiB
    nbytes = n * 4 * MiB
    base = {"kind": "cxl-pool", "copy_method": "gather-kernel", "coherence": "uncacheable"}
    sc, env, p_on = _paths(resolve, {**base, "interleave": True})
    t_on = _load(p_on, env, n)
    _sc, env, p_off = _paths(resolve, {**base, "interleave": False})
    t_off = _load(p_off, env, n)
    fixed = sc.gpu.copy_kernel_launch_us * 1e-6 + sc.hardware.cxl_switch.access_latency_ns * 1e-9
    dev = sc.hardware.cxl_memory.bandwidth_gbps
    assert dev == 22.5
    assert t_on == pytest.approx(fixed + nbytes / (sc.gpu.copy_kernel_gbps * GB), rel=1e-9)
    assert t_off == pytest.approx(fixed + nbytes / (dev * GB), rel=1e-9)
    assert t_off > 1.9 * (t_on - fixed)
    assert p_on.fabric.link("cxl.devices").bytes_carried == pytest.approx(nbytes)
    assert all(p_on.fabric.link(f"cxl.dev{d}").bytes_carried == 0 for d in range(32))
    assert p_off.fabric.link("cxl.devices").bytes_carried == 0
    carried = [p_off.fabric.link(f"cxl.dev{d}").bytes_carried for d in range(32)]
    assert sum(carried) == pytest.approx(nbytes)
    assert max(carried) == pytest.approx(nbytes)  # all on one device
    # interleave off goes through the GPU's socket-local adapter only
    assert p_off.fabric.link("s0.adp1.load").bytes_carried == 0


def test_fp8_small_fragments_from_uncacheable_cxl_with_memcpy_hit_the_cpu_fallback(resolve):
    kv = {"kind": "cxl-pool", "copy_method": "memcpy-per-fragment", "coherence": "uncacheable",
          "interleave": True}
    n = 2
    sc, env, p = _paths(resolve, kv, model="qwen3-32b-fp8")
    assert p.fragment_bytes == 16 * KiB < sc.gpu.memcpy_uncacheable_threshold_kb * 1024
    t = _load(p, env, n)
    nbytes = n * 2 * MiB  # FP8 KV: 2 MiB a block
    bw = min(2 * sc.hardware.root_complex.p2p_read_gbps_per_path, sc.gpu.host_h2d_gbps)
    lat = sc.hardware.cxl_switch.access_latency_ns * 1e-9
    expected = n * 128 * 1230e-6 + lat + nbytes / (bw * GB)
    assert t == pytest.approx(expected, rel=1e-9)
    assert p.stats.breakdown["launch"] == pytest.approx(n * 128 * 1230e-6)

    # the bf16 model's 32 KiB fragments are above the threshold: ordinary per-call cost
    sc, env, p = _paths(resolve, kv, model="qwen3-32b")
    t = _load(p, env, n)
    assert t == pytest.approx(n * 128 * sc.gpu.memcpy_call_us * 1e-6 + lat + n * 4 * MiB / (bw * GB), rel=1e-9)


def test_flush_coherence_adds_table4_difference_per_16k(resolve):
    kv = {"kind": "cxl-pool", "copy_method": "gather-kernel", "coherence": "flush", "interleave": True}
    n = 2
    sc, env, p = _paths(resolve, kv)
    t = _load(p, env, n)
    host = sc.hardware.host
    nbytes = n * 4 * MiB
    extra = (host.gpu_flush_read_16k_us - host.gpu_uncacheable_read_16k_us) * 1e-6 * nbytes / KB16
    fixed = sc.gpu.copy_kernel_launch_us * 1e-6 + sc.hardware.cxl_switch.access_latency_ns * 1e-9
    assert t == pytest.approx(fixed + nbytes / (sc.gpu.copy_kernel_gbps * GB) + extra, rel=1e-9)
    assert p.stats.breakdown["coherence"] == pytest.approx(extra)


# --------------------------------------------------------------------------- RDMA pool


def _rdma_expected(sc, nbytes: float, net_gbps: float, wrs: int) -> float:
    nic, hw, gpu = sc.hardware.nic, sc.hardware, sc.gpu
    net = max(wrs * nic.per_wr_us * 1e-6, nbytes / (net_gbps * GB)) + (nic.latency_us + hw.network_switch.latency_us) * 1e-6
    stage = (gpu.copy_kernel_launch_us * 1e-6 + hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
             + nbytes / (gpu.copy_kernel_gbps * GB))
    return net + stage


RDMA_KV = {"kind": "rdma-pool", "chunk_tokens": 256, "pipeline_chunks": 4, "copy_method": "gather-kernel",
           "staging_gather": True}


def test_rdma_load_from_another_server_moves_bytes_over_both_stages(resolve):
    n = 16  # one 256-token chunk, within one pipeline unit
    nbytes = n * 4 * MiB
    sc, env, p = _paths(resolve, RDMA_KV, cluster=_cluster(servers=2))
    t = _load(p, env, n)  # its chunk is named by its last block's key, 15: home server 1
    f = p.fabric
    assert f.bytes_requested == pytest.approx(2 * nbytes)  # network step + staging step
    assert f.bytes_delivered == pytest.approx(2 * nbytes)
    assert f.link("s1.nics.tx").bytes_carried == pytest.approx(nbytes)
    assert f.link("s0.nics.rx").bytes_carried == pytest.approx(nbytes)
    assert f.link("s0.nics.tx").bytes_carried == 0
    assert f.link("s0.gpu0.load").bytes_carried == pytest.approx(nbytes)
    assert f.link("s1.dram0").bytes_carried == pytest.approx(nbytes)
    assert f.link("s0.dram0").bytes_carried == pytest.approx(2 * nbytes)  # bounce buffer: written, read
    nic = sc.hardware.nic
    wrs = math.ceil(nbytes / (nic.slice_kb * 1024))
    assert p.stats.work_requests == wrs
    nic_bw = 4 * nic.ports * nic.port_gbps * nic.efficiency
    assert nic_bw < sc.hardware.host.dram_gbps_per_socket
    assert t == pytest.approx(_rdma_expected(sc, nbytes, nic_bw, wrs), rel=1e-9)


def test_rdma_load_on_one_server_loops_back_through_its_own_dram(resolve):
    # home == own server: the network flow reads and writes socket 0's half-duplex DRAM
    n = 16
    nbytes = n * 4 * MiB
    sc, env, p = _paths(resolve, RDMA_KV)
    t = _load(p, env, n)
    f = p.fabric
    assert f.bytes_requested == pytest.approx(2 * nbytes)
    assert f.link("s0.nics.tx").bytes_carried == pytest.approx(nbytes)
    assert f.link("s0.nics.rx").bytes_carried == pytest.approx(nbytes)
    nic = sc.hardware.nic
    wrs = math.ceil(nbytes / (nic.slice_kb * 1024))
    net_bw = min(4 * nic.ports * nic.port_gbps * nic.efficiency, sc.hardware.host.dram_gbps_per_socket / 2)
    assert t == pytest.approx(_rdma_expected(sc, nbytes, net_bw, wrs), rel=1e-9)


def test_rdma_two_units_pipeline_overlaps_network_and_staging(resolve):
    n = 128  # 8 chunks = 2 units of 64 blocks
    unit = 64 * 4 * MiB
    sc, env, p = _paths(resolve, RDMA_KV, cluster=_cluster(servers=2))
    t = _load(p, env, n)  # the first chunk's name (key 15) is homed on server 1
    nic, hw, gpu = sc.hardware.nic, sc.hardware, sc.gpu
    wrs = math.ceil(unit / (nic.slice_kb * 1024))
    net = max(wrs * nic.per_wr_us * 1e-6, unit / (4 * nic.ports * nic.port_gbps * nic.efficiency * GB)) \
        + (nic.latency_us + hw.network_switch.latency_us) * 1e-6
    stage = (gpu.copy_kernel_launch_us * 1e-6 + hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
             + unit / (gpu.copy_kernel_gbps * GB))
    assert stage > net
    # load: network(u1) | staging(u1) with network(u2) | staging(u2)
    assert t == pytest.approx(net + 2 * stage, rel=1e-9)
    assert p.fabric.bytes_delivered == pytest.approx(2 * n * 4 * MiB)


def test_rdma_fragmented_work_requests_without_staging_gather(resolve):
    kv = {"kind": "rdma-pool", "chunk_tokens": 256, "pipeline_chunks": 4, "staging_gather": False}
    sc, env, p = _paths(resolve, kv)
    n = 96  # 6 chunks of 16 blocks: units of 4 chunks -> 64 + 32 blocks
    _save(p, env, n)
    per_block = math.ceil(128 / sc.hardware.nic.max_sge)
    assert p.stats.work_requests == n * per_block
    assert p.fabric.bytes_delivered == pytest.approx(2 * n * 4 * MiB)
    assert p.stats.save_bytes == n * 4 * MiB


def test_rpc_server_is_fifo():
    s = RPCServer(rtt_s=1e-6, service_s=1e-6)
    assert s.call(0.0, 3) == pytest.approx(3e-6 + 1e-6)
    # issued at 1 us while busy until 3 us: waits, then 2 services
    assert s.call(1e-6, 2) == pytest.approx((5e-6 - 1e-6) + 1e-6)
    assert s.call(10e-6, 0) == 0.0
    assert s.calls == 5


def test_hbm_only_has_no_external_tier(resolve):
    _sc, env, p = _paths(resolve, {"kind": "hbm-only"})
    with pytest.raises(ValueError):
        list(p._move(p.places[0], 1.0, 1, "load", [0]))
    assert p.lookup_time(3, 10, 0.0) == 0.0


# --------------------------------------------------------------------------- chunk placement


KEY_NAMESPACE_BUG = (
    "BUG: kvpath.py KVPaths.load passes the request's block keys (keys[first:first+n]) to _move, while "
    "KVPaths.save passes chunk keys (the last block key of each chunk); with chunk_tokens > block_size "
    "_cxl_device_for/_home_server look loads up under keys the saves never used")


def test_non_interleaved_cxl_load_reads_the_device_its_chunk_was_saved_on(resolve):
    kv = {"kind": "cxl-pool", "interleave": False, "chunk_tokens": 256}
    # 60 MB devices: each 64 MiB chunk fills the next device
    sc, env, p = _paths(resolve, kv, hardware={"cxl_memory": {"card": "ddr5-256g", "capacity_gb": 0.06}})
    req = Request(1, 32 * 16 + 1, 1, list(range(100, 132)), 0.0)
    chunk = 16 * 4 * MiB

    def go():
        yield from p.save(p.places[0], Save(req, [0], [115]))
        yield from p.save(p.places[0], Save(req, [1], [131]))
        yield from p.load(p.places[0], Load(req, 16, 16))  # the second chunk

    env.process(go())
    env.run()
    carried = {d: p.fabric.link(f"cxl.dev{d}").bytes_carried for d in range(32)}
    assert carried[0] == pytest.approx(chunk)
    assert carried[1] == pytest.approx(2 * chunk)  # written, then read back
    assert sum(carried.values()) == pytest.approx(3 * chunk)
    assert p._chunks_placed == 2


def test_rdma_load_reads_from_the_server_its_chunk_was_saved_on(resolve):
    kv = {"kind": "rdma-pool", "chunk_tokens": 256}
    sc, env, p = _paths(resolve, kv, cluster=_cluster(servers=2, gpus_per_server=1))
    req = Request(1, 16 * 16 + 1, 1, list(range(100, 116)), 0.0)
    chunk = 16 * 4 * MiB

    def go():
        yield from p.save(p.places[0], Save(req, [0], [115]))  # chunk key 115: home server 1
        yield from p.load(p.places[0], Load(req, 0, 16))

    env.process(go())
    env.run()
    f = p.fabric
    assert f.link("s1.nics.rx").bytes_carried == pytest.approx(chunk)  # the save went to server 1
    assert f.link("s1.nics.tx").bytes_carried == pytest.approx(chunk)  # the load must come back from it
    assert f.link("s0.nics.rx").bytes_carried == pytest.approx(chunk)


def test_ordered_transfers_land_one_after_another(resolve):
    """Two equal loads issued together on one GPU: shared links land both at 2T; one copy
    stream per direction (vLLM's OffloadingConnector, the replay) lands them at T and 2T."""
    kv = {"kind": "local-dram", "capacity_gb": 100}
    ends = {}
    for ordered in (False, True):
        _sc, env, paths = _paths(resolve, dict(kv, ordered_transfers=ordered))
        out = []

        def one(i):
            yield from paths.load(paths.places[0], Load(_request(256, 1000 * i), 0, 256))
            out.append(env.now)

        for i in range(2):
            env.process(one(i))
        env.run()
        ends[ordered] = sorted(out)
    shared, ordered = ends[False], ends[True]
    assert shared[0] == pytest.approx(shared[1], rel=1e-6)
    assert ordered[1] == pytest.approx(shared[1], rel=0.02)  # same bytes, same last landing
    assert ordered[0] == pytest.approx(ordered[1] / 2, rel=0.05)


@pytest.mark.parametrize("chunk_tokens", [16, 64, 256])
def test_a_load_names_each_chunk_it_reads_by_its_last_block_key(resolve, chunk_tokens):
    """Chunk i is named keys[min(len, (i + 1) x c) - 1]: a load from any offset, of any length,
    names the chunks it touches, the prompt's partial last chunk by its last key."""
    _sc, _env, p = _paths(resolve, {"kind": "rdma-pool", "chunk_tokens": chunk_tokens})
    c = chunk_tokens // 16
    req = _request(37, key0=500)
    for first in range(0, 37, 3):
        for n in range(1, 38 - first, 5):
            want = [req.keys[min(37, (i + 1) * c) - 1] for i in range(first // c, (first + n - 1) // c + 1)]
            assert p._chunk_names(Load(req, first, n)) == want, (first, n)
