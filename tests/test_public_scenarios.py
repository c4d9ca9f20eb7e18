"""The public scenarios resolve, and the phase option they rely on (wait_for_saves) works."""

from __future__ import annotations

import copy

import pytest
import yaml

from belusim.config.scenario import resolve_scenario
from belusim.paths import scenarios_dir
from belusim.report.metrics import Recorder
from belusim.sim.cluster import simulate

PUBLIC = sorted((scenarios_dir() / "public").glob("*.yaml"))


def test_public_scenarios_exist_and_resolve():
    names = {p.stem for p in PUBLIC}
    assert {"vllm-offload-single-request", "vllm-offload-throughput",
            "llmd-tiered-prefix-cache-memory-bound", "llmd-tiered-prefix-cache-compute-bound"} <= names
    for p in PUBLIC:
        sc, _ = resolve_scenario(p)
        assert sc.engine.vllm is not None  # every public setup states its vLLM defaults


def _phase_rows(raw: dict) -> dict:
    sc, _ = resolve_scenario(raw)
    rec = Recorder()
    simulate(sc, sc.systems[0], rec)
    return {r[1]: r for r in rec.rows}  # phase -> row (one request per phase)


@pytest.mark.parametrize("wait", [True, False])
def test_reload_after_saves_finish_hits_the_whole_prompt(wait):
    raw = yaml.safe_load((scenarios_dir() / "public" / "vllm-offload-single-request.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["run"]["phases"] = [p for p in raw["run"]["phases"] if p["name"] in ("compute-10k", "load-10k")]
    raw["run"]["phases"][1]["wait_for_saves"] = wait
    rows = _phase_rows(raw)
    comp, load = rows["compute-10k"], rows["load-10k"]
    tier_hit = load[9] / load[6]  # tier_hit_tokens / prompt_tokens
    if wait:
        assert tier_hit > 0.99 and load[17] < comp[17] / 4  # ttft
    else:
        # the save of the compute phase is still in flight when the reload arrives
        assert tier_hit < 0.99
