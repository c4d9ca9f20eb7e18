"""Configuration: strict validation with field paths, card expansion, overrides, card sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from belusim.config.scenario import (
    CARD_KINDS,
    ConfigError,
    list_cards,
    load_card,
    parse_set,
    resolve_scenario,
)
from belusim.paths import models_dir, scenarios_dir


def test_tiny_scenario_resolves_with_defaults(scenario_dict):
    sc, data = resolve_scenario(scenario_dict())
    assert sc.model.id == "qwen3-32b" and sc.gpu.id == "h20"
    assert sc.hardware.root_complex.p2p_total_gbps == 46  # a default part filled in
    assert sc.engine.block_size == 16 and sc.engine.max_num_batched_tokens == 2048
    assert data["gpu"]["hbm_gb"] == 96  # the resolved dict has cards expanded


def test_unknown_key_names_the_field_path(scenario_dict):
    d = scenario_dict(engine={"max_num_batched_tokenz": 4096})
    with pytest.raises(ConfigError) as e:
        resolve_scenario(d)
    assert "engine.max_num_batched_tokenz" in str(e.value)
    assert "<scenario>" in str(e.value)


def test_unknown_key_in_a_nested_system(scenario_dict):
    d = scenario_dict(systems=[{"name": "x", "kv": {"kind": "cxl-pool", "interleaved": True}}])
    with pytest.raises(ConfigError, match=r"systems\.0\.kv\.interleaved"):
        resolve_scenario(d)


@pytest.mark.parametrize("field,value", [
    ("engine.max_num_batched_tokens", -5),
    ("engine.max_num_batched_tokens", "lots"),
    ("engine.gpu_memory_utilization", 1.5),
    ("cluster.servers", 0),
])
def test_bad_value_names_the_field(scenario_dict, field, value):
    with pytest.raises(ConfigError) as e:
        resolve_scenario(scenario_dict(), [f"{field}={value}"])
    assert field in str(e.value)
    assert repr(value) in str(e.value)


def test_bad_literal_names_the_field(scenario_dict):
    d = scenario_dict(systems=[{"name": "x", "kv": {"kind": "nvme-pool"}}])
    with pytest.raises(ConfigError, match=r"systems\.0\.kv\.kind"):
        resolve_scenario(d)


def test_unknown_card_id_lists_available_ids(scenario_dict):
    with pytest.raises(ConfigError) as e:
        resolve_scenario(scenario_dict(gpu="h999"))
    msg = str(e.value)
    assert "h999" in msg and "h20" in msg and "h100" in msg
    with pytest.raises(ConfigError, match="qwen3-32b"):
        resolve_scenario(scenario_dict(model={"card": "gpt-5"}))


def test_set_overrides_and_named_list_items(scenario_dict):
    d = scenario_dict(systems=[{"name": "hbm-only", "kv": {"kind": "hbm-only"}},
                               {"name": "cxl-pool", "kv": {"kind": "cxl-pool", "interleave": True}}],
                      run={"phases": [{"name": "populate"}, {"name": "hit"}]})
    sc, data = resolve_scenario(d, [
        "systems.cxl-pool.kv.interleave=false",
        "engine.max_num_batched_tokens=4096",
        "systems.0.router.policy=least-loaded",
        "gpu.hbm_gb=80",
        "run.phases.hit.clear_hbm_cache=true",
    ])
    assert sc.system("cxl-pool").kv.interleave is False
    assert sc.engine.max_num_batched_tokens == 4096
    assert sc.system("hbm-only").router.policy == "least-loaded"
    assert sc.gpu.hbm_gb == 80 and sc.gpu.hbm_gbps == 4000
    assert [p.clear_hbm_cache for p in sc.run.phases] == [False, True]
    assert data["systems"][1]["kv"]["interleave"] is False


def test_set_errors(scenario_dict):
    with pytest.raises(ConfigError, match="no list item named 'nope'"):
        resolve_scenario(scenario_dict(), ["systems.nope.kv.kind=cxl-pool"])
    with pytest.raises(ConfigError, match="expected path.to.field=value"):
        parse_set(["engine.block_size"])
    assert parse_set(["a.b=1", "c=x y", "d=[1, 2]", "e="]) == [("a.b", 1), ("c", "x y"), ("d", [1, 2]), ("e", "")]


def test_card_override_mapping(scenario_dict):
    sc, _ = resolve_scenario(scenario_dict(gpu={"card": "h20", "hbm_gb": 80}))
    h20 = load_card("gpus", "h20")
    assert sc.gpu.hbm_gb == 80
    assert sc.gpu.hbm_gbps == h20.hbm_gbps and sc.gpu.host_h2d_gbps == h20.host_h2d_gbps
    assert sc.gpu.id == "h20+overrides"
    sc, _ = resolve_scenario(scenario_dict(gpu={"card": "h20"}))
    assert sc.gpu == h20


def test_card_override_with_a_bad_field_is_refused(scenario_dict):
    with pytest.raises(ConfigError, match=r"gpu\.hbm_gbz"):
        resolve_scenario(scenario_dict(gpu={"card": "h20", "hbm_gbz": 80}))


def test_set_a_card_field_to_a_card_id(scenario_dict):
    sc, _ = resolve_scenario(scenario_dict(), ["model=llama-3.1-8b", "gpu=h100"])
    assert sc.model.id == "llama-3.1-8b" and sc.gpu.id == "h100"


def test_scenario_level_checks(scenario_dict):
    dup = scenario_dict(systems=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ConfigError, match="unique"):
        resolve_scenario(dup)
    with pytest.raises(ConfigError, match="tensor_parallel=3 must divide gpus_per_server=2"):
        resolve_scenario(scenario_dict(), ["cluster.tensor_parallel=3"])
    with pytest.raises(ConfigError, match="pipeline parallelism is not simulated"):
        resolve_scenario(scenario_dict(), ["cluster.pipeline_parallel=2"])
    with pytest.raises(ConfigError, match="tensor_parallel=5 must divide the model.s 64 attention heads"):
        resolve_scenario(scenario_dict(cluster={"gpus_per_server": 10}), ["cluster.tensor_parallel=5"])
    with pytest.raises(ConfigError, match="systems"):
        resolve_scenario(scenario_dict(systems=[]))


def test_file_errors_name_the_file(tmp_path, scenario_dict):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(scenario_dict(engine={"kv_blockz": 3})))
    with pytest.raises(ConfigError) as e:
        resolve_scenario(p)
    assert str(p) in str(e.value) and "engine.kv_blockz" in str(e.value)
    with pytest.raises(ConfigError, match="file not found"):
        resolve_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        resolve_scenario(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_scenario(listy)


def test_calibration_profile_overrides_and_notes_source(tmp_path, scenario_dict):
    prof = tmp_path / "mine.json"
    prof.write_text(json.dumps({"fitted": {"gpu.copy_kernel_gbps": {"value": 41.5}, "gpu.memcpy_call_us": 1.9}}))
    sc, data = resolve_scenario(scenario_dict(), calibration=str(prof))
    assert sc.gpu.copy_kernel_gbps == 41.5 and sc.gpu.memcpy_call_us == 1.9
    assert "calibration profile mine.json" in sc.gpu.sources["copy_kernel_gbps"]
    # --set still wins over the profile
    sc, _ = resolve_scenario(scenario_dict(), ["gpu.copy_kernel_gbps=40"], calibration=str(prof))
    assert sc.gpu.copy_kernel_gbps == 40
    with pytest.raises(ConfigError, match="not found"):
        resolve_scenario(scenario_dict(), calibration=str(tmp_path / "nope.json"))


# --------------------------------------------------------------------------- card files


def _card_files():
    # models/vllm holds version profiles, not cards (tests/test_config_vllm_profiles.py)
    return sorted(p for p in models_dir().glob("*/*.yaml") if p.parent.name in CARD_KINDS)


def test_every_card_kind_has_cards_and_they_validate():
    files = _card_files()
    assert len(files) >= 11
    for kind in CARD_KINDS:
        ids = list_cards(kind)
        assert ids, f"no {kind} cards"
        for card_id in ids:
            card = load_card(kind, card_id)
            assert card.id == card_id


@pytest.mark.parametrize("path", _card_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_numeric_card_field_has_a_source(path: Path):
    data = yaml.safe_load(path.read_text())
    sources = data.get("sources") or {}
    numeric = [k for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert numeric, f"{path} has no numbers"
    missing = [k for k in numeric if k not in sources]
    assert not missing, f"{path}: no source for {missing}"
    # and every source names a field of the card kind (typos would hide a missing source)
    kind = CARD_KINDS[path.parent.name]
    unknown = [k for k in sources if k not in kind.model_fields]
    assert not unknown, f"{path}: sources for unknown fields {unknown}"
    for k, text in sources.items():  # "kind: where it comes from"
        kind_of_source, _, detail = str(text).partition(":")
        assert kind_of_source.strip() and detail.strip(), (path.name, k, text)


def _is_sweep(data) -> bool:
    return isinstance(data, dict) and "scenario" in data and "parameter" in data and "values" in data


def _yaml_files():
    return sorted(scenarios_dir().rglob("*.yaml"))


def _scenario_files():
    return [p for p in _yaml_files() if not _is_sweep(yaml.safe_load(p.read_text()))]


def _sweep_files():
    return [p for p in _yaml_files() if _is_sweep(yaml.safe_load(p.read_text()))]


def test_quickstart_is_packaged():
    assert scenarios_dir() / "quickstart.yaml" in _scenario_files()


@pytest.mark.parametrize("path", _scenario_files(), ids=lambda p: str(p.relative_to(scenarios_dir())))
def test_every_packaged_scenario_resolves(path: Path):
    sc, _ = resolve_scenario(path)
    assert sc.systems and sc.name


def _as_override(v) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "null" if v is None else str(v)


@pytest.mark.parametrize("path", _sweep_files(), ids=lambda p: str(p.relative_to(scenarios_dir())))
def test_every_point_of_every_packaged_sweep_resolves(path: Path):
    sweep = yaml.safe_load(path.read_text())
    for value in sweep["values"]:
        overrides = list(sweep.get("set") or []) + [f"{sweep['parameter']}={_as_override(value)}"]
        sc, _ = resolve_scenario(path.parent / sweep["scenario"], overrides)
        for name in sweep.get("systems") or []:
            sc.system(name)
