"""vLLM bench-serve names, ITL, goodput, the output schema and the parquet records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.scenario import resolve_scenario
from belusim.policy.request import Request, State
from belusim.report.metrics import RECORD_FIELDS, Recorder, Records, itl_samples, parse_goodput, summarize
from belusim.report.schema import RunOutput, Summary
from belusim.sim.runner import run_scenario

TINY = {
    "name": "tiny-metrics",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 2},
    "engine": {"kv_blocks": 400},
    "systems": [{"name": "hbm-only", "kv": {"kind": "hbm-only"}}, {"name": "cxl-pool", "kv": {"kind": "cxl-pool"}}],
    "workload": {"kind": "lveval-synthetic", "num_prompts": 6, "truncate_tokens": 1000,
                 "output": {"mode": "fixed", "tokens": 40},
                 "arrival": {"process": "poisson", "rate_qps": 3.0}},
}


def _req(i, arrival, first, finish, n, preemptions=0):
    r = Request(i, 100, n, [1] * 6, arrival, "p")
    r.state, r.first_token, r.finish, r.num_output, r.preemptions = State.FINISHED, first, finish, n, preemptions
    return r


def test_itl_from_step_ends():
    steps = [0.5, 1.0, 1.2, 1.5, 2.0, 2.6]
    r = _req(0, 0.0, 1.0, 2.0, 4)  # first token at 1.0, three more at 1.2, 1.5, 2.0
    assert itl_samples(steps, r) == pytest.approx([0.2, 0.3, 0.5])
    assert itl_samples(steps, _req(1, 0.0, 1.0, 2.0, 1)) is None  # one token: no gap
    # preempted after the first token: the count between first token and finish must match
    assert itl_samples(steps, _req(2, 0.0, 1.0, 2.0, 3, preemptions=1)) is None
    assert itl_samples(steps, _req(3, 0.0, 1.0, 2.0, 4, preemptions=1)) == pytest.approx([0.2, 0.3, 0.5])


def test_records_from_step_ends_equal_records_from_gaps(tmp_path):
    """record_ends (the gaps' statistics a batch at a time) gives the rows, the CSV, the
    kept gaps and the folds into a histogram that record() with itl_samples() gives, bit
    for bit: requests with known gaps, preempted ones (gaps unknown), rejected ones, over
    several batches and two phases, past a small exact-gap budget."""
    import belusim.report.metrics as M

    rng = np.random.default_rng(7)
    ends = np.cumsum(rng.random(30000) * 0.05).tolist()
    reqs = []
    for i in range(700):
        n = int(rng.integers(1, 60))
        hi = int(rng.integers(n + 1, len(ends)))
        r = _req(i, ends[hi - n - 1] - 1.0, ends[hi - n] - 0.01, ends[hi - 1], n,
                 preemptions=int(rng.integers(0, 3) == 0) * 2)
        r.phase = "a" if i < 400 else "b"
        if i % 97 == 5:
            r.state = State.REJECTED
        reqs.append(r)
    by_gaps = Recorder(tmp_path / "gaps.csv", itl_exact_gaps=5000)
    by_ends = Recorder(tmp_path / "ends.csv", itl_exact_gaps=5000)
    for r in reqs:
        finished = r.state is State.FINISHED
        by_gaps.record("s", r, itl_samples(ends, r) if finished else None)
        by_ends.record_ends("s", r, M.itl_ends(ends, r) if finished else None)
    assert any(M.itl_ends(ends, r) is None for r in reqs if r.state is State.FINISHED and r.num_output > 1)
    assert repr(list(by_ends.rows)) == repr(list(by_gaps.rows))  # (repr: NaN == NaN)
    assert set(by_gaps._itl_hist) == set(by_ends._itl_hist) == {("s", "a"), ("s", "b")}  # both folded
    for key in by_gaps._itl:
        assert by_gaps._itl[key].tobytes() == by_ends._itl[key].tobytes()
        hg, he = by_gaps._itl_hist[key], by_ends._itl_hist[key]
        assert (hg.n, hg.mean, hg.std, hg.percentile(99)) == (he.n, he.mean, he.std, he.percentile(99))
    by_gaps.close()
    by_ends.close()
    assert (tmp_path / "ends.csv").read_text() == (tmp_path / "gaps.csv").read_text()


def test_median_and_percentiles_from_one_partition_are_numpys():
    """The summary's median, p90 and p99 come from one partition; they are np.median's and
    np.percentile's to the bit, with ties, small sizes and a NaN."""
    from belusim.report.metrics import _median_p90_p99

    rng = np.random.default_rng(5)
    for n in [*range(1, 120), 1000, 4097]:
        for x in (rng.random(n), rng.integers(0, 4, n).astype(float), rng.lognormal(0, 2, n)):
            want = (float(np.median(x)), *np.percentile(x, [90, 99]).tolist())
            assert _median_p90_p99(x.copy()) == want, n
    x = rng.random(40)
    x[7] = np.nan
    assert all(v != v for v in _median_p90_p99(x))


def test_itl_and_goodput_in_summary():
    rec = Recorder()
    rec.record("s", _req(0, 0.0, 1.0, 2.0, 4), np.array([0.2, 0.3, 0.5]))
    rec.record("s", _req(1, 0.5, 0.7, 1.1, 3), np.array([0.1, 0.3]))
    s = summarize(rec.rows, "s", "p", rec.itl[("s", "p")], {"ttft": 500})
    assert s["mean_itl_ms"] == pytest.approx(1e3 * 1.4 / 5)
    assert s["median_itl_ms"] == pytest.approx(300)
    assert s["p99_itl_ms"] == pytest.approx(1e3 * np.percentile([0.2, 0.3, 0.5, 0.1, 0.3], 99))
    # TTFTs are 1.0 s and 0.2 s: only the second meets 500 ms; duration 0 -> 2.0 s
    assert s["request_goodput"] == pytest.approx(1 / 2.0)
    s = summarize(rec.rows, "s", "p", None, {"ttft": 500, "tpot": 150})  # TPOTs 333 ms and 200 ms
    assert s["request_goodput"] == 0.0
    assert summarize(rec.rows, "s", "p", None, {"e2el": 2000})["request_goodput"] == pytest.approx(1.0)


def test_records_give_back_the_tuples_recorded():
    """Records keep columns, yet a row reads back as the very tuple recorded, types included
    (an int time at t=0, a None, a numpy int), and a column as numbers as numpy would read it."""
    n = len(RECORD_FIELDS)
    base = ["s", "p", 7, 0, "finished", "", 100, 4, 16, 32, 0] + [0.25] * (n - 11)
    odd = list(base)
    odd[RECORD_FIELDS.index("arrival_s")] = 0  # SimPy's clock starts at int 0
    odd[RECORD_FIELDS.index("load_start_s")] = None
    odd[RECORD_FIELDS.index("req_id")] = np.int64(9)
    odd[RECORD_FIELDS.index("instance")] = 1 << 70  # does not fit an int64
    odd[RECORD_FIELDS.index("status")] = "rejected"
    odd[RECORD_FIELDS.index("reason")] = "too long"
    rows = [tuple(base), tuple(odd), tuple(base[:2] + ["x"] + base[3:])]
    rec = Records(rows[:2])
    with pytest.raises(ValueError, match="fields"):
        rec.append(rows[0][:-1])
    assert len(rec) == 2 and list(rec) == rows[:2] and rec[-1] == rows[1] and rec[0:2] == rows[:2]
    assert [repr(r) for r in rec] == [repr(r) for r in rows[:2]]
    assert rec.values("instance") == [0, 1 << 70] and rec.values("reason") == ["", "too long"]
    for name in ("arrival_s", "load_start_s", "req_id", "tier_hit_tokens"):
        np.testing.assert_array_equal(rec.numbers(name), np.array([r[RECORD_FIELDS.index(name)] for r in rows[:2]],
                                                                 dtype=float))
    assert rec.equals("status", "rejected").tolist() == [False, True]
    assert not rec.equals("phase", "nope").any()
    with pytest.raises(IndexError):
        rec[2]
    bad = Records(rows)  # a req_id that is no number reads back as it was
    assert bad[2] == rows[2]
    with pytest.raises(ValueError):
        bad.numbers("req_id")


def test_parse_goodput():
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput(["ttft:500 e2el:9000"]) == {"ttft": 500.0, "e2el": 9000.0}
    assert parse_goodput([]) is None
    for bad in ("ttft", "itl:5", "ttft:x", "ttft:-1"):
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput([bad])


def test_simulated_itl_matches_tpot_and_output_holds_to_schema(tmp_path):
    sc, resolved = resolve_scenario(TINY)
    rep = run_scenario(sc, resolved, out_dir=tmp_path, goodput={"ttft": 1e9})
    for row in rep["results"]:
        # every request's gaps sum to its decode time, so the token-weighted means agree
        assert row["mean_itl_ms"] > 0 and row["p99_itl_ms"] >= row["median_itl_ms"]
        assert row["request_goodput"] == pytest.approx(row["request_throughput"])
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "requests.parquet").to_pandas()
    assert len(table) == 2 * 2 * 6
    done = table[table.status == "finished"]
    w = done.output_tokens - 1
    for (system, phase), g in done.groupby(["system", "phase"]):
        row = next(r for r in rep["results"] if (r["system"], r["phase"]) == (system, phase))
        weighted = float((g.tpot_s * (g.output_tokens - 1)).sum() / (g.output_tokens - 1).sum())
        assert row["mean_itl_ms"] == pytest.approx(weighted * 1e3, rel=1e-6)
    assert (done.itl_mean_s > 0).all() and (w > 0).all()
    Summary.model_validate(json.loads((tmp_path / "summary.json").read_text()))


