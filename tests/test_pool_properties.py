"""Property-based tests (hypothesis, derandomized) of the HBM block pool's and the external
tier's bookkeeping: random sequences of their public operations, checked after every step
against a plain model of who holds what, and against their own check()."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from belusim.policy.blocks import BlockPool
from belusim.policy.tier import TierIndex

PROPS = settings(max_examples=100, stateful_step_count=40, deadline=None, derandomize=True)


class PoolMachine(RuleBasedStateMachine):
    """Requests as the model: each holds a list of distinct cached keys and a private count."""

    @initialize(num_blocks=st.integers(1, 24))
    def start(self, num_blocks):
        self.pool = BlockPool(num_blocks)
        self.held: dict[int, tuple[list[int], int]] = {}  # request -> (cached keys, private)
        self.next_req = 0
        self.next_key = 0

    @rule(n=st.integers(1, 8))
    def allocate(self, n):
        """A new request takes n fresh private blocks (evicting unheld cached ones if needed)."""
        before = self.pool.evictions
        if n > self.pool.free:
            with pytest.raises(Exception):
                self.pool.allocate(n)
            return
        lru_before = list(self.pool.lru)
        self.pool.allocate(n)
        gone = self.pool.evictions - before
        assert self.pool.evicted_since(before) == lru_before[:gone]  # oldest first
        self.held[self.next_req] = ([], n)
        self.next_req += 1

    @precondition(lambda self: any(p for _, p in self.held.values()))
    @rule(data=st.data(), reuse=st.booleans())
    def promote(self, data, reuse):
        """Some of a request's private blocks fill up and are cached (a key cached already
        by someone else stays private, as in vLLM)."""
        req = data.draw(st.sampled_from(sorted(r for r, (_, p) in self.held.items() if p)))
        keys, private = self.held[req]
        n = data.draw(st.integers(1, private))
        resident_before = set(self.pool.resident)
        fresh: list[int] = []
        for _ in range(n):
            others = sorted(resident_before - set(keys) - set(fresh))
            if reuse and others and data.draw(st.booleans()):
                fresh.append(data.draw(st.sampled_from(others)))
            else:
                fresh.append(self.next_key)
                self.next_key += 1
        new = self.pool.promote(fresh)
        assert new == [k for k in fresh if k not in resident_before]
        self.held[req] = (keys + new, private - len(new))

    @precondition(lambda self: self.pool.resident)
    @rule(data=st.data())
    def acquire(self, data):
        """A new request takes a prefix hit on resident keys (held or in the LRU)."""
        keys = data.draw(st.lists(st.sampled_from(sorted(self.pool.resident)), min_size=1, max_size=6, unique=True))
        unheld = self.pool.count_unreferenced(keys)
        assert unheld == sum(k in self.pool.lru for k in keys)
        self.pool.acquire_cached(keys)
        self.held[self.next_req] = (keys, 0)
        self.next_req += 1

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data):
        req = data.draw(st.sampled_from(sorted(self.held)))
        keys, private = self.held.pop(req)
        self.pool.release(keys, private)

    @rule()
    def clear_cache(self):
        self.pool.clear_cache()
        assert not self.pool.lru

    @invariant()
    def counts_add_up(self):
        pool = self.pool
        pool.check()
        assert pool.free + pool.in_use == pool.num_blocks and 0 <= pool.free
        holders: dict[int, int] = {}
        for keys, _ in self.held.values():
            for k in keys:
                holders[k] = holders.get(k, 0) + 1
        assert pool.refcount == holders  # refcounts match the requests holding each key
        assert pool.in_use == len(holders) + sum(p for _, p in self.held.values())
        assert set(pool.lru) == pool.resident - set(holders)  # the LRU: unreferenced cached only
        assert set(pool.lru).isdisjoint(pool.refcount)
        assert pool.in_use + len(pool.lru) <= pool.num_blocks


PoolMachine.TestCase.settings = PROPS
test_block_pool_properties = PoolMachine.TestCase


class TierMachine(RuleBasedStateMachine):
    """Prompts as chains of block keys; saves begin on the chunks the tier wants, end later."""

    @initialize(capacity=st.integers(1, 12), chunk_blocks=st.sampled_from([1, 2, 4]))
    def start(self, capacity, chunk_blocks):
        self.tier = TierIndex("t", capacity, chunk_blocks)
        self.c = chunk_blocks
        # a few prompts sharing prefixes: key = hash of (prompt family, position)
        self.prompts = [[(fam, i) for i in range(8 * chunk_blocks)] for fam in range(3)]
        self.prompts = [[hash(k) for k in p] for p in self.prompts]
        self.saving: list[list[int]] = []

    @rule(p=st.integers(0, 2), upto=st.integers(0, 8))
    def begin_save(self, p, upto):
        keys = self.prompts[p]
        want = self.tier.wanted(keys, upto * self.c, 0)
        names = [keys[(i + 1) * self.c - 1] for i in want]
        assert not any(n in self.tier.chunks or n in self.tier.pending for n in names)
        self.tier.begin_save(names)
        if names:
            self.saving.append(names)

    @precondition(lambda self: self.saving)
    @rule(i=st.integers(0, 100))
    def end_save(self, i):
        names = self.saving.pop(i % len(self.saving))
        before = set(self.tier.chunks)
        evicted = self.tier.end_save(names)
        assert set(evicted) <= before | set(names) and not set(evicted) & set(self.tier.chunks)

    @rule(p=st.integers(0, 2), limit=st.integers(0, 8))
    def touch(self, p, limit):
        keys = self.prompts[p]
        hit = self.tier.match(keys, limit * self.c)
        assert hit % self.c == 0 and hit <= limit * self.c
        self.tier.touch(keys, 0, hit)
        if hit:  # the hit's last chunk is now the most recently used
            assert next(reversed(self.tier.chunks)) == keys[hit - 1]

    @invariant()
    def within_capacity(self):
        t = self.tier
        assert len(t.chunks) <= t.capacity
        assert t.pending == {n for s in self.saving for n in s}
        if not t.pending:
            t.check()

    def teardown(self):
        if hasattr(self, "tier"):
            while self.saving:
                self.tier.end_save(self.saving.pop())
            self.tier.check()


TierMachine.TestCase.settings = PROPS
test_tier_properties = TierMachine.TestCase


def test_pool_check_catches_a_corrupt_count():
    pool = BlockPool(8)
    pool.allocate(3)
    pool.promote([1, 2])
    pool.release([1, 2], 1)
    pool.check()
    pool.in_use += 9  # a lost release
    with pytest.raises(AssertionError, match="in_use"):
        pool.check()
    pool.in_use -= 9
    pool.lru.pop(1)  # a cached key vanished from the LRU but not from the resident set
    with pytest.raises(AssertionError, match="resident set"):
        pool.check()


def test_tier_check_catches_overfill_and_unfinished_saves():
    tier = TierIndex("t", 2, 1)
    tier.begin_save([1, 2])
    with pytest.raises(AssertionError, match="never completed"):
        tier.check()
    tier.end_save([1, 2])
    tier.check()
    tier.chunks[3] = None  # stored behind end_save's back
    with pytest.raises(AssertionError, match="more chunks than fit"):
        tier.check()
