"""The command line, through typer's CliRunner."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.scenario import resolve_scenario

from belusim.report.metrics import SUMMARY_KEYS as RESULT_KEYS

TINY = {
    "name": "tiny-cli",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 2},
    "engine": {"kv_blocks": 400},
    "systems": [{"name": "hbm-only", "kv": {"kind": "hbm-only"}},
                {"name": "cxl-pool", "kv": {"kind": "cxl-pool"}}],
    "workload": {"kind": "lveval-synthetic", "num_prompts": 4, "truncate_tokens": 1000,
                 "arrival": {"process": "closed", "clients": 2}},
}


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return p


def test_run_json_schema(runner, tiny):
    r = runner.invoke(app, ["run", str(tiny), "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)  # stdout holds exactly one JSON object
    assert list(out) == ["schema_version", "scenario", "goodput", "results"]
    assert out["scenario"] == "tiny-cli"
    assert len(out["results"]) == 4
    for row in out["results"]:
        assert list(row) == RESULT_KEYS
        assert row["requests"] == 4
        assert row["mean_ttft_ms"] > 0 and row["request_throughput"] > 0
    assert [(r_["system"], r_["phase"]) for r_ in out["results"]] == [
        ("hbm-only", "populate"), ("hbm-only", "hit"), ("cxl-pool", "populate"), ("cxl-pool", "hit")]


def test_run_json_with_set_and_systems(runner, tiny):
    r = runner.invoke(app, ["run", str(tiny), "--json", "-q", "--systems", "cxl-pool",
                            "--set", "systems.cxl-pool.kv.interleave=false"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert {row["system"] for row in out["results"]} == {"cxl-pool"}
    assert r.stderr == ""  # --quiet: no progress lines


def test_run_out_dir_writes_files(runner, tiny, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", str(tiny), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.stderr
    with open(out / "requests.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 4  # systems x phases x requests
    keys = {(row["system"], row["phase"], row["req_id"]) for row in rows}
    assert len(keys) == len(rows)
    assert {row["status"] for row in rows} == {"finished"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "tiny-cli"
    assert len(summary["results"]) == 4 and len(summary["details"]) == 2
    for d in summary["details"]:
        assert d["checks"]["kv_blocks_in_use_at_end"] == 0
    resolved = out / "scenario.resolved.yaml"
    data = yaml.safe_load(resolved.read_text())
    assert data["gpu"]["hbm_gb"] == 96  # cards expanded
    # the resolved scenario resolves again to the same scenario
    assert resolve_scenario(resolved)[0].model_dump() == resolve_scenario(tiny)[0].model_dump()
    assert "tiny-cli" in r.stdout  # the table
    # the table fits the non-terminal width; the whole TTFT split comes as lines below it
    assert max(len(line) for line in r.stdout.splitlines()) <= 132
    split = r.stdout.split("mean TTFT went to:")[1].splitlines()
    assert any(line.strip().startswith("cxl-pool") and "%" in line for line in split)


def test_bad_scenario_exits_2_naming_file_and_field(runner, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**TINY, "engine": {"max_num_batched_tokenz": 1}}))
    r = runner.invoke(app, ["run", str(p), "--json"])
    assert r.exit_code == 2
    flat = "".join(r.stderr.split())  # the console may wrap long lines
    assert "".join(str(p).split()) in flat
    assert "engine.max_num_batched_tokenz" in r.stderr
    assert r.stdout == ""


def test_bad_override_and_missing_scenario_exit_2(runner, tiny):
    r = runner.invoke(app, ["run", str(tiny), "--set", "engine.block_size=-1"])
    assert r.exit_code == 2 and "engine.block_size" in r.stderr
    r = runner.invoke(app, ["run", str(tiny), "--systems", "nope"])
    assert r.exit_code == 2 and "nope" in r.stderr
    r = runner.invoke(app, ["run", "no-such-scenario"])
    assert r.exit_code == 2 and "no-such-scenario" in r.stderr


def test_simulation_errors_exit_2_with_a_message(runner, tiny):
    r = runner.invoke(app, ["run", str(tiny), "-q", "--set", "run.max_sim_time_s=0.5"])
    assert r.exit_code == 2
    assert "did not finish" in r.stderr and "max_sim_time_s" in "".join(r.stderr.split())
    r = runner.invoke(app, ["run", str(tiny), "-q", "--set", "engine.kv_blocks=null", "--set", "gpu.hbm_gb=60"])
    assert r.exit_code == 2
    assert "leaves no KV cache" in " ".join(r.stderr.split())


def test_error_message_keeps_a_long_path_on_one_line(runner, tmp_path):
    deep = tmp_path / ("a_rather_long_directory_name_" * 3)
    deep.mkdir()
    p = deep / "bad_scenario.yaml"
    p.write_text(yaml.safe_dump({**TINY, "engine": {"kv_blockz": 1}}))
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 2
    assert str(p) in r.stderr


def test_schema_is_valid_json(runner):
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "Scenario"
    assert {"model", "gpu", "engine", "systems", "workload"} <= set(schema["properties"])


def test_list_shows_scenarios_and_cards(runner):
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0
    assert "quickstart.yaml" in r.stdout
    assert "qwen3-32b" in r.stdout and "h20" in r.stdout and "xconn-xc50256" in r.stdout


def test_show_prints_the_resolved_scenario(runner, tiny):
    r = runner.invoke(app, ["show", str(tiny), "--set", "engine.max_num_batched_tokens=1024"])
    assert r.exit_code == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert data["engine"]["max_num_batched_tokens"] == 1024
    assert data["model"]["layers"] == 64
