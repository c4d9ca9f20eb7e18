"""Connector semantics: sync / async / layer-wise loads, sync saves, blocks held until saved."""

from __future__ import annotations

import numpy as np
import pytest

from belusim.config.scenario import resolve_scenario
from belusim.policy.blocks import BlockPool
from belusim.policy.connector import ConnectorSemantics
from belusim.policy.request import Request
from belusim.policy.scheduler import Scheduler
from belusim.policy.tier import TierIndex
from belusim.report.metrics import RECORD_FIELDS, Recorder
from belusim.sim.cluster import Cluster
from belusim.workloads.spec import RequestSpec, Workload

COL = {k: i for i, k in enumerate(RECORD_FIELDS)}
HIT = np.arange(4000 // 16, dtype=np.int64) + 5_000_000  # the prompt that hits the tier


def _cluster(kv: dict, coalesce: int = 512) -> tuple[Cluster, Recorder]:
    d = {
        "name": "connector",
        "model": "qwen3-32b",
        "gpu": {"card": "h20", "copy_kernel_compute_slowdown": 0.0},
        "cluster": {"servers": 1, "gpus_per_server": 1},
        "engine": {"kv_blocks": 3000, "decode_coalesce_steps": coalesce},
        "systems": [{"name": "s", "kv": {"kind": "local-dram", "metadata_rpc": "none", **kv}}],
        "workload": {"kind": "lveval-synthetic", "num_prompts": 1},
    }
    sc = resolve_scenario(d)[0]
    rec = Recorder()
    return Cluster(sc, sc.systems[0], rec), rec


def _rows(rec: Recorder, phase: str) -> dict:
    return {r[COL["req_id"]]: r for r in rec.rows if r[COL["phase"]] == phase}


def _decode_with_a_hit(kv: dict, coalesce: int = 512):
    """Store HIT in the tier, empty HBM, then: request 1 decodes 300 tokens from t=0 and
    request 2 (HIT's prompt, a tier hit) arrives at t=2 s, in the middle of 1's decode."""
    cluster, rec = _cluster(kv, coalesce)
    cluster.run_phase("populate", Workload([RequestSpec(0, 4000, 1, HIT, arrival_s=0.0)], 16), 1e6)
    cluster.drain()
    cluster.clear_hbm()
    specs = [RequestSpec(1, 512, 300, np.arange(32, dtype=np.int64) + 9_000_000, arrival_s=0.0),
             RequestSpec(2, 4000, 2, HIT, arrival_s=2.0)]
    cluster.run_phase("hit", Workload(specs, 16), 1e6)
    cluster.drain()
    cluster.check()
    return _rows(rec, "hit"), cluster


def test_sync_load_stretches_co_batched_steps_async_does_not():
    sync, _ = _decode_with_a_hit({"load_mode": "sync"})
    asyn, _ = _decode_with_a_hit({"load_mode": "async"})
    load = sync[2][COL["load_end_s"]] - sync[2][COL["load_start_s"]]
    assert sync[2][COL["tier_hit_tokens"]] == asyn[2][COL["tier_hit_tokens"]] > 3000
    assert load > 0.01
    # the decoding request waited for the other's load: its run grew by about the load time
    grown = sync[1][COL["e2e_s"]] - asyn[1][COL["e2e_s"]]
    assert grown == pytest.approx(load, rel=0.05)
    assert sync[1][COL["tpot_s"]] > asyn[1][COL["tpot_s"]]
    # an async load does not block: request 1's decode runs as long as with no load at all
    quiet, _ = _decode_with_a_hit({"load_mode": "async", "save": False})
    assert asyn[1][COL["e2e_s"]] <= quiet[1][COL["e2e_s"]] * 1.05


@pytest.mark.parametrize("kv", [{"load_mode": "sync"}, {"load_mode": "layerwise", "layer_sync_us": 50},
                                {"save_mode": "sync-step-end"}, {"hold_blocks_until_saved": True}])
def test_connector_modes_keep_coalesced_decode_exact(kv):
    a, ca = _decode_with_a_hit(kv, coalesce=1)
    b, cb = _decode_with_a_hit(kv, coalesce=512)
    for rid in (1, 2):
        for col in ("first_token_s", "finish_s"):
            assert b[rid][COL[col]] == pytest.approx(a[rid][COL[col]], rel=1e-9, abs=0)
    assert sum(i.steps for i in cb.instances) == sum(i.steps for i in ca.instances)


def test_layerwise_step_time_closed_form():
    c = ConnectorSemantics("layerwise", layer_sync_s=1e-4, layers=64)
    for transfer, compute in [(0.0, 0.2), (0.05, 0.2), (0.5, 0.2), (2.0, 0.01)]:
        t = c.layerwise_step_time(transfer, compute)
        # brute-force the layer recurrence
        f = 0.0
        for i in range(64):
            f = max(f, transfer * (i + 1) / 64) + 1e-4 + compute / 64
        assert t == pytest.approx(f, rel=1e-12)
        assert t >= transfer + compute / 64 and t >= compute + 64 * 1e-4 - 1e-15
    free = ConnectorSemantics("layerwise", layers=64)
    assert free.layerwise_step_time(0.0, 0.2) == pytest.approx(0.2)
    assert c.layerwise_step_time(0.0, 0.2) == pytest.approx(0.2 + 64 * 1e-4)


def test_layerwise_load_ends_no_earlier_than_its_transfer_and_pays_per_layer():
    free, _ = _decode_with_a_hit({"load_mode": "layerwise", "layer_sync_us": 0})
    costly, _ = _decode_with_a_hit({"load_mode": "layerwise", "layer_sync_us": 200})
    for rows in (free, costly):
        assert rows[2][COL["first_token_s"]] > rows[2][COL["load_end_s"]]
    # 64 layers x 200 us in the admitting step (compute-bound: the load is short)
    extra = costly[2][COL["ttft_s"]] - free[2][COL["ttft_s"]]
    assert extra >= 64 * 200e-6 * 0.99


def test_sync_save_stalls_the_step_that_completes_the_chunks():
    sync, cs = _decode_with_a_hit({"save_mode": "sync-step-end"})
    asyn, ca = _decode_with_a_hit({"save_mode": "async"})
    # request 1's prompt (32 new blocks) is saved in its first step: its first token waits
    assert sync[1][COL["ttft_s"]] > asyn[1][COL["ttft_s"]]
    # by its save (32 blocks), shorter than the mean save (which includes HIT's 250 blocks)
    save_s = cs.paths.stats.save_time_s / cs.paths.stats.saves
    assert 0 < sync[1][COL["ttft_s"]] - asyn[1][COL["ttft_s"]] < save_s


def test_hold_blocks_until_saved_keeps_finished_blocks_then_frees_them():
    tier = TierIndex("pool", 10_000, 1)
    s = Scheduler(BlockPool(1000), 16, 2048, 256, tier=tier, hold_blocks_until_saved=True)
    r = Request(1, 100, 1, list(range(6)), 0.0)
    s.add(r)
    plan = s.schedule(0.0)
    _f, finished, saves = s.step_done(plan, 1.0)
    assert finished == [r] and len(saves) == 1 and r.saves_in_flight == 1
    assert s.pool.in_use == 7 and r in s.held  # 6 full blocks + the partial one
    s.check()
    tier.end_save(saves[0].request.keys, saves[0].chunk_indexes)
    assert s.save_done(saves[0]) is True
    assert s.pool.in_use == 0 and not s.held
    s.check()
    # without holding, blocks go back at the finish
    s2 = Scheduler(BlockPool(1000), 16, 2048, 256, tier=TierIndex("p", 10_000, 1))
    r2 = Request(2, 100, 1, list(range(6)), 0.0)
    s2.add(r2)
    _f, _fin, saves2 = s2.step_done(s2.schedule(0.0), 1.0)
    assert s2.pool.in_use == 0 and saves2 and s2.save_done(saves2[0]) is False


def test_bad_modes_are_rejected():
    with pytest.raises(ValueError, match="load mode"):
        ConnectorSemantics("eager")
    with pytest.raises(ValueError, match="load mode"):
        Scheduler(BlockPool(10), 16, 64, 4, load_mode="eager")
    from belusim.config.scenario import ConfigError
    with pytest.raises(ConfigError, match="save_mode"):
        _cluster({"save_mode": "later"})
