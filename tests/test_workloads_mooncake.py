"""Mooncake traces: validation, 512-token -> engine-block keys, cuts, stats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from belusim.workloads import WorkloadError, build_workload, trace_stats
from belusim.workloads.mooncake import engine_block_keys, read_mooncake
from belusim.workloads.stats import leading_hits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mooncake"

# Hand-made trace (see test_stats_hand_computed for the arithmetic).
SMALL = [
    {"timestamp": 0, "input_length": 1024, "output_length": 5, "hash_ids": [1, 2]},
    {"timestamp": 10, "input_length": 1300, "output_length": 6, "hash_ids": [1, 2, 3]},
    {"timestamp": 20, "input_length": 700, "output_length": 7, "hash_ids": [1, 5]},
    {"timestamp": 30, "input_length": 1300, "output_length": 8, "hash_ids": [1, 2, 3]},
]


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@pytest.fixture
def small(tmp_path):
    return write_jsonl(tmp_path / "small.jsonl", SMALL)


def _build(path, bs=16, **kw):
    return build_workload({"kind": "mooncake", "path": str(path), **kw}, block_size=bs, seed=0, base_dir=path.parent)


def _reference_ident(rows, bs):
    """Identity of each engine block straight from the definition (no hashing)."""
    out = []
    for r, d in enumerate(rows):
        il, ids = d["input_length"], d["hash_ids"]
        idents = []
        for k in range(il // bs):
            end = (k + 1) * bs
            nb = math.ceil(end / 512)
            partial = nb * 512 > il
            idents.append((tuple(ids[:nb]), end, r if partial else None))
        out.append(idents)
    return out


@pytest.mark.parametrize("bs", [16, 48, 256, 512, 1024])
def test_keys_equal_iff_reference_identity_equal(tmp_path, bs):
    rng = np.random.default_rng(bs)
    rows, t = [], 0
    for _ in range(40):
        n512 = int(rng.integers(1, 6))
        ids = [int(x) for x in rng.integers(0, 3, size=n512)]  # few ids: lots of sharing
        il = int(rng.integers((n512 - 1) * 512 + 1, n512 * 512 + 1))
        if rng.random() < 0.3:
            il = n512 * 512  # a full last block
        t += int(rng.integers(0, 5))
        rows.append({"timestamp": t, "input_length": il, "output_length": 1, "hash_ids": ids})
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    wl = _build(path, bs)
    ref = _reference_ident(rows, bs)
    pairs = {}
    for r, req in zip(ref, wl.requests):
        assert len(req.block_keys) == len(r) == req.prompt_tokens // bs
        assert req.block_keys.dtype == np.int64
        for ident, key in zip(r, req.block_keys.tolist()):
            pairs.setdefault(ident, set()).add(key)
    # Every identity maps to one key, and distinct identities to distinct keys.
    assert all(len(v) == 1 for v in pairs.values())
    assert len({next(iter(v)) for v in pairs.values()}) == len(pairs)


def test_512_to_16_mapping_gives_exact_shared_prefix(small):
    wl = _build(small, 16)
    r0, r1, r2, r3 = (r.block_keys for r in wl.requests)
    assert len(r0) == 64 and len(r1) == 1300 // 16 and len(r2) == 700 // 16
    # r1 shares exactly ids [1, 2] = 1024 tokens = 64 blocks with r0.
    assert np.array_equal(r1[:64], r0)
    # r2 shares id [1] = 32 blocks; its block 32 belongs to a different 512-block.
    assert np.array_equal(r2[:32], r0[:32]) and r2[32] != r0[32]
    # The partial last 512-block of r1 and r3 (same ids, same length) is NOT shared.
    assert np.array_equal(r3[:64], r1[:64])
    assert not set(r3[64:].tolist()) & set(r1[64:].tolist())


def test_trace_fields_and_arrivals(small):
    wl = _build(small)
    assert wl.mode == "open" and wl.block_size == 16
    assert [r.arrival_s for r in wl.requests] == [0.0, 0.01, 0.02, 0.03]
    assert [r.output_tokens for r in wl.requests] == [5, 6, 7, 8]
    assert wl.requests[2].source == "mooncake:small.jsonl:2"
    fast = _build(small, rate_scale=2.0)
    assert [r.arrival_s for r in fast.requests] == pytest.approx([0.0, 0.005, 0.01, 0.015])
    cut = _build(small, max_requests=2)
    assert len(cut.requests) == 2
    win = _build(small, start_s=0.01, duration_s=0.015)
    assert [r.source for r in win.requests] == ["mooncake:small.jsonl:1", "mooncake:small.jsonl:2"]
    assert [r.arrival_s for r in win.requests] == pytest.approx([0.0, 0.01])
    # Cutting does not change keys: the record index stays the file's.
    assert np.array_equal(win.requests[0].block_keys, wl.requests[1].block_keys)


def test_arrival_override_and_output_override(small):
    closed = _build(small, arrival={"process": "closed", "clients": 3, "think_time_s": 0.5})
    assert closed.mode == "closed" and closed.clients == 3 and closed.think_time_s == 0.5
    assert all(r.arrival_s is None for r in closed.requests)
    pois = _build(small, arrival={"process": "poisson", "rate_qps": 2.0}, output={"mode": "fixed", "tokens": 9})
    assert pois.mode == "open" and all(r.arrival_s is not None for r in pois.requests)
    assert [r.output_tokens for r in pois.requests] == [9] * 4


def test_keys_identical_across_phases(small):
    a = build_workload({"kind": "mooncake", "path": str(small)}, block_size=16, seed=1, base_dir=small.parent, phase="populate")
    b = build_workload({"kind": "mooncake", "path": str(small)}, block_size=16, seed=2, base_dir=small.parent, phase="hit")
    for x, y in zip(a.requests, b.requests):
        assert np.array_equal(x.block_keys, y.block_keys)


def test_keys_built_as_read_match_the_whole_trace(tmp_path, monkeypatch):
    """Requests are built a window at a time as they are read, in any order: each one's
    keys and fields equal those of the whole trace computed at once."""
    from belusim.workloads import builder

    rng = np.random.default_rng(7)
    rows = [{"timestamp": 10 * i, "input_length": int(rng.integers(1, 3000)), "output_length": 1 + i,
             "hash_ids": []} for i in range(11)]
    for d in rows:
        d["hash_ids"] = [int(x) for x in rng.integers(0, 4, size=-(-d["input_length"] // 512))]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    monkeypatch.setattr(builder._MooncakeSpecs, "WINDOW", 3)
    wl = _build(path)
    keys, off = engine_block_keys(read_mooncake(path), 16)
    order = list(range(11)) + [10, 0, 5, 4, 9]
    for i in order:
        r = wl.requests[i]
        assert np.array_equal(r.block_keys, keys[off[i]:off[i + 1]])
        assert (r.req_id, r.prompt_tokens, r.output_tokens, r.arrival_s) == (i, rows[i]["input_length"], 1 + i, i / 100)
    assert [r.req_id for r in wl.requests] == list(range(11))
    assert wl.arrival_times() == [i / 100 for i in range(11)]


@pytest.mark.parametrize(
    "line, field, fragment",
    [
        ('{"timestamp": 5, "input_length": 600, "output_length": 1}', "hash_ids", "missing"),
        ('{"timestamp": 5, "input_length": "600", "output_length": 1, "hash_ids": [1, 2]}', "input_length", "integer"),
        ('{"timestamp": 5, "input_length": 600, "output_length": -1, "hash_ids": [1, 2]}', "output_length", ">= 1"),
        ('{"timestamp": -5, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]}', "timestamp", ">= 0"),
        ('{"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": [1]}', "hash_ids", "ceil(600/512) = 2"),
        ('{"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": [1, -2]}', "hash_ids", "non-negative"),
        ('{"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": [1, 2.5]}', "hash_ids", "integers"),
        ('{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]}', "timestamp", "decreases"),
    ],
)
def test_errors_name_file_line_field(tmp_path, line, field, fragment):
    first = {"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]}
    path = write_jsonl(tmp_path / "bad.jsonl", [first, "", line])
    with pytest.raises(WorkloadError) as e:
        read_mooncake(path)
    msg = str(e.value)
    assert f"bad.jsonl:3: field '{field}'" in msg and fragment in msg


def test_invalid_json_and_empty_trace(tmp_path):
    p = write_jsonl(tmp_path / "broken.jsonl", [SMALL[0], '{"timestamp": 1,'])
    with pytest.raises(WorkloadError, match=r"broken\.jsonl:2: invalid JSON"):
        read_mooncake(p)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(WorkloadError, match="empty trace"):
        read_mooncake(empty)
    with pytest.raises(WorkloadError, match="empty trace"):
        trace_stats(empty, "mooncake")
    with pytest.raises(WorkloadError, match="no requests in the selected window"):
        read_mooncake(write_jsonl(tmp_path / "s.jsonl", SMALL), start_s=100)


def test_stats_hand_computed(small):
    # Prompt tokens 1024 + 1300 + 700 + 1300 = 4324.
    # Engine blocks (16): r1 hits ids [1,2] = 1024, r2 hits [1] = 512, r3 hits [1,2] = 1024
    # (its partial block 3 is request-unique) -> 2560 / 4324.
    s = trace_stats(small, "mooncake", 16)
    assert s["requests"] == 4
    assert s["time_span_s"] == pytest.approx(0.03)
    assert s["prefix_hit_ratio"] == pytest.approx(2560 / 4324)
    # Unique: 2 full 512-chains x 32 + partial sub-blocks 276//16 + 188//16 + 276//16 = 64 + 45.
    assert s["unique_prefix_blocks"] == 109
    assert s["block_references"] == 64 + 81 + 43 + 81
    assert s["input_tokens"]["max"] == 1300 and s["input_tokens"]["mean"] == pytest.approx(1081)
    assert s["output_tokens"]["total"] == 26
    # Raw 512 ids take the trace's word: r3's partial id 3 was seen (276 more tokens).
    raw = s["mooncake_512"]
    assert raw["prefix_hit_ratio"] == pytest.approx(2836 / 4324)
    assert raw["unique_prefix_blocks"] == 4 and raw["block_references"] == 10
    # Block size 48 (does not divide 512): blocks of 48 fully inside the shared prefix.
    # r1: 1024 // 48 = 21 blocks, r2: 512 // 48 = 10, r3: 21 -> 52 x 48 = 2496 tokens.
    s48 = trace_stats(small, "mooncake", 48)
    assert s48["prefix_hit_ratio"] == pytest.approx(2496 / 4324)


def test_fast_stats_agree_with_generic_leading_runs(tmp_path):
    rng = np.random.default_rng(7)
    rows = []
    for t in range(60):
        n512 = int(rng.integers(1, 7))
        ids = [int(x) for x in rng.integers(0, 4, size=n512)]
        il = int(rng.integers((n512 - 1) * 512 + 1, n512 * 512 + 1))
        rows.append({"timestamp": t, "input_length": il, "output_length": 1, "hash_ids": ids})
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    for bs in (16, 32, 512):
        tr = read_mooncake(path)
        keys, off = engine_block_keys(tr, bs)
        hits = leading_hits(keys, off)
        s = trace_stats(path, "mooncake", bs)
        assert s["prefix_hit_ratio"] == pytest.approx(hits.sum() * bs / tr.input_length.sum())
        assert s["unique_prefix_blocks"] == len(np.unique(keys))


def _need_data():
    if not (DATA / "synthetic_trace.jsonl").is_file():
        pytest.skip(f"real Mooncake traces not found under {DATA}")


def test_real_synthetic_trace():
    _need_data()
    path = DATA / "synthetic_trace.jsonl"
    wl = build_workload({"kind": "mooncake", "path": str(path)}, block_size=16, seed=0, base_dir=DATA)
    assert len(wl.requests) == 3993
    assert 15_000 < np.mean([r.prompt_tokens for r in wl.requests]) < 15_700
    span = wl.requests[-1].arrival_s - wl.requests[0].arrival_s
    assert 16 * 60 < span < 18 * 60
    s = trace_stats(path, "mooncake", 16)
    keys = np.concatenate([r.block_keys for r in wl.requests])
    off = np.concatenate([[0], np.cumsum([len(r.block_keys) for r in wl.requests])])
    hits = leading_hits(keys, off)
    assert s["prefix_hit_ratio"] == pytest.approx(hits.sum() * 16 / s["input_tokens"]["total"])
    assert s["block_references"] == len(keys)


def test_real_conversation_trace_shape():
    _need_data()
    path = DATA / "conversation_trace.jsonl"
    if not path.is_file():
        pytest.skip("conversation trace absent")
    wl = build_workload({"kind": "mooncake", "path": str(path), "max_requests": 2000}, block_size=16, seed=0, base_dir=DATA)
    assert len(wl.requests) == 2000
    assert all(len(r.block_keys) == r.prompt_tokens // 16 for r in wl.requests)
