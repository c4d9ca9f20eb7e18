"""Property-based tests (hypothesis, derandomized) of the HBM block pool's and the external
tier's bookkeeping: random sequences of their public operations, checked after every step
against a plain model of who holds what, and against their own check()."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from belusim.policy.blocks import BlockPool, OutOfBlocks
from belusim.policy.tier import TierIndex
from tests.pool_oracle import ReferencePool, ReferenceTier

PROPS = settings(max_examples=100, stateful_step_count=40, deadline=None, derandomize=True)


def chain(*labels) -> list[int]:
    """Chain keys of a prompt whose blocks carry these contents: each key names its prefix."""
    keys, prefix = [], ()
    for label in labels:
        prefix = prefix + (label,)
        keys.append(hash(prefix) & (2**63 - 1))
    return keys


# Prompts that share prefixes the way conversations and shared system prompts do.
TRUNK = tuple(f"t{i}" for i in range(8))
PROMPTS = [
    chain(*TRUNK[:2], "a1", "a2", "a3", "a4"),
    chain(*TRUNK[:4], "b1", "b2", "b3"),
    chain(*TRUNK, "c1", "c2"),
    chain(*TRUNK),
    chain("d0", "d1", "d2", "d3", "d4"),
    chain("d0", "d1", "e2"),
]


class PoolMachine(RuleBasedStateMachine):
    """Requests as the scheduler drives the pool (a prefix hit, private blocks, promotions in
    prompt order, release), each step done on the run index and on the per-key reference
    model (tests/pool_oracle.py), which must agree block for block: hits, LRU order,
    holders, evictions."""

    pool_class = BlockPool

    @initialize(num_blocks=st.integers(1, 24))
    def start(self, num_blocks):
        self.pool = self.pool_class(num_blocks)
        self.ref = ReferencePool(num_blocks)
        self.reqs: dict[int, dict] = {}  # id -> keys, runs, private, progress (blocks promoted or hit)
        self.next_req = 0

    def _allocate(self, n: int) -> bool:
        if n > self.ref.free:
            assert n > self.pool.free
            with pytest.raises(OutOfBlocks):
                self.pool.allocate(n)
            return False
        self.pool.allocate(n)
        self.ref.allocate(n)
        return True

    @rule(p=st.integers(0, len(PROMPTS) - 1), cut=st.integers(0, 8), n=st.integers(1, 8))
    def admit(self, p, cut, n):
        """A request takes its prefix hit (all of it, as the scheduler does) and n private blocks."""
        keys = PROMPTS[p]
        limit = max(0, len(keys) - cut)
        hbm = self.pool.match_prefix(keys, limit)
        assert hbm == self.ref.match_prefix(keys, limit)
        unheld = self.pool.count_unreferenced(keys, hbm)
        assert unheld == self.ref.count_unreferenced(keys[:hbm])
        if n + unheld > self.ref.free:
            return
        runs = self.pool.acquire_cached(keys, hbm)
        self.ref.acquire_cached(keys[:hbm])
        assert self._allocate(n)
        self.reqs[self.next_req] = {"keys": keys, "runs": runs, "private": n, "progress": hbm}
        self.next_req += 1

    @precondition(lambda self: self.reqs)
    @rule(data=st.data(), n=st.integers(1, 6))
    def grow(self, data, n):
        """A running request takes more private blocks (evicting if it must)."""
        r = self.reqs[data.draw(st.sampled_from(sorted(self.reqs)))]
        if self._allocate(n):
            r["private"] += n

    @precondition(lambda self: any(r["private"] and r["progress"] < len(r["keys"]) for r in self.reqs.values()))
    @rule(data=st.data())
    def promote(self, data):
        """Its next prompt blocks fill up and are cached; a key cached already by someone
        else stays private, as in vLLM."""
        i = data.draw(st.sampled_from(sorted(
            i for i, r in self.reqs.items() if r["private"] and r["progress"] < len(r["keys"]))))
        r = self.reqs[i]
        keys, first = r["keys"], r["progress"]
        end = data.draw(st.integers(first + 1, min(len(keys), first + r["private"])))
        runs = self.pool.promote(keys, first, end)
        expect = self.ref.promote(keys[first:end])
        assert [k for a, b in runs for k in keys[a:b]] == expect
        assert all(first <= a < b <= end for a, b in runs)
        r["runs"] = r["runs"] + runs
        r["private"] -= len(expect)
        r["progress"] = end

    @precondition(lambda self: self.reqs)
    @rule(data=st.data())
    def release(self, data):
        """A request finishes or is preempted."""
        r = self.reqs.pop(data.draw(st.sampled_from(sorted(self.reqs))))
        self.pool.release(r["keys"], r["runs"], r["private"])
        self.ref.release([k for a, b in r["runs"] for k in r["keys"][a:b]], r["private"])

    @rule()
    def clear_cache(self):
        self.pool.clear_cache()
        self.ref.clear_cache()
        assert not self.pool.lru

    @invariant()
    def agrees_with_the_reference(self):
        pool, ref = self.pool, self.ref
        pool.check()
        assert pool.in_use == ref.in_use and pool.free == ref.free
        assert pool.lru == list(ref.lru)  # the same blocks, in the same eviction order
        assert pool.refcount == ref.refcount
        assert pool.resident == ref.resident and pool.cached == len(ref.resident)
        assert pool.evictions == ref.evictions
        assert pool.empty == pool.num_blocks - ref.in_use - len(ref.lru)
        for keys in PROMPTS:
            assert pool.match_prefix(keys, len(keys)) == ref.match_prefix(keys, len(keys))


PoolMachine.TestCase.settings = PROPS
test_block_pool_properties = PoolMachine.TestCase


class _Broken:
    """A broken variant of an index: the real one, with one method replaced. (A wrapper,
    not a subclass: the index classes may be compiled, and compiled classes take no
    Python subclasses.)"""

    index_class: type = BlockPool

    def __init__(self, *args, **kwargs):
        self.real = self.index_class(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


class _ShallowFirstRelease(_Broken):
    """A broken index: releases a request's runs head first."""

    def release(self, keys, runs, private):
        for a, b in runs:
            self.real.release(keys, [(a, b)], 0)
        self.real.release(keys, [], private)


