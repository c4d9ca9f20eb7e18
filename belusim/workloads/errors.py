"""The one exception type for bad workload input (files, traces, configs).

It subclasses ValueError so callers that already catch ValueError keep working, and it
always names where the problem is (file, line, field) so a user can fix the input without
reading a traceback.
"""

from __future__ import annotations

from pathlib import Path

from belusim.errors import InputError


class WorkloadError(InputError):
    """Bad workload input; the message names the file, line and field where known."""

    @classmethod
    def at(
        cls,
        file: str | Path | None,
        msg: str,
        *,
        line: int | None = None,
        field: str | None = None,
        member: str | None = None,
    ) -> "WorkloadError":
        """Build an error whose message starts with `file[member]:line: field 'x':`."""
        where = ""
        if file is not None:
            where = str(file)
            if member:
                where += f"[{member}]"
            if line is not None:
                where += f":{line}"
            where += ": "
        elif line is not None:
            where = f"line {line}: "
        if field:
            where += f"field '{field}': "
        return cls(where + msg)
