"""End-of-run checks can fail: bytes never moved, a request recorded twice, a save that never
completes; a failed check is `belusim: check failed: ...` with exit code 3."""

from __future__ import annotations

from array import array

import pytest
from belusim.sim.kernel import Environment
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.scenario import resolve_scenario
from belusim.errors import CheckFailed
from belusim.report.metrics import Recorder
from belusim.policy.request import Request
from belusim.sim import cluster as cluster_mod
from belusim.sim import runner as runner_mod
from belusim.sim.cluster import simulate
from belusim.workloads import build_workload
from belusim.transport.fabric import Fabric
from tests.test_core_cli import TINY


def _fabric_with_one_flow(nbytes=1e9, gbps=10.0):
    env = Environment()
    fab = Fabric(env)
    link = fab.add_link("l", gbps)
    done = fab.flow(nbytes, [link])
    return env, fab, done


def test_bytes_moved_is_the_integral_of_rates():
    env, fab, done = _fabric_with_one_flow()
    fab.flow(5e8, [fab.link("l")])
    env.run()
    assert fab.conservation_problems() == []
    assert fab.bytes_moved == pytest.approx(1.5e9, rel=1e-12)
    assert env.now == pytest.approx(1.5e9 / 10e9)


def test_a_flow_that_finishes_with_bytes_left_fails_the_check():
    env, fab, done = _fabric_with_one_flow()
    env.run(until=0.05)  # half of the 0.1 s transfer
    fab._advance()
    fab._active[0].remaining = 0.0  # a bug: the flow is called done with half its bytes unmoved
    fab._reschedule()
    env.run()
    assert done.triggered
    problems = fab.conservation_problems()
    assert len(problems) == 1 and "bytes never moved" in problems[0]
    assert fab.bytes_delivered == fab.bytes_requested  # the old check would have passed


def test_unfinished_flow_fails_the_check():
    env, fab, done = _fabric_with_one_flow()
    env.run(until=0.05)
    assert any("still active" in p for p in fab.conservation_problems())


@pytest.fixture
def scenario():
    sc, _ = resolve_scenario(TINY)
    return sc


def _played(scenario, system: str, recorder: Recorder | None = None) -> cluster_mod.Cluster:
    """A cluster that has played the scenario's phases, not yet drained or checked. Faults
    are put in from outside: the cluster's methods cannot be patched when it is compiled."""
    cluster = cluster_mod.Cluster(scenario, scenario.system(system), recorder or Recorder())
    for phase in scenario.run.phases:
        wl = build_workload(phase.workload or scenario.workload, block_size=scenario.engine.block_size,
                            seed=scenario.run.seed, base_dir=scenario.base_dir, phase=phase.name)
        cluster.run_phase(phase.name, wl, scenario.run.max_sim_time_s)
    return cluster


class _KeepingRecorder(Recorder):
    """A recorder that also keeps the requests it was given."""

    def __init__(self):
        super().__init__()
        self.requests = []

    def record(self, system, req, itl=None):
        self.requests.append(req)
        super().record(system, req, itl)

    def record_ends(self, system, req, ends):
        self.requests.append(req)
        super().record_ends(system, req, ends)


def test_a_request_recorded_twice_is_caught(scenario):
    rec = _KeepingRecorder()
    cluster = _played(scenario, "hbm-only", rec)
    cluster.drain()
    assert cluster.check()["requests_finished"] == 8  # (the checks hold before the fault)
    cluster._record(rec.requests[0])  # the first finished request, recorded a second time
    with pytest.raises(CheckFailed, match=r"1 requests recorded twice or never admitted .*; 9 request records for 8 requests admitted"):
        cluster.check()


def test_a_request_recorded_but_never_admitted_is_caught(scenario):
    cluster = _played(scenario, "hbm-only")
    cluster.drain()
    cluster._record(Request(99, 64, 4, array("q", [1, 2, 3, 4]), 0.0, "p"))  # never submitted
    with pytest.raises(CheckFailed, match=r"1 requests recorded twice or never admitted \(e\.g\. p/99\)"):
        cluster.check()


def test_a_save_that_never_completes_is_reported(scenario):
    # A save counted as in flight that nothing will ever land, put in the cluster's own
    # bookkeeping before it drains.
    cluster = _played(scenario, "cxl-pool")
    cluster.instances[0].pending_saves += 1
    with pytest.raises(CheckFailed, match=r"saves that never complete: .* saves are still pending"):
        cluster.drain()


def test_check_failure_exits_3_without_traceback(tmp_path, monkeypatch):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))

    def broken(*args, **kwargs):
        raise CheckFailed("system 'x': 3 KV blocks leaked")

    monkeypatch.setattr(runner_mod, "simulate", broken)
    r = CliRunner().invoke(app, ["run", str(p), "-q"])
    assert r.exit_code == 3
    assert r.stderr.strip() == "belusim: check failed: system 'x': 3 KV blocks leaked"
    assert "Traceback" not in r.output


def test_checks_report_bytes_moved(scenario):
    run = simulate(scenario, scenario.system("cxl-pool"), Recorder())
    c = run.checks
    assert c["bytes_requested"] > 0
    assert c["bytes_moved"] == pytest.approx(c["bytes_requested"], rel=1e-9)
