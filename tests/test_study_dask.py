"""Sweeps on dask.distributed: same results as serial runs, results written as they arrive, a
killed sweep resumes from what is done."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.scenario import ConfigError
from belusim.study.points import Point, PointStore
from belusim.study.sweep import parse_grid, split_values

pytest.importorskip("distributed")

TINY = {
    "name": "tiny-sweep",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 2},
    "engine": {"kv_blocks": 400},
    "systems": [{"name": "cxl", "kv": {"kind": "cxl-pool", "capacity_gb": 100}}],
    "workload": {"kind": "lveval-synthetic", "num_prompts": 24, "truncate_tokens": 3000,
                 "arrival": {"process": "poisson", "rate_qps": 2.0}},
}


@pytest.fixture
def study(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(yaml.safe_dump({"name": "t", "scenario": "tiny.yaml", "parameter": "run.seed",
                                     "values": [1, 2], "output": str(tmp_path / "unused.csv")}))
    return sweep


def _table(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_four_point_sweep_on_two_workers_equals_serial_and_resumes_after_kill(study, tmp_path):
    grid = "systems.cxl.kv.interleave=true,false"
    serial = tmp_path / "serial.csv"
    r = CliRunner().invoke(app, ["sweep", str(study), "--grid", grid, "--workers", "0", "-q", "--out", str(serial)])
    assert r.exit_code == 0, r.output
    assert len(_table(serial)) == 4 * 2  # points x phases

    out = tmp_path / "dask.csv"
    points = tmp_path / "dask.points.jsonl"
    cmd = [sys.executable, "-m", "belusim", "sweep", str(study), "--grid", grid, "--workers", "2", "-q",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if points.exists() and points.read_text().count("\n") >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-run
    proc.wait()
    done_before = points.read_text().count("\n")
    assert 1 <= done_before < 4 and not out.exists()

    r = CliRunner().invoke(app, ["sweep", str(study), "--grid", grid, "--workers", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"4 points, {done_before} already done" in r.stderr
    assert points.read_text().count("\n") == 4  # only the missing points ran
    assert _table(out) == _table(serial)
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(serial.with_suffix(".json").read_text())


def test_point_store_drops_a_torn_line_and_keeps_the_rest(tmp_path):
    path = tmp_path / "p.jsonl"
    store = PointStore(path)
    a, b = Point("/x.yaml", ("run.seed=1",)), Point("/x.yaml", ("run.seed=2",))
    store.add(a, {"results": [1]})
    with open(path, "a") as fh:
        fh.write('{"key": "cut sh')  # killed mid-write
    again = PointStore(path)
    assert again.done == {a.key: {"results": [1]}}
    again.add(b, {"results": [2]})
    assert PointStore(path).done == {a.key: {"results": [1]}, b.key: {"results": [2]}}
    assert a.key != b.key and Point("/x.yaml", ("run.seed=1",), labels={"s": 1}).key == a.key


def test_grid_option_parsing():
    assert split_values("1,{process: poisson, rate_qps: 2},[1, 2]") == ["1", "{process: poisson, rate_qps: 2}",
                                                                         "[1, 2]"]
    assert parse_grid(["a.b=1,2", "c=true"]) == {"a.b": [1, 2], "c": [True]}
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid(["nokey"])


def test_packaged_sweep_name_and_bad_override(study, tmp_path):
    r = CliRunner().invoke(app, ["sweep", "beluga/no-such-sweep"])
    assert r.exit_code == 2 and "not found" in r.stderr
    r = CliRunner().invoke(app, ["sweep", str(study), "--workers", "0", "-q", "--grid", "engine.max_num_seqz=1",
                                 "--out", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "max_num_seqz" in r.stderr
    from belusim.study.sweep import find_sweep, load_sweep

    assert load_sweep(find_sweep("beluga/sweep-rate")).parameter == "workload.arrival"
