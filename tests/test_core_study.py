"""Prefill/decode disaggregation, `compare` and `sweep`."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.sim.cluster import SimulationError, simulate
from belusim.report.metrics import Recorder

CXL = {"name": "cxl", "kv": {"kind": "cxl-pool", "capacity_gb": 100}}
VLLM = {"name": "vllm", "kv": {"kind": "hbm-only"}}


def _records(rec: Recorder) -> list[dict]:
    return rec.frame().to_dict("records")


def test_disaggregated_requests_prefill_on_one_instance_and_decode_on_another(resolve):
    sc = resolve(["cluster.prefill_instances_per_server=1"], systems=[CXL],
                 cluster={"servers": 1, "gpus_per_server": 2})
    rec = Recorder()
    run = simulate(sc, sc.systems[0], rec)
    rows = [r for r in _records(rec) if r["phase"] == "populate"]
    assert len(rows) == 6 and all(r["status"] == "finished" for r in rows)
    # GPU 0 prefills, GPU 1 decodes: every request ends on the decode instance, after
    # loading its prompt's KV from the pool there.
    assert {r["instance"] for r in rows} == {1}
    assert all(r["kv_load_s"] > 0 for r in rows)
    assert all(r["finish_s"] > r["first_token_s"] > r["arrival_s"] for r in rows)
    assert run.transfers["loads"] >= 12  # every request of both phases is handed over
    assert run.checks["requests_finished"] == 12


def test_disaggregation_hands_kv_only_after_its_save_lands(resolve):
    sc = resolve(["cluster.prefill_instances_per_server=1"], systems=[CXL])
    rec = Recorder()
    simulate(sc, sc.systems[0], rec)
    for r in _records(rec):
        # the decode side loads after the first token (the prefill's last save follows it)
        assert r["load_start_s"] >= r["first_token_s"]


def test_disaggregation_without_a_tier_is_an_error(resolve):
    sc = resolve(["cluster.prefill_instances_per_server=1"], systems=[VLLM])
    with pytest.raises(SimulationError, match="hbm-only has none"):
        simulate(sc, sc.systems[0], Recorder())


def test_disaggregation_needs_a_decode_instance(resolve):
    from belusim.config.scenario import ConfigError

    with pytest.raises(ConfigError, match="prefill_instances_per_server"):
        resolve(["cluster.prefill_instances_per_server=2"], systems=[CXL])


@pytest.fixture
def tiny_file(tmp_path, scenario_dict):
    path = tmp_path / "tiny.yaml"
    # HBM holds about one prompt per instance, so the hit phase needs the pool
    path.write_text(yaml.safe_dump(scenario_dict(systems=[VLLM, CXL], engine={"kv_blocks": 120})))
    return path


def test_compare_json_has_ratios_against_the_baseline(tiny_file):
    res = CliRunner().invoke(app, ["compare", str(tiny_file), "--baseline", "vllm", "--json", "-q"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["scenario"] == "tiny" and out["baseline"] == "vllm"
    rows = {(r["system"], r["phase"]): r for r in out["results"]}
    assert set(rows) == {(s, p) for s in ("vllm", "cxl") for p in ("populate", "hit")}
    for p in ("populate", "hit"):
        assert rows[("vllm", p)]["mean_ttft_ms_vs_baseline"] == pytest.approx(1.0)
        cxl = rows[("cxl", p)]
        assert cxl["mean_ttft_ms_vs_baseline"] == pytest.approx(cxl["mean_ttft_ms"] / rows[("vllm", p)]["mean_ttft_ms"])
    # in the hit phase the pool serves the prompts: faster first tokens than recomputing
    assert rows[("cxl", "hit")]["mean_ttft_ms_vs_baseline"] < 1.0


def test_compare_rejects_an_unknown_baseline(tiny_file):
    res = CliRunner().invoke(app, ["compare", str(tiny_file), "--systems", "cxl", "--baseline", "nope", "-q"])
    assert res.exit_code == 2
    assert "nope" in res.output


def test_sweep_writes_one_row_per_value_system_and_phase(tmp_path, tiny_file):
    out = tmp_path / "reports" / "interleave.csv"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "t", "scenario": tiny_file.name, "systems": ["cxl"], "parameter": "systems.cxl.kv.interleave",
        "label": "interleave", "values": [True, False], "output": str(out),
    }))
    res = CliRunner().invoke(app, ["sweep", str(sweep), "-q"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out)))
    assert [(r["interleave"], r["phase"]) for r in rows] == [
        ("True", "populate"), ("True", "hit"), ("False", "populate"), ("False", "hit")]
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data) == 4
    on, off = (float(rows[i]["mean_ttft_ms"]) for i in (1, 3))
    assert math.isfinite(on) and math.isfinite(off)
    # non-interleaved chunks sit on one 22.5 GB/s device: loads are slower
    assert off > on


def test_sweep_file_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "scenario": "s.yaml", "values": [1], "output": "o.csv"}))
    res = CliRunner().invoke(app, ["sweep", str(bad)])
    assert res.exit_code == 2
    assert "bad.yaml" in res.output and "parameter" in res.output


def test_a_scenario_runs_on_lveval_files_in_the_hub_layout(tmp_path, scenario_dict):
    """jsonl and zip members, read by a scenario whose path is relative to its file."""
    import zipfile

    def rec(ctx, q, ds, lang):
        return {"input": q, "context": ctx, "answers": ["x"], "length": len(ctx), "dataset": ds, "language": lang}

    d = tmp_path / "LVEval"
    d.mkdir()
    ctx_en = " ".join(f"alpha{i}" for i in range(600))
    (d / "factrecall_en_16k.jsonl").write_text("".join(
        json.dumps(rec(ctx_en, f"question {i}?", "factrecall_en", "en")) + "\n" for i in range(3)))
    with zipfile.ZipFile(d / "cmrc_mixup.zip", "w") as zf:
        zf.writestr("cmrc_mixup/cmrc_mixup_16k.jsonl", "".join(
            json.dumps(rec("北京是中国的首都。" * 60, f"问题{i}？", "cmrc_mixup", "zh"), ensure_ascii=False) + "\n"
            for i in range(2)))
    scen = scenario_dict(systems=[VLLM, CXL], engine={"kv_blocks": 60},
                         workload={"kind": "lveval-files", "path": "LVEval", "levels": ["16k"],
                                   "arrival": {"process": "closed", "clients": 2}})
    for k in ("num_prompts", "truncate_tokens"):
        scen["workload"].pop(k, None)
    path = tmp_path / "lv.yaml"
    path.write_text(yaml.safe_dump(scen, allow_unicode=True))
    res = CliRunner().invoke(app, ["run", str(path), "--json", "-q"])
    assert res.exit_code == 0, res.output
    rows = {(r["system"], r["phase"]): r for r in json.loads(res.stdout)["results"]}
    assert all(r["requests"] == 5 for r in rows.values())
    # the three English records share their context: the pool serves it in the hit phase
    assert rows[("cxl", "hit")]["tier_hit_ratio"] > 0
