"""The error types every layer shares; the command line maps each to an exit status.

- `InputError` (exit 2): bad input from the user (a file, a field, an option, an output path).
  Its message names the file and the field or line, so nobody needs a traceback to fix it.
- `CheckFailed` (exit 3): an end-of-run conservation check did not hold (requests, KV blocks,
  bytes). That is a simulator bug or an impossible scenario, never the user's typo.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names where (file, line, field or option)."""


class CheckFailed(RuntimeError):
    """An end-of-run check did not hold; the message says which and by how much."""


class SimulationError(RuntimeError):
    """A scenario the simulator cannot run as given (no KV cache left, a phase that does not
    finish in time, requests none of which fit); raised by the cluster."""
