"""The pool region a replay stores KV chunks in: anonymous memory, or a window of a file or
a device-DAX node, with the calibration probe's window rules.

  anon                    process memory (the CUDA backend pins it; the default)
  file:PATH               bytes [offset, offset + length) of PATH (created with --length
                          if it does not exist)
  dax:/dev/daxX.Y         bytes [offset, offset + length) of a device-DAX node

A replay writes its pool (every save), so a file or device window needs allow_write.
Nothing outside the window is read or written: every slot lies inside it, which `slot()`
checks.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DAX_ALIGN = 2 * 1024 * 1024


class PoolError(ValueError):
    pass


@dataclass(frozen=True)
class PoolSpec:
    kind: str = "anon"  # anon | file | dax
    path: str | None = None
    offset: int = 0
    length: int | None = None
    allow_write: bool = False

    @classmethod
    def parse(cls, text: str, offset: int = 0, length: int | None = None, allow_write: bool = False) -> PoolSpec:
        if text == "anon":
            if offset or length:
                raise PoolError("--offset/--length select a window of a file: or dax: pool, not anon")
            return cls()
        kind, sep, path = text.partition(":")
        if not sep or kind not in ("file", "dax") or not path:
            raise PoolError(f"--pool {text!r}: expected anon, file:PATH or dax:/dev/daxX.Y")
        if offset < 0 or (length is not None and length <= 0):
            raise PoolError("--offset must be >= 0 and --length > 0")
        if kind == "dax" and length is None:
            raise PoolError("--pool dax:... needs --length: the replay never assumes it may use a whole device")
        return cls(kind, path, offset, length, allow_write)


class PoolRegion:
    """`nbytes` of pool memory as a numpy uint8 array (`array`), inside the window."""

    def __init__(self, spec: PoolSpec, nbytes: int):
        self.spec = spec
        self.nbytes = nbytes
        self._mm = None
        self._fd = None
        self.info = {"kind": spec.kind}
        if spec.kind == "anon":
            self.array = np.zeros(nbytes, dtype=np.uint8)  # pages touched on first use
            return
        if not spec.allow_write:
            raise PoolError(
                f"the replay writes its pool: pass --allow-write to let it overwrite {spec.path} bytes "
                f"[{spec.offset}, {spec.offset + (spec.length or nbytes)}) (nothing outside that window is touched)")
        path = Path(spec.path)
        if spec.kind == "file" and not path.exists():
            if spec.length is None:
                raise PoolError(f"{path} does not exist; give --length to create it, or create it first")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, spec.offset + spec.length)
        else:
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as e:
                raise PoolError(f"cannot open {path} for writing: {e.strerror}") from None
        self._fd = fd
        st = os.fstat(fd)
        if spec.kind == "dax":
            if not stat.S_ISCHR(st.st_mode):
                self.close()
                raise PoolError(f"{path} is not a character device; a device-DAX node looks like /dev/dax0.0")
            size, align = None, DAX_ALIGN
        else:
            size, align = (st.st_size if stat.S_ISREG(st.st_mode) else None), mmap.ALLOCATIONGRANULARITY
        length = spec.length if spec.length is not None else ((size or 0) - spec.offset)
        if length <= 0:
            self.close()
            raise PoolError(f"{path}: empty window (offset {spec.offset}, size {size})")
        if size is not None and spec.offset + length > size:
            self.close()
            raise PoolError(f"{path}: window [{spec.offset}, {spec.offset + length}) ends past the end ({size} bytes)")
        if nbytes > length:
            self.close()
            raise PoolError(f"{path}: the window ({length} bytes) is smaller than the pool needs ({nbytes} bytes); "
                            "lower the system's kv.capacity_gb or give a longer --length")
        map_off = spec.offset - spec.offset % align
        delta = spec.offset - map_off
        self._mm = mmap.mmap(fd, delta + nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=map_off)
        # only [delta, delta + nbytes) is ever used: inside the window
        self.array = np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=delta)
        self.window = (spec.offset, spec.offset + length)
        self.info.update({"path": str(path), "offset": spec.offset, "length": length, "used": nbytes})

    def close(self) -> None:
        self.array = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a view is still alive; the mapping goes with it
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
