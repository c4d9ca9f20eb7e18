"""Config validation and arrival processes."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from belusim.workloads import WorkloadConfig, build_workload, gamma_arrivals, parse_workload_config, poisson_arrivals
from belusim.workloads.config import (
    ClosedArrival,
    LvevalCapsOutput,
    LvevalFilesConfig,
    LvevalSyntheticConfig,
    MooncakeConfig,
    TraceArrival,
    TraceOutput,
)

ADAPTER = TypeAdapter(WorkloadConfig)


def test_defaults():
    c = parse_workload_config({"kind": "lveval-synthetic"})
    assert isinstance(c, LvevalSyntheticConfig)
    assert c.subsets == ["hotpotwikiqa_mixup", "multifieldqa_en_mixup", "loogle_SD_mixup", "factrecall_en"]
    assert (c.level, c.num_prompts, c.min_prompt_tokens, c.truncate_tokens, c.length_cv) == ("16k", 64, 0, None, 0.15)
    assert isinstance(c.output, LvevalCapsOutput) and isinstance(c.arrival, ClosedArrival)
    assert c.arrival.clients == 16 and c.shared_context_fraction == 0.0
    m = parse_workload_config({"kind": "mooncake", "path": "t.jsonl"})
    assert isinstance(m, MooncakeConfig) and isinstance(m.arrival, TraceArrival) and isinstance(m.output, TraceOutput)
    assert m.rate_scale == 1.0 and m.start_s == 0.0
    f = parse_workload_config({"kind": "lveval-files", "path": "d"})
    assert isinstance(f, LvevalFilesConfig) and f.levels == ["16k"] and f.tokens_per_word_en == 1.3
    assert f.tokens_per_char_zh == 0.8


def test_every_field_has_a_description():
    from belusim.workloads import config as C

    for model in (C.LvevalSyntheticConfig, C.LvevalFilesConfig, C.MooncakeConfig, C.BelusimTraceConfig,
                  C.ClosedArrival, C.PoissonArrival, C.GammaArrival, C.TraceArrival,
                  C.LvevalCapsOutput, C.FixedOutput, C.UniformOutput, C.TraceOutput):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"kind": "nope"}, "kind"),
        ({"kind": "lveval-synthetic", "num_prompts": 0}, "num_prompts"),
        ({"kind": "lveval-synthetic", "level": "8k"}, "level"),
        ({"kind": "lveval-synthetic", "subsets": ["bogus"]}, "unknown LV-Eval subset"),
        ({"kind": "lveval-synthetic", "typo_field": 1}, "typo_field"),
        ({"kind": "lveval-synthetic", "shared_context_fraction": 1.5}, "shared_context_fraction"),
        ({"kind": "lveval-synthetic", "arrival": {"process": "trace"}}, "no timestamps"),
        ({"kind": "lveval-synthetic", "output": {"mode": "trace"}}, "output lengths"),
        ({"kind": "lveval-synthetic", "arrival": {"process": "gamma", "rate_qps": 1, "cv": 0}}, "cv"),
        ({"kind": "lveval-synthetic", "arrival": {"process": "poisson", "rate_qps": -1}}, "rate_qps"),
        ({"kind": "lveval-synthetic", "arrival": {"process": "poisson", "rate_qps": float("inf")}}, "rate_qps"),
        ({"kind": "lveval-synthetic", "output": {"mode": "uniform", "low": 5, "high": 2}}, "high"),
        ({"kind": "mooncake", "path": "x", "rate_scale": 0}, "rate_scale"),
        ({"kind": "mooncake", "path": "x", "output": {"mode": "lveval-caps"}}, "lveval-caps"),
        ({"kind": "mooncake"}, "path"),
    ],
)
def test_bad_values_give_pydantic_errors(data, fragment):
    with pytest.raises(ValidationError) as e:
        ADAPTER.validate_python(data)
    assert fragment in str(e.value)


def test_poisson_rate_and_cv():
    rng = np.random.default_rng(0)
    t = poisson_arrivals(200_001, 5.0, rng)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.2, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_rate_and_cv(cv):
    t = gamma_arrivals(200_001, 2.0, cv, np.random.default_rng(1))
    gaps = np.diff(t)
    assert len(t) / t[-1] == pytest.approx(2.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_arrivals_seeded():
    a = poisson_arrivals(100, 1.0, np.random.default_rng(3))
    b = poisson_arrivals(100, 1.0, np.random.default_rng(3))
    assert np.array_equal(a, b) and len(poisson_arrivals(0, 1.0, np.random.default_rng(0))) == 0


def test_build_open_loop_rates_and_outputs(tmp_path):
    wl = build_workload(
        {"kind": "lveval-synthetic", "num_prompts": 2000, "truncate_tokens": 1024,
         "arrival": {"process": "poisson", "rate_qps": 4.0}, "output": {"mode": "uniform", "low": 3, "high": 7}},
        block_size=16, seed=0, base_dir=tmp_path,
    )
    arr = np.array([r.arrival_s for r in wl.requests])
    assert wl.mode == "open" and np.all(np.diff(arr) >= 0)
    assert len(arr) / arr[-1] == pytest.approx(4.0, rel=0.06)
    outs = np.array([r.output_tokens for r in wl.requests])
    assert outs.min() == 3 and outs.max() == 7
    assert [r.req_id for r in wl.requests] == list(range(2000))
    with pytest.raises(ValueError, match="block_size"):
        build_workload({"kind": "lveval-synthetic"}, block_size=0, seed=0, base_dir=tmp_path)
