"""Where the packaged data lives: model cards, scenarios and calibration profiles.

From a source checkout they are the top-level folders; from an installed wheel they are
copied under belusim/_data (see pyproject's force-include).
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """models | scenarios | calibration."""
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name


def models_dir() -> Path:
    return data_dir("models")


def scenarios_dir() -> Path:
    return data_dir("scenarios")


def calibration_dir() -> Path:
    return data_dir("calibration")
