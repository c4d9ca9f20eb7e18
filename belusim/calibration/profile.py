"""Calibration profiles: the JSON file a probe run writes and a scenario reads.

    {"format": "belusim-calibration", "version": 1, "name", "created",
     "machine": {...}, "target": {...}, "measurements": {...},
     "fitted": {"gpu.host_h2d_gbps": {"value": 55.0, "source": "measured: ..."}, ...},
     "notes": [...]}

`fitted` keys are dotted override paths into the scenario configuration
(`belusim.config.scenario.load_profile_overrides` reads them); only parameters measured on the machine
appear there.
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from belusim.calibration.errors import CalibrationError
from belusim.calibration.fit import FITTED_KEYS, LEGACY_KEYS
from belusim.errors import InputError
from belusim.inputs import read_json
from belusim.outputs import atomic_write

FORMAT = "belusim-calibration"
VERSION = 1
FLAGS_OF_INTEREST = (
    "sse2", "avx", "avx2", "avx512f", "clflush", "clflushopt", "clwb", "movdiri", "movdir64b", "enqcmd",
    "serialize", "constant_tsc", "nonstop_tsc", "hypervisor",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    cpuinfo = _read("/proc/cpuinfo") or ""
    m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    if m:
        info["cpu_model"] = m.group(1).strip()
    m = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    if m:
        flags = set(m.group(1).split())
        info["cpu_flags"] = [f for f in FLAGS_OF_INTEREST if f in flags]
    sockets = {ln.split(":")[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("physical id")}
    if sockets:
        info["sockets"] = len(sockets)
    nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    if nodes:
        info["numa_nodes"] = len(nodes)
    meminfo = _read("/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    if m:
        info["memory_gib"] = round(int(m.group(1)) / 1024**2, 1)
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp:
        sel = re.search(r"\[(\w+)\]", thp)
        info["transparent_hugepages"] = sel.group(1) if sel else thp.strip()
    return info


def new_profile(name: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "created": now_iso(),
        "machine": {},
        "target": {},
        "measurements": {},
        "fitted": {},
        "notes": [],
    }


def validate(prof: Any, where: str = "profile") -> dict:
    """Check the envelope of a profile; CalibrationError on anything a reader cannot use."""
    if not isinstance(prof, dict):
        raise CalibrationError(f"{where}: a calibration profile is a JSON object")
    if prof.get("format") != FORMAT:
        raise CalibrationError(f"{where}: 'format' must be {FORMAT!r} (got {prof.get('format')!r})")
    if prof.get("version") != VERSION:
        raise CalibrationError(f"{where}: unsupported version {prof.get('version')!r} (this belusim reads {VERSION})")
    fitted = prof.get("fitted")
    if not isinstance(fitted, dict):
        raise CalibrationError(f"{where}: 'fitted' must map dotted.path -> value")
    for key, v in fitted.items():
        if key not in FITTED_KEYS and key not in LEGACY_KEYS:
            raise CalibrationError(f"{where}: unknown fitted parameter {key!r}")
        value = v.get("value") if isinstance(v, dict) else v
        # a table (decode efficiency by batch) maps whole numbers to numbers
        values = list(value.values()) if isinstance(value, dict) and value else [value]
        keys_ok = not isinstance(value, dict) or all(str(k).isdigit() for k in value)
        if not keys_ok or any(not isinstance(x, (int, float)) or isinstance(x, bool) for x in values):
            raise CalibrationError(f"{where}: fitted {key!r} needs a number or a table of numbers (got {value!r})")
    return prof


def save(prof: dict, path: Path) -> None:
    validate(prof, str(path))
    atomic_write(Path(path), json.dumps(prof, indent=1, sort_keys=False) + "\n")


def load(path: Path) -> dict:
    try:
        prof = read_json(path)
    except InputError as e:
        raise CalibrationError(str(e)) from None
    return validate(prof, str(path))


def resolve(name_or_path: str) -> Path:
    """A profile path from a name or path: belusim.config.scenario.find_profile when it can be imported,
    else the same search (the path itself, then the packaged calibration folder)."""
    try:
        from belusim.config.scenario import ConfigError, find_profile
    except Exception:
        find_profile = None
    if find_profile is not None:
        try:
            return find_profile(name_or_path)
        except ConfigError as e:
            raise CalibrationError(str(e)) from None
    from belusim.paths import calibration_dir

    p = Path(name_or_path)
    stem = p.name if p.suffix == ".json" else f"{p.name}.json"
    for c in (p, calibration_dir() / stem):
        if c.is_file():
            return c
    raise CalibrationError(f"calibration profile {name_or_path!r} not found (looked at {p} and {calibration_dir() / stem})")


def overrides(prof: dict) -> dict[str, float]:
    """{dotted.path: value}, as belusim.config.scenario.load_profile_overrides returns it."""
    return {k: (v["value"] if isinstance(v, dict) else v) for k, v in prof.get("fitted", {}).items()}
