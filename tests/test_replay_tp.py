"""The tensor-parallel replay (replay/tp.py): one policy loop, one process per rank. Without a
GPU the ranks run the emulated backend; the GPU tests need two GPUs and skip otherwise."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from belusim.config.scenario import resolve_scenario
from belusim.replay.emulated import ChecksumError, EmulatedBackend
from belusim.replay.pool import PoolSpec
from belusim.replay.tp import RankError, TPBackend, TPOptions, make_rank_backend
from belusim.replay.tp_shard import kv_head_range, split
from belusim.study.validate import validate

SCENARIO = {
    "name": "replay-tp-tiny",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 2, "tensor_parallel": 2},
    "engine": {"kv_blocks": 600, "max_num_batched_tokens": 2048},
    "systems": [{"name": "host", "kv": {"kind": "local-dram", "capacity_gb": 1, "chunk_tokens": 16}}],
    "workload": {"kind": "lveval-synthetic", "num_prompts": 3, "truncate_tokens": 1200, "length_cv": 0,
                 "output": {"mode": "fixed", "tokens": 8}, "arrival": {"process": "closed", "clients": 1}},
    "run": {"seed": 3, "phases": [{"name": "populate"}, {"name": "hit", "clear_hbm_cache": True}]},
}


def _scenario(**over):
    data = json.loads(json.dumps(SCENARIO))
    data.update(over)
    sc, _ = resolve_scenario(data)
    return sc


# rank factories, top-level so that the spawned rank processes can import them
class _RaisingBackend(EmulatedBackend):
    def compute(self, seqs, plan):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 5:
            raise RuntimeError("injected failure in step 5")
        super().compute(seqs, plan)


def raise_on_rank1(kind, scenario, system, kv_blocks, pool_spec, rank, tp, comm):
    cls = _RaisingBackend if rank == 1 else EmulatedBackend
    return cls(scenario, system, kv_blocks, pool_spec, rank=rank, tp=tp)


class _DyingBackend(EmulatedBackend):
    def compute(self, seqs, plan):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 5:
            os._exit(7)  # no message, no cleanup: as a rank killed by the OOM killer
        super().compute(seqs, plan)


def die_on_rank1(kind, scenario, system, kv_blocks, pool_spec, rank, tp, comm):
    cls = _DyingBackend if rank == 1 else EmulatedBackend
    return cls(scenario, system, kv_blocks, pool_spec, rank=rank, tp=tp)


class _HangingBackend(EmulatedBackend):
    def compute(self, seqs, plan):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 5:
            time.sleep(600)  # as a rank stuck in a collective its peer never joins
        super().compute(seqs, plan)


def hang_on_rank0(kind, scenario, system, kv_blocks, pool_spec, rank, tp, comm):
    cls = _HangingBackend if rank == 0 else EmulatedBackend
    return cls(scenario, system, kv_blocks, pool_spec, rank=rank, tp=tp)


class _CorruptingBackend(EmulatedBackend):
    def load(self, gpu_blocks, slots, chunk_blocks):
        self.loads = getattr(self, "loads", 0) + 1
        if self.loads == 2:  # flip one byte of this rank's share of a stored block
            self.slots[slots[0] * chunk_blocks][3] ^= 0xFF
        return super().load(gpu_blocks, slots, chunk_blocks)


def corrupt_on_rank1(kind, scenario, system, kv_blocks, pool_spec, rank, tp, comm):
    cls = _CorruptingBackend if rank == 1 else EmulatedBackend
    return cls(scenario, system, kv_blocks, pool_spec, rank=rank, tp=tp)


def _replay_with(factory, opts=None):
    from belusim.replay.engine import replay_scenario
    from belusim.sim.cluster import hbm_kv_blocks

    sc = _scenario()
    system = sc.systems[0]
    kv = hbm_kv_blocks(sc)
    b = TPBackend("emulated", sc, system, kv, PoolSpec(), opts=opts, factory=factory)
    try:
        return replay_scenario(sc, system, b, kv, lambda req, inst: None)
    finally:
        b.close()
        assert not any(p.is_alive() for p in b.procs)


def test_tp2_emulated_replay_runs_every_request_on_both_ranks():
    rep = validate(_scenario(), None, "emulated", PoolSpec())
    rp = rep["replay"]
    assert rp["checks"]["requests_finished"] == 6
    assert rp["tensor_parallel"] == 2 and len(rp["ranks"]) == 2
    assert rp["loads"] >= 3 and rp["blocks_verified"] >= 3 * 70
    hit = rep["phases"][1]
    assert hit["measured"]["completed"] == 3 and np.isfinite(hit["measured"]["mean_kv_load_ms"])
    # the ranks wait the TP-2 compute model's step: the measured medians track the prediction
    # (loosely: three processes share this machine's cores; not at all on a machine too
    # loaded to keep 10 ms deadlines, as in test_replay.py)
    from test_replay import _timer_overshoot_s

    if _timer_overshoot_s() <= 0.0005:
        def off(rep):
            return [(ph["phase"], k, ph["predicted"][k], ph["measured"][k]) for ph in rep["phases"]
                    for k in ("median_ttft_ms", "median_tpot_ms")
                    if abs(ph["predicted"][k] - ph["measured"][k]) / ph["measured"][k] >= 0.5]
        bad = off(rep) and off(validate(_scenario(), None, "emulated", PoolSpec()))  # one more try
        assert not bad, bad
    # and the prediction is the TP-2 one: a TP-1 decode step of this model is slower
    tp1 = resolve_scenario({**json.loads(json.dumps(SCENARIO)),
                            "cluster": {"servers": 1, "gpus_per_server": 1}})[0]
    from belusim.compute.roofline import ComputeModel

    m1 = ComputeModel.build(tp1.model, tp1.gpu, 1, tp1.interconnect, tp1.attention)
    m2 = ComputeModel.build(tp1.model, tp1.gpu, 2, tp1.interconnect, tp1.attention)
    assert m2.step_time(1, 0, 1000, 1) < m1.step_time(1, 0, 1000, 1)


def test_a_failing_rank_ends_the_replay_with_its_error():
    with pytest.raises(RankError, match=r"rank 1 failed: RuntimeError: injected failure in step 5"):
        _replay_with(raise_on_rank1)


def test_a_dead_rank_is_named_not_waited_for():
    t = time.perf_counter()
    with pytest.raises(RankError, match=r"rank 1 died \(exit code 7\)"):
        _replay_with(die_on_rank1)
    assert time.perf_counter() - t < 60


def test_a_silent_rank_times_out():
    with pytest.raises(RankError, match=r"rank 0 did not answer within 2 s"):
        _replay_with(hang_on_rank0, TPOptions(step_timeout_s=2.0))


def test_a_corrupted_share_of_a_block_fails_its_checksum():
    with pytest.raises(ChecksumError, match="rank 1: KV block read back"):
        _replay_with(corrupt_on_rank1)


def test_rank_shards_cover_the_model():
    # heads, KV heads (split or replicated), MLP columns and vocabulary
    for n, tp in ((151936, 2), (14336, 4), (7, 3)):
        parts = [split(n, r, tp) for r in range(tp)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert [kv_head_range(8, r, 2) for r in range(2)] == [(0, 4), (4, 4)]
    assert [kv_head_range(2, r, 4) for r in range(4)] == [(0, 1), (0, 1), (1, 1), (1, 1)]


def _two_gpus():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    pytest.importorskip("cupy")
    pytest.importorskip("triton")
    return torch


def test_cuda_tp2_replays_a_tiny_scenario():
    _two_gpus()
    rep = validate(_scenario(), None, "cuda", PoolSpec())
    assert rep["replay"]["blocks_verified"] > 0
    assert rep["phases"][1]["measured"]["completed"] == 3


def _tp_forward(rank, tp, addr, q):
    """A prefill and a decode step of a small model on one rank; returns the K cache it wrote."""
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(120, exit=True, file=sys.stderr)  # a hung rank says where
    os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)
    try:
        from belusim.policy.scheduler import StepPlan
        from belusim.replay.cuda import CudaBackend
        from belusim.replay.tp import _NcclComm

        sc = _scenario(model="llama-3.1-8b", engine={"kv_blocks": 64, "max_num_batched_tokens": 256,
                                                      "max_num_seqs": 8},
                       cluster={"servers": 1, "gpus_per_server": tp, "tensor_parallel": tp})
        sc.model.layers = 2
        comm = _NcclComm(rank, tp, addr, 60) if tp > 1 else None
        b = CudaBackend(sc, sc.systems[0], 64, PoolSpec(), rank=rank, tp=tp,
                        all_reduce=comm.all_reduce if comm else None)
        table = list(range(8))
        b.compute([(table, 0, 100)], StepPlan(scheduled=[(None, 100)], tokens=100))
        b.compute([(table, 100, 1)], StepPlan(scheduled=[(None, 1)], tokens=1))
        k = b.kv[1, 0, :8].reshape(-1, b.Hkv, b.D)[:101].float().cpu().numpy()
        q.put((rank, k))
        b.close()
        if comm:
            comm.close()
    except Exception as e:  # pragma: no cover - reported to the test
        q.put((rank, repr(e)))


def test_cuda_tp2_computes_the_tp1_model():
    """Layer 1's keys depend on layer 0's all-reduced output: the two ranks' heads together
    must equal the TP-1 model's (same seed, same random model)."""
    _two_gpus()
    import multiprocessing as mp

    from belusim.calibration.allreduce import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    runs = [[ctx.Process(target=_tp_forward, args=(0, 1, "", q))]]
    addr = f"tcp://127.0.0.1:{free_port()}"
    runs.append([ctx.Process(target=_tp_forward, args=(r, 2, addr, q)) for r in range(2)])
    out = {}
    for tp, procs in zip((1, 2), runs):
        for p in procs:
            p.start()
        got = dict(q.get(timeout=300) for _ in procs)
        for p in procs:
            p.join(60)
        for r, v in got.items():
            assert not isinstance(v, str), v
        out[tp] = got
    full = out[1][0]
    both = np.concatenate([out[2][0], out[2][1]], axis=1)  # KV heads of rank 0, then rank 1
    err = np.linalg.norm(both - full) / np.linalg.norm(full)
    assert err < 2e-2, err


