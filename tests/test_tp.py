"""Tensor parallelism: interconnect cards, how TP splits weights and KV, collectives in the
step time, tier transfers split over the ranks' own links."""

from __future__ import annotations

import pytest
from belusim.sim.kernel import Environment

from belusim.compute.roofline import ComputeModel
from belusim.config.scenario import GB, ConfigError, load_card, resolve_scenario
from belusim.policy.request import Request
from belusim.policy.scheduler import Load
from belusim.report.metrics import RECORD_FIELDS, Recorder
from belusim.sim.cluster import hbm_kv_blocks, simulate
from belusim.transport.kvpath import KVPaths


def _scenario(gpu="h100", tp=1, gpus=8, kv=None, **over):
    d = {"name": "tp", "model": "qwen3-32b", "gpu": gpu,
         "cluster": {"servers": 1, "gpus_per_server": gpus, "tensor_parallel": tp},
         "systems": [{"name": "s", "kv": kv or {"kind": "hbm-only"}}],
         "workload": {"kind": "lveval-synthetic", "num_prompts": 8, "truncate_tokens": 3000,
                      "arrival": {"process": "closed", "clients": 4}}}
    d.update(over)
    return resolve_scenario(d)[0]


def test_all_reduce_follows_the_ring_formula():
    ic = load_card("interconnects", "nvlink4")
    n, size = 4, 64 * 2**20
    steps = 2 * (n - 1)
    wire = size * steps / n
    simple = (ic.simple_base_us + steps * ic.simple_step_us) * 1e-6 + wire / (ic.bus_gbps * 1e9)
    ll = (ic.ll_base_us + steps * ic.ll_step_us) * 1e-6 + wire / (ic.bus_gbps * ic.ll_bw_fraction * 1e9)
    assert ic.all_reduce_s(size, n) == pytest.approx(min(simple, ll))
    # a large buffer goes at the Simple protocol's bus bandwidth, a tiny one at LL's latency
    assert ic.all_reduce_s(size, n) == pytest.approx(simple)
    assert ic.all_reduce_s(1024, n) == pytest.approx((ic.ll_base_us + steps * ic.ll_step_us) * 1e-6, rel=0.05)
    assert ic.all_reduce_s(size, 1) == 0.0
    # busBw = algBw x 2(n-1)/n: at large sizes, algBw approaches busBw x n / (2(n-1))
    big = 8 * 2**30
    alg = big / ic.all_reduce_s(big, 8)
    assert alg * 2 * 7 / 8 == pytest.approx(ic.bus_gbps * 1e9, rel=0.01)


def test_pcie_all_reduce_is_slower_than_nvlink():
    nv, pcie = load_card("interconnects", "nvlink4"), load_card("interconnects", "pcie-gen5")
    for size in (16 * 1024, 2**20, 64 * 2**20):
        assert pcie.all_reduce_s(size, 2) > nv.all_reduce_s(size, 2)


@pytest.mark.parametrize("gpu,ic", [("h200", "nvlink4"), ("h800", "nvlink4-h800"), ("a100-80gb", "nvlink3"),
                                    ("b200", "nvlink5"), ("l40s", "pcie-gen4"), ("h100-pcie", "pcie-gen5"),
                                    ("rtx-pro-6000", "pcie-gen5")])
def test_gpu_card_names_its_interconnect(gpu, ic):
    sc, _ = resolve_scenario({"name": "t", "model": "qwen3-32b", "gpu": gpu,
                              "systems": [{"name": "v", "kv": {"kind": "hbm-only"}}],
                              "workload": {"kind": "lveval-synthetic", "num_prompts": 2}})
    assert sc.interconnect.id == ic


def test_scenario_can_name_another_interconnect():
    sc, _ = resolve_scenario({"name": "t", "model": "qwen3-32b", "gpu": "h100", "interconnect": "pcie-gen5",
                              "systems": [{"name": "v"}], "workload": {"kind": "lveval-synthetic", "num_prompts": 2}})
    assert sc.interconnect.kind == "pcie"
    with pytest.raises(ConfigError, match="interconnects card 'nvlink9'"):
        resolve_scenario({"name": "t", "model": "qwen3-32b", "gpu": "h100", "interconnect": "nvlink9",
                          "systems": [{"name": "v"}], "workload": {"kind": "lveval-synthetic", "num_prompts": 2}})


# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_tp_splits_kv_and_weights_exactly(tp):
    m = load_card("llms", "qwen3-32b")  # 8 KV heads
    assert m.kv_heads_per_rank(tp) == 8 // tp
    assert m.kv_bytes_per_token_per_rank(tp) * tp == m.kv_bytes_per_token
    assert m.fragment_bytes(16, tp) * tp == m.fragment_bytes(16)
    assert m.weight_bytes_per_rank(tp) * tp == pytest.approx(m.weight_bytes, rel=1e-15)


def test_fewer_kv_heads_than_ranks_replicates_one_head_per_rank():
    m = load_card("llms", "qwen3-32b")
    m.check_tensor_parallel(16)
    assert m.kv_heads_per_rank(16) == 1
    assert m.kv_bytes_per_token_per_rank(16) * 16 == 2 * m.kv_bytes_per_token  # each head on two ranks
    odd = m.model_copy(update={"q_heads": 24, "kv_heads": 6})
    with pytest.raises(ValueError, match="6 KV heads must divide one another"):
        odd.check_tensor_parallel(4)


