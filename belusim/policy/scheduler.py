"""One instance's step scheduler, after vLLM V1.

Each step has one token budget. Running requests go first (a decode takes one token, an
unfinished prefill its next chunk); then waiting requests are admitted first come, first
served while budget, sequence slots and KV blocks last. When blocks run out the newest
running request is preempted: its blocks are freed and it is recomputed later. A request is
one rule throughout: it is scheduled for `known_tokens - num_computed` tokens (capped by the
budget), and when its computed tokens reach its known tokens the step samples one more.

At admission the scheduler asks the HBM prefix cache, then the external tier, how much of
the prompt is already computed. A tier hit is loaded before the request runs (async mode:
the request waits in LOADING while the others step) or inside the step that admits it (sync
and layerwise modes, see policy/connector.py). New full prompt chunks are handed out for
saving after each step; with hold_blocks_until_saved a finished request keeps its blocks
until its saves land.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Sequence

from belusim.policy.blocks import BlockPool
from belusim.policy.connector import LOAD_MODES
from belusim.policy.request import Request, State
from belusim.policy.tier import TierIndex, TierNode


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


# Load, Save and StepPlan are made for every step and transfer: plain classes with their
# own __init__, which the compiled build compiles (a dataclass's generated __init__ runs as
# interpreted Python even there: about 5,000 instructions per StepPlan).
class Load:
    __slots__ = ("request", "first_block", "num_blocks", "thread_wait_s", "software_s")

    def __init__(self, request: Request, first_block: int, num_blocks: int,
                 thread_wait_s: float = 0.0, software_s: float = 0.0):
        self.request = request
        self.first_block = first_block
        self.num_blocks = num_blocks
        self.thread_wait_s = thread_wait_s  # waiting for a connector thread (set by the executor)
        self.software_s = software_s  # in the stack's software stages

    def __repr__(self) -> str:
        return f"Load(request {self.request.req_id}, blocks {self.first_block}+{self.num_blocks})"


class Save:
    __slots__ = ("request", "chunk_indexes", "keys", "thread_wait_s", "software_s", "tier_run")

    def __init__(self, request: Request, chunk_indexes: Sequence[int], keys: Sequence[int],
                 thread_wait_s: float = 0.0, software_s: float = 0.0, tier_run: TierNode | None = None):
        self.request = request
        self.chunk_indexes = chunk_indexes  # sorted (a range when they are one run)
        self.keys = keys
        self.thread_wait_s = thread_wait_s
        self.software_s = software_s
        self.tier_run = tier_run  # the tier's pending run of these chunks (TierIndex.end_save's shortcut)

    def __repr__(self) -> str:
        return f"Save(request {self.request.req_id}, chunks {list(self.chunk_indexes)})"


class StepPlan:
    __slots__ = ("scheduled", "tokens", "prefill_units", "decode_context", "loads", "in_step_loads",
                 "admitted", "preempted", "lookups", "lookup_keys", "lookup_chunks", "decode_applied")

    def __init__(self, scheduled: list[tuple[Request, int]] | None = None, tokens: int = 0,
                 prefill_units: float = 0.0, decode_context: int = 0, loads: list[Load] | None = None,
                 in_step_loads: bool = False, admitted: int = 0, preempted: int = 0, lookups: int = 0,
                 lookup_keys: int = 0, lookup_chunks: list[int] | None = None, decode_applied: int = 0):
        self.scheduled: list[tuple[Request, int]] = [] if scheduled is None else scheduled  # (request, tokens) pairs
        self.tokens = tokens
        self.prefill_units = prefill_units  # sum of n x (c + n/2) over prefill chunks
        self.decode_context = decode_context  # KV tokens read by decoding requests
        self.loads: list[Load] = [] if loads is None else loads  # Load, started now
        self.in_step_loads = in_step_loads  # sync/layerwise: the loads are part of this step
        self.admitted = admitted
        self.preempted = preempted
        self.lookups = lookups  # tier lookups done while scheduling (metadata RPCs)
        self.lookup_keys = lookup_keys  # chunk names those lookups asked about
        self.lookup_chunks: list[int] = [] if lookup_chunks is None else lookup_chunks  # per lookup: the prompt's chunks it hashed
        self.decode_applied = decode_applied  # pure-decode steps of a stretch already applied (advance_decode)

    def __repr__(self) -> str:
        return (f"StepPlan({len(self.scheduled)} requests, {self.tokens} tokens, {self.admitted} admitted, "
                f"{self.preempted} preempted, {len(self.loads)} loads)")

    @property
    def pure_decode(self) -> bool:
        return (
            self.admitted == 0
            and self.preempted == 0
            and not self.loads
            and self.prefill_units == 0
            and self.tokens == len(self.scheduled)
            and self.tokens > 0
        )


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        block_size: int,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        tier: TierIndex | None = None,
        load_mode: str = "async",
        save: bool = True,
        hold_blocks_until_saved: bool = False,
    ):
        if load_mode not in LOAD_MODES:
            raise ValueError(f"load mode {load_mode!r}: expected one of {LOAD_MODES}")
        self.pool = pool
        self.bs = block_size
        self.budget = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self.tier = tier
        self.load_mode = load_mode
        self.save_enabled = save and tier is not None
        self.hold_until_saved = hold_blocks_until_saved and self.save_enabled
        self.held: dict[Request, None] = {}  # finished, blocks kept until their saves land
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.loading = 0
        self.outstanding_tokens = 0  # router's load signal: prompt + output tokens not yet done

    # -- intake ------------------------------------------------------------------------
    def can_ever_fit(self, req: Request) -> bool:
        return blocks_for(req.prompt_tokens + req.output_tokens, self.bs) <= self.pool.num_blocks

    def add(self, req: Request) -> None:
        req.state = State.WAITING
        self.waiting.append(req)
        self.outstanding_tokens += req.prompt_tokens + req.output_tokens - req.num_output

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    # -- one step ------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        plan = StepPlan()
        budget = self.budget
        pool, bs = self.pool, self.bs

        # The running batch is walked every step: _account and the pool's free count are
        # inlined here (same arithmetic, in the same order).
        running = self.running
        scheduled = plan.scheduled
        tokens = decode_context = 0
        prefill_units = plan.prefill_units
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            c = req.num_computed
            left = req.prompt_tokens + req.num_output - c
            n = left if left < budget else budget
            need = -(-(c + n) // bs) - req.cached_blocks - req.private_blocks  # blocks_held, inlined
            if need > pool.num_blocks - pool.in_use:
                while need > pool.free:
                    victim = running[-1]
                    self._preempt(victim)
                    plan.preempted += 1
                    if victim is req:
                        break
                if req.state is not State.RUNNING:
                    break  # preempted itself: nothing left to make room with
            if need > 0:
                pool.allocate(need)
            req.private_blocks += need
            scheduled.append((req, n))
            tokens += n
            if left == 1 and req.num_output > 0:
                decode_context += c + 1
            else:
                prefill_units += n * (c + n / 2)
            budget -= n
            i += 1
        plan.tokens, plan.decode_context, plan.prefill_units = tokens, decode_context, prefill_units

        if plan.preempted == 0:
            budget = self._admit(plan, budget, now)
            if not plan.scheduled and not self.running and not self.loading and self.waiting:
                # Only loaded-but-unstarted requests hold blocks and none fits: give their
                # blocks back (newest first) so that the head can run; they reload later.
                for req in reversed(self.waiting):
                    if req is not self.waiting[0] and req.blocks_held:
                        self._release_waiting(req)
                self._admit(plan, budget, now)
        return plan

    def _admit(self, plan: StepPlan, budget: int, now: float) -> int:
        """FCFS admission. A request takes its blocks all at once or not at all."""
        pool, bs = self.pool, self.bs
        skipped = []
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            req = self.waiting[0]
            if req.state is State.LOADING:
                skipped.append(self.waiting.popleft())
                continue
            if not req.looked_up:
                if req.blocked_at is not None and self._still_blocked(req):
                    break  # nothing that could let it in has changed since it last failed
                if not self._lookup(req, plan):
                    break  # its hit and first chunk do not fit yet (_lookup blocked it)
                self._unblock(req)
                if req.state is State.LOADING:  # an async load started; others may still fit
                    skipped.append(self.waiting.popleft())
                    continue
            n = min(req.known_tokens - req.num_computed, budget)
            need = blocks_for(req.num_computed + n, bs) - req.blocks_held
            if need > pool.free:
                # its hits are taken (a finished load, say): only more free blocks let it in
                req.blocked_at = (pool.free, need)
                break
            req.blocked_at = None
            self.waiting.popleft()
            pool.allocate(need)
            req.private_blocks += need
            req.state = State.RUNNING
            if req.admitted != req.admitted:  # NaN: first admission
                req.admitted = now
            self.running.append(req)
            plan.admitted += 1
            self._account(plan, req, n)
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _set_computed(self, req: Request, tokens: int) -> None:
        """Move num_computed, keeping the router's outstanding-token count in step."""
        p = req.prompt_tokens
        self.outstanding_tokens -= min(tokens, p) - min(req.num_computed, p)
        req.num_computed = tokens

    def _account(self, plan: StepPlan, req: Request, n: int) -> None:
        plan.scheduled.append((req, n))
        plan.tokens += n
        c = req.num_computed
        if req.known_tokens - c == 1 and req.num_output > 0:
            plan.decode_context += c + 1
        else:
            plan.prefill_units += n * (c + n / 2)

    def _lookup(self, req: Request, plan: StepPlan) -> bool:
        """Resolve prefix hits at (re)admission: HBM first, then the tier. Takes the hit
        blocks (and, for a load, the blocks it fills) only if they and the first chunk fit;
        returns False, holding nothing and blocked (see _block), if they do not."""
        pool, bs = self.pool, self.bs
        # At least one prompt token is always computed, so the last full block may not count.
        limit = min((req.known_tokens - 1) // bs, len(req.keys))
        tier = self.tier
        # Both indexes are walked per run of blocks; a re-probe skips the walk when nothing
        # was cached or evicted since the last (acquires, releases and touches change no match).
        # A blocked request's index still watching it (see _block) has its match unchanged.
        probe = req.probe
        blocked = req.blocked_at is not None and probe[2] == limit
        pool_state = (limit, pool.evictions, pool.promotions)
        if probe[2:5] == pool_state or (blocked and pool.watching(req)):
            hbm = probe[0]
        else:
            hbm = pool.match_prefix(req.keys, limit)
        tier_blocks = 0
        tier_state = (-1, -1)
        if tier is not None:
            plan.lookups += 1
            plan.lookup_keys += max(1, limit // tier.chunk_blocks)
            plan.lookup_chunks.append(limit // tier.chunk_blocks)
            tier_state = (tier.evictions, tier.inserted)
            if (probe[5:7] == tier_state and probe[2] == limit) or (blocked and tier.watching(req)):
                tier_blocks = probe[1]
                tier.lookups += 1  # the same lookup, answered from the last one
            else:
                tier_blocks = tier.match(req.keys, limit)
        req.probe = (hbm, tier_blocks, *pool_state, *tier_state)
        ext = max(0, tier_blocks - hbm)
        computed = (hbm + ext) * bs
        first = 0 if (ext and self.load_mode == "async") else min(req.known_tokens - computed, self.budget)
        need = blocks_for(computed + first, bs) - hbm
        free = pool.free
        # need > free fails even if every hit were held by others; hits nobody holds cost a
        # free block each, so count them only if that can decide
        if need > free or (need + hbm > free and need + pool.count_unreferenced(req.keys, hbm) > free):
            self._block(req, need)
            return False
        req.runs = pool.acquire_cached(req.keys, hbm)
        req.cached_blocks = hbm
        if req.preemptions == 0 and not req.handed_off:
            req.hbm_hit_tokens = hbm * bs
            req.tier_hit_tokens = ext * bs
        self._set_computed(req, hbm * bs)
        req.looked_up = True
        if ext:
            tier.touch(req.keys, hbm, ext)  # type: ignore
            pool.allocate(ext)
            req.private_blocks += ext
            plan.loads.append(Load(req, hbm, ext))
            if self.load_mode != "async":
                plan.in_step_loads = True
                self._loaded(req, hbm, ext)
            else:
                req.state = State.LOADING
                self.loading += 1
        return True

    def _block(self, req: Request, need: int) -> None:
        """Its admission failed. It is asked again only once something that could change
        the answer happened: free blocks grew to more than they were and at least to the
        blocks its hit and first chunk need, this instance evicted one of its cached hits or
        cached the block after them, or the tier stored the chunk after its matched prefix
        or evicted one of its matched chunks (both indexes watch for those, see
        BlockPool.watch and TierIndex.watch). vLLM asks again every step; an unchanged
        answer costs the model nothing."""
        req.blocked_at = (self.pool.free, need)
        self.pool.watch(req, req.probe[0])
        if self.tier is not None:
            self.tier.watch(req, req.probe[1] // self.tier.chunk_blocks)

    def _unblock(self, req: Request) -> None:
        if req.blocked_at is not None:
            req.blocked_at = None
            self.pool.unwatch(req)
            if self.tier is not None:
                self.tier.unwatch(req)

    def _still_blocked(self, req: Request) -> bool:
        """Would its admission fail again? While both watches hold, its hits and its need
        are what they were, and it fits exactly when its need plus its hits nobody holds
        (taking those costs free blocks) are free: fewer free blocks, or hits taken or
        given back by others (free blocks move with them), cannot let it in."""
        pool, tier = self.pool, self.tier
        if not pool.watching(req) or (tier is not None and not tier.watching(req)):
            return False
        free_then, need = req.blocked_at  # type: ignore
        free = pool.free
        if free <= free_then or need > free:
            return True
        hbm = req.probe[0]
        return need + hbm > free and need + pool.count_unreferenced(req.keys, hbm) > free

    def admission_stalled(self) -> bool:
        """Would the next step admit nothing unless something changes? True when every
        waiting request is loading, the sequence slots are all taken, or the first waiting
        request's admission failed and nothing that could change that happened."""
        return (len(self.waiting) == self.loading or len(self.running) >= self.max_seqs
                or self.blocked_head() is not None)

    def blocked_head(self) -> Request | None:
        """The first waiting request that is not loading, if its admission failed."""
        for req in self.waiting:
            if req.state is not State.LOADING:
                return req if req.blocked_at is not None else None
        return None

    def _release_waiting(self, req: Request) -> None:
        self.pool.release(req.keys, req.runs, req.private_blocks)
        req.runs = []
        req.cached_blocks = 0
        req.private_blocks = 0
        self._set_computed(req, 0)
        req.looked_up = False

    def _loaded(self, req: Request, first: int, n: int) -> None:
        self._promote(req, first, first + n)
        self._set_computed(req, (first + n) * self.bs)

    def _promote(self, req: Request, first: int, end: int) -> None:
        """Prompt blocks [first, end) now hold computed KV: cache them."""
        new = self.pool.promote(req.keys, first, end, req)
        if new:
            n = sum(b - a for a, b in new)
            req.runs.extend(new)
            req.cached_blocks += n
            req.private_blocks -= n

    def load_done(self, load: Load) -> None:
        """An async load finished: the request may run from the next step on."""
        req = load.request
        self._loaded(req, load.first_block, load.num_blocks)
        req.state = State.WAITING
        self.loading -= 1

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release_waiting(req)
        req.preemptions += 1
        req.state = State.WAITING
        self.waiting.appendleft(req)

    # -- after a step ----------------------------------------------------------------------
    def step_done(self, plan: StepPlan, now: float) -> tuple[list[Request], list[Request], list[Save]]:
        """Apply a finished step. Returns (first-token requests, finished requests, saves)."""
        firsts, finished, saves = [], [], []
        bs = self.bs
        running = State.RUNNING
        for req, n in plan.scheduled:
            if req.state is not running:
                continue
            before = req.num_computed
            p = req.prompt_tokens
            computed = req.num_computed = before + n
            if before < p:  # _set_computed: only prompt tokens count as outstanding
                self.outstanding_tokens -= (computed if computed < p else p) - before
            if computed >= p + req.num_output:
                req.num_output += 1
                self.outstanding_tokens -= 1
                if req.num_output == 1:
                    req.first_token = now
                    firsts.append(req)
            if before >= p:  # decoding: no prompt block became full
                if req.num_output >= req.output_tokens or (req.prefill_only and req.num_output >= 1):
                    self._finish(req, now)
                    finished.append(req)
                continue
            # Cache the prompt blocks that just became full.
            full = min(computed, p) // bs
            done = before // bs
            if full > done:
                self._promote(req, done, full)
                if self.save_enabled:
                    save = self._save_for(req, full)
                    if save is not None:
                        saves.append(save)
            if req.num_output >= req.output_tokens or (req.prefill_only and req.num_output >= 1):
                self._finish(req, now)
                finished.append(req)
        return firsts, finished, saves

    def _save_for(self, req: Request, full_blocks: int) -> Save | None:
        tier = self.tier
        upto_chunk = full_blocks // tier.chunk_blocks  # type: ignore
        if upto_chunk <= req.saved_chunks:
            return None
        wanted = tier.begin_wanted(req.keys, full_blocks, req.saved_chunks, req)  # type: ignore
        req.saved_chunks = upto_chunk
        if wanted is None:
            return None
        req.saves_in_flight += 1
        idx, keys, run = wanted
        return Save(req, idx, keys, tier_run=run)

    def save_done(self, save: Save) -> bool:
        """A save landed (the tier was updated by the caller). Returns True if it freed the
        blocks of a finished request that was holding them for it."""
        req = save.request
        req.saves_in_flight -= 1
        if req.saves_in_flight or req.state is not State.FINISHED or req not in self.held:
            return False
        del self.held[req]
        self._free(req)
        return True

    def _finish(self, req: Request, now: float) -> None:
        self.running.remove(req)
        # a disaggregated prefill leaves its decode tokens to another instance
        self.outstanding_tokens -= req.output_tokens - req.num_output
        req.state = State.FINISHED
        req.finish = now
        if self.hold_until_saved and req.saves_in_flight:
            self.held[req] = None
        else:
            self._free(req)

    def _free(self, req: Request) -> None:
        self.pool.release(req.keys, req.runs, req.private_blocks)
        req.runs = []
        req.cached_blocks = 0
        req.private_blocks = 0

    # -- many decode steps at once -----------------------------------------------------------
    def decode_horizon(self, max_steps: int) -> int:
        """How many pure-decode steps (the first already planned and allocated) can run
        before anything but the context lengths changes: a finish, or running out of blocks.
        With a blocked request waiting, also no eviction of its cached hits: that could let
        it in."""
        running = self.running
        if not running:
            return 0
        k = max_steps
        for r in running:  # remaining_outputs, inlined
            left = r.output_tokens - r.num_output
            if left < k:
                k = left
        if k <= 1:
            return 1
        pool, bs = self.pool, self.bs
        # Blocks beyond what step 1 already allocated, for m steps in all:
        # sum_r ceil((c_r + m) / bs) - held_r. With c_r = q_r bs + s_r (0 <= s_r < bs) and
        # m >= 1, ceil((c_r + m) / bs) = q_r + 1 + (s_r + m - 1) // bs, and (s_r + m - 1) // bs
        # is (m - 1) // bs plus one where s_r >= bs - (m - 1) % bs: a count in sorted s_r.
        base = 0
        rems = []
        for r in running:
            c = r.num_computed
            base += c // bs + 1 - r.cached_blocks - r.private_blocks
            rems.append(c % bs)
        rems.sort()
        batch = len(rems)

        def extra_blocks(m: int) -> int:
            wrap, part = divmod(m - 1, bs)
            return base + batch * wrap + batch - bisect_left(rems, bs - part)

        need = extra_blocks(k)
        free = pool.free
        head = self.blocked_head()
        if head is not None and need > pool.empty:
            # empty blocks, then the LRU's oldest up to the first of the head's cached hits
            free = pool.empty + pool.evictable_sparing(head.keys, head.probe[0], need - pool.empty)
        if need <= free:
            return k
        lo, hi = 1, k  # extra_blocks(1) == 0 <= free
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if extra_blocks(mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def advance_decode(self, plan: StepPlan, steps: int, now: float) -> list[Request]:
        """Apply the first `steps` pure-decode steps of `plan`'s batch (those not applied
        yet: an executor may apply a stretch's steps as they end, for an observer such as
        the router); returns the finished requests. Every request takes its blocks before
        any finishes, as stepping one at a time would."""
        bs, pool = self.bs, self.pool
        todo = steps - plan.decode_applied
        plan.decode_applied = steps
        if todo <= 0:
            return []
        batch = [req for req, _n in plan.scheduled]
        if steps > 1:  # the first step's blocks were allocated when it was planned
            # One allocation for the batch: evicting the same total at once takes the same
            # blocks, oldest first, as one request after another would (decode_horizon
            # checked that they fit).
            total = 0
            for req in batch:
                need = -(-(req.num_computed + todo) // bs) - req.cached_blocks - req.private_blocks
                if need > 0:
                    total += need
                req.private_blocks += need
            pool.allocate(total)
        finished = []
        for req in batch:
            req.num_computed += todo
            req.num_output += todo
            self.outstanding_tokens -= todo  # context growth is past the prompt: only outputs count
            if req.num_output >= req.output_tokens:
                self._finish(req, now)
                finished.append(req)
        return finished

    def clear_cache(self) -> None:
        self.pool.clear_cache()

    def check(self) -> None:
        self.pool.check()
        blocked = {id(r) for r in self.waiting if r.blocked_at is not None}
        if any(id(r) not in blocked for r in self.pool.watched()):
            raise AssertionError("the block pool watches a request that is not blocked in the waiting queue")
        live = list(self.running) + list(self.waiting) + list(self.held)
        private = sum(r.private_blocks for r in live)
        refs = sum(r.cached_blocks for r in live)
        pool_refs = held = 0
        for node in self.pool.nodes():
            pool_refs += node.ref * len(node.keys)
            held += len(node.keys) if node.ref else 0
        if refs != pool_refs or refs != sum(b - a for r in live for a, b in r.runs):
            raise AssertionError(f"cached-block references: requests hold {refs}, the pool counts {pool_refs}")
        if private + held != self.pool.in_use:
            raise AssertionError(f"KV blocks leaked: requests hold {private} private + "
                                 f"{held} cached, the pool counts {self.pool.in_use}")