def test_run_json_validates_and_schema_output(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(TINY))
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(p), "--json", "-q", "--goodput", "ttft:2000", "--goodput", "tpot:100"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    RunOutput.model_validate(out)
    assert out["goodput"] == {"ttft": 2000.0, "tpot": 100.0}
    assert all(row["request_goodput"] is not None for row in out["results"])
    r = runner.invoke(app, ["schema", "--output"])
    schema = json.loads(r.stdout)
    props = schema["$defs"]["PhaseResult"]["properties"]
    for k in ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
              "request_goodput", "p99_itl_ms", "std_e2el_ms", "median_tpot_ms", "p90_ttft_ms"):
        assert k in props and props[k]["description"]
    r = runner.invoke(app, ["run", str(p), "--json", "--goodput", "latency:5"])
    assert r.exit_code == 2 and "--goodput" in r.stderr


# --------------------------------------------------------------------------- gaps past the budget


def test_gap_histogram_quantiles_within_its_resolution_and_moments_exact():
    from belusim.report.gaps import GapHistogram

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.lognormal(np.log(0.03), 0.6, 50_000),  # decode steps
                        np.full(3_000, 0.0312),  # ties
                        rng.uniform(0.5, 4.0, 200),  # long prefill steps
                        [2e-10, 3e6]])  # outside the range: end buckets, min/max exact
    rng.shuffle(x)
    h = GapHistogram(1e-3)
    for part in np.array_split(x, 37):  # moments merged batch by batch
        h.add(part)
    assert h.n == x.size and h.min == x.min() and h.max == x.max()
    assert h.mean == pytest.approx(x.mean(), rel=1e-12)
    assert h.std == pytest.approx(x.std(), rel=1e-9)
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert h.percentile(q) == pytest.approx(np.percentile(x, q), rel=1e-3), q
    assert GapHistogram().percentile(50) != GapHistogram().percentile(50)  # empty: NaN


def test_a_phase_past_its_gap_budget_reports_histogram_itl_and_says_so():
    d = {**TINY, "run": {"seed": 1, "phases": [{"name": "p"}]}}
    exact = run_scenario(*resolve_scenario(d))["results"]
    d["run"]["itl_exact_gaps"] = 50  # 6 requests of 39 gaps: folded after the second
    folded = run_scenario(*resolve_scenario(d))["results"]
    for e, f in zip(exact, folded):
        assert e["itl_rel_error"] == 0.0 and f["itl_rel_error"] == 1e-3
        assert f["mean_itl_ms"] == pytest.approx(e["mean_itl_ms"], rel=1e-12)
        assert f["std_itl_ms"] == pytest.approx(e["std_itl_ms"], rel=1e-9)
        for k in ("median_itl_ms", "p90_itl_ms", "p99_itl_ms"):
            assert f[k] == pytest.approx(e[k], rel=1e-3) and f[k] != e[k], k
        same = {k for k in e if "itl" not in k}
        assert {k: f[k] for k in same} == {k: e[k] for k in same}
