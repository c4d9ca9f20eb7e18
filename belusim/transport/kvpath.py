"""KV data paths: the links of a cluster and how a tier load or save crosses them.

Link names say where they are and which way data moves: ``.store`` toward the host or the
pool, ``.load`` toward the GPU; NICs have ``.tx`` and ``.rx``; memory (a CXL device, a
socket's DRAM) is half duplex and has one link for both ways.

Paths, per kind of tier (beluga.md §1, §4):
  local-dram  GPU link -> PCIe switch uplink -> socket DRAM (DMA to memory: no P2P cap)
  cxl-pool    GPU link -> PCIe switch uplink -> Root Complex P2P (per path and per socket)
              -> CXL adapter -> CXL switch -> memory devices
  rdma-pool   two steps through a pinned bounce buffer in host DRAM: GPU <-> DRAM, then
              DRAM <-> NICs <-> network <-> NICs <-> the home server's DRAM, driven by one
              CPU thread per instance that posts work requests and polls completions

Tensor parallelism: each rank holds kv_heads / TP of every block, so a load or save of an
instance runs as TP concurrent transfers of 1/TP of the bytes, each on its own GPU's links and
path (as each vLLM worker moves its own shard through its connector); they share whatever the
paths have in common (a PCIe switch uplink, the Root Complex, the pool).

Interleaved pool data spreads evenly over all devices and both adapters, so the devices are
modelled as one link of their summed bandwidth and a transfer splits evenly over the
adapters; without interleaving, chunks fill the devices one after another and each device is
its own link (the first device becomes the queue, as in the paper's skew experiment).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


from belusim.config.scenario import GB, KVSystemConfig, Scenario, StackCard
from belusim.transport.fabric import Fabric, Link, Path
from belusim.transport.stages import SoftwareStages
from belusim.policy.scheduler import Load, Save
from belusim.sim.kernel import Environment, Resource

KB16 = 16 * 1024


@dataclass
class GPUPlace:
    """Where one instance's GPU sits."""

    server: int
    gpu: int
    pcie_switch: int
    socket: int
    name: str = ""
    poller: Resource | None = None  # the RDMA connector's CPU thread
    connector_thread: Resource | None = None  # runs the stack's load/save stages
    kernel_link_store: Link | None = None
    kernel_link_load: Link | None = None
    # ordered_transfers: one copy stream per direction (load, store), each a FIFO
    streams: dict[str, Resource] = field(default_factory=dict)
    # An instance's place is its first GPU's; ranks lists all its GPUs (tensor parallelism).
    ranks: list[GPUPlace] = field(default_factory=list)


@dataclass
class RPCServer:
    """A metadata server as a FIFO single server: O(1) per call, no SimPy process."""

    rtt_s: float
    service_s: float
    free_at: float = 0.0
    calls: int = 0

    def call(self, now: float, n: int = 1) -> float:
        """Seconds until n back-to-back calls issued now have their replies."""
        if n <= 0:
            return 0.0
        start = max(now, self.free_at)
        self.free_at = start + n * self.service_s
        self.calls += n
        return (self.free_at - now) + self.rtt_s


@dataclass
class TransferStats:
    loads: int = 0
    saves: int = 0
    load_bytes: float = 0.0
    save_bytes: float = 0.0
    load_time_s: float = 0.0
    save_time_s: float = 0.0
    rpc_calls: int = 0
    work_requests: int = 0
    breakdown: dict = field(default_factory=lambda: {"launch": 0.0, "coherence": 0.0, "rpc": 0.0, "cpu": 0.0})


