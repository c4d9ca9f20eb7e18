"""belusim's trace format: exact round trips (JSONL, parquet), validation, re-blocking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from belusim.workloads import RequestSpec, Workload, WorkloadError, build_workload, read_trace, trace_stats, write_trace
from belusim.workloads.trace_format import iter_trace, read_header, rekey


def _workload(mode="open") -> Workload:
    reqs = [
        RequestSpec(0, 40, 3, np.array([5, -7], dtype=np.int64), 0.125 if mode == "open" else None, "x:0", {"a": 1}),
        RequestSpec(1, 15, 1, np.zeros(0, dtype=np.int64), 1 / 3 if mode == "open" else None, "x:1"),
        RequestSpec(7, 64, 9, np.array([2**62, 1, 2, 3], dtype=np.int64), 2.5 if mode == "open" else None, "", {"s": "é"}),
    ]
    return Workload(reqs, 16, mode=mode, clients=0 if mode == "open" else 4, think_time_s=0.0 if mode == "open" else 0.25)


def _same(a: Workload, b: Workload) -> None:
    assert (a.block_size, a.mode, a.clients, a.think_time_s) == (b.block_size, b.mode, b.clients, b.think_time_s)
    assert len(a.requests) == len(b.requests)
    for x, y in zip(a.requests, b.requests):
        assert (x.req_id, x.prompt_tokens, x.output_tokens, x.arrival_s, x.source, x.tags) == (
            y.req_id, y.prompt_tokens, y.output_tokens, y.arrival_s, y.source, y.tags
        )
        assert y.block_keys.dtype == np.int64 and np.array_equal(x.block_keys, y.block_keys)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_round_trip_exact(tmp_path, suffix, mode):
    wl = _workload(mode)
    p = write_trace(wl, tmp_path / f"t{suffix}")
    _same(wl, read_trace(p))
    assert read_header(p)["block_size"] == 16


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_real_workload(tmp_path, suffix):
    wl = build_workload(
        {"kind": "lveval-synthetic", "num_prompts": 12, "shared_context_fraction": 0.5, "arrival": {"process": "gamma", "rate_qps": 3, "cv": 2}},
        block_size=16, seed=4, base_dir=tmp_path,
    )
    p = write_trace(wl, tmp_path / f"w{suffix}")
    _same(wl, read_trace(p))
    again = build_workload({"kind": "belusim-trace", "path": p.name}, block_size=16, seed=0, base_dir=tmp_path)
    _same(wl, again)


def test_jsonl_layout_is_documented_one(tmp_path):
    p = write_trace(_workload(), tmp_path / "t.jsonl")
    lines = p.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "belusim-trace" and header["version"] == 1 and header["block_size"] == 16
    first = json.loads(lines[1])
    assert set(first) >= {"req_id", "arrival_s", "prompt_tokens", "output_tokens", "block_size", "block_keys", "source"}
    assert first["block_keys"] == [5, -7]


def test_rekey_to_coarser_blocks(tmp_path):
    wl = build_workload({"kind": "lveval-synthetic", "num_prompts": 5}, block_size=16, seed=1, base_dir=tmp_path)
    wl64 = build_workload({"kind": "lveval-synthetic", "num_prompts": 5}, block_size=64, seed=1, base_dir=tmp_path)
    p = write_trace(wl, tmp_path / "t.parquet")
    re = read_trace(p, block_size=64)
    assert re.block_size == 64
    for a, b, c in zip(re.requests, wl.requests, wl64.requests):
        assert len(a.block_keys) == b.prompt_tokens // 64
        assert np.array_equal(a.block_keys, b.block_keys[3::4])
        # Same sharing structure as building at 64 directly.
        assert len(a.block_keys) == len(c.block_keys)
    with pytest.raises(WorkloadError, match="not a multiple"):
        rekey(np.arange(6), 16, 24)


def _write_lines(p: Path, lines) -> Path:
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return p


HDR = {"format": "belusim-trace", "version": 1, "block_size": 16}
REQ = {"req_id": 0, "arrival_s": 0.5, "prompt_tokens": 33, "output_tokens": 2, "block_size": 16, "block_keys": [1, 2], "source": ""}


@pytest.mark.parametrize(
    "req, field, fragment",
    [
        ({k: v for k, v in REQ.items() if k != "output_tokens"}, "output_tokens", "missing"),
        ({**REQ, "block_keys": [1]}, "block_keys", "prompt_tokens // block_size = 2"),
        ({**REQ, "block_keys": [1, "2"]}, "block_keys", "integers"),
        ({**REQ, "block_keys": [1, 2**64]}, "block_keys", "64-bit"),
        ({**REQ, "block_size": 32}, "block_size", "header"),
        ({**REQ, "arrival_s": "soon"}, "arrival_s", "finite number"),
        ({**REQ, "req_id": -1}, "req_id", "non-negative"),
    ],
)
def test_jsonl_errors(tmp_path, req, field, fragment):
    p = _write_lines(tmp_path / "bad.jsonl", [HDR, REQ, req])
    with pytest.raises(WorkloadError) as e:
        read_trace(p)
    msg = str(e.value)
    assert "bad.jsonl:3: field '" + field + "'" in msg and fragment in msg


def test_header_and_empty_errors(tmp_path):
    with pytest.raises(WorkloadError, match=r"h\.jsonl:1: field 'format'"):
        read_trace(_write_lines(tmp_path / "h.jsonl", [{"format": "other"}, REQ]))
    with pytest.raises(WorkloadError, match="version"):
        read_trace(_write_lines(tmp_path / "v.jsonl", [{**HDR, "version": 2}]))
    with pytest.raises(WorkloadError, match="empty trace"):
        read_trace(_write_lines(tmp_path / "e.jsonl", [HDR]))
    (tmp_path / "z.jsonl").write_text("")
    with pytest.raises(WorkloadError, match="empty trace"):
        read_trace(tmp_path / "z.jsonl")
    with pytest.raises(WorkloadError, match="suffix"):
        write_trace(_workload(), tmp_path / "t.csv")
    with pytest.raises(WorkloadError, match="open-loop"):
        read_trace(_write_lines(tmp_path / "m.jsonl", [{**HDR, "mode": "open"}, REQ, {**REQ, "arrival_s": None}]))


def test_belusim_stats_hand_computed(tmp_path):
    # Blocks of 16: r0 [1,2,3], r1 [1,2,9,9'] (leading run 2), r2 [4] (0), r3 [1,2,3] (3).
    reqs = [
        RequestSpec(0, 48, 1, np.array([1, 2, 3]), 0.0),
        RequestSpec(1, 70, 1, np.array([1, 2, 9, 10]), 1.0),
        RequestSpec(2, 20, 1, np.array([4]), 2.0),
        RequestSpec(3, 50, 1, np.array([1, 2, 3]), 4.0),
    ]
    for suffix in (".jsonl", ".parquet"):
        p = write_trace(reqs, tmp_path / f"s{suffix}", block_size=16)
        s = trace_stats(p)
        assert s["format"] == "belusim"
        assert s["prefix_hit_ratio"] == pytest.approx((2 + 3) * 16 / (48 + 70 + 20 + 50))
        assert s["unique_prefix_blocks"] == 6 and s["block_references"] == 11
        assert s["time_span_s"] == 4.0 and s["mean_rate_qps"] == pytest.approx(1.0)
        assert s["input_tokens"]["p50"] == pytest.approx(49.0)


def test_iter_trace_streams(tmp_path):
    p = write_trace(_workload(), tmp_path / "t.jsonl")
    it = iter_trace(p)
    assert next(it).req_id == 0
