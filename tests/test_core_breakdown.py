"""Where the time to first token goes: the parts add up to each request's TTFT."""

from __future__ import annotations

import math

import numpy as np
import pytest

from belusim.config.scenario import resolve_scenario
from belusim.policy.request import TTFT_PARTS
from belusim.report.metrics import RECORD_FIELDS, Recorder, summarize
from belusim.sim.cluster import Cluster
from belusim.workloads.spec import RequestSpec, Workload

COL = {k: i for i, k in enumerate(RECORD_FIELDS)}
PART_COLS = [COL[f"ttft_{p}_s"] for p in TTFT_PARTS]
A = np.arange(3000 // 16, dtype=np.int64) + 1_000_000
B = np.arange(3000 // 16, dtype=np.int64) + 2_000_000


def _run(kind: str, stack: str | None, kv: dict | None = None, blocks: int = 3000):
    system = {"name": "s", "kv": {"kind": kind, **(kv or {})}}
    if stack:
        system["stack"] = stack
    d = {"name": "bd", "model": "qwen3-32b", "gpu": "h20", "cluster": {"servers": 1, "gpus_per_server": 1},
         "engine": {"kv_blocks": blocks, "max_num_batched_tokens": 1024},
         "systems": [system], "workload": {"kind": "lveval-synthetic", "num_prompts": 1}}
    sc = resolve_scenario(d)[0]
    rec = Recorder()
    cluster = Cluster(sc, sc.systems[0], rec)
    first = [RequestSpec(i, 3000, 4, keys, arrival_s=0.1 * i) for i, keys in enumerate((A, B))]
    cluster.run_phase("populate", Workload(first, 16), 1e6)
    cluster.drain()
    cluster.clear_hbm()
    # both prompts again at once, plus a fresh one decoding alongside
    again = [RequestSpec(10, 3000, 4, A, arrival_s=0.0), RequestSpec(11, 3000, 4, B, arrival_s=0.0),
             RequestSpec(12, 800, 40, np.arange(50, dtype=np.int64) + 3_000_000, arrival_s=0.0)]
    cluster.run_phase("hit", Workload(again, 16), 1e6)
    cluster.drain()
    cluster.check()
    return rec


CASES = [
    ("hbm-only", None, None),
    ("local-dram", "vllm-offloading", None),
    ("local-dram", "lmcache-cpu", None),
    ("rdma-pool", "lmcache-0.3-mooncake", None),
    ("cxl-pool", "beluga", None),
    ("cxl-pool", "beluga", {"load_mode": "layerwise", "layer_sync_us": 30}),
    ("local-dram", "vllm-offloading", {"hold_blocks_until_saved": True}),
]


@pytest.mark.parametrize("kind,stack,kv", CASES)
def test_parts_add_up_to_each_requests_ttft(kind, stack, kv):
    rec = _run(kind, stack, kv)
    rows = [r for r in rec.rows if r[COL["status"]] == "finished"]
    assert len(rows) == 5
    for r in rows:
        parts = [r[c] for c in PART_COLS]
        assert all(p >= -1e-12 for p in parts), (r[COL["req_id"]], dict(zip(TTFT_PARTS, parts)))
        assert math.fsum(parts) == pytest.approx(r[COL["ttft_s"]], rel=1e-9, abs=1e-12)
    s = summarize(rec.rows, "s", "hit")
    means = sum(v["mean"] for v in s["breakdown"]["ttft_ms"].values())
    assert means == pytest.approx(s["mean_ttft_ms"], rel=1e-9)


def test_sync_loads_show_as_own_load_and_others_loads():
    rec = _run("rdma-pool", "lmcache-0.3-mooncake")
    hit = {r[COL["req_id"]]: dict(zip(TTFT_PARTS, (r[c] for c in PART_COLS)))
           for r in rec.rows if r[COL["phase"]] == "hit"}
    # both hits load in the same step, one after the other: each waits for the other's load
    for rid in (10, 11):
        assert hit[rid]["kv_load_software"] > 0.1 and hit[rid]["kv_load_wire"] > 0
        assert hit[rid]["others_loads"] > 0.1
    assert hit[10]["others_loads"] == pytest.approx(hit[11]["kv_load_wire"] + hit[11]["kv_load_software"]
                                                    + hit[11]["kv_load_thread_wait"], rel=1e-9)
    # the fresh request, admitted in that step too, waited for both loads without loading
    assert hit[12]["kv_load_wire"] == 0 and hit[12]["others_loads"] > 0.2
    assert hit[10]["lookup_software"] > 0 and hit[10]["rpc"] > 0
    # their steps waited for the fresh prompt's saves (sync-step-end), which none of them
    # would with async saves
    assert hit[10]["save_stall"] == hit[11]["save_stall"] > 0 and hit[12]["save_stall"] > 0


def test_async_loads_do_not_charge_others():
    rec = _run("local-dram", "vllm-offloading")
    hit = {r[COL["req_id"]]: dict(zip(TTFT_PARTS, (r[c] for c in PART_COLS)))
           for r in rec.rows if r[COL["phase"]] == "hit"}
    assert all(h["others_loads"] == 0 and h["save_stall"] == 0 for h in hit.values())
    assert hit[10]["kv_load_wire"] > 0 and hit[12]["kv_load_wire"] == 0
