"""Software-stage probes: hashing, chunk memcpy, lookup call; fitted into the host card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from belusim.calibration.fit import fit_all
from belusim.calibration.software import run_software_probes
from belusim.config.scenario import resolve_scenario


def test_software_probes_measure_and_fit():
    ids = np.arange(4096, dtype=np.int64) * 37 % 151_936
    meas = run_software_probes(262144, quick=True, token_ids=ids)
    assert meas["token_ids"] == 4096 and meas["sha256"]["bytes"] == 4096 * 4
    assert meas["sha256"]["gbps"] > 0.01 and meas["chunk_memcpy"]["gbps"] > 0.1
    assert meas["lookup_call"]["us_per_call"] > 0
    assert "skipped" in meas["pinned_alloc"] or meas["pinned_alloc"]["median_s"] > 0
    assert "skipped" in meas["xxh64"] or meas["xxh64"]["gbps"] > 0
    fitted, _notes = fit_all({"software": meas})
    assert fitted["hardware.host.sha256_gbps"]["value"] == pytest.approx(meas["sha256"]["gbps"], rel=1e-3)
    assert fitted["hardware.host.memcpy_gbps"]["value"] == pytest.approx(meas["chunk_memcpy"]["gbps"], rel=1e-3)


def test_a_profile_overrides_the_host_rates_stacks_use(tmp_path):
    prof = {"fitted": {"hardware.host.sha256_gbps": {"value": 2.0, "source": "measured: test"},
                       "hardware.host.memcpy_gbps": {"value": 20.0, "source": "measured: test"}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    d = {"name": "x", "model": "qwen3-32b", "gpu": "h20", "workload": {"kind": "lveval-synthetic"},
         "systems": [{"name": "r", "stack": "lmcache-0.3-mooncake", "kv": {"kind": "rdma-pool"}}]}
    plain = resolve_scenario(d)[0]
    cal = resolve_scenario(d, calibration=str(path))[0]
    assert plain.hardware.host.memcpy_gbps != 20.0
    assert (cal.hardware.host.sha256_gbps, cal.hardware.host.memcpy_gbps) == (2.0, 20.0)
    assert "measured: calibration profile" in cal.hardware.host.sources["memcpy_gbps"]
