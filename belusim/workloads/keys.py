"""Deterministic 63-bit block keys, built with numpy.

A prompt is a sequence of "units" (one per KV block, or finer), each with a 64-bit content
id. The key of unit i is a hash of the whole sequence up to and including unit i: the
polynomial chain P_i = P_{i-1} * B + c_i (mod 2**64) over pre-mixed contents, finalised with
the position and a namespace. Equal key <=> identical prefix (up to a ~2**-63 collision
chance per pair). The chain is linear, so it is computed for all units at once with two
cumulative sums instead of a Python loop: P_i = B**i * sum_{k<=i} c_k * B**-k.

Python's built-in hash() is salted per process, so it is never used here: string ids come
from blake2b.
"""

from __future__ import annotations

import hashlib

import numpy as np

_M64 = (1 << 64) - 1
# Odd multiplier (golden ratio); odd means it has an inverse mod 2**64.
_B = 0x9E3779B97F4A7C15
_B_INV = pow(_B, -1, 1 << 64)
_C1 = 0xFF51AFD7ED558CCD
_C2 = 0xC4CEB9FE1A85EC53
_K1 = 0xD6E8FEB86659FD93
_K2 = 0xA0761D6478BD642F

U64 = np.uint64
_S33 = U64(33)
_UC1 = U64(_C1)
_UC2 = U64(_C2)


def fmix64(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser on a uint64 array (a bijection, so no collisions)."""
    x = np.asarray(x, dtype=U64)
    if not inplace:
        x = x.copy()
    t = np.empty_like(x)
    np.right_shift(x, _S33, out=t)
    x ^= t
    x *= _UC1
    np.right_shift(x, _S33, out=t)
    x ^= t
    x *= _UC2
    np.right_shift(x, _S33, out=t)
    x ^= t
    return x


def fmix64_int(x: int) -> int:
    """Scalar fmix64 in plain Python ints (same result as the array version)."""
    x &= _M64
    x ^= x >> 33
    x = (x * _C1) & _M64
    x ^= x >> 33
    x = (x * _C2) & _M64
    x ^= x >> 33
    return x


def hash_bytes(data: bytes) -> int:
    """A stable 64-bit id for a byte string (blake2b, not Python's salted hash())."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def hash_str(*parts: object) -> int:
    """A stable 64-bit id for a tuple of printable parts, e.g. ("lveval", subset, 3)."""
    return hash_bytes("\x1f".join(str(p) for p in parts).encode("utf-8"))


def combine(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Mix two 64-bit values (arrays broadcast) into one; order matters."""
    a = np.asarray(a, dtype=U64) if not isinstance(a, int) else np.asarray(a & _M64, dtype=U64)
    b = np.asarray(b, dtype=U64) if not isinstance(b, int) else np.asarray(b & _M64, dtype=U64)
    return fmix64(fmix64(a ^ U64(_K1)) * U64(_K2) + b)


def hash_token_blocks(tokens: np.ndarray, block_size: int) -> np.ndarray:
    """Content id per full block of a token-id array (the trailing partial block is dropped)."""
    n = len(tokens) // block_size
    if n == 0:
        return np.zeros(0, dtype=U64)
    m = np.asarray(tokens[: n * block_size], dtype=np.int64).astype(U64).reshape(n, block_size)
    h = np.full(n, _K1, dtype=U64)
    for col in range(block_size):
        h = fmix64(h * U64(_K2) + m[:, col] + U64(1))
    return h


def _position_table(n: int, namespace: int) -> np.ndarray:
    """Per-position mixing terms, so equal chains at different depths or namespaces differ."""
    return fmix64(np.arange(n, dtype=np.int64).view(U64) * U64(_K1) + U64(namespace & _M64), inplace=True)


class _Tables:
    """Tables that chain_keys needs for every call, kept and grown as calls need longer
    ones: entry i of each is the same whatever the table's length (powers of B and B^-1
    by position, the position terms per namespace), so a prefix of a kept table is what a
    fresh one would hold. Workloads hash in windows of requests, which made them anew for
    every window."""

    def __init__(self) -> None:
        self.inv = np.ones(0, dtype=U64)  # B^-i
        self.pow = np.ones(0, dtype=U64)  # B^i
        self.positions: dict[int, np.ndarray] = {}  # namespace -> position terms

    def powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.inv) < n:
            m = max(n, min(2 * len(self.inv), _TABLE_MAX), 1024)
            inv = np.full(m, _B_INV, dtype=U64)
            inv[0] = 1
            np.cumprod(inv, out=inv)
            pw = np.full(m, _B, dtype=U64)
            pw[0] = 1
            np.cumprod(pw, out=pw)
            if m > _TABLE_MAX:
                return inv, pw  # used once: a long table is not kept
            self.inv, self.pow = inv, pw
        return self.inv[:n], self.pow[:n]

    def position(self, n: int, namespace: int) -> np.ndarray:
        table = self.positions.get(namespace)
        if table is None or len(table) < n:
            table = _position_table(max(n, 1024), namespace)
            if len(table) > _TABLE_MAX:
                return table
            if len(self.positions) >= 64:
                self.positions.clear()
            self.positions[namespace] = table
        return table


_TABLE_MAX = 1 << 20  # entries (8 MiB): longer tables are made for their call only
_TABLES = _Tables()


def chain_keys(
    contents: np.ndarray, row_offsets: np.ndarray, namespace: int, *, premixed: bool = False,
    overwrite: bool = False,
) -> np.ndarray:
    """Chained prefix keys for ragged rows of unit contents.

    contents: uint64, all rows back to back; row_offsets: int64 of len rows+1. Returns int64
    keys in [0, 2**63), one per unit; a row's first unit starts a fresh chain. Pass
    premixed=True when contents already come out of fmix64/combine (saves one pass);
    overwrite=True lets it work in a premixed uint64 `contents` (which it then clobbers).
    """
    n = len(contents)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    row_offsets = np.asarray(row_offsets, dtype=np.int64)
    lengths = np.diff(row_offsets)
    starts = row_offsets[:-1]
    c = np.asarray(contents, dtype=U64) if premixed else fmix64(contents)
    inv, pw = _TABLES.powers(n)
    # Powers of B^-1 per global position (uint64 arithmetic wraps mod 2**64).
    s = np.multiply(c, inv, out=c if overwrite and premixed and c is contents else None)
    del c
    np.cumsum(s, out=s)
    # Subtract the running sum before each row's start so each row restarts its chain.
    before = np.zeros(len(lengths), dtype=U64)
    nz = starts > 0
    before[nz] = s[starts[nz] - 1]
    s -= np.repeat(before, lengths)
    # Times B**i: s[i] = sum_{k=start..i} c_k * B**(i-k) == P_i.
    s *= pw
    local = np.arange(n, dtype=np.int64)
    local -= np.repeat(starts, lengths)
    maxlen = int(lengths.max())
    s *= _UC1
    s ^= _TABLES.position(maxlen, namespace)[local]
    del local
    fmix64(s, inplace=True)
    s >>= U64(1)
    return s.view(np.int64)


def chain_keys_row(contents: np.ndarray, namespace: int) -> np.ndarray:
    """chain_keys for a single row."""
    return chain_keys(contents, np.array([0, len(contents)], dtype=np.int64), namespace)


def row_offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """Offsets (len+1, starting at 0) for ragged rows of the given lengths."""
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off
