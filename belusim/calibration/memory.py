"""Memory targets for the CPU probes: anonymous memory, a file (tmpfs, a DAX filesystem, ...)
or a device-DAX character device such as a CXL memory pool (``/dev/daxX.Y``).

With a file or device the probes use one window ``[offset, offset + length)`` and nothing
outside it: every buffer a probe asks for is carved from the window's start and checked
against its end. Writing to a file or device needs ``allow_write``; after the probes the
window is filled with a pattern, flushed and read back to check it.
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from belusim.calibration.errors import CalibrationError
from belusim.calibration.native import Mapping, Native

KiB, MiB, GiB = 1024, 1024**2, 1024**3
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
DAX_DEFAULT_ALIGN = 2 * MiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int | None, what: str = "size") -> int | None:
    """'4096', '64K', '2M', '1G', '1GiB', '0x1000' -> bytes (binary units)."""
    if text is None:
        return None
    if isinstance(text, int):
        return text
    t = str(text).strip()
    if t.lower().startswith("0x"):
        try:
            return int(t, 16)
        except ValueError:
            raise CalibrationError(f"bad {what} {text!r}") from None
    m = _SIZE_RE.match(t)
    if not m:
        raise CalibrationError(f"bad {what} {text!r}: use bytes or a K/M/G/T suffix (binary units)")
    value = float(m.group(1)) * {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}[m.group(2).lower()]
    if value != int(value):
        raise CalibrationError(f"bad {what} {text!r}: not a whole number of bytes")
    return int(value)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


@dataclass
class TargetSpec:
    kind: Literal["anon", "file", "dax"] = "anon"
    path: str | None = None
    offset: int = 0
    length: int | None = None
    allow_write: bool = False

    @classmethod
    def from_options(cls, dax: str | None, file: str | None, offset: str | int | None, length: str | int | None,
                     allow_write: bool) -> TargetSpec:
        if dax and file:
            raise CalibrationError("give either --dax or --file, not both")
        off = parse_size(offset, "--offset") or 0
        ln = parse_size(length, "--length")
        if not dax and not file:
            if off or ln:
                raise CalibrationError("--offset/--length select a window of --dax or --file; give one of them")
            return cls(kind="anon", allow_write=allow_write)
        if off < 0 or (ln is not None and ln <= 0):
            raise CalibrationError("--offset must be >= 0 and --length > 0")
        if dax and ln is None:
            raise CalibrationError("--dax needs --length: the probe never assumes it may use a whole device")
        return cls(kind="dax" if dax else "file", path=str(dax or file), offset=off, length=ln,
                   allow_write=allow_write)


@dataclass
class Region:
    ptr: int
    size: int


@dataclass
class Target:
    """An opened memory target. Use as a context manager."""

    native: Native
    spec: TargetSpec
    window: Mapping | None = None
    fd: int | None = None
    info: dict = field(default_factory=dict)
    _created: bool = False

    # ------------------------------------------------------------------ open / close
    def __enter__(self) -> Target:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_window(self) -> bool:
        return self.spec.kind != "anon"

    def open(self) -> None:
        s = self.spec
        self.info = {"kind": s.kind}
        if s.kind == "anon":
            self.info["description"] = "anonymous memory of this process (host DRAM)"
            return
        if not s.allow_write:
            raise CalibrationError(
                f"the CPU probes write to their memory target: pass --allow-write to let them overwrite "
                f"{s.path} bytes [{s.offset}, {s.offset + (s.length or 0)}) (nothing outside that window "
                f"is touched), or use --skip-cpu"
            )
        path = Path(s.path)
        if s.kind == "file" and not path.exists():
            if s.length is None:
                raise CalibrationError(f"{path} does not exist; give --length to create it, or create it first")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, s.offset + s.length)
            self._created = True
        else:
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as e:
                raise CalibrationError(f"cannot open {path} for writing: {e.strerror}") from None
        self.fd = fd
        st = os.fstat(fd)
        if s.kind == "dax":
            if not stat.S_ISCHR(st.st_mode):
                os.close(fd)
                self.fd = None
                raise CalibrationError(f"{path} is not a character device; a device-DAX node looks like /dev/dax0.0")
            size, align = _dax_size_align(path)
            self.info.update({"device_size": size, "device_align": align})
            map_align = max(align, PAGE)
        else:
            if stat.S_ISREG(st.st_mode):
                size = st.st_size
            else:
                size = None
            map_align = PAGE
        length = s.length if s.length is not None else ((size or 0) - s.offset)
        if length <= 0:
            self.close()
            raise CalibrationError(f"{path}: empty window (offset {s.offset}, size {size})")
        if size is not None and s.offset + length > size:
            self.close()
            raise CalibrationError(
                f"{path}: window [{s.offset}, {s.offset + length}) ends past the end ({size} bytes)"
            )
        map_off = s.offset - s.offset % map_align
        end = s.offset + length
        map_end = -(-end // map_align) * map_align
        if size is not None and s.kind == "file":
            map_end = min(map_end, -(-size // PAGE) * PAGE)
        m = self.native.map_fd(fd, map_off, map_end - map_off, writable=True)
        delta = s.offset - map_off
        self.window = Mapping(ptr=m.ptr + delta, length=length, base=m.base, maplen=m.maplen)
        self.info.update({
            "path": str(path),
            "offset": s.offset,
            "length": length,
            "created": self._created,
            "description": ("device-DAX window" if s.kind == "dax" else "file window") + " mapped MAP_SHARED",
        })

    def close(self) -> None:
        if self.window is not None:
            self.native.unmap(self.window)
            self.window = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # ------------------------------------------------------------------ buffers
    def capacity(self, align: int = PAGE) -> int:
        """Most bytes one buffer from this target can have (anonymous: unlimited)."""
        if not self.is_window:
            return 1 << 62
        start = _align_up(self.window.ptr, align)
        return max(0, self.window.ptr + self.window.length - start)

    @contextmanager
    def buffer(self, size: int, align: int = PAGE, shared: bool = False, thp: str | None = None,
               prefault: bool = True) -> Iterator[Region]:
        """A buffer of `size` bytes on this target for the duration of a `with` block.

        Anonymous: fresh memory (shared if asked, so a forked server sees it; huge pages as
        asked). Window: the window's start, aligned; never past its end."""
        if size <= 0:
            raise CalibrationError("empty buffer requested")
        if not self.is_window:
            m = self.native.map_anon(size, shared=shared, thp=thp)
            try:
                if prefault:
                    self.native.prefault(m.ptr, size, write=True)
                yield Region(m.ptr, size)
            finally:
                self.native.unmap(m)
            return
        start = _align_up(self.window.ptr, align)
        if start + size > self.window.ptr + self.window.length:
            raise CalibrationError(
                f"the window ({human_bytes(self.window.length)}) is too small for a {human_bytes(size)} buffer"
            )
        yield Region(start, size)

    @contextmanager
    def local(self, size: int, thp: str | None = None) -> Iterator[Region]:
        """Anonymous local memory (the other side of a copy into or out of the target)."""
        m = self.native.map_anon(size, thp=thp)
        try:
            self.native.prefault(m.ptr, size, write=True)
            yield Region(m.ptr, size)
        finally:
            self.native.unmap(m)

    # ------------------------------------------------------------------ read-back check
    def verify_window(self, seed: int = 0x5EED) -> dict:
        """Fill the window with a pattern, flush it, read it back. Anonymous targets: no-op."""
        if not self.is_window:
            return {"checked": False}
        start = _align_up(self.window.ptr, 8)
        n = (self.window.ptr + self.window.length - start) // 8 * 8
        if n <= 0:
            return {"checked": False, "reason": "window smaller than 8 bytes"}
        feats = self.native.features()
        method = "clflushopt" if feats["clflushopt"] else ("clflush" if feats["clflush"] else "none")
        rc = self.native.fill_pattern(start, n, seed)
        if rc != 0:
            return {"checked": False, "reason": f"fill failed ({rc})"}
        self.native.flush(start, n, method)
        bad = self.native.check_pattern(start, n, seed)
        return {"checked": True, "bytes": n, "flush": method, "ok": bad == -1,
                **({"first_bad_offset": int(bad)} if bad != -1 else {})}


def _align_up(x: int, a: int) -> int:
    return -(-x // a) * a


def _dax_size_align(path: Path) -> tuple[int | None, int]:
    """Size and mapping alignment of a device-DAX node from sysfs (2 MiB if unknown)."""
    name = path.resolve().name
    size = None
    align = DAX_DEFAULT_ALIGN
    for base in (Path("/sys/bus/dax/devices") / name, Path("/sys/class/dax") / name):
        try:
            if (base / "size").is_file():
                size = int((base / "size").read_text().strip())
            if (base / "align").is_file():
                align = int((base / "align").read_text().strip())
            break
        except (OSError, ValueError):
            continue
    return size, align
