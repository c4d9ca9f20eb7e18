"""Shared fixtures of the core test-suite: a tiny scenario dict and its resolution."""

from __future__ import annotations

import pytest

from belusim.config.scenario import deep_merge, resolve_scenario

BASE_SCENARIO = {
    "name": "tiny",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 2},
    "engine": {"kv_blocks": 400},
    "systems": [{"name": "hbm-only", "kv": {"kind": "hbm-only"}}],
    "workload": {
        "kind": "lveval-synthetic",
        "num_prompts": 6,
        "truncate_tokens": 1500,
        "arrival": {"process": "closed", "clients": 3},
    },
}



@pytest.fixture
def scenario_dict():
    """Factory: the tiny base scenario dict, deep-updated with the given mapping."""

    def make(**over) -> dict:
        return deep_merge(BASE_SCENARIO, over)

    return make


@pytest.fixture
def resolve(scenario_dict):
    """Factory: resolve the tiny scenario (deep-updated with `over`) plus --set overrides."""

    def make(overrides: list[str] | None = None, **over):
        sc, _ = resolve_scenario(scenario_dict(**over), overrides or [])
        return sc

    return make
