"""Shared-prefix groups, multi-turn sessions and Poisson stages."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from belusim.config.scenario import resolve_scenario
from belusim.report.metrics import Recorder
from belusim.sim.cluster import simulate
from belusim.workloads import build_workload
from belusim.workloads.arrivals import stage_arrivals
from belusim.workloads.errors import WorkloadError
from belusim.workloads.keys import hash_str
from belusim.workloads.synthetic import prompts_block_keys


def _infinite_cache_hits(reqs) -> tuple[int, int]:
    seen: set[int] = set()
    hits = total = 0
    for r in reqs:
        for k in r.block_keys.tolist():
            hits += k in seen
            seen.add(k)
        total += len(r.block_keys)
    return hits, total


def _shared(**kw) -> dict:
    cfg = {
        "kind": "shared-prefix", "num_groups": 3, "prompts_per_group": 5, "system_prompt_tokens": 1000,
        "question_tokens": 100, "output": {"mode": "fixed", "tokens": 8},
    }
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("bs", [16, 64])
def test_shared_prefix_hit_ratio_matches_its_construction(bs):
    N, M, S, Q = 3, 5, 1000, 100
    wl = build_workload(_shared(), block_size=bs, seed=1)
    assert len(wl.requests) == N * M and {r.prompt_tokens for r in wl.requests} == {S + Q}
    hits, total = _infinite_cache_hits(wl.requests)
    # Only blocks wholly inside a system prompt repeat; the block holding the first question
    # token (1000 is not a multiple of 16 or 64) is unique to its prompt.
    assert total == N * M * ((S + Q) // bs)
    assert hits == N * (M - 1) * (S // bs)
    # A second pass over the same prompts hits everything.
    wl2 = build_workload(_shared(num_requests=2 * N * M), block_size=bs, seed=1)
    hits2, total2 = _infinite_cache_hits(wl2.requests)
    assert (hits2, total2) == (hits + total, 2 * total)


def test_shared_prefix_orders_names_and_seeds():
    a = build_workload(_shared(order="sequential"), block_size=16, seed=1)
    assert [r.tags["group"] for r in a.requests] == [g for g in range(3) for _ in range(5)]
    b = build_workload(_shared(), block_size=16, seed=1)
    assert sorted(r.source for r in b.requests) == sorted(r.source for r in a.requests)
    assert [r.source for r in b.requests] != [r.source for r in a.requests]  # shuffled
    c = build_workload(_shared(), block_size=16, seed=1)
    assert all(np.array_equal(x.block_keys, y.block_keys) for x, y in zip(b.requests, c.requests))
    other = build_workload(_shared(name="other"), block_size=16, seed=1)
    ks = {k for r in a.requests for k in r.block_keys.tolist()}
    assert not ks & {k for r in other.requests for k in r.block_keys.tolist()}


def test_a_block_that_straddles_segments_depends_on_all_of_them():
    ns = hash_str("t")
    a, b, c = hash_str("a"), hash_str("b"), hash_str("c")
    keys, off = prompts_block_keys([[(a, 10), (b, 30)], [(a, 10), (c, 30)], [(c, 10), (b, 30)], [(a, 10), (b, 30)]], 16, ns)
    rows = [keys[off[i] : off[i + 1]].tolist() for i in range(4)]
    assert rows[0] == rows[3] and len(rows[0]) == 2
    assert rows[0][0] != rows[1][0] and rows[0][0] != rows[2][0]  # block 0 holds a[0:10] + b/c[0:6]
    # a segment boundary on a block boundary keeps the first segment's blocks shared
    keys, off = prompts_block_keys([[(a, 32), (b, 16)], [(a, 32), (c, 16)]], 16, ns)
    assert keys[0:2].tolist() == keys[3:5].tolist() and keys[2] != keys[5]


def _multi(**kw) -> dict:
    cfg = {
        "kind": "multi-turn", "num_sessions": 4, "turns": 4, "system_prompt_tokens": 300, "user_tokens": 100,
        "user_tokens_cv": 0.5, "think_time_s": 1.0, "output": {"mode": "uniform", "low": 10, "high": 90},
        "arrival": {"process": "poisson", "rate_qps": 2.0},
    }
    cfg.update(kw)
    return cfg


def test_multi_turn_prefixes_nest():
    wl = build_workload(_multi(), block_size=16, seed=3)
    assert wl.mode == "sessions" and len(wl.requests) == 16
    by = {(r.tags["session"], r.tags["turn"]): r for r in wl.requests}
    for s in range(4):
        for t in range(1, 4):
            prev, cur = by[(s, t - 1)], by[(s, t)]
            # this turn's prompt = previous prompt + its answer + new user tokens
            assert cur.prompt_tokens > prev.prompt_tokens + prev.output_tokens
            assert cur.block_keys[: len(prev.block_keys)].tolist() == prev.block_keys.tolist()
            assert cur.arrival_s is None and cur.tags["think_s"] == 1.0
        assert by[(s, 0)].arrival_s is not None
    # sessions share nothing unless the system prompt is shared
    k0 = set(by[(0, 3)].block_keys.tolist())
    assert not k0 & set(by[(1, 3)].block_keys.tolist())
    wl = build_workload(_multi(shared_system_prompt=True), block_size=16, seed=3)
    by = {(r.tags["session"], r.tags["turn"]): r for r in wl.requests}
    common = set(by[(0, 3)].block_keys.tolist()) & set(by[(1, 3)].block_keys.tolist())
    assert len(common) == 300 // 16


def test_stage_arrivals_follow_the_stages():
    rng = np.random.default_rng(0)
    t = stage_arrivals([(2.0, 10.0), (10.0, 5.0)], rng)
    assert len(t) == 20 + 50 and np.all(np.diff(t) >= 0)
    assert np.all(t[:20] < 10.0) and np.all((t[20:] >= 10.0) & (t[20:] < 15.0))
    wl = build_workload(_shared(arrival={"process": "stages", "stages": [{"rate_qps": 1, "duration_s": 40}]}), block_size=16, seed=1)
    assert len(wl.requests) == 40 and wl.mode == "open"  # num_requests from the stages
    with pytest.raises(WorkloadError, match="stages send 4 requests but the workload has 15"):
        build_workload(_shared(num_requests=15, arrival={"process": "stages", "stages": [{"rate_qps": 1, "duration_s": 4}]}), block_size=16, seed=1)
    with pytest.raises(ValidationError, match="num_sessions"):
        build_workload(_multi(arrival={"process": "stages", "stages": [{"rate_qps": 1, "duration_s": 3}]}), block_size=16, seed=1)
    with pytest.raises(ValidationError, match="closed"):
        build_workload(_multi(arrival={"process": "closed"}), block_size=16, seed=1)


def test_sessions_send_each_turn_after_the_previous_reply_and_its_think_time():
    sc, _ = resolve_scenario({
        "name": "mt", "model": "llama-3.1-8b", "gpu": "h100", "cluster": {"servers": 1, "gpus_per_server": 1},
        "systems": [{"name": "hbm", "kv": {"kind": "hbm-only"}}],
        "workload": _multi(think_time_dist="exponential"), "run": {"phases": [{"name": "main"}]},
    })
    wl = build_workload(sc.workload, block_size=16, seed=sc.run.seed, phase="main")
    rec = Recorder()
    simulate(sc, sc.systems[0], rec)
    rows = {r[2]: r for r in rec.rows}  # req_id -> row; arrival at 11, finish at 16
    assert len(rows) == 16 and all(r[4] == "finished" for r in rows.values())
    for spec in wl.requests:
        if spec.tags["turn"]:
            prev = rows[spec.req_id - 1]
            assert rows[spec.req_id][11] == pytest.approx(prev[16] + spec.tags["think_s"])
        else:
            assert rows[spec.req_id][11] == pytest.approx(spec.arrival_s)
    # later turns hit the history cached in HBM
    assert sum(r[8] for r in rows.values()) > 0


def test_lveval_documented_reuse_follows_the_construction():
    """Template headers are shared by a subset; factrecall records share the haystack up to
    the earlier insertion of the two; the first run's infinite-cache hits are exactly that."""
    bs = 16
    cfg = {"kind": "lveval-synthetic", "num_prompts": 120, "reuse": "documented"}
    wl = build_workload(cfg, block_size=bs, seed=5)
    plain = build_workload({**cfg, "reuse": "none"}, block_size=bs, seed=5)
    assert [r.prompt_tokens for r in wl.requests] == [r.prompt_tokens for r in plain.requests]
    assert _infinite_cache_hits(plain.requests)[0] == 0  # no reuse unless asked for

    def common(a, b) -> int:  # leading blocks two prompts share by construction
        if a.tags["subset"] != b.tags["subset"]:
            return 0
        shared = a.tags["header_tokens"]
        if a.tags["subset"].startswith("factrecall"):
            shared += min(a.tags["haystack_tokens"], b.tags["haystack_tokens"])
        return shared // bs

    expected = 0
    for i, r in enumerate(wl.requests):
        for j in range(i):
            c = common(r, wl.requests[j])
            n = 0
            while n < len(r.block_keys) and n < len(wl.requests[j].block_keys) and r.block_keys[n] == wl.requests[j].block_keys[n]:
                n += 1
            assert n == c, (i, j, n, c)
        expected += max([common(r, wl.requests[j]) for j in range(i)] or [0])
    assert _infinite_cache_hits(wl.requests)[0] == expected > 0
    fr = [r for r in wl.requests if r.tags["subset"] == "factrecall_en"]
    assert fr and all(0 <= r.tags["haystack_tokens"] < r.prompt_tokens for r in fr)
    # more insertions per context cut the shared haystack shorter
    wl4 = build_workload({**cfg, "factrecall_insertions": 4}, block_size=bs, seed=5)
    assert _infinite_cache_hits(wl4.requests)[0] < expected
