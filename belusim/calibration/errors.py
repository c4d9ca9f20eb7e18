"""Errors of the calibration package."""

from __future__ import annotations


class CalibrationError(RuntimeError):
    """A probe cannot run as asked (no compiler, a bad target, a refused write, ...).

    The message says what to change; the command line prints it and exits with status 2.
    """
