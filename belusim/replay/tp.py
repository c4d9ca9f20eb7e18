"""Tensor-parallel replay: one policy loop, one worker process per rank.

As vLLM's multiprocess executor runs a TP instance: the engine core (here the driver, the
process that runs replay/engine.py's step loop, scheduler, block pool and connector) plans
each step once and broadcasts it to every rank (vLLM: the SchedulerOutput through a shared
message queue); each rank holds its shard of the model (q heads, KV heads, MLP columns/rows
and LM-head vocabulary split by TP), its own paged KV cache of its heads, and its own share of
every pool block, and all-reduces the activations twice per layer (CUDA backend: NCCL through
torch.distributed, captured in the decode CUDA graphs). Every tier load and save runs on every
rank at once, each rank moving its 1/TP of the block's bytes, as each vLLM worker moves its
own shard through its connector (the simulator's TP transfer model: transport/kvpath.py).

Messages (pickled over one multiprocessing pipe per rank):
  driver -> rank: ("compute", seqs, plan), ("load"|"save", id, gpu_blocks, slots, chunk_blocks),
                  ("sync",), ("close",)
  rank -> driver: ("ready", info), ("ok", payload), ("landed", id, blocks_verified or error,
                  landed_at), ("error", text)
A rank reports a transfer as landed when its copies are done and (loads) its checksums hold,
so the driver learns of landings without asking. The driver waits on every reply with a
deadline and checks that every rank is alive: a rank that raises, dies or stops answering
ends the replay with an error that names it, and the other ranks are stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field

# NCCL_ENV: NVLink multicast (NVLS) stays off in every rank's NCCL, whatever the parent set
# (a program that uses it can take a host's GPUs out of service)
from belusim.calibration.allreduce import NCCL_ENV, free_port
from belusim.policy.scheduler import StepPlan
from belusim.replay.emulated import ChecksumError


class RankError(RuntimeError):
    """A tensor-parallel rank failed, died or stopped answering."""


@dataclass
class TPOptions:
    setup_timeout_s: float = 900.0  # building weights, capturing graphs, first NCCL calls
    step_timeout_s: float = 300.0  # one step, one sync
    collective_timeout_s: float = 120.0  # torch.distributed's own deadline for a collective
    poll_s: float = 50e-6  # how often a rank with transfers in flight checks them


def make_rank_backend(kind: str, scenario, system, kv_blocks: int, pool_spec, rank: int, tp: int, comm):
    """The backend of one rank (the default factory; tests pass their own)."""
    if kind == "emulated":
        from belusim.replay.emulated import EmulatedBackend

        return EmulatedBackend(scenario, system, kv_blocks, pool_spec, rank=rank, tp=tp)
    if kind == "cuda":
        from belusim.replay.cuda import CudaBackend

        b = CudaBackend(scenario, system, kv_blocks, pool_spec, rank=rank, tp=tp, all_reduce=comm.all_reduce,
                        cuda_graphs=comm.capture_ok)
        if not comm.capture_ok:
            b.info["decode_cuda_graphs"] = f"off: the NCCL all-reduce could not be captured ({comm.capture_error})"
        return b
    raise ValueError(f"backend {kind!r}: expected cuda or emulated")


class _NcclComm:
    """torch.distributed over NCCL, one GPU per process (the process sees only its own GPU)."""

    def __init__(self, rank: int, tp: int, addr: str, timeout_s: float):
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        torch.cuda.set_device(0)
        dist.init_process_group("nccl", init_method=addr, rank=rank, world_size=tp,
                                timeout=timedelta(seconds=timeout_s), device_id=torch.device("cuda", 0))
        self.dist, self.torch = dist, torch
        t = torch.full((1024,), float(rank + 1), device="cuda")
        dist.all_reduce(t)  # the communicator is made here, outside any graph capture
        torch.cuda.synchronize()
        want = tp * (tp + 1) / 2
        if float(t[0]) != want:
            raise RankError(f"rank {rank}: a first NCCL all-reduce gave {float(t[0])}, expected {want}")
        self.capture_ok, self.capture_error = self._check_capture(t, rank, want)

    def _check_capture(self, t, rank: int, want: float):
        """Can an all-reduce be captured in a CUDA graph and replayed, leaving the communicator
        fit for eager calls? (PyTorch supports it since pytorch/pytorch#103503.) Each replay
        must sum afresh."""
        torch, dist = self.torch, self.dist
        try:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.graph(g, stream=s):
                dist.all_reduce(t)
            for _ in range(3):
                t.fill_(float(rank + 1))
                g.replay()
                torch.cuda.synchronize()
                if float(t[0]) != want:
                    return False, f"a replayed all-reduce gave {float(t[0])}, expected {want}"
            t.fill_(float(rank + 1))
            dist.all_reduce(t)
            torch.cuda.synchronize()
            if float(t[0]) != want:
                return False, f"an eager all-reduce after graph replays gave {float(t[0])}, expected {want}"
            return True, None
        except Exception as e:
            return False, f"{type(e).__name__}: {e}"

    def all_reduce(self, t) -> None:
        self.dist.all_reduce(t)

    def close(self) -> None:
        # no destroy_process_group(): with the decode graphs holding captured NCCL calls it
        # blocked for minutes on the H200 pair; the rank process exits right after this
        pass


class _NoComm:
    """Ranks that exchange nothing among themselves (the emulated backend waits the compute
    model's time, which includes the all-reduces)."""

    def all_reduce(self, t) -> None:  # pragma: no cover - never called by the emulated backend
        raise RuntimeError("no collective backend on this rank")

    def close(self) -> None:
        pass


def _rank_main(rank: int, tp: int, conn, kind: str, scenario, system, kv_blocks: int, pool_spec,
               addr: str, opts: TPOptions, factory) -> None:
    """One rank: build its backend, then serve the driver's messages until told to close."""
    for k, v in NCCL_ENV.items():
        os.environ[k] = v
    if kind == "cuda":
        # before CUDA starts in this process: the rank sees its own GPU as device 0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)
    comm = backend = None
    try:
        comm = _NcclComm(rank, tp, addr, opts.collective_timeout_s) if kind == "cuda" else _NoComm()
        backend = factory(kind, scenario, system, kv_blocks, pool_spec, rank, tp, comm)
        conn.send(("ready", {"num_gpu_blocks": backend.num_gpu_blocks, "num_pool_chunks": backend.num_pool_chunks,
                             "description": getattr(backend, "description", kind),
                             "info": getattr(backend, "info", {})}))
        pending: dict[int, tuple[str, object]] = {}
        while True:
            if pending:
                has = conn.poll(opts.poll_s)
            else:
                has = True  # block in recv
            if has:
                msg = conn.recv()
                op = msg[0]
                if op == "compute":
                    t0 = time.perf_counter()
                    backend.compute(msg[1], msg[2])
                    conn.send(("ok", {"step_s": time.perf_counter() - t0,
                                      "issue_s": getattr(backend, "last_issue_s", None)}))
                elif op in ("load", "save"):
                    _op, tid, gpu_blocks, slots, chunk_blocks = msg
                    h = getattr(backend, op)(gpu_blocks, slots, chunk_blocks)
                    pending[tid] = (op, h)
                elif op == "sync":
                    for tid, (top, h) in list(pending.items()):
                        backend.wait(h)
                    _report_landed(backend, pending, conn, rank, wait=True)
                    backend.sync()
                    conn.send(("ok", None))
                elif op == "close":
                    break
                else:
                    raise RankError(f"rank {rank}: unknown message {op!r}")
            if pending:
                _report_landed(backend, pending, conn, rank)
    except (EOFError, BrokenPipeError):
        pass  # the driver went away: nothing to report to
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the driver
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"))
        except Exception:
            pass
    finally:
        if backend is not None:
            try:
                backend.close()
            except Exception:
                pass
        if comm is not None:
            comm.close()
        conn.close()


def _report_landed(backend, pending: dict, conn, rank: int, wait: bool = False) -> None:
    for tid, (op, h) in list(pending.items()):
        if not (wait or backend.done(h)):
            continue
        del pending[tid]
        # when its copies ended (the backend's copy-stream clock where it has one); perf_counter
        # is CLOCK_MONOTONIC, one clock for every process of the machine
        at = backend.landed_at(h) if hasattr(backend, "landed_at") else time.perf_counter()
        if op == "load":
            try:
                n = backend.verify_load(h)
            except ChecksumError as e:
                conn.send(("landed", tid, f"rank {rank}: {e}", at))
                continue
        else:
            backend.finish_save(h)
            n = 0
        conn.send(("landed", tid, n, at))


@dataclass
class _Handle:
    tid: int
    n: int
    landed: set = field(default_factory=set)
    verified: int = 0
    error: str | None = None
    at: float = 0.0  # when the last rank's share landed (perf_counter seconds)


class TPBackend:
    """The driver's side: the replay's backend interface, fanned out to TP rank processes."""

    def __init__(self, kind: str, scenario, system, kv_blocks: int, pool_spec, opts: TPOptions | None = None,
                 factory=make_rank_backend, progress=None):
        self.tp = tp = scenario.cluster.tensor_parallel
        if tp < 2:
            raise ValueError("TPBackend runs tensor_parallel >= 2")
        self.kind, self.opts = kind, opts or TPOptions()
        self.name = f"{kind}-tp{tp}"
        if kind == "cuda":
            _check_gpus(tp)
        ctx = mp.get_context("spawn")
        addr = f"tcp://127.0.0.1:{free_port()}"
        self.conns, self.procs = [], []
        self._handles: dict[int, _Handle] = {}
        self._next = 0
        self._closed = False
        try:
            for r in range(tp):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_rank_main, name=f"belusim-tp-rank{r}", daemon=True,
                                args=(r, tp, child, kind, scenario, system, kv_blocks, pool_spec, addr, self.opts,
                                      factory))
                p.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(p)
            if progress:
                progress(f"{system.name}: starting {tp} tensor-parallel ranks ({kind})")
            ready = [self._expect(r, "ready", self.opts.setup_timeout_s) for r in range(tp)]
        except BaseException:
            self.close()
            raise
        first = ready[0]
        for r, rd in enumerate(ready):
            for k in ("num_gpu_blocks", "num_pool_chunks"):
                if rd[k] != first[k]:
                    self.close()
                    raise RankError(f"ranks disagree on {k}: rank 0 has {first[k]}, rank {r} has {rd[k]}")
        self.num_gpu_blocks = first["num_gpu_blocks"]
        self.num_pool_chunks = first["num_pool_chunks"]
        self.rank_info = [rd["info"] for rd in ready]
        self.info = dict(first["info"])
        self.info["tensor_parallel"] = tp
        self.info["ranks"] = [{k: v for k, v in rd["info"].items() if k in ("gpu", "decode_cuda_graphs", "pool")}
                              for rd in ready]
        self.description = (f"{tp} tensor-parallel ranks, one process each, steps broadcast from one policy loop; "
                            f"rank 0: {first['description']}")
        self.step_rank_s: list[list[float]] = []

    # -- messages ------------------------------------------------------------------------
    def _send_all(self, msg) -> None:
        for r, c in enumerate(self.conns):
            try:
                c.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                self._fail(r, "its pipe closed")

    def _fail(self, r: int, why: str, text: str | None = None):
        p = self.procs[r]
        if why == "died":
            p.join(5)  # its pipe can close before it is reaped
        code = p.exitcode
        detail = f" (exit code {code})" if code is not None else ""
        msg = f"tensor-parallel rank {r} {why}{detail}"
        if text:
            msg += f": {text.strip()}"
        self.close(grace_s=2.0)
        raise RankError(msg)

    def _take(self, r: int, timeout: float):
        """The next message from rank r that is not a landing (landings are filed)."""
        c = self.conns[r]
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                self._fail(r, f"did not answer within {timeout:.0f} s")
            try:
                ready = c.poll(min(left, 0.5))
            except (EOFError, OSError):
                ready = True
            if not ready:
                if not self.procs[r].is_alive():
                    self._drain_error(r)
                    self._fail(r, "died")
                continue
            try:
                msg = c.recv()
            except (EOFError, OSError):
                self._fail(r, "died")
            if msg[0] == "landed":
                self._file(r, msg)
                continue
            if msg[0] == "error":
                self._fail(r, "failed", msg[1])
            return msg

    def _drain_error(self, r: int) -> None:
        c = self.conns[r]
        try:
            while c.poll(0):
                msg = c.recv()
                if msg[0] == "error":
                    self._fail(r, "failed", msg[1])
        except (EOFError, OSError):
            pass

    def _expect(self, r: int, tag: str, timeout: float):
        msg = self._take(r, timeout)
        if msg[0] != tag:
            self._fail(r, f"answered {msg[0]!r} where {tag!r} was due")
        return msg[1]

    def _file(self, r: int, msg) -> None:
        _tag, tid, res, at = msg
        h = self._handles.get(tid)
        if h is None:
            return
        h.landed.add(r)
        h.at = max(h.at, at)
        if isinstance(res, str):
            h.error = h.error or res
        else:
            h.verified = max(h.verified, res)

    def _pump(self) -> None:
        for r, c in enumerate(self.conns):
            try:
                while c.poll(0):
                    msg = c.recv()
                    if msg[0] == "landed":
                        self._file(r, msg)
                    elif msg[0] == "error":
                        self._fail(r, "failed", msg[1])
                    else:
                        self._fail(r, f"sent {msg[0]!r} unasked")
            except (EOFError, OSError):
                self._fail(r, "died")

    # -- the replay's backend interface ----------------------------------------------------
    def compute(self, seqs, plan) -> None:
        # the step's plan as the ranks need it: block tables and token counts, no request objects
        sent = StepPlan(scheduled=[(None, n) for _t, _c, n in seqs], tokens=plan.tokens,
                        prefill_units=plan.prefill_units, decode_context=plan.decode_context)
        self._send_all(("compute", seqs, sent))
        replies = [self._expect(r, "ok", self.opts.step_timeout_s) for r in range(self.tp)]
        self.step_rank_s.append([rp["step_s"] for rp in replies])
        self.last_issue_s = replies[0].get("issue_s")

    def _transfer(self, op: str, gpu_blocks, slots, chunk_blocks) -> _Handle:
        tid = self._next
        self._next += 1
        h = self._handles[tid] = _Handle(tid, len(gpu_blocks))
        self._send_all((op, tid, list(gpu_blocks), list(slots), chunk_blocks))
        return h

    def load(self, gpu_blocks, slots, chunk_blocks) -> _Handle:
        return self._transfer("load", gpu_blocks, slots, chunk_blocks)

    def save(self, gpu_blocks, slots, chunk_blocks) -> _Handle:
        return self._transfer("save", gpu_blocks, slots, chunk_blocks)

    def done(self, h: _Handle) -> bool:
        if len(h.landed) < self.tp:
            self._pump()
        return len(h.landed) == self.tp

    def wait(self, h: _Handle) -> None:
        deadline = time.perf_counter() + self.opts.step_timeout_s
        while not self.done(h):
            if time.perf_counter() > deadline:
                missing = sorted(set(range(self.tp)) - h.landed)
                self._fail(missing[0], f"did not finish a transfer within {self.opts.step_timeout_s:.0f} s")
            for r in set(range(self.tp)) - h.landed:
                if not self.procs[r].is_alive():
                    self._drain_error(r)
                    self._fail(r, "died")
            time.sleep(self.opts.poll_s)

    def landed_at(self, h: _Handle) -> float:
        """A transfer lands when every rank's share has."""
        return h.at

    def verify_load(self, h: _Handle) -> int:
        self._handles.pop(h.tid, None)
        if h.error:
            raise ChecksumError(h.error)
        return h.verified

    def finish_save(self, h: _Handle) -> None:
        self._handles.pop(h.tid, None)

    def sync(self) -> None:
        self._send_all(("sync",))
        for r in range(self.tp):
            self._expect(r, "ok", self.opts.step_timeout_s)

    def close(self, grace_s: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        for c in self.conns:
            try:
                c.send(("close",))
            except Exception:
                pass
        deadline = time.perf_counter() + grace_s
        for p in self.procs:
            p.join(max(0.1, deadline - time.perf_counter()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for c in self.conns:
            c.close()


def _check_gpus(tp: int) -> None:
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"--backend cuda needs PyTorch with CUDA GPUs ({e})") from None
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < tp:
        raise RuntimeError(f"--backend cuda at tensor_parallel={tp} needs {tp} GPUs; {n} visible "
                           "(use --backend emulated, or a machine with more GPUs)")
