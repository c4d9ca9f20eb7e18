"""Outputs: paths checked before the work, staged directories with a manifest, atomic files."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.outputs import (
    OutputDir, OutputError, atomic_write, check_output_dir, check_output_file, read_manifest,
)
from tests.test_core_cli import TINY


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return p


def test_check_output_file_refuses_a_path_under_a_file_a_directory_and_an_input(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_output_file(f / "sub" / "out.csv")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="is also the input"):
        check_output_file(tmp_path / "." / "f.txt", inputs=[f])
    assert check_output_file(tmp_path / "new" / "deeper" / "out.csv")  # parents made later


def test_check_output_dir_refuses_a_file_and_a_foreign_directory(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(f)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    with pytest.raises(OutputError, match="not a belusim output directory"):
        check_output_dir(foreign)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "summary.json").write_text("{}")
    assert check_output_dir(legacy, known=["summary.json"])


def test_output_dir_complete_replaces_stale_files(tmp_path):
    out = tmp_path / "out"
    with OutputDir(out, command="t") as od:
        atomic_write(od.path / "a.txt", "first")
        atomic_write(od.path / "stale.txt", "old")
    with OutputDir(out, command="t") as od:
        atomic_write(od.path / "a.txt", "second")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "manifest.json"]
    m = read_manifest(out)
    assert m["status"] == "complete"
    assert [f["path"] for f in m["files"]] == ["a.txt"] and m["files"][0]["bytes"] == len("second")
    assert not out.with_name("out.partial").exists()


def test_output_dir_interrupted_leaves_the_old_output_and_an_incomplete_partial(tmp_path):
    out = tmp_path / "out"
    with OutputDir(out, command="t") as od:
        atomic_write(od.path / "a.txt", "good")
    with pytest.raises(KeyboardInterrupt):
        with OutputDir(out, command="t") as od:
            atomic_write(od.path / "a.txt", "half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "good"
    partial = read_manifest(out.with_name("out.partial"))
    assert partial["status"] == "incomplete" and partial["error"] == "interrupted"
    with OutputDir(out, command="t") as od:  # a stale partial is cleared by the next run
        assert sorted(p.name for p in od.path.iterdir()) == ["manifest.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from belusim.outputs import atomic_open

    p = tmp_path / "t.csv"
    atomic_write(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as fh:
            fh.write("new")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["t.csv"]


def test_run_out_existing_file_fails_before_the_run(tmp_path, tiny):
    f = tmp_path / "file"
    f.write_text("x")
    r = CliRunner().invoke(app, ["run", str(tiny), "--out", str(f), "-q"])
    assert r.exit_code == 2 and "is a file, not a directory" in r.stderr
    r = CliRunner().invoke(app, ["run", str(tiny), "--out", str(f / "sub"), "-q"])
    assert r.exit_code == 2 and "is a file, not a directory" in r.stderr


def test_run_out_writes_a_complete_manifest_and_drops_stale_files(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"stale": true}')  # an earlier version's output
    r = CliRunner().invoke(app, ["run", str(tiny), "--out", str(out), "-q", "--systems", "hbm-only"])
    assert r.exit_code == 0, r.stderr
    m = read_manifest(out)
    assert m["status"] == "complete" and m["systems_done"] == ["hbm-only"]
    assert {f["path"] for f in m["files"]} == {"requests.csv", "requests.parquet", "summary.json",
                                              "scenario.resolved.yaml"}
    assert "stale" not in json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("cmd", [["compare", "{tiny}", "--out", "{bad}/t.csv"],
                                 ["sweep", "{sweep}", "--out", "{bad}/t.csv"]])
def test_compare_and_sweep_check_out_before_running(tmp_path, tiny, cmd):
    bad = tmp_path / "afile"
    bad.write_text("x")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "scenario": str(tiny), "parameter": "run.seed",
                                     "values": [1, 2], "output": "t.csv"}))
    args = [a.format(tiny=tiny, bad=bad, sweep=sweep) for a in cmd]
    r = CliRunner().invoke(app, args + ["-q"])
    assert r.exit_code == 2 and "is a file, not a directory" in r.stderr, r.stderr


def test_trace_convert_refuses_to_overwrite_its_source(tmp_path):
    from belusim.workloads.cli import trace_app

    src = tmp_path / "t.jsonl"
    r = CliRunner().invoke(trace_app, ["export-synthetic", "--out", str(src), "--num-prompts", "2"])
    assert r.exit_code == 0, r.output
    before = src.read_bytes()
    r = CliRunner().invoke(trace_app, ["convert", str(src), "--out", str(src)])
    assert r.exit_code == 2 and "is also the input" in r.output
    assert src.read_bytes() == before


def _sweep_file(tmp_path, tiny, out):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "scenario": str(tiny), "systems": ["hbm-only"],
                                     "parameter": "run.seed", "values": [1], "output": str(out)}))
    return sweep


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_compare_and_sweep_out_write_a_complete_manifest(tmp_path, tiny, command):
    from belusim.outputs import manifest_for

    out = tmp_path / "t.csv"
    args = (["compare", str(tiny), "--systems", "hbm-only", "--out", str(out)] if command == "compare"
            else ["sweep", str(_sweep_file(tmp_path, tiny, out))])
    r = CliRunner().invoke(app, args + ["-q"])
    assert r.exit_code == 0, r.output
    m = json.loads(manifest_for(out).read_text())
    assert m["writer"] == "belusim" and m["command"] == command and m["status"] == "complete"
    names = {f["path"] for f in m["files"]}
    assert {"t.csv", "t.json"} <= names and all(f["bytes"] > 0 and len(f["sha256"]) == 64 for f in m["files"])
    assert ("t.points.jsonl" in names) == (command == "sweep")


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_an_interrupted_table_write_leaves_an_incomplete_manifest(tmp_path, tiny, monkeypatch, command):
    import belusim.study.sweep as sweep_mod
    from belusim.outputs import manifest_for

    def torn(rows, path):  # the CSV lands, then the process is stopped before its .json
        path.write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "write_table", torn)
    out = tmp_path / "t.csv"
    args = (["compare", str(tiny), "--systems", "hbm-only", "--out", str(out)] if command == "compare"
            else ["sweep", str(_sweep_file(tmp_path, tiny, out))])
    CliRunner().invoke(app, args + ["-q"])
    m = json.loads(manifest_for(out).read_text())
    assert m["status"] == "incomplete" and m["error"] == "interrupted" and m["files"] == []


def test_compare_that_fails_marks_its_manifest_incomplete_with_the_error(tmp_path, tiny):
    from belusim.outputs import manifest_for

    out = tmp_path / "t.csv"
    r = CliRunner().invoke(app, ["compare", str(tiny), "--systems", "nope", "--out", str(out), "-q"])
    assert r.exit_code == 2
    m = json.loads(manifest_for(out).read_text())
    assert m["status"] == "incomplete" and "nope" in m["error"]
