"""Link utilisation over time: the fabric's per-bucket bytes integrate back to each link's
total, across bucket coarsening, and a run carries the series of its busiest links."""

from __future__ import annotations

import math
import random

from belusim.sim.kernel import Environment
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.transport.fabric import Fabric


def _random_traffic(seed: int, horizon_s: float, n_flows: int = 300):
    env = Environment()
    fab = Fabric(env)
    fab.record_series = True
    links = [fab.add_link(f"l{i}", gbps) for i, gbps in enumerate((10, 25, 50, 100))]
    rng = random.Random(seed)

    def start(delay, nbytes, path, cap):
        yield env.timeout(delay)
        yield fab.flow(nbytes, path, cap)

    for _ in range(n_flows):
        path = rng.sample(links, rng.randint(1, 3))
        cap = rng.choice([math.inf, 5.0, 40.0])
        env.process(start(rng.uniform(0, horizon_s), rng.uniform(1e6, 2e9), path, cap))
    env.run()
    return env, fab


def test_series_integrates_back_to_each_links_bytes():
    for seed, horizon in ((1, 0.05), (2, 3.0), (3, 40.0)):  # no coarsening, some, a lot
        env, fab = _random_traffic(seed, horizon)
        assert fab.conservation_problems() == []
        assert len(max((lk.series for lk in fab.links.values()), key=len)) <= fab.max_buckets
        for lk in fab.links.values():
            assert lk.bytes_carried > 0
            assert math.isclose(sum(lk.series), lk.bytes_carried, rel_tol=1e-9), lk.name
        ser = fab.utilisation_series(env.now)
        w = ser["bucket_s"]
        assert math.ceil(env.now / w - 1e-9) <= fab.max_buckets
        for name, u in ser["links"].items():
            lk = fab.links[name]
            assert all(-1e-9 <= v <= 1 + 1e-6 for v in u), name  # never above capacity
            lengths = [min(w, env.now - k * w) for k in range(len(u))]
            assert math.isclose(sum(v * lk.capacity * t for v, t in zip(u, lengths)), lk.bytes_carried,
                                rel_tol=1e-9)


def test_a_run_carries_its_busiest_links_over_time(tmp_path):
    from tests.test_report_html import CHROMIUM, TINY, check_figures, open_in_chromium

    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    page = tmp_path / "run.html"
    r = CliRunner().invoke(app, ["run", str(p), "-q", "--out", str(out), "--set", "run.utilisation_series=true",
                                 "--report", str(page)])
    assert r.exit_code == 0, r.output
    import json

    details = {d["system"]: d for d in json.loads((out / "summary.json").read_text())["details"]}
    ser = details["cxl"]["utilisation_series"]
    assert 0 < len(ser["links"]) <= 8 and ser["bucket_s"] > 0
    sim_s = details["cxl"]["simulated_s"]
    for name, u in ser["links"].items():
        mean = sum(v * min(ser["bucket_s"], sim_s - k * ser["bucket_s"]) for k, v in enumerate(u)) / sim_s
        # the mean of the series is the run's mean utilisation of that link
        if name in details["cxl"]["link_utilisation"]:
            assert math.isclose(mean, details["cxl"]["link_utilisation"][name], rel_tol=1e-6), name
    pools = ser["pools"]
    assert list(pools) == ["cxl.pool"] and len(pools["cxl.pool"]) == len(next(iter(ser["links"].values())))
    occ = pools["cxl.pool"]
    assert occ[0] == 0 or occ[0] < occ[-1]  # the pool fills as the run saves
    assert 0 < occ[-1] <= 1 and all(0 <= v <= 1 for v in occ)
    if CHROMIUM is not None:  # the report draws the series (one more figure than without)
        dom, _log, errors = open_in_chromium(page, page.with_suffix(".png"))
        assert errors == [], errors
        check_figures(dom, 5)
    r = CliRunner().invoke(app, ["run", str(p), "-q", "--out", str(tmp_path / "off")])
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["details"][0]["utilisation_series"] == {}
