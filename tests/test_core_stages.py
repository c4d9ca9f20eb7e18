"""Software stages of a serving stack: per-object vs per-byte costs, the connector thread, cards."""

from __future__ import annotations

import numpy as np
import pytest
from belusim.sim.kernel import Environment

from belusim.config.scenario import ConfigError, StackCard, load_card, resolve_scenario
from belusim.report.metrics import RECORD_FIELDS, Recorder
from belusim.sim.cluster import Cluster
from belusim.transport.stages import SoftwareStages
from belusim.workloads.spec import RequestSpec, Workload

COL = {k: i for i, k in enumerate(RECORD_FIELDS)}
HOST = load_card("hosts", "xeon-8575c")
KV_PER_TOKEN = 262144  # qwen3-32b bf16: 2 x 64 layers x 8 heads x 128 x 2 B

PER_OBJECT = StackCard(id="obj", stages=[
    {"name": "get", "ops": ["load"], "per": "chunk", "fixed_us": 500, "source": "assumed: test"},
    {"name": "copy", "ops": ["load"], "per": "chunk", "gbps": 10.0, "source": "assumed: test"}])
PER_BYTE = StackCard(id="byte", stages=[
    {"name": "copy", "ops": ["load"], "per": "chunk", "gbps": 10.0, "source": "assumed: test"}])


def _stages(stack, chunk_tokens, env=None):
    return SoftwareStages(env or Environment(), stack, HOST, chunk_tokens, KV_PER_TOKEN * chunk_tokens)


