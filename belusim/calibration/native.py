"""Build and load the native probe library (``native/probe.c``) through ctypes.

The C source ships inside the package and is compiled on first use with the system C
compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a per-user cache directory keyed by
a hash of the source, the compiler and the flags. Flags are plain ``-O2``: instruction-set
extensions are used only from functions with target attributes after a CPUID check, so the
library runs on any x86-64 CPU (and builds, with x86-only features reported unsupported, on
other architectures).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from belusim.calibration.errors import CalibrationError

SOURCE = Path(__file__).resolve().parent / "native" / "probe.c"
CFLAGS = ["-O2", "-std=gnu11", "-fPIC", "-shared", "-pthread"]
ABI_VERSION = 3

# status codes (probe.c)
OK = 0
EUNSUPPORTED = -1
EINVAL = -2
ESYS = -3
ETIMEOUT = -4
EVERIFY = -5
STATUS_NAMES = {
    OK: "ok",
    EUNSUPPORTED: "unsupported on this CPU",
    EINVAL: "invalid argument",
    ESYS: "system error",
    ETIMEOUT: "timed out",
    EVERIFY: "verification failed",
}

# feature bits
FEATURE_BITS = {
    "x86_64": 1 << 0,
    "sse2": 1 << 1,
    "clflush": 1 << 2,
    "clflushopt": 1 << 3,
    "clwb": 1 << 4,
    "avx": 1 << 5,
    "avx512f": 1 << 6,
}

FLUSH_METHODS = {"none": -1, "clflush": 0, "clflushopt": 1, "clwb": 2}
NT_VARIANTS = {"auto": 0, "sse2": 1, "avx": 2, "avx512": 3}
BENCH_OPS = {"cached_copy": 0, "nt_copy": 1, "copy_flush": 2, "flush": 3, "flush_read": 4, "read": 5}
BW_KINDS = {"read": 0, "write": 1, "ntwrite": 2, "copy": 3, "ntcopy": 4}

_build_lock = threading.Lock()


def status_text(rc: int) -> str:
    return STATUS_NAMES.get(rc, f"error {rc}")


def cache_dir() -> Path:
    """Where compiled probe libraries live: $BELUSIM_CACHE_DIR, else $XDG_CACHE_HOME/belusim,
    else ~/.cache/belusim; a per-user temporary folder if none of those is writable."""
    env = os.environ.get("BELUSIM_CACHE_DIR")
    if env:
        candidates = [Path(env)]
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg else Path.home() / ".cache"
        candidates = [base / "belusim"]
    candidates.append(Path(tempfile.gettempdir()) / f"belusim-cache-{os.getuid()}")
    for c in candidates:
        try:
            c.mkdir(parents=True, exist_ok=True)
            if os.access(c, os.W_OK):
                return c
        except OSError:
            continue
    raise CalibrationError(f"no writable cache directory for the native probe (tried {[str(c) for c in candidates]})")


def find_compiler() -> list[str]:
    cc = os.environ.get("CC")
    if cc:
        cmd = shlex.split(cc)
        if cmd and shutil.which(cmd[0]):
            return cmd
        raise CalibrationError(f"$CC={cc!r} is not an executable compiler")
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise CalibrationError(
        "no C compiler found (looked for $CC, cc, gcc, clang): the CPU probes compile a small C "
        "library on first use; install gcc or clang, or run with --skip-cpu"
    )


def _compiler_identity(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else cmd[0]
    except (OSError, subprocess.SubprocessError):
        return cmd[0]


def build(force: bool = False) -> Path:
    """Compile probe.c if no cached build matches; return the shared library's path."""
    cmd = find_compiler()
    src = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([src, _compiler_identity(cmd).encode(), " ".join(CFLAGS).encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    out = cache_dir() / f"probe-{key}.so"
    with _build_lock:
        if out.is_file() and not force:
            return out
        fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            res = subprocess.run(
                cmd + CFLAGS + [str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300
            )
            if res.returncode != 0:
                raise CalibrationError(
                    f"compiling the native probe failed ({' '.join(cmd + CFLAGS)} {SOURCE}):\n{res.stderr.strip()}"
                )
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


_c_void_p = ctypes.c_void_p
_c_size = ctypes.c_size_t
_c_u64 = ctypes.c_uint64
_c_i64 = ctypes.c_int64
_c_int = ctypes.c_int
_c_dbl = ctypes.c_double
_P_dbl = ctypes.POINTER(ctypes.c_double)
_P_u64 = ctypes.POINTER(ctypes.c_uint64)
_P_i64 = ctypes.POINTER(ctypes.c_int64)

_SIGNATURES = {
    "bp_abi_version": (_c_int, []),
    "bp_features": (_c_int, []),
    "bp_detected_features": (_c_int, []),
    "bp_set_feature_mask": (None, [_c_int]),
    "bp_timer_overhead_ns": (_c_dbl, []),
    "bp_flush": (_c_int, [_c_void_p, _c_size, _c_int]),
    "bp_flush_read": (_c_int, [_c_void_p, _c_size, _c_int, _P_u64]),
    "bp_read_sum": (_c_u64, [_c_void_p, _c_size]),
    "bp_copy_cached": (_c_int, [_c_void_p, _c_void_p, _c_size]),
    "bp_copy_nt": (_c_int, [_c_void_p, _c_void_p, _c_size, _c_int]),
    "bp_fill_pattern": (_c_int, [_c_void_p, _c_size, _c_u64]),
    "bp_check_pattern": (_c_i64, [_c_void_p, _c_size, _c_u64]),
    "bp_bench_op": (_c_int, [_c_int, _c_void_p, _c_void_p, _c_size, _c_int, _c_int, _P_dbl, _P_u64]),
    "bp_chase_build": (_c_int, [_c_void_p, _c_size, _c_size, _c_u64, _P_u64]),
    "bp_chase_run": (_c_int, [_c_void_p, _c_u64, _P_dbl, ctypes.POINTER(_c_void_p)]),
    "bp_chase_count": (_c_int, [_c_void_p, _c_size, _c_size, _P_u64, _P_u64]),
    "bp_bandwidth": (_c_int, [_c_int, _c_void_p, _c_void_p, _c_size, _c_int, _c_int, _P_dbl, _P_u64]),
    "bp_rpc_run": (
        _c_int,
        [_c_void_p, _c_size, _c_int, _c_i64, _c_i64, _c_int, _c_int, _c_int, _P_dbl, _P_dbl, _P_i64],
    ),
    "bp_map": (
        _c_void_p,
        [_c_int, _c_u64, _c_size, _c_int, _c_int, _c_int, ctypes.POINTER(_c_void_p), ctypes.POINTER(_c_size),
         ctypes.POINTER(_c_int)],
    ),
    "bp_unmap": (_c_int, [_c_void_p, _c_size]),
    "bp_prefault": (_c_int, [_c_void_p, _c_size, _c_int]),
}


@dataclass
class Mapping:
    """A mapped region: `ptr` is where the usable bytes start, `base`/`maplen` what to unmap."""

    ptr: int
    length: int
    base: int
    maplen: int


class Native:
    """Thin Python face of probe.c. Pointers are plain ints."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.lib = lib
        self.path = path
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        abi = lib.bp_abi_version()
        if abi != ABI_VERSION:
            raise CalibrationError(f"native probe {path} has ABI {abi}, expected {ABI_VERSION}; delete it to rebuild")

    # ---------------------------------------------------------------- features
    def features(self) -> dict[str, bool]:
        bits = self.lib.bp_features()
        return {name: bool(bits & bit) for name, bit in FEATURE_BITS.items()}

    def detected_features(self) -> dict[str, bool]:
        bits = self.lib.bp_detected_features()
        return {name: bool(bits & bit) for name, bit in FEATURE_BITS.items()}

    def set_feature_mask(self, names: list[str] | None) -> None:
        """Hide every feature not named (None restores what CPUID reported)."""
        if names is None:
            self.lib.bp_set_feature_mask(-1)
        else:
            self.lib.bp_set_feature_mask(sum(FEATURE_BITS[n] for n in names))

    def timer_overhead_ns(self) -> float:
        return float(self.lib.bp_timer_overhead_ns())

    # ---------------------------------------------------------------- memory
    def map_anon(self, length: int, shared: bool = False, thp: str | None = None) -> Mapping:
        base, maplen, err = _c_void_p(), _c_size(), _c_int()
        advice = {None: 0, "thp": 1, "4k": 2}[thp]
        p = self.lib.bp_map(-1, 0, length, 1, int(shared), advice, ctypes.byref(base), ctypes.byref(maplen),
                            ctypes.byref(err))
        if not p:
            raise CalibrationError(f"cannot map {length} bytes of anonymous memory: {os.strerror(err.value)}")
        return Mapping(p, length, base.value, maplen.value)

    def map_fd(self, fd: int, offset: int, length: int, writable: bool) -> Mapping:
        base, maplen, err = _c_void_p(), _c_size(), _c_int()
        p = self.lib.bp_map(fd, offset, length, int(writable), 1, 0, ctypes.byref(base), ctypes.byref(maplen),
                            ctypes.byref(err))
        if not p:
            raise CalibrationError(f"cannot map {length} bytes at offset {offset}: {os.strerror(err.value)}")
        return Mapping(p, length, base.value, maplen.value)

    def unmap(self, m: Mapping) -> None:
        self.lib.bp_unmap(m.base, m.maplen)

    def prefault(self, ptr: int, n: int, write: bool = True) -> None:
        self.lib.bp_prefault(ptr, n, int(write))

    @staticmethod
    def view(ptr: int, n: int) -> np.ndarray:
        """A numpy uint8 view of n bytes at ptr (no copy; valid while the mapping lives)."""
        if n == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(ptr))

    # ---------------------------------------------------------------- operations
    def copy_nt(self, dst: int, src: int, n: int, variant: str = "auto") -> int:
        return self.lib.bp_copy_nt(dst, src, n, NT_VARIANTS[variant])

    def copy_cached(self, dst: int, src: int, n: int) -> int:
        return self.lib.bp_copy_cached(dst, src, n)

    def flush(self, ptr: int, n: int, method: str) -> int:
        return self.lib.bp_flush(ptr, n, FLUSH_METHODS[method])

    def flush_read(self, ptr: int, n: int, method: str) -> tuple[int, int]:
        s = _c_u64()
        rc = self.lib.bp_flush_read(ptr, n, FLUSH_METHODS[method], ctypes.byref(s))
        return rc, s.value

    def read_sum(self, ptr: int, n: int) -> int:
        return int(self.lib.bp_read_sum(ptr, n))

    def fill_pattern(self, ptr: int, n: int, seed: int) -> int:
        return self.lib.bp_fill_pattern(ptr, n, seed)

    def check_pattern(self, ptr: int, n: int, seed: int) -> int:
        """-1 when the pattern matches, else the offset of the first bad word (-2: bad args)."""
        return int(self.lib.bp_check_pattern(ptr, n, seed))

    def bench_op(self, op: str, dst: int, src: int, n: int, method: str, iters: int) -> tuple[int, np.ndarray]:
        out = np.zeros(iters, dtype=np.float64)
        sink = _c_u64()
        rc = self.lib.bp_bench_op(
            BENCH_OPS[op], dst, src, n, FLUSH_METHODS[method], iters, out.ctypes.data_as(_P_dbl), ctypes.byref(sink)
        )
        return rc, out

    def chase_build(self, ptr: int, nbytes: int, stride: int, seed: int) -> tuple[int, int]:
        n = _c_u64()
        rc = self.lib.bp_chase_build(ptr, nbytes, stride, seed, ctypes.byref(n))
        return rc, n.value

    def chase_run(self, ptr: int, steps: int) -> tuple[int, float]:
        ns, end = _c_dbl(), _c_void_p()
        rc = self.lib.bp_chase_run(ptr, steps, ctypes.byref(ns), ctypes.byref(end))
        return rc, ns.value

    def chase_count(self, ptr: int, nbytes: int, stride: int) -> tuple[int, int, int]:
        distinct, cycle = _c_u64(), _c_u64()
        rc = self.lib.bp_chase_count(ptr, nbytes, stride, ctypes.byref(distinct), ctypes.byref(cycle))
        return rc, distinct.value, cycle.value

    def bandwidth(self, kind: str, dst: int | None, src: int | None, bytes_per_thread: int, threads: int,
                  iters: int) -> tuple[int, float, int]:
        secs, s = _c_dbl(), _c_u64()
        rc = self.lib.bp_bandwidth(BW_KINDS[kind], dst or None, src or None, bytes_per_thread, threads, iters,
                                   ctypes.byref(secs), ctypes.byref(s))
        return rc, secs.value, s.value

    def rpc_run(self, region: int, region_len: int, depth: int, ops: int, warmup: int, flush: str,
                client_cpu: int = -1, server_cpu: int = -1) -> tuple[int, np.ndarray, float, int]:
        rtt = np.zeros(ops if depth == 1 else 0, dtype=np.float64)
        elapsed, torn = _c_dbl(), _c_i64()
        rc = self.lib.bp_rpc_run(
            region, region_len, depth, ops, warmup, FLUSH_METHODS[flush], client_cpu, server_cpu,
            rtt.ctypes.data_as(_P_dbl) if depth == 1 else None, ctypes.byref(elapsed), ctypes.byref(torn),
        )
        return rc, rtt, elapsed.value, torn.value


@lru_cache(maxsize=1)
def load() -> Native:
    """Build (if needed) and load the native probe; CalibrationError when that is impossible."""
    path = build()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise CalibrationError(f"cannot load the native probe {path}: {e}") from None
    return Native(lib, path)
