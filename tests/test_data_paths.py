"""A packaged scenario keeps its repository-relative trace path; the trace is then looked up
next to the scenario, in the current directory, then under $BELUSIM_DATA_DIR, and a miss
lists every place tried and how to point at the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.scenario import resolve_scenario
from belusim.paths import scenarios_dir
from belusim.workloads.builder import build_workload

TRACE = "".join(json.dumps({"timestamp": t * 100, "input_length": 1024, "output_length": 4,
                            "hash_ids": [t, t + 1]}) + "\n" for t in range(3))
REL = "../../../shared/data/mooncake/conversation_trace.jsonl"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The trace scenario copied where `pip install .` puts it, run from an unrelated folder."""
    src = scenarios_dir() / "traces" / "mooncake-conversation-cxl.yaml"
    assert REL in src.read_text()  # the path this test is about
    dst = tmp_path / "site-packages" / "belusim" / "_data" / "scenarios" / "traces" / src.name
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    work = tmp_path / "x" / "y" / "work"  # so that work/../../../ stays inside tmp_path
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("BELUSIM_DATA_DIR", raising=False)
    return dst


def _build(scenario: Path):
    sc, _ = resolve_scenario(scenario)
    return build_workload(sc.workload, block_size=sc.engine.block_size, seed=1, base_dir=sc.base_dir)


def test_missing_trace_lists_every_place_tried_and_exits_2(installed, tmp_path, monkeypatch):
    res = CliRunner().invoke(app, ["run", str(installed)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    out = " ".join(res.output.split())
    assert str((installed.parent / REL)) in out and str(Path.cwd() / REL) in out
    assert "--set workload.path=" in out and "BELUSIM_DATA_DIR" in out
    # with the variable set, its candidates are listed too
    monkeypatch.setenv("BELUSIM_DATA_DIR", str(tmp_path / "nowhere"))
    res = CliRunner().invoke(app, ["run", str(installed)])
    assert res.exit_code == 2 and str(tmp_path / "nowhere" / "conversation_trace.jsonl") in " ".join(res.output.split())


@pytest.mark.parametrize("layout", ["shared/data/mooncake/conversation_trace.jsonl", "conversation_trace.jsonl"])
def test_trace_found_under_data_dir(installed, tmp_path, monkeypatch, layout):
    data = tmp_path / "data"
    (data / layout).parent.mkdir(parents=True, exist_ok=True)
    (data / layout).write_text(TRACE)
    monkeypatch.setenv("BELUSIM_DATA_DIR", str(data))
    assert len(_build(installed).requests) == 3


def test_scenario_directory_comes_before_cwd_and_data_dir(installed, tmp_path, monkeypatch):
    beside = (installed.parent / REL).resolve()
    beside.parent.mkdir(parents=True)
    beside.write_text(TRACE)
    other = tmp_path / "data" / "conversation_trace.jsonl"
    other.parent.mkdir()
    other.write_text(TRACE.splitlines(keepends=True)[0])
    monkeypatch.setenv("BELUSIM_DATA_DIR", str(other.parent))
    assert len(_build(installed).requests) == 3


def test_trace_found_relative_to_cwd(installed, tmp_path):
    here = Path.cwd() / REL
    here.resolve().parent.mkdir(parents=True, exist_ok=True)
    here.resolve().write_text(TRACE)
    assert len(_build(installed).requests) == 3


def test_set_workload_path_points_at_the_file(installed, tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(TRACE)
    sc, _ = resolve_scenario(installed, [f"workload.path={f}"])
    wl = build_workload(sc.workload, block_size=sc.engine.block_size, seed=1, base_dir=sc.base_dir)
    assert len(wl.requests) == 3
