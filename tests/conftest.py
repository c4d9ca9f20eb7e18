"""Shared fixtures of the core test-suite: a tiny scenario dict and its resolution."""

from __future__ import annotations

import copy

import pytest

from belusim.config import resolve_scenario

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


def _deep_update(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@pytest.fixture
def scenario_dict():
    """Factory: the tiny base scenario dict, deep-updated with the given mapping."""

    def make(**over) -> dict:
        return _deep_update(BASE_SCENARIO, over)

    return make


@pytest.fixture
def resolve(scenario_dict):
    """Factory: resolve the tiny scenario (deep-updated with `over`) plus --set overrides."""

    def make(overrides: list[str] | None = None, **over):
        sc, _ = resolve_scenario(scenario_dict(**over), overrides or [])
        return sc

    return make
