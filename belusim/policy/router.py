"""The global scheduler: which instance serves a new request."""

from __future__ import annotations

from belusim.config.scenario import RouterConfig
from belusim.policy.request import Request
from belusim.policy.scheduler import Scheduler


class Router:
    def __init__(self, cfg: RouterConfig, schedulers: list[Scheduler]):
        if not schedulers:
            raise ValueError("a router needs at least one instance")
        self.cfg = cfg
        self.scheds = schedulers
        self._next = 0

    @property
    def reads_loads(self) -> bool:
        return self.cfg.policy != "round-robin"

    @property
    def reads_floors(self) -> bool:
        """Does it choose by least load, so that a lower bound per instance (least_loaded)
        can spare computing most loads?"""
        return self.cfg.policy == "least-loaded"

    @property
    def reads_caches(self) -> bool:
        """Does it look at the instances' prefix caches (not only at their loads)?"""
        return self.cfg.policy == "cache-aware"

    def choose(self, req: Request, loads: list[int] | None = None) -> int:
        """The instance for `req`. loads: each instance's outstanding tokens now, if the
        caller knows them better than the schedulers' counters (an executor part-way
        through a multi-step decode stretch)."""
        policy = self.cfg.policy
        if policy == "round-robin":
            i = self._next
            self._next = (i + 1) % len(self.scheds)
            return i
        if loads is None:
            loads = [s.outstanding_tokens for s in self.scheds]
        if policy == "least-loaded":
            return self.least_loaded(loads, loads.__getitem__)  # exact loads are their own floors
        # cache-aware: the longest cached prefix among instances not much busier than the least loaded
        floor = min(loads)
        cap = self.cfg.load_cap * floor + req.prompt_tokens + req.output_tokens
        best, best_key = 0, None
        for i, s in enumerate(self.scheds):
            if loads[i] > cap:
                continue
            hit = s.pool.match_prefix(req.keys, len(req.keys))
            if self.cfg.use_tier_hits and s.tier is not None:
                hit = max(hit, s.tier.match(req.keys, len(req.keys)))
            key = (hit, -loads[i])
            if best_key is None or key > best_key:
                best, best_key = i, key
        return best

    def least_loaded(self, floors: list[int], load_of) -> int:
        """What choose() answers for least-loaded routing (the first index of the least
        load), asking load_of(i) for an instance's load only where its floor (a lower bound,
        exact for an instance not in a decode stretch) is below the least load found so far:
        visited in index order, one at or above it could at best tie, and a lower index
        holds the tie. One pass, no sorting (an arrival on 64 instances sorted 64 floors)."""
        best_i = 0
        best: int = load_of(0)  # typed: compiled, the comparisons below stay on ints
        for i in range(1, len(floors)):
            if floors[i] < best:
                load = load_of(i)
                if load < best:
                    best_i, best = i, load
        return best_i
