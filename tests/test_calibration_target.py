"""Memory targets: a file window is the only thing the probes touch, and only with --allow-write."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from belusim.calibration import native as native_mod
from belusim.calibration.cli import calibrate_app
from belusim.calibration.cpu import CPUProbeConfig, run_cpu_probes
from belusim.calibration.errors import CalibrationError
from belusim.calibration.memory import MiB, Target, TargetSpec, parse_size

runner = CliRunner()


@pytest.fixture(scope="module")
def nat():
    try:
        return native_mod.load()
    except CalibrationError as e:
        pytest.skip(str(e))


def _random_file(path, size, seed=0) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def _tiny_cfg() -> CPUProbeConfig:
    return CPUProbeConfig(quick=True, threads=2, transfer_sizes=(16384,), transfer_iters=20, chase_bytes=MiB,
                          chase_steps=20_000, bw_bytes_per_thread=256 * 1024, bw_iters=1, rpc_iters=200,
                          rpc_warmup=20, rpc_depth=16, rpc_pipelined_ops=2000)


def test_parse_size():
    assert parse_size("4096") == 4096
    assert parse_size("64K") == 64 * 1024
    assert parse_size("2M") == 2 * MiB
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("0x1000") == 4096
    assert parse_size(None) is None
    with pytest.raises(CalibrationError):
        parse_size("12 parsecs")


def test_target_spec_validation():
    assert TargetSpec.from_options(None, None, "0", None, False).kind == "anon"
    with pytest.raises(CalibrationError, match="not both"):
        TargetSpec.from_options("/dev/dax0.0", "/tmp/x", "0", "1M", True)
    with pytest.raises(CalibrationError, match="needs --length"):
        TargetSpec.from_options("/dev/dax0.0", None, "0", None, True)
    with pytest.raises(CalibrationError, match="--offset/--length"):
        TargetSpec.from_options(None, None, "4K", None, False)


@pytest.mark.parametrize("offset", [1 * MiB, 1 * MiB + 100])
def test_window_safety_on_a_file(nat, tmp_path, offset):
    """The probes touch only [offset, offset + length) of the file and read it back."""
    size, length = 6 * MiB, 3 * MiB + 4000
    path = tmp_path / "pool.bin"
    before = _random_file(path, size)
    spec = TargetSpec(kind="file", path=str(path), offset=offset, length=length, allow_write=True)
    with Target(nat, spec) as target:
        res = run_cpu_probes(nat, target, _tiny_cfg())
    assert not res.errors, res.errors
    assert res.measurements["window_check"]["ok"] is True
    assert res.measurements["pointer_chase"]["rows"][0]["single_cycle"]
    after = path.read_bytes()
    assert len(after) == size
    assert after[:offset] == before[:offset]
    assert after[offset + length:] == before[offset + length:]
    assert after[offset:offset + length] != before[offset:offset + length]  # the window was used


def test_window_too_small_is_reported_not_fatal(nat, tmp_path):
    path = tmp_path / "small.bin"
    before = _random_file(path, 64 * 1024)
    spec = TargetSpec(kind="file", path=str(path), offset=4096, length=8192, allow_write=True)
    with Target(nat, spec) as target:
        res = run_cpu_probes(nat, target, _tiny_cfg())
    assert "cpu.transfer_16k" in res.errors  # a 16 KiB buffer does not fit in 8 KiB
    after = path.read_bytes()
    assert after[:4096] == before[:4096] and after[4096 + 8192:] == before[4096 + 8192:]


def test_window_past_the_end_is_refused(nat, tmp_path):
    path = tmp_path / "f.bin"
    _random_file(path, MiB)
    with pytest.raises(CalibrationError, match="past the end"):
        Target(nat, TargetSpec(kind="file", path=str(path), offset=MiB // 2, length=MiB, allow_write=True)).open()


def test_write_refused_without_allow_write(tmp_path):
    path = tmp_path / "pool.bin"
    before = _random_file(path, 2 * MiB)
    out = tmp_path / "p.json"
    res = runner.invoke(calibrate_app, ["probe", "--out", str(out), "--quick", "--skip-gpu", "--file", str(path),
                                        "--offset", "1M", "--length", "512K"])
    assert res.exit_code == 2
    assert "--allow-write" in res.output
    assert path.read_bytes() == before
    assert not out.exists()


def test_dax_option_checks(tmp_path):
    path = tmp_path / "not-a-device"
    _random_file(path, MiB)
    out = tmp_path / "p.json"
    res = runner.invoke(calibrate_app, ["probe", "--out", str(out), "--quick", "--skip-gpu", "--dax", str(path)])
    assert res.exit_code == 2 and "--length" in res.output
    res = runner.invoke(calibrate_app, ["probe", "--out", str(out), "--quick", "--skip-gpu", "--dax", str(path),
                                        "--length", "64K", "--allow-write"])
    assert res.exit_code == 2 and "character device" in res.output


def test_cli_file_window_profile(nat, tmp_path):
    path = tmp_path / "pool.bin"
    before = _random_file(path, 8 * MiB)
    out = tmp_path / "p.json"
    res = runner.invoke(calibrate_app, ["probe", "--out", str(out), "--quick", "--skip-gpu", "--threads", "2",
                                        "--file", str(path), "--offset", "2M", "--length", "4M", "--allow-write"])
    assert res.exit_code == 0, res.output
    after = path.read_bytes()
    digest = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    assert digest(after[:2 * MiB]) == digest(before[:2 * MiB])
    assert digest(after[6 * MiB:]) == digest(before[6 * MiB:])
    import json

    prof = json.loads(out.read_text())
    assert prof["target"]["kind"] == "file" and prof["target"]["offset"] == 2 * MiB
    assert prof["measurements"]["cpu"]["window_check"]["ok"] is True
    assert "hardware.host.ntstore_16k_us" in prof["fitted"]


def test_new_file_target_is_created(nat, tmp_path):
    path = tmp_path / "new.bin"
    spec = TargetSpec(kind="file", path=str(path), offset=0, length=MiB, allow_write=True)
    with Target(nat, spec) as target:
        assert target.info["created"] is True
        with target.buffer(64 * 1024) as buf:
            nat.view(buf.ptr, 64 * 1024)[:] = 7
    assert os.path.getsize(path) == MiB
