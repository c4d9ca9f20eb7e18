"""vLLM version profiles: defaults resolve by GPU memory, GPU name and entry point, and
explicit engine fields override them."""

from __future__ import annotations

import pytest

from belusim.config.scenario import ConfigError, resolve_scenario
from belusim.config.vllm import list_profiles, load_profile


def _scenario(engine: dict, gpu="h100") -> dict:
    return {
        "name": "t",
        "model": "llama-3.1-8b",
        "gpu": gpu,
        "cluster": {"servers": 1, "gpus_per_server": 1},
        "engine": engine,
        "systems": [{"name": "hbm", "kv": {"kind": "hbm-only"}}],
        "workload": {"kind": "lveval-synthetic", "num_prompts": 1},
    }


def test_profiles_are_packaged_and_valid():
    assert {"0.8.5", "0.33.0"} <= set(list_profiles())
    for v in list_profiles():
        p = load_profile(v)
        assert p.batch_tiers[-1].when.min_gpu_memory_gib == 0  # a catch-all last tier
        for key in ("block_size", "max_num_batched_tokens", "max_num_seqs", "prefix_caching_hash_algo"):
            assert key in p.sources and "vllm/" in p.sources[key]


@pytest.mark.parametrize(
    "version,gpu,entry,tokens,seqs,util,algo",
    [
        ("0.8.5", "h100", "openai-api-server", 8192, 1024, 0.9, "builtin"),
        ("0.8.5", "h100", "llm-class", 16384, 1024, 0.9, "builtin"),
        ("0.8.5", {"card": "h100", "hbm_gb": 48}, "openai-api-server", 2048, 256, 0.9, "builtin"),
        ("0.33.0", "h100", "openai-api-server", 8192, 1024, 0.92, "sha256"),
        ("0.33.0", {"card": "h100", "hbm_gb": 192}, "openai-api-server", 16384, 1024, 0.92, "sha256"),
        ("0.33.0", {"card": "h100", "hbm_gb": 40}, "llm-class", 8192, 256, 0.92, "sha256"),
        # vLLM keeps A100-80GB on the small tier (name check), 0.8.5 did not.
        ("0.33.0", {"card": "h100", "id": "a100-80gb"}, "openai-api-server", 2048, 256, 0.92, "sha256"),
        ("0.8.5", {"card": "h100", "id": "a100-80gb"}, "openai-api-server", 8192, 1024, 0.9, "builtin"),
    ],
)
def test_version_defaults_resolve(version, gpu, entry, tokens, seqs, util, algo):
    sc, data = resolve_scenario(_scenario({"vllm": version, "entry_point": entry}, gpu))
    e = sc.engine
    assert (e.max_num_batched_tokens, e.max_num_seqs, e.gpu_memory_utilization) == (tokens, seqs, util)
    assert e.block_size == 16 and e.enable_prefix_caching and e.enable_chunked_prefill
    assert e.prefix_caching_hash_algo == algo
    assert f"vllm {version}" in e.sources["max_num_batched_tokens"]


def test_explicit_fields_and_set_override_the_profile():
    sc, _ = resolve_scenario(_scenario({"vllm": "0.8.5", "max_num_batched_tokens": 4096}))
    assert sc.engine.max_num_batched_tokens == 4096
    assert "max_num_batched_tokens" not in sc.engine.sources
    assert sc.engine.max_num_seqs == 1024  # still the profile's
    sc, _ = resolve_scenario(_scenario({"vllm": "0.8.5"}), ["engine.max_num_seqs=64", "engine.block_size=32"])
    assert (sc.engine.max_num_seqs, sc.engine.block_size) == (64, 32)
    # --set can switch the version too.
    sc, _ = resolve_scenario(_scenario({"vllm": "0.8.5"}), ["engine.vllm=0.33.0"])
    assert sc.engine.gpu_memory_utilization == 0.92


def test_without_a_version_nothing_changes():
    sc, _ = resolve_scenario(_scenario({}))
    assert sc.engine.vllm is None and sc.engine.sources == {}
    assert sc.engine.max_num_batched_tokens == 2048


def test_unknown_version_and_bad_entry_point_fail_clearly():
    with pytest.raises(ConfigError, match="no vLLM profile '0.1.0'.*available"):
        resolve_scenario(_scenario({"vllm": "0.1.0"}))
    with pytest.raises(ConfigError, match="entry_point"):
        resolve_scenario(_scenario({"vllm": "0.8.5", "entry_point": "grpc"}))
    with pytest.raises(ConfigError, match="enable_chunked_prefill"):
        resolve_scenario(_scenario({"enable_chunked_prefill": False}))