class KVPaths:
    """The cluster's links and the load/save procedures of one KV system."""

    def __init__(self, env: Environment, scenario: Scenario, kv: KVSystemConfig,
                 stack: StackCard | None = None):
        self.env = env
        self.sc = scenario
        self.kv = kv
        self.fabric = Fabric(env)
        self._paths: dict[tuple, Path] = {}  # GPU-side paths, built once
        self.stats = TransferStats()
        hw, cl, gpu = scenario.hardware, scenario.cluster, scenario.gpu
        tp = self.tp = cl.tensor_parallel
        # one rank's share of a block, and the instance's (TP shares; more than the model's
        # KV when heads are replicated over ranks)
        self.rank_block_bytes = scenario.model.kv_bytes_per_token_per_rank(tp) * scenario.engine.block_size
        self.block_bytes = self.rank_block_bytes * tp
        self.fragment_bytes = scenario.model.fragment_bytes(scenario.engine.block_size, tp)
        self.fragments_per_block = scenario.model.fragments_per_block
        # software stages run once per TP rank, in parallel: one rank's share of an object
        self.stages = SoftwareStages(env, stack, scenario.hardware.host, kv.chunk_tokens,
                                     self.rank_block_bytes * kv.chunk_tokens / scenario.engine.block_size)
        self.last_lookup = (0.0, 0.0)  # (software stages, metadata RPC) of the last lookup_time
        self.places: list[GPUPlace] = []  # every GPU
        self.instance_places: list[GPUPlace] = []  # every instance's first GPU, with its ranks
        n_psw = max(1, math.ceil(cl.gpus_per_server / cl.gpus_per_pcie_switch))
        sockets = hw.host.sockets
        f = self.fabric
        for s in range(cl.servers):
            for sock in range(sockets):
                f.add_link(f"s{s}.dram{sock}", hw.host.dram_gbps_per_socket)
                f.add_link(f"s{s}.rc{sock}.p2p.store", hw.root_complex.p2p_total_gbps)
                f.add_link(f"s{s}.rc{sock}.p2p.load", hw.root_complex.p2p_total_gbps)
            for k in range(n_psw):
                f.add_link(f"s{s}.psw{k}.store", hw.pcie_switch.uplink_gbps)
                f.add_link(f"s{s}.psw{k}.load", hw.pcie_switch.uplink_gbps)
                for a in range(cl.cxl_adapters_per_server):
                    f.add_link(f"s{s}.psw{k}.adp{a}.store", hw.root_complex.p2p_write_gbps_per_path)
                    f.add_link(f"s{s}.psw{k}.adp{a}.load", hw.root_complex.p2p_read_gbps_per_path)
            for a in range(cl.cxl_adapters_per_server):
                f.add_link(f"s{s}.adp{a}.store", hw.cxl_adapter.link_gbps)
                f.add_link(f"s{s}.adp{a}.load", hw.cxl_adapter.link_gbps)
            if cl.nics_per_server:
                nic = hw.nic
                nic_gbps = cl.nics_per_server * nic.ports * nic.port_gbps * nic.efficiency
                f.add_link(f"s{s}.nics.tx", nic_gbps)
                f.add_link(f"s{s}.nics.rx", nic_gbps)
            for g in range(cl.gpus_per_server):
                k = g // cl.gpus_per_pcie_switch
                place = GPUPlace(s, g, k, k * sockets // n_psw, name=f"s{s}.gpu{g}")
                f.add_link(f"s{s}.gpu{g}.store", gpu.host_d2h_gbps)
                f.add_link(f"s{s}.gpu{g}.load", gpu.host_h2d_gbps)
                # The copy kernel's own top rate, shared by the kernels of one GPU.
                place.kernel_link_store = f.add_link(f"s{s}.gpu{g}.kernel.store", gpu.copy_kernel_gbps)
                place.kernel_link_load = f.add_link(f"s{s}.gpu{g}.kernel.load", gpu.copy_kernel_gbps)
                place.poller = Resource(env, capacity=1)
                place.connector_thread = self.stages.new_thread()
                if kv.ordered_transfers:
                    place.streams = {d: Resource(env, capacity=1) for d in ("load", "store")}
                self.places.append(place)
                if g % tp == 0:
                    self.instance_places.append(place)
                self.instance_places[-1].ranks.append(place)
        if cl.cxl_devices:
            f.add_link("cxlsw.store", hw.cxl_switch.forwarding_gbps * cl.cxl_switches)
            f.add_link("cxlsw.load", hw.cxl_switch.forwarding_gbps * cl.cxl_switches)
            f.add_link("cxl.devices", hw.cxl_memory.bandwidth_gbps * cl.cxl_devices)
            for d in range(cl.cxl_devices):
                f.add_link(f"cxl.dev{d}", hw.cxl_memory.bandwidth_gbps)
        self._chunk_blocks = max(1, kv.chunk_tokens // scenario.engine.block_size)  # engine blocks per tier chunk
        self._chunk_device: dict[int, int] = {}
        # where a chunk lives depends on its key (a device, a home server): loads name theirs
        self._places_by_key = kv.kind == "rdma-pool" or (kv.kind == "cxl-pool" and not kv.interleave)
        self._chunks_placed = 0
        self.rpc_kind = self._rpc_kind()
        rpc = hw.cxl_rpc if self.rpc_kind == "cxl-slots" else hw.rdma_rpc
        self.rpc = RPCServer(rpc.rtt_us * 1e-6, 1.0 / (rpc.server_mops * 1e6))
        # Constant for the run, looked up once: whether loads and saves have software stages,
        # and each (place, direction)'s direct copy (_direct), built on its first transfer.
        self._staged = {op: bool(self.stages.by_op[op]) for op in ("load", "save")}
        self._routes: dict[tuple[str, str, bool], _Copy] = {}
        self._direct: dict[tuple[str, str], _Copy | None] = {}

    # -- helpers -------------------------------------------------------------------------
    def _rpc_kind(self) -> str:
        if self.kv.metadata_rpc != "auto":
            return self.kv.metadata_rpc
        return {"cxl-pool": "cxl-slots", "rdma-pool": "rdma"}.get(self.kv.kind, "none")

    def lookup_time(self, lookups: int, keys: int, now: float, chunks: list[int] | None = None) -> float:
        """The tier lookups done while scheduling one step (blocking): the stack's lookup
        stages (hashing, the connector's call) for each, then the metadata RPCs."""
        sw = self.stages.lookup_time(chunks) if chunks else 0.0
        self.stats.breakdown["lookup"] = self.stats.breakdown.get("lookup", 0.0) + sw
        self.last_lookup = (sw, 0.0)
        if lookups == 0 or self.rpc_kind == "none":
            return sw
        calls = max(lookups, math.ceil(keys / self.kv.rpc_keys_per_call))
        self.stats.rpc_calls += calls
        t = self.rpc.call(now + sw, calls)
        self.stats.breakdown["rpc"] += t
        self.last_lookup = (sw, t)  # (software stages, metadata RPC) of the last call
        return sw + t

    def _links(self, *names: str) -> list[Link]:
        return [self.fabric.links[n] for n in names]

    def _cxl_device_for(self, key: int) -> int:
        dev = self._chunk_device.get(key)
        if dev is None:
            cap = self.sc.hardware.cxl_memory.capacity_gb * GB
            chunk_bytes = self.block_bytes * self._chunk_blocks
            dev = int(self._chunks_placed * chunk_bytes // cap) % self.sc.cluster.cxl_devices
            self._chunk_device[key] = dev
            self._chunks_placed += 1
        return dev

    def _chunk_names(self, load: Load) -> list[int]:
        """The chunks (named by their last block's key, as saved) that a load reads from:
        keys[min(len, (i + 1) x c) - 1] for each chunk i it touches."""
        c, first, keys = self._chunk_blocks, load.first_block, load.request.keys
        i0, i1 = first // c, (first + load.num_blocks - 1) // c
        names = list(keys[(i0 + 1) * c - 1:(i1 + 1) * c:c])
        if len(names) < i1 - i0 + 1:  # the last chunk is the prompt's partial tail
            names.append(keys[len(keys) - 1])
        return names

    # -- GPU-side copy costs ----------------------------------------------------------------
    def _gpu_copy_fixed(self, nblocks: int, direction: str, pool_is_cxl: bool) -> tuple[float, float]:
        """(launch seconds, coherence seconds) for moving nblocks of fragmented KV."""
        gpu, host = self.sc.gpu, self.sc.hardware.host
        nbytes = nblocks * self.rank_block_bytes
        if self.kv.copy_method == "gather-kernel":
            launch = gpu.copy_kernel_launch_us * 1e-6
        else:
            calls = nblocks * self.fragments_per_block
            per_call = gpu.memcpy_call_us
            small = self.fragment_bytes < gpu.memcpy_uncacheable_threshold_kb * 1024
            if pool_is_cxl and direction == "load" and self.kv.coherence == "uncacheable" and small:
                # copies *from* uncacheable memory this small fall back to CPU copies (beluga.md §2)
                per_call = gpu.memcpy_uncacheable_small_us
            launch = calls * per_call * 1e-6
        coherence = 0.0
        if pool_is_cxl and self.kv.coherence == "flush":
            # Table 4, GPU column: flush-based visibility costs this much more than an
            # uncacheable region per 16 KB moved.
            if direction == "store":
                extra = host.gpu_flush_write_16k_us - host.gpu_uncacheable_write_16k_us
            else:
                extra = host.gpu_flush_read_16k_us - host.gpu_uncacheable_read_16k_us
            coherence = max(0.0, extra) * 1e-6 * nbytes / KB16
        return launch, coherence

    # -- procedures (SimPy generators) ------------------------------------------------------
    def load(self, place: GPUPlace, load: Load):
        nbytes = load.num_blocks * self.block_bytes
        t0 = self.env.now
        c, first = self._chunk_blocks, load.first_block
        chunks = (first + load.num_blocks - 1) // c - first // c + 1  # the chunks it reads from
        names = self._chunk_names(load) if self._places_by_key else []
        if self._staged["load"]:
            load.thread_wait_s, load.software_s = yield from self.stages.run(
                place.connector_thread, "load", chunks, nbytes / self.tp)  # type: ignore
        else:
            load.thread_wait_s, load.software_s = 0.0, 0.0
        yield from self._move_ranks(place, nbytes, load.num_blocks, "load", names)
        self.stats.loads += 1
        self.stats.load_bytes += nbytes
        self.stats.load_time_s += self.env.now - t0

    def save(self, place: GPUPlace, save: Save):
        env = self.env
        keys = save.keys
        nblocks = len(save.chunk_indexes) * self._chunk_blocks
        nbytes = nblocks * self.block_bytes
        t0 = env.now
        if self._staged["save"]:
            save.thread_wait_s, save.software_s = yield from self.stages.run(
                place.connector_thread, "save", len(keys), nbytes / self.tp)  # type: ignore
        else:
            save.thread_wait_s, save.software_s = 0.0, 0.0
        direct = self._direct_copy(place, "store")
        if direct is None:
            yield from self._move_ranks(place, nbytes, nblocks, "store", keys)
        else:  # the one-rank copy without _move_ranks' layers: the same events
            yield from direct.move(nbytes, nblocks, keys)
        if self.rpc_kind != "none":
            calls = max(1, math.ceil(len(keys) / self.kv.rpc_keys_per_call))
            self.stats.rpc_calls += calls
            t = self.rpc.call(env.now, calls)
            self.stats.breakdown["rpc"] += t
            yield env.timeout(t)
        stats = self.stats
        stats.saves += 1
        stats.save_bytes += nbytes
        stats.save_time_s += env.now - t0

    def _move_ranks(self, place: GPUPlace, nbytes: float, nblocks: int, direction: str, keys: Sequence[int]):
        """An instance's transfer: each rank moves its share of every block at the same time."""
        ranks = place.ranks or [place]
        if len(ranks) == 1:
            direct = self._direct_copy(place, direction)
            if direct is not None:
                yield from direct.move(nbytes, nblocks, keys)
            else:
                yield from self._move(place, nbytes, nblocks, direction, keys)
            return
        share = nbytes / len(ranks)
        yield self.env.all_of([self.env.process(self._move(r, share, nblocks, direction, keys)) for r in ranks])

    def _direct_copy(self, place: GPUPlace, direction: str) -> _Copy | None:
        """This place's copy in this direction when it is one GPU-side copy with nothing to
        wait for first (one rank, no copy stream, a local-DRAM or CXL pool), else None."""
        key = (place.name, direction)
        try:
            return self._direct[key]
        except KeyError:
            pass
        direct = None
        if (len(place.ranks or [place]) == 1 and place.streams.get(direction) is None
                and self.kv.kind in ("local-dram", "cxl-pool")):
            direct = self._copy_route(place, direction, self.kv.kind == "cxl-pool")
        self._direct[key] = direct
        return direct

    def _copy_route(self, place: GPUPlace, direction: str, to_cxl: bool) -> _Copy:
        """One rank's GPU-side copy to or from the CXL pool (to_cxl) or host DRAM (a
        local-DRAM pool, or an RDMA pool's bounce buffer), built once per place and direction."""
        key = (place.name, direction, to_cxl)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = _Copy(self, place, direction, to_cxl)
        return route

    def _move(self, place: GPUPlace, nbytes: float, nblocks: int, direction: str, keys: Sequence[int]):
        stream = place.streams.get(direction)
        if stream is None:
            yield from self._move_now(place, nbytes, nblocks, direction, keys)
            return
        with stream.request() as turn:  # after the transfers issued before it on this GPU
            yield turn
            yield from self._move_now(place, nbytes, nblocks, direction, keys)

    def _move_now(self, place: GPUPlace, nbytes: float, nblocks: int, direction: str, keys: Sequence[int]):
        kind = self.kv.kind
        if kind == "local-dram" or kind == "cxl-pool":
            yield from self._copy_route(place, direction, kind == "cxl-pool").move(nbytes, nblocks, keys)
        elif kind == "rdma-pool":
            yield from self._rdma_copy(place, nbytes, nblocks, direction, keys)
        else:
            raise ValueError(f"KV system {kind!r} has no external tier")

    def _gpu_path(self, place: GPUPlace, direction: str, *names: str) -> Path:
        """A GPU-side path: the named links, then (gather kernel) the GPU's copy-kernel link."""
        links = self._links(*names)
        if self.kv.copy_method == "gather-kernel":
            links.append(place.kernel_link_store if direction == "store" else place.kernel_link_load)  # type: ignore
        return Path.of(links)

    def _host_path(self, place: GPUPlace, direction: str) -> Path:
        """GPU -> PCIe switch -> the socket's DRAM."""
        s, g, k, sock = place.server, place.gpu, place.pcie_switch, place.socket
        path = self._paths.get((s, g, k, sock, direction))
        if path is None:  # built once per place and direction
            path = self._paths[(s, g, k, sock, direction)] = self._gpu_path(
                place, direction, f"s{s}.gpu{g}.{direction}", f"s{s}.psw{k}.{direction}", f"s{s}.dram{sock}")
        return path

    def _cxl_path(self, place: GPUPlace, direction: str, a: int, dev: str) -> Path:
        """GPU -> PCIe switch -> Root Complex P2P -> adapter a -> CXL switch -> dev (a link name)."""
        s, g, k = place.server, place.gpu, place.pcie_switch
        path = self._paths.get((s, g, k, direction, a, dev))
        if path is None:  # built once per place, direction, adapter and device
            a_sock = a % self.sc.hardware.host.sockets
            path = self._paths[(s, g, k, direction, a, dev)] = self._gpu_path(
                place, direction,
                f"s{s}.gpu{g}.{direction}",
                f"s{s}.psw{k}.{direction}",
                f"s{s}.rc{a_sock}.p2p.{direction}",
                f"s{s}.psw{k}.adp{a}.{direction}",
                f"s{s}.adp{a}.{direction}",
                f"cxlsw.{direction}",
                dev,
            )
        return path

    def _home_server(self, keys: Sequence[int]) -> int:
        # Mooncake places each object on a pool server by its key; a batch follows its first key.
        return (keys[0] if keys else 0) % self.sc.cluster.servers

    def _rdma_copy(self, place: GPUPlace, nbytes: float, nblocks: int, direction: str, keys: Sequence[int]):
        """Pipelined two-step transfer through the bounce buffer, `pipeline_chunks` chunks a unit."""
        kv, nic, hw = self.kv, self.sc.hardware.nic, self.sc.hardware
        if self.sc.cluster.nics_per_server == 0:
            raise ValueError("an rdma-pool system needs nics_per_server > 0")
        unit_blocks = max(1, kv.pipeline_chunks * self._chunk_blocks)
        units = []
        left = nblocks
        while left > 0:
            units.append(min(unit_blocks, left))
            left -= units[-1]
        per_block = nbytes / nblocks if nblocks else 0.0
        home = self._home_server(keys)
        s = place.server
        net = self._paths.get(("net", s, place.socket, home, direction))
        if net is None:  # built once per server, socket, home server and direction
            net = self._paths[("net", s, place.socket, home, direction)] = Path.of(
                self._links(f"s{s}.dram{place.socket}", f"s{s}.nics.tx", f"s{home}.nics.rx", f"s{home}.dram0")
                if direction == "store"
                else self._links(f"s{home}.dram0", f"s{home}.nics.tx", f"s{s}.nics.rx", f"s{s}.dram{place.socket}"))
        net_latency = (nic.latency_us + hw.network_switch.latency_us) * 1e-6

        def network(unit: int):
            b = unit * per_block
            if kv.staging_gather:
                wrs = math.ceil(b / (nic.slice_kb * 1024))
            else:
                wrs = unit * math.ceil(self.fragments_per_block / nic.max_sge)
            cpu = wrs * nic.per_wr_us * 1e-6
            self.stats.work_requests += wrs
            self.stats.breakdown["cpu"] += cpu
            with place.poller.request() as req:  # type: ignore
                yield req
                # the thread posts, then polls until the NIC reports completion: both the
                # posting CPU time and the wire (one event each, no third to join them)
                posted = self.env.timeout(cpu)
                yield self.fabric.transfer([(b, net)])
                if not posted.processed:
                    yield posted
                yield self.env.timeout(net_latency)

        def staging(unit: int):
            yield from self._copy_route(place, direction, False).move(unit * per_block, unit, [])

        # Two-stage pipeline: the next unit's first step overlaps this unit's second.
        first, second = (staging, network) if direction == "store" else (network, staging)
        prev = None
        for unit in units:
            yield self.env.process(first(unit))
            if prev is not None:
                yield prev
            prev = self.env.process(second(unit))
        if prev is not None:
            yield prev


class _Copy:
    """One rank's GPU-side copy to or from the CXL pool or host DRAM, from one place in one
    direction: its flows for a transfer, the latency before its data moves and, per size,
    its fixed costs (all constant for a run, so computed once)."""

    __slots__ = ("paths", "direction", "pool_is_cxl", "latency_s", "flows", "_spread", "_dev_paths",
                 "_adapter", "_place", "_fixed")

    def __init__(self, paths: KVPaths, place: GPUPlace, direction: str, to_cxl: bool):
        self.paths, self.direction, self._place = paths, direction, place
        self._fixed: dict[int, tuple[float, float, float]] = {}
        cl, hw = paths.sc.cluster, paths.sc.hardware
        if not to_cxl:
            self.pool_is_cxl = False
            self.latency_s = hw.host.dram_latency_ns * 1e-9 + hw.pcie_switch.hop_latency_us * 1e-6
            self._spread = [paths._host_path(place, direction)]
            self.flows = self._one_flow
            return
        if cl.cxl_adapters_per_server == 0 or cl.cxl_devices == 0:
            raise ValueError("a cxl-pool system needs cxl_adapters_per_server > 0 and cxl_devices > 0")
        self.pool_is_cxl = True
        self.latency_s = hw.cxl_switch.access_latency_ns * 1e-9
        if paths.kv.interleave:
            # an even split over every adapter, onto all devices as one
            self._spread = [paths._cxl_path(place, direction, a, "cxl.devices")
                            for a in range(cl.cxl_adapters_per_server)]
            self.flows = self._even_flows
        else:
            # the socket-local adapter; each chunk lives on one device
            sockets = hw.host.sockets
            self._adapter = next((a for a in range(cl.cxl_adapters_per_server) if a % sockets == place.socket), 0)
            self._dev_paths: dict[int, Path] = {}
            self.flows = self._device_flows

    def move(self, nbytes: float, nblocks: int, keys):
        """Copy nblocks (nbytes) as a kernel or memcpy calls: the launch and latency, the
        flows (placed before anything waits: chunk placement is stateful), any coherence
        cost after."""
        paths = self.paths
        flows = self.flows(nbytes, keys)
        launch, coherence, wait = self.fixed(nblocks)
        bd = paths.stats.breakdown
        bd["launch"] += launch
        bd["coherence"] += coherence
        env = paths.env
        yield env.timeout(wait)
        yield paths.fabric.transfer(flows)
        if coherence:
            yield env.timeout(coherence)

    def fixed(self, nblocks: int) -> tuple[float, float, float]:
        """(launch seconds, coherence seconds, launch + latency) for nblocks."""
        f = self._fixed.get(nblocks)
        if f is None:
            launch, coherence = self.paths._gpu_copy_fixed(nblocks, self.direction, self.pool_is_cxl)
            f = self._fixed[nblocks] = (launch, coherence, launch + self.latency_s)
        return f

    def _one_flow(self, nbytes: float, keys) -> list[tuple[float, Path]]:
        return [(nbytes, self._spread[0])]

    def _even_flows(self, nbytes: float, keys) -> list[tuple[float, Path]]:
        b = nbytes / len(self._spread)
        return [(b, path) for path in self._spread]

    def _device_flows(self, nbytes: float, keys) -> list[tuple[float, Path]]:
        paths = self.paths
        per_dev: dict[int, float] = {}
        chunk_bytes = paths.block_bytes * paths._chunk_blocks
        for key in keys or [0]:
            d = paths._cxl_device_for(key)
            per_dev[d] = per_dev.get(d, 0.0) + chunk_bytes
        scale = nbytes / sum(per_dev.values())
        dev_paths = self._dev_paths
        flows = []
        for d, b in per_dev.items():
            path = dev_paths.get(d)
            if path is None:
                path = dev_paths[d] = paths._cxl_path(self._place, self.direction, self._adapter, f"cxl.dev{d}")
            flows.append((b * scale, path))
        return flows
