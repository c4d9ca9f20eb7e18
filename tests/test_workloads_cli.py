"""`belusim trace` sub-app through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from belusim.workloads import read_trace
from belusim.workloads.cli import trace_app

runner = CliRunner()

# The hand-made Mooncake trace of test_workloads_mooncake.py (engine hit ratio 2560/4324).
SMALL = [
    {"timestamp": 0, "input_length": 1024, "output_length": 5, "hash_ids": [1, 2]},
    {"timestamp": 10, "input_length": 1300, "output_length": 6, "hash_ids": [1, 2, 3]},
    {"timestamp": 20, "input_length": 700, "output_length": 7, "hash_ids": [1, 5]},
    {"timestamp": 30, "input_length": 1300, "output_length": 8, "hash_ids": [1, 2, 3]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def small(tmp_path):
    return write_jsonl(tmp_path / "small.jsonl", SMALL)


def test_stats_json_autodetects_mooncake(small):
    r = runner.invoke(trace_app, ["stats", str(small), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["format"] == "mooncake" and s["requests"] == 4
    assert s["prefix_hit_ratio"] == pytest.approx(2560 / 4324)


def test_stats_table(small):
    r = runner.invoke(trace_app, ["stats", str(small), "--block-size", "32"])
    assert r.exit_code == 0, r.output
    assert "prefix hit ratio" in r.stdout and "0.5920" in r.stdout


def test_convert_then_stats_agree(small, tmp_path):
    for name in ("c.parquet", "c.jsonl"):
        out = tmp_path / name
        r = runner.invoke(trace_app, ["convert", str(small), "--out", str(out), "--rate-scale", "2", "--max-requests", "3"])
        assert r.exit_code == 0, r.output
        wl = read_trace(out)
        assert len(wl.requests) == 3 and wl.requests[1].arrival_s == pytest.approx(0.005)
        s = json.loads(runner.invoke(trace_app, ["stats", str(out), "--json"]).stdout)
        assert s["format"] == "belusim" and s["prefix_hit_ratio"] == pytest.approx((1024 + 512) / 3024)


def test_export_synthetic(tmp_path):
    out = tmp_path / "s.jsonl"
    r = runner.invoke(trace_app, ["export-synthetic", "--out", str(out), "--num-prompts", "8", "--seed", "3",
                                  "--truncate-tokens", "4096", "--rate-qps", "2"])
    assert r.exit_code == 0, r.output
    wl = read_trace(out)
    assert len(wl.requests) == 8 and wl.mode == "open" and all(q.prompt_tokens == 4096 for q in wl.requests)
    out2 = tmp_path / "s2.jsonl"
    runner.invoke(trace_app, ["export-synthetic", "--out", str(out2), "--num-prompts", "8", "--seed", "3",
                              "--truncate-tokens", "4096", "--rate-qps", "2"])
    assert out.read_bytes() == out2.read_bytes()  # deterministic
    closed = tmp_path / "c.parquet"
    assert runner.invoke(trace_app, ["export-synthetic", "--out", str(closed), "--clients", "5"]).exit_code == 0
    wl = read_trace(closed)
    assert wl.mode == "closed" and wl.clients == 5 and len(wl.requests) == 64


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["stats", "/no/such/file.jsonl"], "not found"),
        (["stats", "{bad}", "--format", "csv"], "unknown --format"),
        (["convert", "{bad}", "--out", "{tmp}/x.txt"], "suffix"),
        (["stats", "{bad}"], "bad.jsonl:2: field 'hash_ids'"),
        (["export-synthetic", "--out", "{tmp}/x.jsonl", "--level", "9k"], "level"),
    ],
)
def test_errors_exit_2_without_traceback(tmp_path, args, fragment):
    bad = write_jsonl(tmp_path / "bad.jsonl", [SMALL[0], {"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [1]}])
    args = [a.replace("{bad}", str(bad)).replace("{tmp}", str(tmp_path)) for a in args]
    r = runner.invoke(trace_app, args)
    assert r.exit_code == 2
    assert fragment in r.output
    assert "Traceback" not in r.output
