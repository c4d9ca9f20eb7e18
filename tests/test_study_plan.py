"""belusim plan: SLO parsing, the rate search, costs and break-even, the smallest configuration."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.lookup import find_scenario
from belusim.config.scenario import ConfigError, resolve_scenario
from belusim.study.cost import break_even, load_prices, system_cost
from belusim.study.plan import Search, keeps_up, parse_slo

TINY = {
    "name": "tiny-plan",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 2},
    "engine": {"kv_blocks": 400},  # HBM holds about 3 prompts: the hit phase needs the pool
    "systems": [{"name": "vllm", "kv": {"kind": "hbm-only"}},
                {"name": "cxl", "kv": {"kind": "cxl-pool", "capacity_gb": 100}}],
    "workload": {"kind": "lveval-synthetic", "num_prompts": 16, "truncate_tokens": 2000,
                 "output": {"mode": "fixed", "tokens": 16}, "arrival": {"process": "closed", "clients": 4}},
    "plan": {"sizeable": {"cluster.servers": [1, 2], "cluster.cxl_devices": [8, 32]}},
}


def test_parse_slo():
    b = parse_slo("ttft_p99=5s, tpot_p50=200ms,e2el_mean=1.5e1s")
    assert [(x.key, x.limit_ms) for x in b] == [("p99_ttft_ms", 5000.0), ("median_tpot_ms", 200.0),
                                                ("mean_e2el_ms", 15000.0)]
    for bad in ("ttft_p99=5", "ttft_p95=5s", "latency_p99=1s", "ttft_p99", ""):
        with pytest.raises(ConfigError, match="--slo"):
            parse_slo(bad)


def test_keeps_up():
    row = {"completed": 100, "mean_e2el_ms": 2000.0, "arrival_span_s": 50.0, "request_throughput": 100 / 52.0}
    assert keeps_up(row, 0.9)
    assert not keeps_up({**row, "request_throughput": 1.5}, 0.9)  # a 22% shortfall
    assert not keeps_up({**row, "completed": 0}, 0.9)


def test_search_brackets_then_bisects():
    true_max = 3.3
    s = Search("x", 1, start=1.0, min_qps=1 / 64, max_qps=1000, tol=0.1)
    rates = []
    while (r := s.next_rate()) is not None:
        rates.append(r)
        s.record(r, r <= true_max, {"rate": r})
    assert rates[:3] == [1.0, 2.0, 4.0]
    assert s.lo <= true_max < s.hi and s.hi / s.lo <= 1.1
    assert s.lo_row == {"rate": s.lo}
    s = Search("x", 1, start=1.0, min_qps=1 / 64, max_qps=1000, tol=0.1)
    while (r := s.next_rate()) is not None:
        s.record(r, False, {})
    assert s.lo is None and s.hi == pytest.approx(1 / 64, rel=0.01) and "misses" in s.note


def test_costs_from_part_cards_and_price_card():
    sc, _ = resolve_scenario(find_scenario("beluga/e2e"))
    prices = load_prices()
    assert all(k in prices.sources for k in ("gpu_server_usd", "dram_usd_per_gb"))
    base = system_cost(sc, sc.system("vllm"), prices)
    assert base["total_usd"] == 2 * prices.gpu_server_usd
    rdma = system_cost(sc, sc.system("rdma"), prices)
    # the paper's Table 1: 4 NICs a server at USD 1,745 and one RoCE switch at USD 16,000
    assert rdma["total_usd"] - base["total_usd"] == pytest.approx(2 * 4 * 1745 + 16000)
    cxl = system_cost(sc, sc.system("cxl"), prices)
    # 2 adapters a server at USD 210, 2 switch chips at USD 5,800, 32 x 256 GB of DRAM
    assert cxl["total_usd"] - base["total_usd"] == pytest.approx(2 * 2 * 210 + 2 * 5800 + 32 * 256 * prices.dram_usd_per_gb)
    assert all(p["source"] for p in cxl["parts"])
    with pytest.raises(ConfigError, match="not found"):
        load_prices("no-such-card")


def test_break_even():
    be = break_even({"a": 100.0, "b": 110.0, "c": 130.0}, {"a": 1.0, "b": 1.2, "c": 1.2}, "a")
    assert be["b"]["extra_paid_for_usd"] == pytest.approx(20.0) and be["b"]["pays_off"]
    assert be["c"]["break_even_qps_ratio"] == pytest.approx(1.3) and not be["c"]["pays_off"]
    assert be["a"]["extra_usd"] == 0


ARGS = ["--slo", "ttft_p99=2500ms", "--seeds", "2", "--tolerance", "0.3", "--start-qps", "2", "--max-qps", "64",
        "--workers", "0", "--json", "-q", "--target-qps", "4"]


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_plan_end_to_end_on_a_tiny_scenario(tiny, tmp_path):
    out = tmp_path / "plan"
    r = CliRunner().invoke(app, ["plan", str(tiny), *ARGS, "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert json.loads((out / "plan.json").read_text())["systems"] == res["systems"]
    rows = {x["system"]: x for x in res["systems"]}
    cxl = rows["cxl"]
    assert cxl["max_qps"] > 0 and cxl["max_qps_min"] <= cxl["max_qps"] <= cxl["max_qps_max"]
    assert cxl["usd_per_qps"] == pytest.approx(cxl["cost_usd"] / cxl["max_qps"])
    for seed in cxl["per_seed"]:
        # the answer passed, the first rate above it failed, within the tolerance
        assert seed["at_max"]["p99_ttft_ms"] <= 2500
        assert seed["first_fail_qps"] / seed["max_qps"] <= 1.3 + 1e-9
        fails = [p for p in res["points"] if p["system"] == "cxl" and p["seed"] == seed["seed"]
                 and p["rate_qps"] == seed["first_fail_qps"] and p["stage"] == "max"]
        assert fails and not fails[0]["pass"] and fails[0]["why"]
    # hit-phase prompts come from the pool: the CXL system sustains more than HBM alone
    assert cxl["max_qps"] > rows["vllm"]["max_qps"]
    assert rows["vllm"]["max_qps"] > 0
    assert res["break_even"]["cxl"]["qps_ratio"] == pytest.approx(cxl["max_qps"] / rows["vllm"]["max_qps"])
    # the cheapest configuration at 4 QPS passes at every seed there
    tgt = res["target"]["cxl"]
    assert tgt["config"] is not None
    at = [p for p in res["points"] if p["stage"] == "target" and p["system"] == "cxl" and p["config"] == tgt["config"]]
    assert len(at) == 2 and all(p["pass"] for p in at)
    # a rerun with the same --out runs nothing new and gives the same answer
    r2 = CliRunner().invoke(app, ["plan", str(tiny), *ARGS, "--out", str(out)])
    assert json.loads(r2.stdout)["systems"] == res["systems"]


def test_plan_errors(tiny):
    r = CliRunner().invoke(app, ["plan", str(tiny), "--slo", "ttft_p99=5"])
    assert r.exit_code == 2 and "unit" in r.stderr
    r = CliRunner().invoke(app, ["plan", str(tiny), "--slo", "ttft_p99=5s", "--systems", "nope", "--workers", "0"])
    assert r.exit_code == 2 and "nope" in r.stderr
    d = dict(TINY)
    d.pop("plan")
    p = tiny.with_name("noplan.yaml")
    p.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(app, ["plan", str(p), "--slo", "ttft_p99=5s", "--seeds", "1", "--workers", "0", "-q",
                                 "--target-qps", "1", "--systems", "cxl", "--tolerance", "0.5"])
    assert r.exit_code == 2 and "sizeable" in r.stderr