def test_all_reduce_fit_recovers_the_card_formula_and_reaches_a_scenario(tmp_path):
    from belusim.calibration.fit import all_reduce_model_s, fit_all, fit_all_reduce

    bus, base = 360.0, 5.0  # a synthetic link: the fit must give these back
    rows = [{"bytes": b, "eager_us": 1e6 * all_reduce_model_s(b, 2, bus, base) + 10,
             "graph_us": 1e6 * all_reduce_model_s(b, 2, bus, base)} for b in (10240, 1 << 20, 1 << 30)]
    fitted, notes = fit_all_reduce({"ranks": 2, "rows": rows, "sum_check": True})
    assert fitted["interconnect.bus_gbps"]["value"] == pytest.approx(bus, rel=2e-3)
    assert fitted["interconnect.ll_base_us"]["value"] == pytest.approx(base, rel=1e-2)
    assert not notes
    # wrong sums or a failed probe fit nothing
    assert fit_all_reduce({"ranks": 2, "rows": rows, "sum_check": False})[0] == {}
    assert fit_all_reduce({"error": "rank 1: boom"})[0] == {}
    # the keys are profile keys, and a scenario's interconnect card takes them
    f, _ = fit_all({"gpu": {"all_reduce": {"ranks": 2, "rows": rows, "sum_check": True}}})
    prof = {"format": "belusim-calibration", "version": 1, "name": "ar", "machine": {}, "target": {},
            "measurements": {}, "fitted": f, "notes": []}
    p = tmp_path / "ar.json"
    p.write_text(json.dumps(prof))
    sc, _ = resolve_scenario(json.loads(json.dumps(SCENARIO)), calibration=str(p))
    assert sc.interconnect.bus_gbps == pytest.approx(bus, rel=2e-3)
    assert sc.interconnect.all_reduce_s(1 << 30, 2) == pytest.approx(all_reduce_model_s(1 << 30, 2, bus, base),
                                                                      rel=1e-2)