class _StaleMatch(_Broken):
    """A broken index: a match ignores that a run was evicted."""

    def match_prefix(self, keys, limit, start=0):
        node, d = self.real.root, 0
        while d < limit and keys[d] in node.children:
            node = node.children[keys[d]]
            d = min(limit, d + len(node.keys))
        return d


@pytest.mark.parametrize("broken", [_ShallowFirstRelease, _StaleMatch])
def test_the_reference_catches_a_broken_index(broken):
    machine = type("Broken", (PoolMachine,), {"pool_class": broken})
    with pytest.raises((AssertionError, ExceptionGroup)):  # hypothesis may report several
        run_state_machine_as_test(machine, settings=PROPS)


def tier_prompts(c: int) -> list[list[int]]:
    """PROMPTS' shapes with every block label stretched to a chunk of c blocks."""
    shapes = [TRUNK[:2] + ("a1", "a2", "a3", "a4"), TRUNK[:4] + ("b1", "b2", "b3"), TRUNK + ("c1", "c2"),
              TRUNK, ("d0", "d1", "d2", "d3", "d4"), ("d0", "d1", "e2")]
    return [chain(*[f"{label}.{j}" for label in shape for j in range(c)]) for shape in shapes]


class TierMachine(RuleBasedStateMachine):
    """Prompts as chains of block keys; saves begin on the chunks the tier wants and end
    later, hits touch their chunks; every step on the run index and on the per-chunk
    reference model, which must agree chunk for chunk (stored, pending, LRU order, evictions)."""

    tier_class = TierIndex

    @initialize(capacity=st.integers(1, 12), chunk_blocks=st.sampled_from([1, 2, 4]))
    def start(self, capacity, chunk_blocks):
        self.tier = self.tier_class("t", capacity, chunk_blocks)
        self.ref = ReferenceTier(capacity, chunk_blocks)
        self.c = chunk_blocks
        self.prompts = tier_prompts(chunk_blocks)
        self.saving: list[tuple] = []  # keys, chunk indexes, names, owner, pending run
        self.owners = [_Owner() for _ in self.prompts]  # requests with their tier hints

    @rule(p=st.integers(0, 5), start=st.integers(0, 3), upto=st.integers(0, 10))
    def begin_save(self, p, start, upto):
        keys = self.prompts[p]
        upto = min(upto, len(keys) // self.c)
        want = self.tier.wanted(keys, upto * self.c, start)
        assert want == self.ref.wanted(keys, upto * self.c, start)
        names = [keys[(i + 1) * self.c - 1] for i in want]
        self.tier.begin_save(keys, want)
        self.ref.begin_save(names)
        if want:
            self.saving.append((keys, want, names, None, None))

    @rule(p=st.integers(0, 5), start=st.integers(0, 3), upto=st.integers(0, 10))
    def begin_wanted(self, p, start, upto):
        """The scheduler's way: wanted and begin_save in one call, from the prompt's hint."""
        keys = self.prompts[p]
        upto = min(upto, len(keys) // self.c)
        want = self.ref.wanted(keys, upto * self.c, start)
        got = self.tier.begin_wanted(keys, upto * self.c, start, self.owners[p])
        assert (got is None) == (not want)
        if want:
            idx, names, run = got
            assert list(idx) == want and list(names) == [keys[(i + 1) * self.c - 1] for i in want]
            self.ref.begin_save(names)
            self.saving.append((keys, idx, names, self.owners[p], run))

    @precondition(lambda self: self.saving)
    @rule(i=st.integers(0, 100))
    def end_save(self, i):
        keys, want, names, owner, run = self.saving.pop(i % len(self.saving))
        assert self.tier.end_save(keys, want, owner, run) == self.ref.end_save(names)

    @rule(p=st.integers(0, 5), limit=st.integers(0, 10), data=st.data())
    def touch(self, p, limit, data):
        """A hit (behind an HBM hit of `first` blocks) is taken: its chunks get young."""
        keys = self.prompts[p]
        limit = min(limit, len(keys) // self.c)
        hit = self.tier.match(keys, limit * self.c)
        assert hit == self.ref.match(keys, limit * self.c)
        assert hit % self.c == 0 and hit <= limit * self.c
        first = data.draw(st.integers(0, hit))
        self.tier.touch(keys, first, hit - first)
        self.ref.touch(keys, first, hit - first)

    @invariant()
    def agrees_with_the_reference(self):
        t, ref = self.tier, self.ref
        assert list(t.chunks) == list(ref.chunks)  # the same chunks, in the same eviction order
        assert len(t.chunks) == len(ref.chunks) <= t.capacity
        assert t.pending == ref.pending == {n for _, _, names, *_ in self.saving for n in names}
        assert (t.evictions, t.inserted) == (ref.evictions, ref.inserted)
        for keys in self.prompts:
            assert t.match(keys, len(keys)) == ref.match(keys, len(keys))
        if t.pending:
            with pytest.raises(AssertionError, match="never completed"):
                t.check()
        else:
            t.check()

    def teardown(self):
        if hasattr(self, "tier"):
            while self.saving:
                keys, want, names, owner, run = self.saving.pop()
                assert self.tier.end_save(keys, want, owner, run) == self.ref.end_save(names)
            self.tier.check()


class _Owner:
    """A request as the tier sees it: its hint of where its last walk ended."""

    tier_hint = None


TierMachine.TestCase.settings = PROPS
test_tier_properties = TierMachine.TestCase


class _TouchForgetsOrder(_Broken):
    """A broken index: a hit's chunks do not get young."""

    index_class = TierIndex

    def touch(self, block_keys, first_block, n_blocks):
        self.real.hit_chunks += n_blocks // self.real.chunk_blocks


def test_the_reference_catches_a_broken_tier():
    machine = type("Broken", (TierMachine,), {"tier_class": _TouchForgetsOrder})
    with pytest.raises((AssertionError, ExceptionGroup)):  # hypothesis may report several
        run_state_machine_as_test(machine, settings=PROPS)


def test_pool_check_catches_a_corrupt_count():
    pool = BlockPool(8)
    keys = [1, 2, 3]
    pool.allocate(3)
    runs = pool.promote(keys, 0, 2)
    pool.release(keys, runs, 1)
    pool.check()
    pool.in_use += 9  # a lost release
    with pytest.raises(AssertionError, match="in_use"):
        pool.check()
    pool.in_use -= 9
    pool.lru_blocks -= 1  # a cached block vanished from the LRU's count
    with pytest.raises(AssertionError, match="resident counts"):
        pool.check()
    pool.lru_blocks += 1
    node = pool.root.children[1]
    node.prev.next = node.next  # a run unlinked from the LRU but still unreferenced
    with pytest.raises(AssertionError, match="LRU"):
        pool.check()


def test_tier_check_catches_overfill_and_unfinished_saves():
    tier = TierIndex("t", 2, 1)
    tier.begin_save([1, 2], [0, 1])
    with pytest.raises(AssertionError, match="never completed"):
        tier.check()
    tier.end_save([1, 2], [0, 1])
    tier.check()
    tier.stored += 1  # stored behind end_save's back
    with pytest.raises(AssertionError, match="chunks stored"):
        tier.check()
    tier.stored -= 1
    tier.capacity = 1  # holds more than fits
    with pytest.raises(AssertionError, match="more chunks than fit"):
        tier.check()
