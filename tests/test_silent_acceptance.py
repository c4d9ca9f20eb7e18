"""Inputs that used to be accepted in silence now fail with the reason."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.workloads.cli import trace_app
from belusim.workloads.errors import WorkloadError
from belusim.workloads.trace_format import read_trace
from tests.test_core_cli import TINY


def test_belusim_trace_with_out_of_order_arrivals_is_rejected(tmp_path):
    src = tmp_path / "t.jsonl"
    r = CliRunner().invoke(trace_app, ["export-synthetic", "--out", str(src), "--num-prompts", "5",
                                       "--rate-qps", "2"])
    assert r.exit_code == 0, r.output
    lines = src.read_text().splitlines()
    assert json.loads(lines[0])["mode"] == "open"
    recs = [json.loads(x) for x in lines[1:]]
    recs[2]["arrival_s"], recs[3]["arrival_s"] = recs[3]["arrival_s"], recs[2]["arrival_s"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0]] + [json.dumps(d) for d in recs]) + "\n")
    with pytest.raises(WorkloadError, match=r"bad\.jsonl:5: field 'arrival_s': decreases .* arrival order"):
        read_trace(bad)
    # the same through parquet: the row is named
    pq = tmp_path / "ok.parquet"
    r = CliRunner().invoke(trace_app, ["convert", str(src), "--out", str(pq)])
    assert r.exit_code == 0, r.output
    assert [x.arrival_s for x in read_trace(pq).requests] == sorted(d["arrival_s"] for d in recs)


def test_scenario_where_no_request_fits_fails_with_the_reason(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(dict(TINY, engine={"kv_blocks": 10}), sort_keys=False))
    r = CliRunner().invoke(app, ["run", str(p), "-q"])
    assert r.exit_code == 2
    assert "none of the 4 requests can be served" in r.stderr and "exceeds the instance's KV cache" in r.stderr


def test_overloaded_open_loop_phase_warns(tmp_path):
    p = tmp_path / "tiny.yaml"
    wl = dict(TINY["workload"], num_prompts=20, arrival={"process": "poisson", "rate_qps": 50})
    p.write_text(yaml.safe_dump(dict(TINY, workload=wl, systems=TINY["systems"][:1]), sort_keys=False))
    r = CliRunner().invoke(app, ["run", str(p), "-q", "--json"])
    assert r.exit_code == 0
    assert "warning: hbm-only, phase populate: overloaded: requests arrive at" in r.stderr
    light = dict(wl, arrival={"process": "poisson", "rate_qps": 0.01})
    p.write_text(yaml.safe_dump(dict(TINY, workload=light, systems=TINY["systems"][:1]), sort_keys=False))
    r = CliRunner().invoke(app, ["run", str(p), "-q", "--json"])
    assert r.exit_code == 0 and "overloaded" not in r.stderr


def test_flags_are_shown_as_flags_in_help():
    r = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    line = next(ln for ln in r.stdout.splitlines() if "--json" in ln)
    assert "<bool>" not in line


def test_every_option_of_every_command_has_help():
    import click
    import typer.main

    missing = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
            return
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"{' '.join(path)} {p.opts[0]}")

    walk(typer.main.get_command(app), ["belusim"])
    assert missing == []
