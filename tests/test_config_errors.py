"""Scenario errors name the right source (file, --set item, calibration profile) and the
field; sizes past their bounds and non-finite values are refused before anything is built."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.scenario import ConfigError, SIZE_LIMITS, resolve_scenario
from tests.test_core_cli import TINY


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return p


@pytest.mark.parametrize("item,field", [
    ("cluster.servers=1000000000", "cluster.servers"),
    ("cluster.cxl_adapters_per_server=1000000000", "cluster.cxl_adapters_per_server"),
    ("workload.num_prompts=1000000000000", "workload.num_prompts"),
    ("systems.cxl-pool.kv.capacity_gb=1e12", "systems.1.kv.capacity_gb"),
])
def test_sizes_past_their_bound_are_refused_naming_the_set_item(tiny, item, field):
    with pytest.raises(ConfigError) as e:
        resolve_scenario(tiny, [item])
    msg = str(e.value)
    assert msg.startswith(f"--set {item}: invalid scenario") and f"{field}: " in msg and "past the bound" in msg
    assert str(tiny) not in msg


def test_every_size_limit_names_a_real_field():
    sc, _ = resolve_scenario(TINY)
    from belusim.config.scenario import _values_at

    for dotted in SIZE_LIMITS:
        if "phases" in dotted:
            continue
        assert _values_at(sc, dotted.split(".")), dotted


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_capacity_is_refused(tiny, value):
    with pytest.raises(ConfigError, match=r"systems\.1\.kv\.capacity_gb: Input should be a finite number"):
        resolve_scenario(tiny, [f"systems.cxl-pool.kv.capacity_gb={value}"])


def test_block_size_that_does_not_divide_the_chunk_blames_block_size(tiny):
    with pytest.raises(ConfigError, match=r"engine\.block_size: 7 does not divide .*cxl-pool \(16\)") as e:
        resolve_scenario(tiny, ["engine.block_size=7"])
    assert "chunk_tokens (16) must be" not in str(e.value)


def test_set_errors_name_the_set_item_not_the_file(tiny):
    with pytest.raises(ConfigError) as e:
        resolve_scenario(tiny, ["engine.max_num_seqs=-1"])
    assert str(e.value).startswith("--set engine.max_num_seqs=-1: invalid scenario")
    # an error of the file and one of --set in the same run: each line says where it is from
    bad = dict(TINY, engine={"kv_blocks": -5})
    with pytest.raises(ConfigError) as e:
        resolve_scenario(bad, ["engine.max_num_seqs=-1"])
    lines = str(e.value).splitlines()
    assert lines[0] == "<scenario>: invalid scenario"
    assert any("max_num_seqs" in ln and "(set by --set engine.max_num_seqs=-1)" in ln for ln in lines)
    assert any("kv_blocks" in ln and "set by" not in ln for ln in lines)


def test_unknown_card_names_file_and_field(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"^--set gpu=h2000: field 'gpu': no gpus card 'h2000'"):
        resolve_scenario(tiny, ["gpu=h2000"])
    p = tmp_path / "card.yaml"
    p.write_text(yaml.safe_dump(dict(TINY, gpu={"card": "nope", "hbm_gb": 80})))
    with pytest.raises(ConfigError, match=rf"^{p}: field 'gpu.card': no gpus card 'nope'"):
        resolve_scenario(p)


def test_profile_errors_name_the_profile(tiny, tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"fitted": {"gpu.linear_efficiency": 7.0}}))
    with pytest.raises(ConfigError) as e:
        resolve_scenario(tiny, [], str(prof))
    assert str(e.value).startswith(f"calibration profile {prof}: invalid scenario")


def test_profile_of_another_gpu_is_applied_with_a_warning(tiny, tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"machine": {"gpu": {"name": "NVIDIA H100 80GB HBM3"}},
                                "fitted": {"gpu.linear_efficiency": 0.5}}))
    sc, _ = resolve_scenario(tiny, [], str(prof))  # TINY runs on h20
    assert sc.gpu.linear_efficiency == 0.5
    assert len(sc.warnings) == 1 and "'NVIDIA H100 80GB HBM3'" in sc.warnings[0] and "'h20'" in sc.warnings[0]
    sc, _ = resolve_scenario(tiny, ["gpu=h100"], str(prof))
    assert sc.warnings == []
    r = CliRunner().invoke(app, ["show", str(tiny), "--calibration", str(prof)])
    assert r.exit_code == 0 and "warning:" in r.stderr and "H100" in r.stderr


def test_duplicate_system_names_give_a_short_message(tiny):
    with pytest.raises(ConfigError) as e:
        resolve_scenario(tiny, ["systems.1.name=hbm-only"])
    assert "system names must be unique, repeated: ['hbm-only']" in str(e.value)
    assert len(str(e.value)) < 300


def test_empty_phases_and_duplicate_phase_names_are_refused(tiny):
    with pytest.raises(ConfigError, match=r"run\.phases: List should have at least 1 item"):
        resolve_scenario(tiny, ["run.phases=[]"])
    with pytest.raises(ConfigError, match="phase names must be unique"):
        resolve_scenario(tiny, ["run.phases=[{name: a}, {name: a}]"])


@pytest.mark.parametrize("value", [{"name": "h200-host"}, ["h200-host"], 3])
def test_calibration_that_is_not_a_string_names_file_and_field(tiny, value):
    data = yaml.safe_load(tiny.read_text())
    data["calibration"] = value
    tiny.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=r"calibration: expected a profile name or path") as e:
        resolve_scenario(tiny)
    assert str(e.value).startswith(f"{tiny}: ")
    res = CliRunner().invoke(app, ["run", str(tiny)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "calibration: expected a profile name or path" in " ".join(res.output.split())
