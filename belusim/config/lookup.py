"""Scenario and sweep files by path or by packaged name (`belusim list`)."""

from __future__ import annotations

from pathlib import Path

from belusim.config.scenario import ConfigError
from belusim.paths import scenarios_dir


def find_scenario(name: str | Path | None, what: str = "scenario") -> Path:
    """A path, or the name of a packaged scenario or sweep (with or without .yaml);
    None is the quickstart."""
    if name is None:
        return scenarios_dir() / "quickstart.yaml"
    p = Path(name)
    if p.is_file():
        return p
    for cand in (scenarios_dir() / str(name), scenarios_dir() / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"{what} {str(name)!r} not found (not a file, not in {scenarios_dir()})")
