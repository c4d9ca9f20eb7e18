"""Tensor parallelism: interconnect cards, how TP splits weights and KV, collectives in the
step time, tier transfers split over the ranks' own links."""

from __future__ import annotations

import pytest

from belusim.config.scenario import ConfigError, load_card, resolve_scenario


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
