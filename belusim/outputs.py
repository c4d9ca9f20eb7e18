"""Outputs that survive interruption.

Every command that writes files goes through here:

- `check_output_dir` / `check_output_file` run before any work, so a bad ``--out`` fails in a
  second, not after an hour of simulation.
- `OutputDir` stages a result directory at ``<out>.partial`` with a ``manifest.json`` whose
  ``status`` is ``incomplete``; only when the work finishes is the manifest marked
  ``complete`` and the directory renamed to ``<out>``. A killed run leaves ``<out>`` as it was
  and a ``.partial`` directory that says it is incomplete; a reused ``<out>`` never keeps
  stale files from an earlier run.
- `atomic_write` writes one file through a temporary sibling and `os.replace`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from belusim.errors import InputError

MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"


class OutputError(InputError):
    """An output path that cannot be written (names the option and the path)."""


def _first_existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent(path: Path, option: str) -> None:
    anc = _first_existing_ancestor(path.parent if path.name else path)
    if not anc.is_dir():
        raise OutputError(f"{option} {path}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write in {anc} (permission denied)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def read_manifest(path: Path) -> dict | None:
    """The manifest of a belusim output directory, or None if it has none (or not ours)."""
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("writer") == "belusim" else None


def check_output_file(path: Path, *, inputs: Iterable[Path] = (), option: str = "--out") -> Path:
    """Fail now if `path` cannot become an output file (a directory, under a file, an input)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a directory; give a file path")
    for src in inputs:
        if src is not None and _same_file(path, Path(src)):
            raise OutputError(f"{option} {path}: is also the input {src}; write to another path")
    _check_parent(path, option)
    return path


def check_output_dir(path: Path, *, known: Iterable[str] = (), option: str = "--out") -> Path:
    """Fail now if `path` cannot become an output directory.

    An existing directory is accepted only if it is empty, carries a belusim manifest, or
    holds nothing but files named in `known` (what earlier versions wrote): it is replaced
    when the new output is complete, so a directory of someone else's files is refused.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a directory")
    if path.is_dir():
        entries = {p.name for p in path.iterdir()}
        if entries and read_manifest(path) is None and not entries <= set(known):
            extra = sorted(entries - set(known))[:3]
            raise OutputError(
                f"{option} {path}: exists and is not a belusim output directory (it holds {extra}); "
                "it would be replaced: give a new or empty directory"
            )
    _check_parent(path, option)
    return path


def _file_entry(p: Path, root: Path) -> dict:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": h.hexdigest()}


def _manifest_text(command: str, status: str, started: float, error: str | None, info: dict,
                   files: list) -> str:
    """The manifest of an output directory or of a command's output files (same fields)."""
    data = {
        "writer": "belusim",
        "command": command,
        "argv": sys.argv[1:],
        "status": status,
        "started_unix": started,
        "finished_unix": time.time() if status != "incomplete" or error else None,
        **({"error": error} if error else {}),
        **info,
        "files": files,
    }
    return json.dumps(data, indent=2, default=str) + "\n"


class OutputDir:
    """Stage a result directory and move it into place only when the work is complete.

        with OutputDir(out, command="run") as od:
            write(od.path / "summary.json")
            od.note(systems=[...])
    """

    def __init__(self, final: Path, *, command: str, known: Iterable[str] = (), option: str = "--out"):
        self.final = check_output_dir(Path(final), known=known, option=option)
        self.path = self.final.with_name(self.final.name + PARTIAL_SUFFIX)
        self.command = command
        self.info: dict = {}
        self._started = time.time()

    def note(self, **info) -> None:
        """Extra fields for the manifest (what was run, how far it got)."""
        self.info.update(info)
        if self.path.is_dir():
            self._write_manifest("incomplete")

    def _write_manifest(self, status: str, error: str | None = None) -> None:
        files = []
        if status == "complete":
            files = [_file_entry(p, self.path) for p in sorted(self.path.rglob("*"))
                     if p.is_file() and p.name != MANIFEST]
        atomic_write(self.path / MANIFEST, _manifest_text(self.command, status, self._started, error, self.info, files))

    def __enter__(self) -> "OutputDir":
        if self.path.exists():
            if not self.path.is_dir() or read_manifest(self.path) is None:
                raise OutputError(f"{self.path} exists and is not a belusim staging directory; remove it")
            shutil.rmtree(self.path)  # a stale partial output of an earlier, interrupted run
        self.path.mkdir(parents=True)
        self._write_manifest("incomplete")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            reason = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else f"{exc_type.__name__}: {exc}"
            with contextlib.suppress(OSError):
                self._write_manifest("incomplete", error=reason)
            return False
        self._write_manifest("complete")
        old = None
        if self.final.exists():
            old = self.final.with_name(f"{self.final.name}.old-{os.getpid()}")
            os.rename(self.final, old)
        os.rename(self.path, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


class OutputFiles:
    """The manifest of a command whose output is a few files (a table and its .json), kept
    beside the main file as ``<file>.manifest.json``: ``incomplete`` from the start of the
    work, ``complete`` with the files' sizes and hashes once all are written. Each file is
    itself written atomically; the manifest says whether they belong to one finished run.

        with OutputFiles(out, command="compare", files=[out, out.with_suffix(".json")]) as of:
            ... work ...
            write_table(rows, out)
    """

    def __init__(self, main: Path, *, command: str, files: Iterable[Path]):
        self.main = Path(main)
        self.manifest = manifest_for(self.main)
        self.files = [Path(p) for p in files]
        self.command = command
        self.info: dict = {}
        self._started = time.time()

    def note(self, **info) -> None:
        self.info.update(info)
        self._write("incomplete")

    def _write(self, status: str, error: str | None = None) -> None:
        root = self.main.parent
        files = []
        if status == "complete":
            files = [_file_entry(p, root) for p in self.files if p.is_file()]
        atomic_write(self.manifest, _manifest_text(self.command, status, self._started, error, self.info, files))

    def __enter__(self) -> "OutputFiles":
        self._write("incomplete")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            reason = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else f"{exc_type.__name__}: {exc}"
            with contextlib.suppress(OSError):
                self._write("incomplete", error=reason)
            return False
        self._write("complete")
        return False


def manifest_for(path: Path) -> Path:
    """Where the manifest of a file output (a compare or sweep table) lives."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kw) -> Iterator:
    """Open a temporary sibling of `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if "b" not in mode:
        kw.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **kw) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: Path, data: str | bytes) -> None:
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
