"""`belusim calibrate`: a quick probe writes a profile the configuration reads; show; the paper profile."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from belusim.calibration import profile as prof_mod
from belusim.calibration.cli import calibrate_app
from belusim.calibration.errors import CalibrationError
from belusim.calibration.fit import FITTED_KEYS
from belusim.calibration.paper import paper_profile
from belusim.paths import calibration_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory):
    from belusim.calibration import native

    try:
        native.load()
    except CalibrationError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("cal") / "quick.json"
    res = runner.invoke(calibrate_app, ["probe", "--out", str(out), "--quick", "--skip-gpu"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_quick_probe_writes_a_valid_profile(quick_profile):
    out, output = quick_profile
    prof = prof_mod.load(out)
    assert prof["format"] == "belusim-calibration" and prof["version"] == 1
    assert prof["name"] == "quick"
    for section in ("machine", "target", "measurements", "fitted", "notes", "created"):
        assert section in prof
    assert prof["machine"]["cpus"] >= 1
    assert prof["target"]["kind"] == "anon"
    assert any("GPU probes skipped" in n for n in prof["notes"])
    fitted = prof["fitted"]
    assert set(fitted) <= set(FITTED_KEYS)
    assert "hardware.host.ntstore_16k_us" in fitted and "hardware.host.dram_latency_ns" in fitted
    assert not any(k.startswith("gpu.") for k in fitted)  # nothing unmeasured
    for k, e in fitted.items():
        assert e["value"] > 0 and e["source"].startswith("measured:"), k
    assert "parameter" in output  # the summary table


def test_config_reads_the_profile(quick_profile):
    config = pytest.importorskip("belusim.config.scenario")
    out, _ = quick_profile
    over = config.load_profile_overrides(out)
    prof = json.loads(out.read_text())
    assert over == {k: v["value"] for k, v in prof["fitted"].items()}
    assert over == prof_mod.overrides(prof)


def test_scenario_resolves_with_the_profile(quick_profile, scenario_dict):
    config = pytest.importorskip("belusim.config.scenario")
    out, _ = quick_profile
    sc, _ = config.resolve_scenario(scenario_dict(), [], calibration=str(out))
    over = config.load_profile_overrides(out)
    assert sc.hardware.host.ntstore_16k_us == over["hardware.host.ntstore_16k_us"]
    if "hardware.cxl_rpc.rtt_us" in over:
        assert sc.hardware.cxl_rpc.rtt_us == over["hardware.cxl_rpc.rtt_us"]


def test_show_and_refit(quick_profile, tmp_path):
    out, _ = quick_profile
    res = runner.invoke(calibrate_app, ["show", str(out)])
    assert res.exit_code == 0 and "hardware.host.ntstore_16k_us" in res.output
    res = runner.invoke(calibrate_app, ["show", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["format"] == "belusim-calibration"
    res = runner.invoke(calibrate_app, ["show", "no-such-profile"])
    assert res.exit_code == 2 and "not found" in res.output
    again = tmp_path / "refit.json"
    res = runner.invoke(calibrate_app, ["refit", str(out), "--out", str(again)])
    assert res.exit_code == 0, res.output
    a, b = json.loads(out.read_text()), json.loads(again.read_text())
    assert {k: v["value"] for k, v in a["fitted"].items()} == {k: v["value"] for k, v in b["fitted"].items()}


def test_probe_errors_exit_2(tmp_path):
    res = runner.invoke(calibrate_app, ["probe", "--out", str(tmp_path / "x.json"), "--skip-gpu", "--skip-cpu"])
    assert res.exit_code == 2 and "nothing to do" in res.output
    res = runner.invoke(calibrate_app, ["probe", "--out", str(tmp_path / "x.json"), "--skip-gpu",
                                        "--model", "no-such-model"])
    assert res.exit_code == 2 and "unknown model" in res.output


def test_invalid_profiles_are_rejected(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other", "version": 1, "fitted": {}}))
    with pytest.raises(CalibrationError, match="format"):
        prof_mod.load(bad)
    bad.write_text(json.dumps({"format": "belusim-calibration", "version": 1, "fitted": {"gpu.nope": 1}}))
    with pytest.raises(CalibrationError, match="unknown fitted"):
        prof_mod.load(bad)
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="invalid JSON"):
        prof_mod.load(bad)


def test_paper_profile_is_committed_and_cites_the_paper():
    path = calibration_dir() / "beluga-paper.json"
    committed = prof_mod.load(path)
    fresh = paper_profile()
    assert committed["fitted"] == fresh["fitted"]
    assert committed["measurements"] == fresh["measurements"]
    v = {k: e["value"] for k, e in committed["fitted"].items()}
    assert v["gpu.copy_kernel_launch_us"] == pytest.approx(7.87)
    assert v["hardware.host.ntstore_16k_us"] == 2.41
    assert v["hardware.host.cached_write_flush_16k_us"] == 8.50
    assert v["hardware.host.flush_read_16k_us"] == 5.98
    assert v["hardware.cxl_rpc.rtt_us"] == 2.11 and v["hardware.cxl_rpc.server_mops"] == 12.13
    assert v["hardware.rdma_rpc.rtt_us"] == 8.39 and v["hardware.rdma_rpc.server_mops"] == 4.5
    for key, e in committed["fitted"].items():
        assert e["source"].startswith("paper"), key
        assert "Table 4" in e["source"] or "§" in e["source"], key


def test_packaged_profiles_resolve_and_load():
    config = pytest.importorskip("belusim.config.scenario")
    for name in sorted(p.stem for p in calibration_dir().glob("*.json")):
        path = prof_mod.resolve(name)
        prof_mod.load(path)
        assert config.load_profile_overrides(path)


def test_add_copy_bench_records_the_measurement_and_refits(tmp_path):
    """`calibrate add-copy-bench` keeps a bench_copies result under the profile's measurements
    and fits the two shares from it; every other fitted value stays; a broken file exits 2."""
    src = calibration_dir() / "h200-host.json"
    bench = tmp_path / "bench.json"
    rows = [{"step": s, "alone_ms": 10.0, "gather-kernel_copy_gbps_during_steps": g} for s, g in
            (("decode8x4096", 36.0), ("prefill2048", 18.0))]
    bench.write_text(json.dumps({"model": "m", "load_bytes": 1 << 29, "alone_gbps": 45.0, "overlap": rows}))
    out = tmp_path / "p.json"
    res = runner.invoke(calibrate_app, ["add-copy-bench", str(src), str(bench), "--command", "cmd", "--out", str(out)])
    assert res.exit_code == 0, res.output
    a, b = json.loads(src.read_text()), json.loads(out.read_text())
    assert b["measurements"]["gpu"]["copy_beside_steps"]["command"] == "cmd"
    assert b["fitted"]["gpu.copy_kernel_beside_decode"]["value"] == pytest.approx(0.8)
    assert b["fitted"]["gpu.copy_kernel_beside_prefill"]["value"] == pytest.approx(0.4)
    assert b["fitted"]["gpu.copy_kernel_beside_decode"]["source"].startswith("measured:")
    rest = {k: v["value"] for k, v in b["fitted"].items() if "beside" not in k}
    assert json.loads(json.dumps(rest)) == {k: v["value"] for k, v in a["fitted"].items()}
    bench.write_text('{"overlap": []}')
    res = runner.invoke(calibrate_app, ["add-copy-bench", str(src), str(bench), "--command", "c", "--out",
                                        str(tmp_path / "q.json")])
    assert res.exit_code == 2 and "alone_gbps" in res.output and "bench.json" in res.output
