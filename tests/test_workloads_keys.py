"""Block keys: chained, deterministic, and exact about what is shared."""

from __future__ import annotations

import numpy as np

from belusim.workloads import keys as K
from belusim.workloads.keys import chain_keys, fmix64, fmix64_int, hash_str, row_offsets_from_lengths

M64 = (1 << 64) - 1


def _naive_row(row, ns):
    out, p = [], 0
    for i, c in enumerate(row):
        p = (p * K._B + fmix64_int(int(c))) & M64
        pos = fmix64_int((i * K._K1 + ns) & M64)
        out.append(fmix64_int(((p * K._C1) & M64) ^ pos) >> 1)
    return out


def test_chain_keys_match_sequential_definition():
    rng = np.random.default_rng(3)
    rows = [rng.integers(0, 2**63, size=int(rng.integers(0, 40))).astype(np.uint64) for _ in range(25)]
    off = row_offsets_from_lengths(np.array([len(r) for r in rows]))
    got = chain_keys(np.concatenate(rows), off, 99)
    want = [k for r in rows for k in _naive_row(r, 99)]
    assert got.dtype == np.int64
    assert np.array_equal(got, np.array(want, dtype=np.int64))
    assert (got >= 0).all()


def test_chain_keys_from_kept_tables_match_the_definition(monkeypatch):
    """Kept power and position tables (grown as calls need, one per namespace, longer ones
    not kept) give every call what fresh ones would, in any order of lengths and namespaces;
    overwrite=True gives the same keys and only clobbers premixed input."""
    monkeypatch.setattr(K, "_TABLES", K._Tables())
    monkeypatch.setattr(K, "_TABLE_MAX", 3000)  # some calls past it
    rng = np.random.default_rng(4)
    for n_rows, longest, ns in [(3, 30, 5), (40, 200, 7), (2, 2500, 5), (1, 5000, 7), (4, 10, 7), (30, 120, 5)]:
        rows = [rng.integers(0, 2**63, size=int(rng.integers(1, longest))).astype(np.uint64) for _ in range(n_rows)]
        off = row_offsets_from_lengths(np.array([len(r) for r in rows]))
        want = np.array([k for r in rows for k in _naive_row(r, ns)], dtype=np.int64)
        flat = np.concatenate(rows)
        assert np.array_equal(chain_keys(flat, off, ns), want)
        mixed = fmix64(flat)
        kept = mixed.copy()
        assert np.array_equal(chain_keys(mixed, off, ns, premixed=True), want)
        assert np.array_equal(mixed, kept)  # not overwritten unless asked
        assert np.array_equal(chain_keys(mixed, off, ns, premixed=True, overwrite=True), want)
    assert len(K._TABLES.inv) <= 3000 and all(len(t) <= 3000 for t in K._TABLES.positions.values())


def test_chain_keys_prefix_semantics():
    a = np.array([1, 2, 3, 4], dtype=np.uint64)
    b = np.array([1, 2, 9, 4], dtype=np.uint64)
    c = np.array([0, 1, 2, 3], dtype=np.uint64)  # shifted: nothing shared
    off = row_offsets_from_lengths(np.array([4, 4, 4]))
    k = chain_keys(np.concatenate([a, b, c]), off, 1).reshape(3, 4)
    assert (k[0, :2] == k[1, :2]).all()
    assert (k[0, 2:] != k[1, 2:]).all()  # same content after a difference is still different
    assert not set(k[2]) & set(k[0])
    # Another namespace never collides.
    k2 = chain_keys(a, np.array([0, 4]), 2)
    assert not set(k2) & set(k[0])


def test_fmix_and_hash_are_stable():
    x = np.array([0, 1, 2**63, M64], dtype=np.uint64)
    assert [int(v) for v in fmix64(x)] == [fmix64_int(int(v)) for v in x]
    # blake2b-based, identical in every process (unlike hash()).
    assert hash_str("lveval", "factrecall_en", 3) == hash_str("lveval", "factrecall_en", 3)
    assert hash_str("a", "bc") != hash_str("ab", "c")
    assert hash_str("x") == 0x4F586EF96743DF4A  # pinned: keys must not drift between versions
