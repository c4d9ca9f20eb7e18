"""The software stages of a serving stack around each tier lookup, load and save.

A stage costs a fixed time per call (one request's lookup, load or save) or per object (a
tier chunk), plus bytes at a rate: the KV it copies or serialises, or the token ids it
hashes. Figures come from the stack card (models/stacks/), rates named `host-memcpy` and
`host-sha256` from the host card (which a calibration profile can replace).

Lookups run in the scheduler and block the step (as vLLM's get_num_new_matched_tokens does).
Loads and saves run their stages on the instance's connector threads, a resource of the event kernel that
queues when busy; the wire time stays in the fabric.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from belusim.config.scenario import GB, HostCard, StackCard, StageConfig
from belusim.sim.kernel import Environment, Resource

TOKEN_ID_BYTES = 4  # token ids hashed as int32 (LMCache's token tensors; vLLM issue 29261)


@dataclass
class StageStats:
    calls: dict = field(default_factory=dict)  # stage -> calls started
    done: dict = field(default_factory=dict)  # stage -> calls finished
    seconds: dict = field(default_factory=dict)  # stage -> busy seconds
    thread_wait_s: float = 0.0

    def add(self, name: str, seconds: float, finished: bool) -> None:
        book = self.done if finished else self.calls
        book[name] = book.get(name, 0) + 1
        if finished:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class SoftwareStages:
    def __init__(self, env: Environment, stack: StackCard | None, host: HostCard,
                 chunk_tokens: int, chunk_bytes: float):
        self.env = env
        self.stack = stack
        self.chunk_tokens = chunk_tokens
        self.chunk_bytes = chunk_bytes
        self.threads = stack.threads if stack else 1
        self._rate = {"host-memcpy": host.memcpy_gbps, "host-sha256": host.sha256_gbps}
        stages = stack.stages if stack else []
        self.by_op: dict[str, list[StageConfig]] = {
            op: [s for s in stages if op in s.ops] for op in ("lookup", "load", "save")
        }
        self.stats = StageStats()

    def new_thread(self) -> Resource:
        return Resource(self.env, capacity=self.threads)

    def _gbps(self, st: StageConfig) -> float | None:
        return self._rate[st.gbps] if isinstance(st.gbps, str) else st.gbps

    def costs(self, op: str, chunks: int, nbytes: float = 0.0) -> list[tuple[str, float]]:
        """(stage, seconds) for one request's `op` over `chunks` objects (`nbytes` of KV)."""
        out = []
        for st in self.by_op[op]:
            t = st.fixed_us * 1e-6 * (1 if st.per == "call" else chunks)
            gbps = self._gbps(st)
            if gbps is not None and self.chunk_bytes > st.min_object_kb * 1024:
                if st.bytes_of == "kv":
                    b: float = nbytes
                elif st.bytes_of == "token-ids":
                    b = float(chunks * self.chunk_tokens * TOKEN_ID_BYTES)
                else:  # every chunk's whole prefix: c x (1 + 2 + ... + n) tokens
                    b = self.chunk_tokens * chunks * (chunks + 1) / 2 * TOKEN_ID_BYTES
                t += b / (gbps * GB)
            out.append((st.name, t))
        return out

    def lookup_time(self, chunks_per_lookup: list[int]) -> float:
        """Seconds of the scheduler-side stages of the lookups done in one step."""
        if not self.by_op["lookup"]:
            return 0.0
        total = 0.0
        for n in chunks_per_lookup:
            for name, t in self.costs("lookup", n):
                self.stats.add(name, t, False)
                self.stats.add(name, t, True)
                total += t
        return total

    def run(self, thread: Resource, op: str, chunks: int, nbytes: float):
        """Run one request's load or save stages on a connector thread (a process generator).
        Returns (seconds waiting for the thread, seconds in stages)."""
        costs = self.costs(op, chunks, nbytes)
        if not costs:
            return 0.0, 0.0
        env = self.env
        t0 = env.now
        with thread.request() as req:
            yield req
            wait = env.now - t0
            self.stats.thread_wait_s += wait
            busy = 0.0
            for name, t in costs:
                self.stats.add(name, t, False)
                yield env.timeout(t)
                self.stats.add(name, t, True)
                busy += t
        return wait, busy

    def check(self) -> None:
        """Every stage call that started finished."""
        if self.stats.calls != self.stats.done:
            raise AssertionError(f"software stages started {self.stats.calls} but finished {self.stats.done}")
