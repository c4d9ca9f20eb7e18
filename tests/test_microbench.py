"""Transfer-level studies: breakdowns add up, lone transfers match the cards, CLI writes tables."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
from typer.testing import CliRunner

from belusim.study import microbench as mb
from belusim.config.scenario import GB, MiB, resolve_scenario
from belusim.cli.microbench import microbench_app

BASE = {
    "name": "mb",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 8, "gpus_per_pcie_switch": 2, "cxl_adapters_per_server": 2,
                "cxl_devices": 32, "cxl_switches": 2, "nics_per_server": 4},
    "systems": [{"name": "hbm-only", "kv": {"kind": "hbm-only"}}],  # transfer systems fall back to defaults
    "workload": {"kind": "lveval-synthetic", "num_prompts": 2, "arrival": {"process": "closed", "clients": 1}},
}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def scenario(**over):
    sc, _ = resolve_scenario(_merge(BASE, over))
    return sc


def _sum_parts(row: dict) -> float:
    return sum(row[f"{c}_ms"] for c in mb.BREAKDOWN)


# --------------------------------------------------------------------------- breakdown


def test_dense_breakdown_sums_to_total():
    rows = mb.dense_study(scenario(), tokens=1024)
    assert len(rows) == 3 * 3 * 2
    for r in rows:
        assert r["latency_ms"] > 0
        assert _sum_parts(r) == pytest.approx(r["latency_ms"], rel=1e-9)
        assert all(r[f"{c}_ms"] >= 0 for c in mb.BREAKDOWN), r
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["latency_ms"] * 1e-3) / GB)


def test_concurrent_and_sparse_breakdowns_sum_to_total():
    sc = scenario()
    rows = [mb.transfer_study(sc, k, direction=d, tokens=2048, concurrency=4)[0]
            for k in mb.TRANSFER_KINDS for d in mb.DIRECTIONS]
    rows += mb.sparse_study(sc, systems=("cxl-pool", "rdma-pool", "local-dram"))
    for r in rows:
        assert _sum_parts(r) == pytest.approx(r["latency_ms"], rel=1e-9)
        assert all(r[f"{c}_ms"] >= 0 for c in mb.BREAKDOWN), r


# --------------------------------------------------------------------------- lone CXL transfers vs the cards


def _cxl_rate_from_cards(sc, direction: str) -> float:
    """GB/s of a lone interleaved gather-kernel transfer, from the cards alone."""
    gpu, hw, cl = sc.gpu, sc.hardware, sc.cluster
    rc = hw.root_complex
    per_path = rc.p2p_write_gbps_per_path if direction == "store" else rc.p2p_read_gbps_per_path
    per_adapter = min(per_path, rc.p2p_total_gbps, hw.cxl_adapter.link_gbps)
    gpu_link = gpu.host_d2h_gbps if direction == "store" else gpu.host_h2d_gbps
    return min(cl.cxl_adapters_per_server * per_adapter, gpu_link, hw.pcie_switch.uplink_gbps, gpu.copy_kernel_gbps,
               hw.cxl_switch.forwarding_gbps * cl.cxl_switches, hw.cxl_memory.bandwidth_gbps * cl.cxl_devices)


@pytest.mark.parametrize("kernel_gbps,direction,binds", [
    (None, "load", "kernel"),  # H20 card: 45 GB/s kernel < 2 x 23 GB/s RC read paths
    (100, "load", "psw0.adp"),  # a faster kernel: the two RC read paths (2 x 23) bind
    (100, "store", "gpu0.store"),  # ... and for stores the GPU's own link (55.4 < 2 x 33)
])
def test_lone_cxl_transfer_is_launch_plus_latency_plus_bytes_over_bottleneck(kernel_gbps, direction, binds):
    over = {"gpu": {"card": "h20", "copy_kernel_gbps": kernel_gbps}} if kernel_gbps else {}
    sc = scenario(**over)
    nblocks = 32
    row = mb.transfer_study(sc, "cxl-pool", direction=direction, tokens=nblocks * 16)[0]
    nbytes = nblocks * 4 * MiB
    assert row["bytes"] == nbytes and row["blocks"] == nblocks
    rate = _cxl_rate_from_cards(sc, direction)
    launch = sc.gpu.copy_kernel_launch_us * 1e-6
    latency = sc.hardware.cxl_switch.access_latency_ns * 1e-9
    rpc = 0.0
    if direction == "store":  # one metadata RPC for the save's keys (32 keys < 64 per call)
        r = sc.hardware.cxl_rpc
        rpc = r.rtt_us * 1e-6 + 1 / (r.server_mops * 1e6)
    expected = launch + latency + nbytes / (rate * GB) + rpc
    assert row["latency_ms"] == pytest.approx(expected * 1e3, rel=1e-9)
    assert row["launch_ms"] == pytest.approx(launch * 1e3, rel=1e-9)
    assert row["access_ms"] == pytest.approx(latency * 1e3, rel=1e-6)
    assert row["wire_ms"] == pytest.approx(nbytes / (rate * GB) * 1e3, rel=1e-9)
    assert row["rpc_ms"] == pytest.approx(rpc * 1e3, rel=1e-9)
    assert row["queueing_ms"] == pytest.approx(0.0, abs=1e-9)
    assert row["coherence_ms"] == 0 and row["cpu_ms"] == 0
    assert binds in row["bottleneck"]


def test_flush_coherence_is_charged_per_16kb():
    sc = scenario()
    base = mb.measure_transfer(sc, mb.pick_system(sc, "cxl-pool"), "load", 256)
    flush = mb.SystemConfig(name="flush", kv=mb.KVSystemConfig(**{**mb.DEFAULT_KV["cxl-pool"], "coherence": "flush"}))
    row = mb.measure_transfer(sc, flush, "load", 256)
    h = sc.hardware.host
    expected = (h.gpu_flush_read_16k_us - h.gpu_uncacheable_read_16k_us) * 1e-6 * row["bytes"] / (16 * 1024)
    assert row["coherence_ms"] == pytest.approx(expected * 1e3, rel=1e-9)
    assert row["latency_ms"] == pytest.approx(base["latency_ms"] + expected * 1e3, rel=1e-9)


def test_fp8_moves_half_the_bytes_of_bf16():
    rows = mb.dense_study(scenario(), models=("qwen3-32b", "qwen3-32b-fp8"), systems=("cxl-pool",),
                          directions=("load",), tokens=8192)
    bf16, fp8 = rows
    assert bf16["bytes"] == 8192 * 256 * 1024  # 256 KiB per token (components.md)
    assert fp8["bytes"] == bf16["bytes"] / 2
    assert fp8["wire_ms"] == pytest.approx(bf16["wire_ms"] / 2, rel=1e-9)
    assert fp8["latency_ms"] < bf16["latency_ms"]


# --------------------------------------------------------------------------- RDMA


def test_rdma_dense_has_cpu_work_and_pipeline_bubble():
    sc = scenario()
    for d in mb.DIRECTIONS:
        row = mb.transfer_study(sc, "rdma-pool", direction=d, tokens=8192)[0]
        assert row["latency_ms"] > row["wire_ms"] > 0
        assert row["work_requests"] > 0
        assert row["cpu_work_ms"] == pytest.approx(row["work_requests"] * sc.hardware.nic.per_wr_us * 1e-3)
        assert row["queueing_ms"] > 0  # a lone two-step pipeline still fills and drains
        assert row["chunk_tokens"] == 256


def test_rdma_cpu_shows_when_posting_outlasts_the_network():
    slow = scenario(hardware={"nic": {"card": "cx7-2x200", "per_wr_us": 3.0}})
    fast = scenario()
    a = mb.transfer_study(fast, "rdma-pool", direction="load", tokens=2048)[0]
    b = mb.transfer_study(slow, "rdma-pool", direction="load", tokens=2048)[0]
    assert a["cpu_ms"] < b["cpu_ms"] <= b["cpu_work_ms"]
    assert b["cpu_ms"] > 0
    assert b["latency_ms"] > a["latency_ms"]


def test_store_rounds_up_to_whole_tier_chunks():
    row = mb.transfer_study(scenario(), "rdma-pool", direction="store", tokens=100)[0]
    assert row["tokens"] == 256 and row["blocks"] == 16
    assert "rounded" in row["note"]


# --------------------------------------------------------------------------- concurrency


def test_concurrent_transfers_queue_when_a_shared_link_binds():
    sc = scenario()
    lone = mb.transfer_study(sc, "cxl-pool", direction="load", tokens=4096)[0]
    packed = mb.transfer_study(sc, "cxl-pool", direction="load", tokens=4096, concurrency=2)[0]
    spread = mb.transfer_study(sc, "cxl-pool", direction="load", tokens=4096, concurrency=2, placement="spread")[0]
    # two GPUs behind one PCIe switch share its two RC read paths (per switch and adapter)
    rc = sc.hardware.root_complex
    fixed = (lone["launch_ms"] + lone["access_ms"]) * 1e-3
    expected = fixed + packed["bytes"] / (rc.p2p_read_gbps_per_path * GB)  # 2 paths / 2 GPUs
    assert packed["latency_ms"] == pytest.approx(expected * 1e3, rel=1e-9)
    assert packed["queueing_ms"] > 0.9 * lone["wire_ms"]
    assert packed["wire_ms"] == lone["wire_ms"]
    assert "psw0.adp" in packed["busiest_link"]
    # behind different switches nothing shared binds at two GPUs
    assert spread["queueing_ms"] == pytest.approx(0.0, abs=1e-9)
    assert spread["latency_ms"] == pytest.approx(lone["latency_ms"], rel=1e-9)
    # four GPUs: the sockets' RC peer-to-peer totals bind whatever the placement
    four = mb.transfer_study(sc, "cxl-pool", direction="load", tokens=4096, concurrency=4, placement="spread")[0]
    assert four["queueing_ms"] > 0 and four["latency_ms"] > lone["latency_ms"]


def test_concurrency_needs_enough_gpus():
    with pytest.raises(mb.MicrobenchError, match="GPUs"):
        mb.transfer_study(scenario(), "cxl-pool", concurrency=9)


# --------------------------------------------------------------------------- sparse loads


def test_sparse_geometry_from_the_card():
    sc = scenario()
    g = mb.sparse_geometry(sc.model, tokens=16, piece_bytes=144, contiguous_fraction=0.26)
    assert g.pieces == 16 * 64 * 8 * 2
    assert g.extents == g.pieces - round(0.26 * g.pieces)
    assert g.bytes == g.pieces * 144
    assert g.card_piece_bytes == 128 * 2
    assert mb.sparse_geometry(sc.model, piece_bytes=None).piece_bytes == 256


def test_sparse_more_pieces_take_longer():
    sc = scenario()
    for system in ("cxl-pool", "rdma-pool"):
        sysc = mb.pick_system(sc, system)
        t = [mb.measure_sparse(sc, sysc, tokens=n)["latency_ms"] for n in (4, 16, 64)]
        assert t[0] < t[1] < t[2]
        merged = mb.measure_sparse(sc, sysc, contiguous_fraction=0.5)["latency_ms"]
        scattered = mb.measure_sparse(sc, sysc, contiguous_fraction=0.0)["latency_ms"]
        assert scattered > merged


def test_sparse_sge_splitting():
    sc = scenario()
    nic = sc.hardware.nic
    sysc = mb.pick_system(sc, "rdma-pool")
    row = mb.measure_sparse(sc, sysc, contiguous_fraction=0.0)
    assert row["pieces"] == row["extents"] == 16 * 64 * 8 * 2
    assert row["work_requests"] == math.ceil(row["pieces"] / nic.max_sge)
    assert row["cpu_work_ms"] == pytest.approx(row["work_requests"] * nic.per_wr_us * 1e-3)
    per_piece = mb.measure_sparse(sc, sysc, contiguous_fraction=0.0, rdma_wr="per-piece")
    assert per_piece["work_requests"] == row["pieces"]
    assert per_piece["latency_ms"] > row["latency_ms"]


def test_sparse_cxl_formula():
    sc = scenario()
    row = mb.measure_sparse(sc, mb.pick_system(sc, "cxl-pool"), tokens=16, piece_bytes=144,
                            contiguous_fraction=0.26, outstanding_reads=64)
    extents = row["extents"]
    lines = extents * math.ceil(row["bytes"] / extents / 64)
    assert row["bytes_moved"] == lines * 64
    rate = _cxl_rate_from_cards(sc, "load")
    lat = sc.hardware.cxl_switch.access_latency_ns * 1e-9
    expected = sc.gpu.copy_kernel_launch_us * 1e-6 + max(lines * 64 / (rate * GB), math.ceil(extents / 64) * lat)
    assert row["latency_ms"] == pytest.approx(expected * 1e3, rel=1e-9)
    # enough reads in flight make it bandwidth-bound
    wide = mb.measure_sparse(sc, mb.pick_system(sc, "cxl-pool"), outstanding_reads=100_000)
    assert wide["access_ms"] == 0 and wide["latency_ms"] < row["latency_ms"]


def test_sparse_rdma_formula():
    sc = scenario(cluster={"servers": 2})  # a remote pool: NICs, not DRAM loopback, bind the network step
    row = mb.measure_sparse(sc, mb.pick_system(sc, "rdma-pool"))
    nic, hw, gpu, cl = sc.hardware.nic, sc.hardware, sc.gpu, sc.cluster
    net_rate = cl.nics_per_server * nic.ports * nic.port_gbps * nic.efficiency
    h2d = min(gpu.host_h2d_gbps, hw.pcie_switch.uplink_gbps, hw.host.dram_gbps_per_socket)
    b = row["bytes"]
    expected = (max(row["work_requests"] * nic.per_wr_us * 1e-6, b / (net_rate * GB))
                + (nic.latency_us + hw.network_switch.latency_us) * 1e-6
                + gpu.memcpy_call_us * 1e-6 + hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
                + b / (h2d * GB))
    assert row["latency_ms"] == pytest.approx(expected * 1e3, rel=1e-9)


def test_sparse_rejects_bad_parameters():
    sc = scenario()
    sysc = mb.pick_system(sc, "cxl-pool")
    with pytest.raises(mb.MicrobenchError):
        mb.measure_sparse(sc, sysc, contiguous_fraction=1.0)
    with pytest.raises(mb.MicrobenchError):
        mb.measure_sparse(sc, sysc, outstanding_reads=0)
    with pytest.raises(mb.MicrobenchError):
        mb.measure_sparse(sc, mb.pick_system(sc, "rdma-pool"), rdma_copy="x")


# --------------------------------------------------------------------------- systems


def test_pick_system_by_name_kind_or_default():
    sc = scenario(systems=[{"name": "beluga", "kv": {"kind": "cxl-pool", "interleave": False}},
                           {"name": "vllm", "kv": {"kind": "hbm-only"}}])
    assert mb.pick_system(sc, "beluga").name == "beluga"
    assert mb.pick_system(sc, "cxl-pool").name == "beluga"
    assert mb.pick_system(sc, "rdma-pool").kv.chunk_tokens == 256
    with pytest.raises(mb.MicrobenchError, match="no external"):
        mb.pick_system(sc, "vllm")
    with pytest.raises(mb.MicrobenchError, match="no system"):
        mb.pick_system(sc, "nope")


# --------------------------------------------------------------------------- CLI


runner = CliRunner()


def test_cli_dense_json_and_csv(tmp_path):
    out = tmp_path / "sub" / "dense.csv"
    res = runner.invoke(microbench_app, ["dense", "--models", "llama-3.1-8b", "--tokens", "512", "--json",
                                         "--out", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert payload["study"] == "dense" and payload["scenario"] == "quickstart"
    assert len(payload["rows"]) == 3 * 2
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert {"latency_ms", "wire_ms", "queueing_ms", "bottleneck"} <= set(rows[0])
    assert float(rows[0]["latency_ms"]) == pytest.approx(payload["rows"][0]["latency_ms"])


def test_cli_sparse_table_and_json_file(tmp_path):
    out = tmp_path / "a" / "b" / "sparse.json"
    res = runner.invoke(microbench_app, ["sparse", "--set", "hardware.nic.per_wr_us=0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "sparse" in res.stdout and "qwen3-32b" in res.stdout
    payload = json.loads(out.read_text())
    assert payload["params"]["piece_bytes"] == 144.0
    assert len(payload["rows"]) == 4
    rdma = [r for r in payload["rows"] if r["kind"] == "rdma-pool"][0]
    assert rdma["cpu_work_ms"] == pytest.approx(rdma["work_requests"] * 0.5e-3)


def test_cli_transfer_with_concurrency():
    res = runner.invoke(microbench_app, ["transfer", "--system", "cxl-pool", "-k", "4", "--tokens", "1024",
                                         "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["rows"][0]
    assert row["concurrency"] == 4 and row["queueing_ms"] > 0


@pytest.mark.parametrize("args", [
    ["transfer", "--system", "hbm-only"],
    ["transfer", "--direction", "sideways"],
    ["dense", "--out", "x.txt"],
    ["dense", "--scenario", "no-such-scenario"],
    ["dense", "--set", "cluster.servers=-1"],
    ["sparse", "--piece-bytes", "big"],
])
def test_cli_errors_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(microbench_app, args)
    assert res.exit_code == 2, res.output
    assert "error" in res.output