def test_hbm_blocks_are_what_one_rank_holds():
    sc1, sc2 = _scenario(tp=1), _scenario(tp=2)
    m, g, e = sc1.model, sc1.gpu, sc1.engine
    budget = g.hbm_gb * GB * e.gpu_memory_utilization
    assert hbm_kv_blocks(sc1) == int((budget - m.weight_bytes) // (m.kv_bytes_per_token * 16))
    assert hbm_kv_blocks(sc2) == int((budget - m.weight_bytes / 2) // (m.kv_bytes_per_token / 2 * 16))
    assert hbm_kv_blocks(sc2) > 2 * hbm_kv_blocks(sc1)  # half the heads and half the weights per GPU


# --------------------------------------------------------------------------- compute


def test_tp_step_time_splits_work_and_adds_two_all_reduces_per_layer():
    m, g, ic = load_card("llms", "qwen3-32b"), load_card("gpus", "h100"), load_card("interconnects", "nvlink4")
    one, two = ComputeModel.build(m, g), ComputeModel.build(m, g, 2, ic)
    tokens, units, ctx = 2048, 2048 * 5000.0, 0
    assert two.comm_time(tokens) == pytest.approx(2 * m.layers * ic.all_reduce_s(tokens * m.hidden * 2, 2))
    t1 = one.step_time(tokens, units, ctx, 1) - one.step_overhead_s
    t2 = two.step_time(tokens, units, ctx, 1) - two.step_overhead_s
    assert t2 == pytest.approx(t1 / 2 + two.comm_time(tokens), rel=1e-12)
    # decode: the per-rank KV read halves too, and the closed form keeps the all-reduces
    a, b = two.decode_run(32, 10_000)
    assert a + b * 10_000 == pytest.approx(two.step_time(32, 0.0, 10_000, 32), rel=1e-12)
    assert b == pytest.approx(one.decode_run(32, 0)[1] / 2)
    with pytest.raises(ValueError, match="interconnect"):
        ComputeModel.build(m, g, 2)


# --------------------------------------------------------------------------- tier transfers


def test_tp2_tier_load_runs_two_concurrent_flows_on_two_gpu_links():
    sc = _scenario(tp=2, gpus=2, kv={"kind": "local-dram"})
    env = Environment()
    paths = KVPaths(env, sc, sc.systems[0].kv)
    assert len(paths.instance_places) == 1
    place = paths.instance_places[0]
    assert [r.name for r in place.ranks] == ["s0.gpu0", "s0.gpu1"]
    nblocks = 64
    req = Request(1, nblocks * 16 + 1, 1, list(range(nblocks)), 0.0)
    env.process(paths.load(place, Load(req, 0, nblocks)))
    env.run(until=1e-3)  # after the copy launch, well before the end
    links = paths.fabric.links
    gpu0, gpu1 = links["s0.gpu0.load"], links["s0.gpu1.load"]
    on_gpus = [[lk.name for lk in fl.links if lk in (gpu0, gpu1)] for fl in paths.fabric._active]
    assert sorted(on_gpus) == [["s0.gpu0.load"], ["s0.gpu1.load"]]  # one flow on each
    env.run()
    total = nblocks * 16 * sc.model.kv_bytes_per_token
    assert gpu0.bytes_carried == pytest.approx(total / 2)
    assert gpu1.bytes_carried == pytest.approx(total / 2)
    assert paths.stats.load_bytes == pytest.approx(total)
    assert paths.fabric.bytes_delivered == pytest.approx(paths.fabric.bytes_requested)


def test_tp2_load_is_faster_than_tp1_when_the_gpu_links_bound_it():
    def load_time(tp):
        sc = _scenario(tp=tp, gpus=2, kv={"kind": "local-dram"},
                       cluster={"servers": 1, "gpus_per_server": 2, "tensor_parallel": tp, "gpus_per_pcie_switch": 1})
        env = Environment()
        paths = KVPaths(env, sc, sc.systems[0].kv)
        req = Request(1, 64 * 16 + 1, 1, list(range(64)), 0.0)
        env.process(paths.load(paths.instance_places[0], Load(req, 0, 64)))
        env.run()
        return env.now
    t1, t2 = load_time(1), load_time(2)
    assert t2 < 0.6 * t1  # each rank on its own switch: about half the time plus the fixed launch


# --------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("gpu", ["h100", "h200"])
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_qwen3_32b_runs_at_tp(gpu, tp):
    sc = _scenario(gpu=gpu, tp=tp, gpus=8, kv={"kind": "local-dram", "capacity_gb": 50})
    run = simulate(sc, sc.systems[0], Recorder())
    c = run.checks
    assert c["requests_submitted"] == c["requests_finished"] == 16 and c["requests_rejected"] == 0
    assert c["kv_blocks_in_use_at_end"] == 0
    assert c["bytes_requested"] == pytest.approx(c["bytes_delivered"], rel=1e-9)
    assert run.transfers["saves"] > 0



def test_tp_shortens_a_compute_bound_prefill():
    # one 3000-token prompt alone: TP 2 does about half the work per rank plus all-reduces
    def ttft(tp):
        sc = _scenario(tp=tp, gpus=2, workload={"kind": "lveval-synthetic", "num_prompts": 1,
                                                  "truncate_tokens": 3000,
                                                  "arrival": {"process": "closed", "clients": 1}})
        rec = Recorder()
        simulate(sc, sc.systems[0], rec)
        return rec.rows[0][RECORD_FIELDS.index("ttft_s")]
    t1, t2 = ttft(1), ttft(2)

    assert 0.45 * t1 < t2 < 0.75 * t1
