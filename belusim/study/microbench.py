"""Transfer-level studies: one KV transfer at a time, timed through the simulator's own paths.

Three studies (docs/microbench.md says what each computes and every assumption):

* `transfer_study` -- one system, one model, one direction, N tokens, K concurrent identical
  transfers from different GPUs (to show queueing on shared links).
* `dense_study` -- the paper's "dense KV transfer latency per model": a store and a load of
  one request's KV (8,192 tokens by default) for several models on the CXL pool, the RDMA
  pool (bounce buffer, 256-token chunks) and local DRAM.
* `sparse_study` -- the paper's "sparse KV loads": 16 tokens' worth of selected KV as many
  small non-contiguous pieces, computed in closed form from the same cards, with the path
  rates taken from the simulator's fabric.

Dense transfers run through `KVPaths.load` / `KVPaths.save` on a fresh SimPy environment, so
every number comes from the cards and the fabric. The latency of a transfer is broken down
additively:

    latency = launch + coherence + rpc + cpu + access + wire + queueing

* launch, coherence, rpc, cpu, access: what each fixed cost adds to the latency, i.e. how
  much sooner the transfer would finish if that cost were zero (the same run repeated with
  that one cost zeroed). For a serial path this equals the cost charged (the deltas of
  `KVPaths.stats.breakdown`); a cost that overlaps data movement -- the RDMA connector
  thread posting work requests while the NIC moves earlier ones -- adds only its exposed
  part. The charged CPU work is reported separately as `cpu_work_ms`. Each part is kept
  between zero and the cost charged: with concurrent transfers, removing a cost can also
  reshuffle the contention, and that share stays in queueing.
* access: the fixed path latencies (CXL switch access, DRAM + PCIe switch hop, NIC one-sided
  op + network switch).
* wire: bytes over the bottleneck link of the path when the transfer runs alone, i.e. the
  largest (bytes carried / capacity) over the links of a lone run; `bottleneck` names it.
* queueing: the rest -- contention with the other concurrent transfers, pipeline fill and
  drain of the two-step RDMA path, imbalance between parallel flows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable


from belusim.config.scenario import GB, KVSystemConfig, LLMCard, Scenario, SystemConfig, load_card
from belusim.transport.fabric import Link
from belusim.transport.kvpath import KB16, GPUPlace, KVPaths
from belusim.policy.request import Request
from belusim.policy.scheduler import Load, Save
from belusim.sim.kernel import Environment

TRANSFER_KINDS = ("cxl-pool", "rdma-pool", "local-dram")

# KV systems used where a scenario has none of a kind (the quickstart's settings).
DEFAULT_KV: dict[str, dict] = {
    "cxl-pool": {"kind": "cxl-pool", "chunk_tokens": 16, "copy_method": "gather-kernel",
                 "coherence": "uncacheable", "interleave": True},
    "rdma-pool": {"kind": "rdma-pool", "chunk_tokens": 256, "copy_method": "gather-kernel"},
    "local-dram": {"kind": "local-dram", "chunk_tokens": 16, "copy_method": "gather-kernel"},
}

DENSE_MODELS = ("qwen3-32b", "llama-3.1-8b", "qwen3-32b-fp8")
SPARSE_MODELS = ("llama-3.1-8b", "qwen3-32b")
DIRECTIONS = ("store", "load")

# The breakdown, in the order it is printed; they sum to latency_ms.
BREAKDOWN = ("launch", "coherence", "rpc", "cpu", "access", "wire", "queueing")

# Sparse-load assumptions (docs/microbench.md explains each).
SPARSE_TOKENS = 16
SPARSE_PIECE_BYTES = 144.0  # midpoint of the paper's 128-160 B pieces
SPARSE_CONTIGUOUS_FRACTION = 0.26  # the paper: more than 74% of selected tokens non-contiguous
SPARSE_OUTSTANDING_READS = 64  # piece reads in flight for the whole gather kernel
SPARSE_SEQ_TOKENS = 7942  # the selection's context (descriptive: enters no formula)
SPARSE_TOP_K = 256  # tokens selected per head per layer (descriptive)
CACHE_LINE = 64


class MicrobenchError(ValueError):
    """A study that cannot run with these arguments; the message says why."""


# --------------------------------------------------------------------------- inputs


def pick_system(sc: Scenario, which: str) -> SystemConfig:
    """A system of the scenario by name, else the first of that kind, else the default of that kind."""
    for s in sc.systems:
        if s.name == which:
            if s.kv.kind not in TRANSFER_KINDS:
                raise MicrobenchError(f"system {which!r} is {s.kv.kind!r}: it has no external KV tier to transfer to")
            return s
    for s in sc.systems:
        if s.kv.kind == which:
            return s
    if which in DEFAULT_KV:
        return SystemConfig(name=which, kv=KVSystemConfig(**DEFAULT_KV[which]),
                            description="microbench default (the scenario has no system of this kind)")
    names = [s.name for s in sc.systems if s.kv.kind in TRANSFER_KINDS]
    raise MicrobenchError(f"no system {which!r}: give a system name of the scenario {names} or a kind {list(TRANSFER_KINDS)}")


def with_model(sc: Scenario, model: str | LLMCard | None) -> Scenario:
    """The scenario with another model card (an id of models/llms or a card); None keeps it."""
    if model is None:
        return sc
    card = model if isinstance(model, LLMCard) else load_card("llms", model)
    if card.id == sc.model.id:
        return sc
    return sc.model_copy(update={"model": card})


# --------------------------------------------------------------------------- one simulated run


@dataclass
class _Run:
    latencies: list[float]  # seconds, one per concurrent transfer
    charged: dict  # KVPaths.stats.breakdown per transfer (seconds)
    work_requests: float  # per transfer
    rpc_calls: float  # per transfer
    links: dict[str, Link]
    nblocks: int
    nbytes: float

    @property
    def mean(self) -> float:
        return sum(self.latencies) / len(self.latencies)


def _order_places(paths: KVPaths, sc: Scenario, placement: str) -> list[GPUPlace]:
    places = list(paths.places)
    if placement == "packed":
        return places
    if placement == "spread":
        per = sc.cluster.gpus_per_pcie_switch
        # one GPU per PCIe switch first, over every server, then the second of each switch ...
        return sorted(places, key=lambda p: (p.gpu % per, p.server, p.pcie_switch))
    raise MicrobenchError(f"placement must be 'packed' or 'spread', got {placement!r}")


def transfer_blocks(sc: Scenario, kv: KVSystemConfig, tokens: int) -> int:
    """Engine blocks moved for `tokens`: rounded up to whole tier chunks (the tier's unit)."""
    if tokens <= 0:
        raise MicrobenchError(f"tokens must be positive, got {tokens}")
    bs = sc.engine.block_size
    chunk = max(1, kv.chunk_tokens // bs)
    nblocks = -(-tokens // bs)
    return -(-nblocks // chunk) * chunk


def _keys_for(i: int, nblocks: int, home: int, servers: int) -> list[int]:
    """Disjoint keys per transfer, all congruent to `home` modulo the servers: KVPaths puts an
    RDMA batch on server key % servers for one of its keys, so any such key puts it on `home`."""
    base = i * servers * (nblocks + 1) + home
    return [base + j * servers for j in range(nblocks)]


def _simulate(sc: Scenario, kv: KVSystemConfig, direction: str, tokens: int, concurrency: int = 1,
              placement: str = "packed", lookup: bool = False) -> _Run:
    if direction not in DIRECTIONS:
        raise MicrobenchError(f"direction must be 'store' or 'load', got {direction!r}")
    if kv.kind not in TRANSFER_KINDS:
        raise MicrobenchError(f"KV system kind {kv.kind!r} has no external tier to transfer to")
    if concurrency < 1:
        raise MicrobenchError(f"concurrency must be at least 1, got {concurrency}")
    env = Environment()
    paths = KVPaths(env, sc, kv)
    places = _order_places(paths, sc, placement)
    if concurrency > len(places):
        raise MicrobenchError(f"concurrency {concurrency} needs that many GPUs; the scenario's cluster has {len(places)}")
    nblocks = transfer_blocks(sc, kv, tokens)
    chunk = paths._chunk_blocks
    servers = sc.cluster.servers
    latencies = [math.nan] * concurrency

    def one(i: int, place: GPUPlace):
        # a remote pool: the batch's home is the next server (the same one if there is one)
        keys = _keys_for(i, nblocks, (place.server + 1) % servers, servers)
        req = Request(i, nblocks * sc.engine.block_size + 1, 1, keys, 0.0)
        t0 = env.now
        if direction == "load":
            if lookup:
                yield env.timeout(paths.lookup_time(1, nblocks, env.now))
            yield from paths.load(place, Load(req, 0, nblocks))
        else:
            idx = list(range(nblocks // chunk))
            yield from paths.save(place, Save(req, idx, [keys[(c + 1) * chunk - 1] for c in idx]))
        latencies[i] = env.now - t0

    for i in range(concurrency):
        env.process(one(i, places[i]))
    env.run()
    st = paths.stats
    return _Run(latencies, {k: v / concurrency for k, v in st.breakdown.items()}, st.work_requests / concurrency,
                st.rpc_calls / concurrency, paths.fabric.links, nblocks, nblocks * paths.block_bytes)


# counterfactuals: the scenario and KV system with one fixed cost set to zero. model_copy does
# not validate, which lets a latency that the cards require to be positive become 0.


def _upd(model, **kw):
    return model.model_copy(update=kw)


def _no_launch(sc: Scenario, kv: KVSystemConfig):
    gpu = _upd(sc.gpu, copy_kernel_launch_us=0.0, memcpy_call_us=0.0, memcpy_uncacheable_small_us=0.0)
    return _upd(sc, gpu=gpu), kv


def _no_coherence(sc: Scenario, kv: KVSystemConfig):
    h = sc.hardware.host
    host = _upd(h, gpu_flush_write_16k_us=h.gpu_uncacheable_write_16k_us,
                gpu_flush_read_16k_us=h.gpu_uncacheable_read_16k_us)
    return _upd(sc, hardware=_upd(sc.hardware, host=host)), kv


def _no_rpc(sc: Scenario, kv: KVSystemConfig):
    return sc, _upd(kv, metadata_rpc="none")


def _no_cpu(sc: Scenario, kv: KVSystemConfig):
    return _upd(sc, hardware=_upd(sc.hardware, nic=_upd(sc.hardware.nic, per_wr_us=0.0))), kv


def _no_access(sc: Scenario, kv: KVSystemConfig):
    hw = sc.hardware
    hw2 = _upd(
        hw,
        cxl_switch=_upd(hw.cxl_switch, access_latency_ns=0.0),
        host=_upd(hw.host, dram_latency_ns=0.0),
        pcie_switch=_upd(hw.pcie_switch, hop_latency_us=0.0),
        nic=_upd(hw.nic, latency_us=0.0),
        network_switch=_upd(hw.network_switch, latency_us=0.0),
    )
    return _upd(sc, hardware=hw2), kv


_COUNTERFACTUALS: dict[str, Callable] = {
    "launch": _no_launch,
    "coherence": _no_coherence,
    "rpc": _no_rpc,
    "cpu": _no_cpu,
    "access": _no_access,
}


def _bottleneck(links: Iterable[Link]) -> tuple[float, str]:
    """(seconds, link name): the largest bytes carried / capacity over the links."""
    best, name = 0.0, "-"
    for link in links:
        if link.bytes_carried > 0:
            t = link.bytes_carried / link.capacity
            if t > best:
                best, name = t, link.name
    return best, name


def _clean(x: float) -> float:
    return 0.0 if abs(x) < 1e-15 else x


def measure_transfer(sc: Scenario, system: SystemConfig, direction: str = "load", tokens: int = 8192,
                     concurrency: int = 1, placement: str = "packed", lookup: bool = False) -> dict:
    """One row: a transfer (or K concurrent ones) through the real KVPaths, with its breakdown."""
    kv = system.kv
    run = _simulate(sc, kv, direction, tokens, concurrency, placement, lookup)
    lone = run if concurrency == 1 else _simulate(sc, kv, direction, tokens, 1, placement, lookup)
    wire, bottleneck = _bottleneck(lone.links.values())
    total = run.mean
    parts: dict[str, float] = {}
    for comp, strip in _COUNTERFACTUALS.items():
        charged = run.charged.get(comp, 0.0) if comp != "access" else math.inf
        if charged == 0.0:
            parts[comp] = 0.0
            continue
        sc2, kv2 = strip(sc, kv)
        saved = total - _simulate(sc2, kv2, direction, tokens, concurrency, placement, lookup).mean
        # what the cost adds, between nothing and all of it: with concurrent transfers,
        # removing a cost can also reshuffle the contention (that share stays in queueing)
        parts[comp] = _clean(min(max(saved, 0.0), charged))
    parts["wire"] = wire
    parts["queueing"] = _clean(total - sum(parts.values()))
    tokens_moved = run.nblocks * sc.engine.block_size
    row = {
        "model": sc.model.id,
        "system": system.name,
        "kind": kv.kind,
        "direction": direction,
        "tokens": tokens_moved,
        "blocks": run.nblocks,
        "chunk_tokens": kv.chunk_tokens,
        "copy_method": kv.copy_method,
        "concurrency": concurrency,
        "bytes": run.nbytes,
        "latency_ms": total * 1e3,
        "gbps": run.nbytes / total / GB if total > 0 else math.nan,
    }
    for comp in BREAKDOWN:
        row[f"{comp}_ms"] = parts[comp] * 1e3
    row.update({
        "cpu_work_ms": run.charged.get("cpu", 0.0) * 1e3,
        "work_requests": run.work_requests,
        "rpc_calls": run.rpc_calls,
        "latency_max_ms": max(run.latencies) * 1e3,
        "agg_gbps": concurrency * run.nbytes / max(run.latencies) / GB,
        "bottleneck": bottleneck,
        "busiest_link": _bottleneck(run.links.values())[1],
    })
    if tokens_moved != tokens:
        row["note"] = f"{tokens} tokens rounded up to whole {kv.chunk_tokens}-token chunks"
    return row


# --------------------------------------------------------------------------- studies


def transfer_study(sc: Scenario, system: str, model: str | None = None, direction: str = "load",
                   tokens: int = 8192, concurrency: int = 1, placement: str = "packed",
                   lookup: bool = False) -> list[dict]:
    """One system, one model, one direction, N tokens, K concurrent identical transfers."""
    sc = with_model(sc, model)
    return [measure_transfer(sc, pick_system(sc, system), direction, tokens, concurrency, placement, lookup)]


def dense_study(sc: Scenario, models: Iterable[str] = DENSE_MODELS, systems: Iterable[str] = TRANSFER_KINDS,
                directions: Iterable[str] = DIRECTIONS, tokens: int = 8192, concurrency: int = 1,
                placement: str = "packed", lookup: bool = False) -> list[dict]:
    """Store and load of one request's KV per model and system (the paper's dense study)."""
    rows = []
    for m in models:
        scm = with_model(sc, m)
        for s in systems:
            system = pick_system(scm, s)
            for d in directions:
                rows.append(measure_transfer(scm, system, d, tokens, concurrency, placement, lookup))
    return rows


# -- sparse loads (closed form, rates from the fabric) -------------------------------------


@dataclass
class SparseGeometry:
    tokens: int
    pieces: int
    extents: int
    piece_bytes: float
    bytes: float  # payload
    card_piece_bytes: float  # head_dim x kv_dtype_bytes: one head's K (or V) of one token


def sparse_geometry(model: LLMCard, tokens: int = SPARSE_TOKENS, piece_bytes: float | None = SPARSE_PIECE_BYTES,
                    contiguous_fraction: float = SPARSE_CONTIGUOUS_FRACTION) -> SparseGeometry:
    """P = tokens x layers x kv_heads x 2 pieces; a `contiguous_fraction` share of them merges
    with a neighbour, leaving P - round(fraction x P) separate extents."""
    if tokens <= 0:
        raise MicrobenchError(f"tokens must be positive, got {tokens}")
    if not 0.0 <= contiguous_fraction < 1.0:
        raise MicrobenchError(f"contiguous_fraction must be in [0, 1), got {contiguous_fraction}")
    card_piece = model.head_dim * model.kv_dtype_bytes
    pb = card_piece if piece_bytes is None else float(piece_bytes)
    if pb <= 0:
        raise MicrobenchError(f"piece bytes must be positive, got {pb}")
    pieces = tokens * model.layers * model.kv_heads * 2
    extents = max(1, pieces - round(contiguous_fraction * pieces))
    return SparseGeometry(tokens, pieces, extents, pb, pieces * pb, card_piece)


@dataclass
class _Rate:
    gbps: float
    link: str


def _group_rate(flows: list[tuple[float, tuple]], skip: tuple = ()) -> _Rate:
    """Lone rate of a set of flows: their bytes over the most loaded link's time."""
    per_link: dict[Link, float] = {}
    total = 0.0
    for nbytes, links in flows:
        total += nbytes
        for link in links:
            if link in skip:
                continue
            per_link[link] = per_link.get(link, 0.0) + nbytes
    t, name = max(((b / link.capacity, link.name) for link, b in per_link.items()), default=(0.0, "-"))
    if t <= 0:
        raise MicrobenchError("no link carried the probe transfer")
    return _Rate(total / t / GB, name)


@dataclass
class _PathRates:
    gpu_side: _Rate  # flows crossing the GPU's own link (CXL / DRAM direct, or RDMA staging)
    gpu_side_no_kernel: _Rate  # the same without the copy kernel's own cap (a DMA copy)
    network: _Rate | None  # RDMA: bounce buffer <-> NICs <-> pool


def path_rates(sc: Scenario, kv: KVSystemConfig) -> _PathRates:
    """Lone load rates of each step of the system's path, from a probe load of one tier chunk
    through KVPaths (every link it crosses, every cap, as the simulator has them)."""
    env = Environment()
    paths = KVPaths(env, sc, kv)
    place = paths.places[0]
    flows: list[tuple[float, tuple]] = []
    paths.fabric.transfer_log = flows  # only this probe's fabric
    nblocks = transfer_blocks(sc, kv, 1)
    keys = _keys_for(0, nblocks, (place.server + 1) % sc.cluster.servers, sc.cluster.servers)
    req = Request(0, nblocks * sc.engine.block_size + 1, 1, keys, 0.0)
    env.process(paths.load(place, Load(req, 0, nblocks)))
    env.run()
    own = f"{place.name}."
    gpu_side = [f for f in flows if any(link.name.startswith(own) for link in f[1])]
    network = [f for f in flows if f not in gpu_side]
    return _PathRates(
        _group_rate(gpu_side),
        _group_rate(gpu_side, skip=(place.kernel_link_load,)),
        _group_rate(network) if network else None,
    )


def measure_sparse(sc: Scenario, system: SystemConfig, tokens: int = SPARSE_TOKENS,
                   piece_bytes: float | None = SPARSE_PIECE_BYTES,
                   contiguous_fraction: float = SPARSE_CONTIGUOUS_FRACTION,
                   outstanding_reads: int = SPARSE_OUTSTANDING_READS,
                   rdma_copy: str = "memcpy", rdma_wr: str = "sge") -> dict:
    """One sparse load, in closed form from the cards (see the module and docs/microbench.md).

    CXL / local DRAM: the GPU kernel reads the pieces directly by load/store:
        launch + coherence + max(lines x 64 B / path rate, ceil(extents / outstanding) x access latency)
    RDMA: extents become scatter-gather entries (at most max_sge per work request) posted by
    one CPU thread, landing in the bounce buffer; then one host-to-GPU copy:
        max(WRs x per_wr_us, bytes / network rate) + NIC and switch latency
        + copy launch + DRAM and hop latency + bytes / staging rate
    """
    kv = system.kv
    if kv.kind not in TRANSFER_KINDS:
        raise MicrobenchError(f"KV system kind {kv.kind!r} has no external tier to load from")
    if outstanding_reads < 1:
        raise MicrobenchError(f"outstanding_reads must be at least 1, got {outstanding_reads}")
    if rdma_copy not in ("memcpy", "scatter-kernel"):
        raise MicrobenchError(f"rdma_copy must be 'memcpy' or 'scatter-kernel', got {rdma_copy!r}")
    if rdma_wr not in ("sge", "per-piece"):
        raise MicrobenchError(f"rdma_wr must be 'sge' or 'per-piece', got {rdma_wr!r}")
    geo = sparse_geometry(sc.model, tokens, piece_bytes, contiguous_fraction)
    gpu, hw = sc.gpu, sc.hardware
    rates = path_rates(sc, kv)
    parts = dict.fromkeys(BREAKDOWN, 0.0)
    extent_bytes = geo.bytes / geo.extents
    wrs = 0
    cpu_work = 0.0
    if kv.kind in ("cxl-pool", "local-dram"):
        lines = geo.extents * math.ceil(extent_bytes / CACHE_LINE)
        moved = lines * CACHE_LINE
        if kv.kind == "cxl-pool":
            access_s = hw.cxl_switch.access_latency_ns * 1e-9
        else:
            access_s = hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
        wire = moved / (rates.gpu_side.gbps * GB)
        latency_bound = math.ceil(geo.extents / outstanding_reads) * access_s
        parts["launch"] = gpu.copy_kernel_launch_us * 1e-6
        if kv.kind == "cxl-pool" and kv.coherence == "flush":
            extra = max(0.0, hw.host.gpu_flush_read_16k_us - hw.host.gpu_uncacheable_read_16k_us)
            parts["coherence"] = extra * 1e-6 * moved / KB16
        parts["wire"] = wire
        parts["access"] = max(0.0, latency_bound - wire)
        bottleneck = rates.gpu_side.link if wire >= latency_bound else f"access latency x {outstanding_reads} in flight"
        path = "direct kernel loads"
    else:
        nic = hw.nic
        moved = geo.bytes
        wrs = geo.extents if rdma_wr == "per-piece" else math.ceil(geo.extents / nic.max_sge)
        cpu_work = wrs * nic.per_wr_us * 1e-6
        net_rate = rates.network
        if rdma_copy == "memcpy":
            stage_rate = rates.gpu_side_no_kernel
            launch = gpu.memcpy_call_us * 1e-6
        else:
            stage_rate = rates.gpu_side
            launch = gpu.copy_kernel_launch_us * 1e-6
        net_wire = moved / (net_rate.gbps * GB)
        stage_wire = moved / (stage_rate.gbps * GB)
        net_lat = (nic.latency_us + hw.network_switch.latency_us) * 1e-6
        stage_lat = hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
        total = max(cpu_work, net_wire) + net_lat + launch + stage_lat + stage_wire
        parts["launch"] = launch
        parts["cpu"] = max(0.0, cpu_work - net_wire)
        parts["access"] = net_lat + stage_lat
        parts["wire"] = max(net_wire, stage_wire)
        # one unit, two steps in series: the faster step's time is a pipeline bubble
        parts["queueing"] = total - sum(parts.values())
        bottleneck = (net_rate if net_wire >= stage_wire else stage_rate).link
        path = f"{'SGE' if rdma_wr == 'sge' else 'one WR per piece'} -> bounce buffer -> {rdma_copy}"
    total = sum(parts.values())
    row = {
        "model": sc.model.id,
        "system": system.name,
        "kind": kv.kind,
        "direction": "load",
        "tokens": geo.tokens,
        "pieces": geo.pieces,
        "extents": geo.extents,
        "piece_bytes": geo.piece_bytes,
        "bytes": geo.bytes,
        "bytes_moved": moved,
        "latency_ms": total * 1e3,
        "gbps": geo.bytes / total / GB,
    }
    for comp in BREAKDOWN:
        row[f"{comp}_ms"] = _clean(parts[comp]) * 1e3
    row.update({
        "cpu_work_ms": cpu_work * 1e3,
        "work_requests": wrs,
        "bottleneck": bottleneck,
        "path": path,
    })
    return row


def sparse_study(sc: Scenario, models: Iterable[str] = SPARSE_MODELS, systems: Iterable[str] = ("cxl-pool", "rdma-pool"),
                 tokens: int = SPARSE_TOKENS, piece_bytes: float | None = SPARSE_PIECE_BYTES,
                 contiguous_fraction: float = SPARSE_CONTIGUOUS_FRACTION,
                 outstanding_reads: int = SPARSE_OUTSTANDING_READS, rdma_copy: str = "memcpy",
                 rdma_wr: str = "sge") -> list[dict]:
    """Sparse loads of `tokens` tokens' worth of selected KV per model and system."""
    rows = []
    for m in models:
        scm = with_model(sc, m)
        for s in systems:
            rows.append(measure_sparse(scm, pick_system(scm, s), tokens, piece_bytes, contiguous_fraction,
                                       outstanding_reads, rdma_copy, rdma_wr))
    return rows


def sparse_params(tokens: int = SPARSE_TOKENS, piece_bytes: float | None = SPARSE_PIECE_BYTES,
                  contiguous_fraction: float = SPARSE_CONTIGUOUS_FRACTION,
                  outstanding_reads: int = SPARSE_OUTSTANDING_READS, rdma_copy: str = "memcpy",
                  rdma_wr: str = "sge") -> dict:
    """The sparse study's parameters, with the descriptive selection figures, for reports."""
    return {
        "tokens": tokens,
        "piece_bytes": "card (head_dim x kv_dtype_bytes)" if piece_bytes is None else piece_bytes,
        "contiguous_fraction": contiguous_fraction,
        "outstanding_reads": outstanding_reads,
        "rdma_copy": rdma_copy,
        "rdma_wr": rdma_wr,
        "selection": f"top-{SPARSE_TOP_K} tokens per head per layer of a {SPARSE_SEQ_TOKENS}-token sequence",
    }


__all__ = [
    "BREAKDOWN", "DENSE_MODELS", "SPARSE_MODELS", "TRANSFER_KINDS", "MicrobenchError", "SparseGeometry",
    "dense_study", "measure_sparse", "measure_transfer", "path_rates", "pick_system", "sparse_geometry",
    "sparse_params", "sparse_study", "transfer_blocks", "transfer_study", "with_model",
]