def test_per_object_costs_grow_with_smaller_chunks_per_byte_costs_do_not():
    nbytes = 4096 * KV_PER_TOKEN  # the same 4,096 tokens of KV either way
    t16 = sum(t for _n, t in _stages(PER_OBJECT, 16).costs("load", 4096 // 16, nbytes))
    t256 = sum(t for _n, t in _stages(PER_OBJECT, 256).costs("load", 4096 // 256, nbytes))
    assert t16 == pytest.approx(t256 + (256 - 16) * 500e-6)
    b16 = sum(t for _n, t in _stages(PER_BYTE, 16).costs("load", 4096 // 16, nbytes))
    b256 = sum(t for _n, t in _stages(PER_BYTE, 256).costs("load", 4096 // 256, nbytes))
    assert b16 == pytest.approx(b256) == pytest.approx(nbytes / 10e9)


def test_prefix_rehash_is_quadratic_and_min_object_size_applies():
    st = StackCard(id="h", stages=[
        {"name": "hash", "ops": ["lookup"], "gbps": 1.0, "bytes_of": "token-id-prefixes", "source": "assumed: t"},
        {"name": "page", "ops": ["load"], "gbps": 1.0, "min_object_kb": 4096, "source": "assumed: t"}])
    s = _stages(st, 256)
    (_, h1), = s.costs("lookup", 1)
    (_, h4), = s.costs("lookup", 4)
    assert h1 == pytest.approx(256 * 4 / 1e9) and h4 == pytest.approx(10 * h1)  # 1+2+3+4 prefixes
    # 16-token objects of this model are exactly 4 MiB: not above the threshold, no page copy
    assert _stages(st, 16).costs("load", 8, 1e6) == [("page", 0.0)]
    assert s.costs("load", 1, 1e6)[0][1] == pytest.approx(1e6 / 1e9)


def test_a_saturated_connector_thread_queues_its_stages():
    env = Environment()
    one_ms = StackCard(id="t", stages=[{"name": "call", "ops": ["load"], "per": "call", "fixed_us": 1000,
                                        "source": "assumed: test"}])
    s = _stages(one_ms, 16, env)
    thread = s.new_thread()
    ends, results = [], []

    def job():
        res = yield from s.run(thread, "load", 1, 0.0)
        results.append(res)
        ends.append(env.now)

    for _ in range(3):
        env.process(job())
    env.run()
    assert ends == pytest.approx([1e-3, 2e-3, 3e-3])
    assert [w for w, _b in results] == pytest.approx([0.0, 1e-3, 2e-3])
    assert s.stats.thread_wait_s == pytest.approx(3e-3)
    s.check()
    # two threads halve the queue
    env2 = Environment()
    s2 = _stages(one_ms.model_copy(update={"threads": 2}), 16, env2)
    t2 = s2.new_thread()
    done = []

    def job2():
        yield from s2.run(t2, "load", 1, 0.0)
        done.append(env2.now)

    for _ in range(4):
        env2.process(job2())
    env2.run()
    assert done == pytest.approx([1e-3, 1e-3, 2e-3, 2e-3])


def test_stage_conservation_check_fails_on_an_unfinished_call():
    env = Environment()
    slow = StackCard(id="t", stages=[{"name": "call", "ops": ["save"], "per": "call", "fixed_us": 1000,
                                      "source": "assumed: test"}])
    s = _stages(slow, 16, env)
    env.process(s.run(s.new_thread(), "save", 1, 0.0))
    env.run(until=0.5e-3)
    with pytest.raises(AssertionError, match="started"):
        s.check()
    env.run()
    s.check()


def _hit_load_time(stack: str, chunk_tokens: int) -> float:
    """Seconds of one 8,192-token tier load on a one-GPU local-DRAM system with `stack`."""
    d = {
        "name": "stages", "model": "qwen3-32b", "gpu": "h20",
        "cluster": {"servers": 1, "gpus_per_server": 1},
        "engine": {"kv_blocks": 3000},
        "systems": [{"name": "s", "stack": stack, "kv": {"kind": "local-dram", "chunk_tokens": chunk_tokens}}],
        "workload": {"kind": "lveval-synthetic", "num_prompts": 1},
    }
    sc = resolve_scenario(d)[0]
    rec = Recorder()
    cluster = Cluster(sc, sc.systems[0], rec)
    keys = np.arange(8208 // 16, dtype=np.int64) + 77_000_000
    cluster.run_phase("a", Workload([RequestSpec(0, 8208, 1, keys, arrival_s=0.0)], 16), 1e6)
    cluster.drain()
    cluster.clear_hbm()
    cluster.run_phase("b", Workload([RequestSpec(1, 8208, 1, keys, arrival_s=0.0)], 16), 1e6)
    cluster.drain()
    cluster.check()
    row = [r for r in rec.rows if r[COL["phase"]] == "b"][0]
    assert row[COL["tier_hit_tokens"]] == 8192
    return row[COL["load_end_s"]] - row[COL["load_start_s"]]


def test_lmcache_stack_loads_16_token_objects_slower_than_256():
    t16, t256 = _hit_load_time("lmcache-0.3-mooncake", 16), _hit_load_time("lmcache-0.3-mooncake", 256)
    # 512 objects against 32: (512 - 32) x 9.27 ms more per-object work, less 32 page copies
    assert t16 > t256 + 3.0
    # a stack with no per-object stages moves the same bytes about as fast either way
    b16, b256 = _hit_load_time("beluga", 16), _hit_load_time("beluga", 256)
    assert b16 == pytest.approx(b256, rel=0.05)


def test_stack_sets_kv_defaults_and_the_system_overrides_them():
    base = {"name": "x", "model": "qwen3-32b", "gpu": "h20", "workload": {"kind": "lveval-synthetic"},
            "systems": [{"name": "r", "stack": "lmcache-0.3-mooncake", "kv": {"kind": "rdma-pool"}}]}
    sc = resolve_scenario(base)[0]
    kv = sc.systems[0].kv
    assert (kv.load_mode, kv.save_mode, kv.chunk_tokens, kv.rpc_keys_per_call) == ("sync", "sync-step-end", 256, 1)
    assert sc.systems[0].stack.id == "lmcache-0.3-mooncake"
    sc2 = resolve_scenario(base, ["systems.r.kv.chunk_tokens=16",
                                  "systems.r.stack.stages.4.fixed_us=1"])[0]
    assert sc2.systems[0].kv.chunk_tokens == 16
    assert sc2.systems[0].stack.stages[4].fixed_us == 1
    with pytest.raises(ConfigError, match="no stacks card"):
        resolve_scenario({**base, "systems": [{"name": "r", "stack": "nope", "kv": {"kind": "rdma-pool"}}]})
    with pytest.raises(ConfigError, match="remove"):
        resolve_scenario({**base, "systems": [{"name": "r", "stack": {"card": "beluga", "kv": {"kind": "hbm-only"}},
                                               "kv": {"kind": "rdma-pool"}}]})
