"""Typed configuration: model cards, hardware parts, cluster, engine, KV systems, runs.

A scenario is one YAML file. It names model cards by id (``gpu: h20``) or by id plus
overrides (``gpu: {card: h20, hbm_gb: 80}``); `resolve_scenario` expands the cards, applies a
calibration profile, then command-line ``--set`` overrides, then validates everything with
pydantic so that an unknown key or a bad value fails with the file and the field path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from belusim.config.vllm import apply_vllm_profile
from belusim.errors import InputError
from belusim.inputs import parse_yaml, read_json, read_yaml
from belusim.paths import calibration_dir, models_dir
from belusim.workloads.config import WorkloadConfig

GB = 1e9
KiB = 1024
MiB = 1024 * 1024


class ConfigError(InputError):
    """Bad scenario, card or override. The message names the file and the field path."""


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` in a capacity or a rate is a mistake, not a size
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Card(_Strict):
    """Base of every model card: an id and, per figure, where it comes from."""

    id: str
    description: str = ""
    # figure name -> "paper: ...", "vendor: ...", "derived: ...", "assumed: ...", "measured: ..."
    sources: dict[str, str] = Field(default_factory=dict)

    def figure_rows(self) -> list[tuple[str, str, str]]:
        """(field, value, source) for every figure, as `belusim cards` prints them."""
        values = self.model_dump(exclude={"id", "description", "sources"})
        return [(f, str(v), self.sources.get(f, "")) for f, v in values.items()]


# --------------------------------------------------------------------------- model cards


class LLMCard(Card):
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    q_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    ffn: int = Field(gt=0, description="FFN intermediate size (gated MLP: 3 matrices)")
    vocab: int = Field(gt=0)
    kv_dtype_bytes: float = Field(2, gt=0, description="bytes per KV element")
    weight_bytes_per_param: float = Field(2, gt=0)
    weight_gb: float | None = Field(None, gt=0, description="weights as loaded; derived from params if absent")

    @property
    def params_per_layer(self) -> int:
        attn = self.hidden * self.q_heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return attn + 3 * self.hidden * self.ffn

    @property
    def params(self) -> int:
        # Embedding and LM head counted once each (untied).
        return self.layers * self.params_per_layer + 2 * self.vocab * self.hidden

    @property
    def linear_flops_per_token(self) -> float:
        # Every weight but the embedding lookup does one multiply-add per token.
        return 2.0 * (self.layers * self.params_per_layer + self.vocab * self.hidden)

    @property
    def weight_bytes(self) -> float:
        if self.weight_gb is not None:
            return self.weight_gb * GB
        return self.params * self.weight_bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    # -- tensor parallelism (vLLM's column/row-parallel layers: QKVParallelLinear splits the
    # KV heads over the ranks, or replicates each head over tp / kv_heads ranks when there are
    # fewer heads than ranks; vllm/model_executor/layers/linear.py) --------------------------
    def check_tensor_parallel(self, tp: int) -> None:
        if self.q_heads % tp:
            raise ValueError(f"tensor_parallel={tp} must divide the model's {self.q_heads} attention heads")
        if self.kv_heads % tp and tp % self.kv_heads:
            raise ValueError(f"tensor_parallel={tp} and the model's {self.kv_heads} KV heads must divide one another")

    def kv_heads_per_rank(self, tp: int = 1) -> int:
        return max(1, self.kv_heads // tp)

    def kv_bytes_per_token_per_rank(self, tp: int = 1) -> float:
        return 2 * self.layers * self.kv_heads_per_rank(tp) * self.head_dim * self.kv_dtype_bytes

    def weight_bytes_per_rank(self, tp: int = 1) -> float:
        # every matrix is split, the embedding and LM head over the vocabulary; the norms
        # (under 0.01% of the weights) are counted split too, so the ranks sum to the model
        return self.weight_bytes / tp

    def fragment_bytes(self, block_size: int, tp: int = 1) -> float:
        """One layer's K (or V) for one block on one rank: the unit the GPU keeps contiguous."""
        return block_size * self.kv_heads_per_rank(tp) * self.head_dim * self.kv_dtype_bytes

    @property
    def fragments_per_block(self) -> int:
        return 2 * self.layers


class GPUCard(Card):
    hbm_gb: float = Field(gt=0)
    hbm_gbps: float = Field(gt=0, description="HBM bandwidth, GB/s")
    dense_bf16_tflops: float = Field(gt=0)
    dense_fp8_tflops: float | None = Field(None, gt=0)
    host_link_gbps: float = Field(gt=0, description="raw PCIe link per direction, GB/s")
    host_h2d_gbps: float = Field(gt=0, description="large pinned host-to-GPU copies, GB/s")
    host_d2h_gbps: float = Field(gt=0, description="large pinned GPU-to-host copies, GB/s")
    pageable_h2d_gbps: float = Field(gt=0)
    pageable_d2h_gbps: float = Field(gt=0)
    memcpy_call_us: float = Field(ge=0, description="fixed cost of one cudaMemcpyAsync, back to back")
    copy_kernel_launch_us: float = Field(ge=0, description="launch + completion sync of one copy kernel")
    copy_kernel_gbps: float = Field(gt=0, description="the gather/scatter kernel's own top rate")
    copy_kernel_compute_slowdown: float = Field(
        0.0, ge=0, description="fractional slowdown of an engine step while a copy kernel runs"
    )
    # The gather/scatter kernel runs on SMs, so it loses rate while the GPU computes beside it;
    # DMA copies (copy engines) do not. None: no measurement, the kernel keeps its full rate.
    copy_kernel_beside_decode: float | None = Field(
        None, gt=0, le=1,
        description="fraction of copy_kernel_gbps the copy kernel keeps while a memory-bound (decode) step runs",
    )
    copy_kernel_beside_prefill: float | None = Field(
        None, gt=0, le=1,
        description="fraction of copy_kernel_gbps the copy kernel keeps while a compute-bound (prefill) step runs",
    )
    linear_efficiency: float = Field(gt=0, le=1, description="fraction of dense peak reached by GEMMs")
    decode_bandwidth_efficiency: float = Field(
        gt=0, le=1, description="fraction of HBM bandwidth while a step streams the weights"
    )
    decode_efficiency_by_batch: dict[int, float] = Field(
        default_factory=dict,
        description="weight-streaming efficiency by tokens in the step (small batches are latency-bound); "
                    "interpolated in log2(tokens); empty: decode_bandwidth_efficiency throughout",
    )
    step_overhead_us: float = Field(0.0, ge=0, description="fixed cost of one engine step (scheduling, launch)")
    request_overhead_us: float = Field(
        0.0, ge=0, description="cost each scheduled request adds to a step beyond its FLOPs (sampling, bookkeeping)"
    )
    attention_backend: str = Field(
        "flash-attention-2", description="models/attention_backends card this GPU's engine uses by default"
    )
    memcpy_uncacheable_threshold_kb: float = Field(
        24.0, ge=0, description="cudaMemcpy from uncacheable host memory below this size is CPU-driven"
    )
    memcpy_uncacheable_small_us: float = Field(
        1230.0, ge=0, description="cost of one such CPU-driven small copy"
    )
    interconnect: str = Field(
        "pcie-gen5", description="models/interconnects card that joins this GPU's tensor-parallel ranks by default"
    )

    @model_validator(mode="after")
    def _copy_beside_both_or_neither(self):
        if (self.copy_kernel_beside_decode is None) != (self.copy_kernel_beside_prefill is None):
            raise ValueError("copy_kernel_beside_decode and copy_kernel_beside_prefill are measured together: "
                             "give both or neither")
        return self


class AttentionBackendCard(Card):
    """An attention kernel family; its efficiencies are fitted separately for prefill and decode."""

    prefill_efficiency: float = Field(gt=0, le=1, description="fraction of dense bf16 peak in prefill attention")
    decode_efficiency: float = Field(gt=0, le=1, description="fraction of HBM bandwidth while decode reads the KV cache")


class InterconnectCard(Card):
    """The GPU-to-GPU link a tensor-parallel instance all-reduces over, costed as NCCL's ring.

    One all-reduce of S bytes over n ranks takes, per protocol p in {LL, Simple},
      base_p + 2(n-1) x step_p + S x 2(n-1)/n / busBw_p
    and NCCL picks the faster protocol (NVIDIA/nccl src/graph/tuning.cc); busBw is the bus
    bandwidth nccl-tests reports (doc/PERFORMANCE.md: busBw = algBw x 2(n-1)/n), LL's is a
    fraction of Simple's."""

    kind: Literal["nvlink", "pcie"]
    link_gbps: float = Field(gt=0, description="line rate per GPU per direction, GB/s")
    bus_gbps: float = Field(gt=0, description="all-reduce bus bandwidth NCCL reaches (Simple protocol), GB/s")
    ll_base_us: float = Field(ge=0, description="fixed latency of one LL-protocol ring all-reduce")
    ll_step_us: float = Field(ge=0, description="latency per ring step, LL protocol")
    simple_base_us: float = Field(ge=0, description="fixed latency of one Simple-protocol ring all-reduce")
    simple_step_us: float = Field(ge=0, description="latency per ring step, Simple protocol")
    ll_bw_fraction: float = Field(gt=0, le=1, description="LL bus bandwidth as a share of bus_gbps")

    def all_reduce_s(self, nbytes: float, ranks: int) -> float:
        """Seconds for one ring all-reduce of nbytes (each rank's buffer) over `ranks` GPUs."""
        if ranks <= 1 or nbytes <= 0:
            return 0.0
        steps = 2 * (ranks - 1)
        wire = nbytes * steps / ranks  # bytes each rank sends: busBw's numerator
        ll = (self.ll_base_us + steps * self.ll_step_us) * 1e-6 + wire / (self.bus_gbps * self.ll_bw_fraction * 1e9)
        simple = (self.simple_base_us + steps * self.simple_step_us) * 1e-6 + wire / (self.bus_gbps * 1e9)
        return min(ll, simple)


class HostCard(Card):
    sockets: int = Field(2, gt=0)
    dram_gb: float = Field(gt=0, description="per server")
    dram_gbps_per_socket: float = Field(gt=0)
    dram_latency_ns: float = Field(gt=0)
    # Table 4 style costs of one 16 KB CPU transfer (microseconds).
    ntstore_16k_us: float = Field(gt=0, description="16 KB non-temporal store + sfence")
    cached_write_flush_16k_us: float = Field(gt=0, description="16 KB cached write + CLFLUSH")
    flush_read_16k_us: float = Field(gt=0, description="16 KB CLFLUSH then read")
    uncacheable_write_16k_us: float = Field(gt=0)
    uncacheable_read_16k_us: float = Field(gt=0)
    # Table 4, GPU copy kernel column: one 16 KB transfer, per visibility method.
    gpu_uncacheable_write_16k_us: float = Field(gt=0, description="uncacheable region, DDIO off")
    gpu_flush_write_16k_us: float = Field(gt=0, description="cached write + CLFLUSH")
    gpu_uncacheable_read_16k_us: float = Field(gt=0)
    gpu_flush_read_16k_us: float = Field(gt=0, description="CLFLUSH then read")
    # Software stages of a serving stack run on one CPU thread at these rates.
    memcpy_gbps: float = Field(6.5, gt=0, description="one thread's large memcpy, GB/s")
    sha256_gbps: float = Field(0.35, gt=0, description="one thread's hashlib.sha256 over token ids, GB/s")


class PCIeSwitchCard(Card):
    uplink_gbps: float = Field(gt=0, description="switch-to-root-complex link per direction, GB/s")
    hop_latency_us: float = Field(ge=0)


class RootComplexCard(Card):
    p2p_write_gbps_per_path: float = Field(gt=0, description="device-to-device writes through the RC, one path")
    p2p_read_gbps_per_path: float = Field(gt=0, description="device-to-device reads through the RC, one path")
    p2p_total_gbps: float = Field(gt=0, description="all peer-to-peer paths of one socket, per direction")


class CXLAdapterCard(Card):
    link_gbps: float = Field(gt=0, description="x16 link per direction after protocol overhead")
    cpu_read_gbps: float = Field(gt=0)
    cpu_write_gbps: float = Field(gt=0)
    price_usd: float | None = None


class CXLSwitchCard(Card):
    forwarding_gbps: float = Field(gt=0, description="total forwarding capacity per direction")
    access_latency_ns: float = Field(gt=0, description="64 B load through the switch, end to end")
    lanes: int = Field(gt=0)
    price_usd: float | None = None


class CXLMemoryCard(Card):
    capacity_gb: float = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0, description="one device, reads and writes together")


class NICCard(Card):
    ports: int = Field(gt=0)
    port_gbps: float = Field(gt=0, description="GB/s per port per direction")
    efficiency: float = Field(gt=0, le=1, description="payload share of line rate for large transfers")
    latency_us: float = Field(ge=0, description="one-sided operation latency")
    per_wr_us: float = Field(ge=0, description="CPU cost to post and complete one work request")
    max_sge: int = Field(gt=0, description="scatter-gather entries per work request")
    slice_kb: float = Field(gt=0, description="transfer engine slice size")
    price_usd: float | None = None


class NetworkSwitchCard(Card):
    port_gbps: float = Field(gt=0)
    latency_us: float = Field(ge=0)
    price_usd: float | None = None


class StageConfig(_Strict):
    """One software stage of a serving stack: fixed per call or per object, plus per byte.

    Runs on the instance's connector thread (a load or save) or in the scheduler (a lookup,
    which blocks the step like the metadata RPC)."""

    name: str
    ops: list[Literal["lookup", "load", "save"]] = Field(min_length=1)
    per: Literal["call", "chunk"] = Field("chunk", description="call: once per request's lookup/load/save; chunk: per object")
    fixed_us: float = Field(0.0, ge=0)
    gbps: float | Literal["host-memcpy", "host-sha256"] | None = Field(
        None, description="per-byte rate (a number in GB/s, or the host card's memcpy / sha256 rate)")
    bytes_of: Literal["kv", "token-ids", "token-id-prefixes"] = Field(
        "kv", description="what the per-byte part runs over: the KV moved, the token ids (4 B each), or every "
        "chunk's whole prefix of token ids (a hash that re-reads the prefix per chunk: quadratic)")
    min_object_kb: float = Field(0.0, ge=0, description="only objects larger than this pay the per-byte part")
    source: str = Field(min_length=1, description="the measurement or assumption behind the figures")


class StackCard(Card):
    """A serving software stack: connector semantics and granularity (defaults for the system's
    `kv`, which overrides them) and the software stages around each tier operation."""

    kv: dict[str, Any] = Field(default_factory=dict, description="defaults for the system's kv fields")
    stages: list[StageConfig] = Field(default_factory=list)
    threads: int = Field(1, gt=0, description="connector threads per instance that run load/save stages")

    def figure_rows(self) -> list[tuple[str, str, str]]:
        kv_src = self.sources.get("kv", "")
        rows = [(f"kv.{k}", str(v), kv_src) for k, v in self.kv.items()]
        rows.append(("threads", str(self.threads), self.sources.get("threads", "")))
        for st in self.stages:
            cost = []
            if st.fixed_us:
                cost.append(f"{st.fixed_us:g} us per {'call' if st.per == 'call' else 'object'}")
            if st.gbps is not None:
                rate = st.gbps if isinstance(st.gbps, str) else f"{st.gbps:g} GB/s"
                over = {"kv": "the KV", "token-ids": "token ids", "token-id-prefixes": "every chunk's prefix of token ids"}
                cost.append(f"{over[st.bytes_of]} at {rate}"
                            + (f" (objects over {st.min_object_kb:g} KB)" if st.min_object_kb else ""))
            rows.append((f"stage {st.name} ({', '.join(st.ops)})", "; ".join(cost) or "0", " ".join(st.source.split())))
        return rows

    @model_validator(mode="after")
    def _check_kv(self) -> StackCard:
        bad = set(self.kv) & {"kind", "capacity_gb"}
        if bad:
            raise ValueError(f"a stack sets software, not the tier: remove {sorted(bad)} from its kv")
        names = [st.name for st in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        return self


class RPCCard(Card):
    rtt_us: float = Field(gt=0, description="64 B request/reply round trip at queue depth 1")
    server_mops: float = Field(gt=0, description="server throughput, million ops/s")


CARD_KINDS: dict[str, type[Card]] = {
    "llms": LLMCard,
    "gpus": GPUCard,
    "interconnects": InterconnectCard,
    "attention_backends": AttentionBackendCard,
    "hosts": HostCard,
    "pcie_switches": PCIeSwitchCard,
    "root_complexes": RootComplexCard,
    "cxl_adapters": CXLAdapterCard,
    "cxl_switches": CXLSwitchCard,
    "cxl_memories": CXLMemoryCard,
    "nics": NICCard,
    "network_switches": NetworkSwitchCard,
    "rpcs": RPCCard,
    "stacks": StackCard,
}


class HardwareConfig(_Strict):
    host: HostCard
    pcie_switch: PCIeSwitchCard
    root_complex: RootComplexCard
    cxl_adapter: CXLAdapterCard
    cxl_switch: CXLSwitchCard
    cxl_memory: CXLMemoryCard
    nic: NICCard
    network_switch: NetworkSwitchCard
    cxl_rpc: RPCCard
    rdma_rpc: RPCCard


# which folder of models/ each card-valued field reads from
CARD_FIELDS: dict[str, str] = {
    "model": "llms",
    "gpu": "gpus",
    "interconnect": "interconnects",
    "attention": "attention_backends",
    "hardware.host": "hosts",
    "hardware.pcie_switch": "pcie_switches",
    "hardware.root_complex": "root_complexes",
    "hardware.cxl_adapter": "cxl_adapters",
    "hardware.cxl_switch": "cxl_switches",
    "hardware.cxl_memory": "cxl_memories",
    "hardware.nic": "nics",
    "hardware.network_switch": "network_switches",
    "hardware.cxl_rpc": "rpcs",
    "hardware.rdma_rpc": "rpcs",
}


# --------------------------------------------------------------------------- cluster and engine


class ClusterConfig(_Strict):
    servers: int = Field(1, gt=0)
    gpus_per_server: int = Field(8, gt=0)
    tensor_parallel: int = Field(1, gt=0, description="GPUs per instance: weights and KV heads split over them")
    pipeline_parallel: int = Field(1, gt=0, description="not simulated: only 1 is accepted")
    gpus_per_pcie_switch: int = Field(2, gt=0)
    cxl_adapters_per_server: int = Field(2, ge=0, description="one per socket in the paper's testbed")
    cxl_devices: int = Field(32, ge=0, description="memory devices behind the CXL switch (whole pool)")
    cxl_switches: int = Field(2, ge=0, description="switch chips in the CXL box")
    nics_per_server: int = Field(4, ge=0)
    # Prefill/decode disaggregation: how many instances of each server do prefill only.
    prefill_instances_per_server: int | None = Field(
        None, ge=0, description="None: every instance does both (no disaggregation)"
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        if self.pipeline_parallel != 1:
            raise ValueError("pipeline parallelism is not simulated: pipeline_parallel must be 1 "
                             "(use tensor_parallel to spread an instance over GPUs)")
        if self.gpus_per_server % self.tensor_parallel:
            raise ValueError(f"tensor_parallel={self.tensor_parallel} must divide gpus_per_server={self.gpus_per_server} "
                             "(an instance's ranks sit in one server)")
        per_server = self.gpus_per_server // self.tensor_parallel
        if self.prefill_instances_per_server is not None and self.prefill_instances_per_server >= per_server:
            raise ValueError("prefill_instances_per_server must leave at least one decode instance per server")
        return self

    @property
    def instances(self) -> int:
        return self.servers * self.gpus_per_server // self.tensor_parallel


class EngineConfig(_Strict):
    vllm: str | None = Field(
        None, description="a vLLM release (models/vllm/<version>.yaml) whose defaults fill the fields left unset"
    )
    entry_point: Literal["openai-api-server", "llm-class"] = Field(
        "openai-api-server", description="vLLM's UsageContext: `vllm serve` or the offline LLM class (picks batch defaults)"
    )
    block_size: int = Field(16, gt=0)
    max_num_batched_tokens: int = Field(2048, gt=0)
    max_num_seqs: int = Field(256, gt=0)
    gpu_memory_utilization: float = Field(0.92, gt=0, le=1)
    activation_reserve_gb: float = Field(0.0, ge=0, description="HBM held back for activations and graphs")
    kv_blocks: int | None = Field(None, gt=0, description="override the number of HBM KV blocks")
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = Field(
        True, description="vLLM V1 always chunks long prefills; False (whole prompts per step) is not simulated"
    )
    prefix_caching_hash_algo: str | None = Field(
        None, description="vLLM's block-hash function, recorded from the version profile (its cost is not modelled here)"
    )
    sources: dict[str, str] = Field(default_factory=dict, description="where each engine default comes from")
    decode_coalesce_steps: int = Field(
        512, ge=1, description="most decode steps simulated as one event when nothing else changes (1 = off)"
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if not self.enable_chunked_prefill:
            raise ValueError("enable_chunked_prefill: false is not simulated (the scheduler chunks prefills as vLLM V1 does)")
        return self


KVKind = Literal["hbm-only", "local-dram", "rdma-pool", "cxl-pool"]


class KVSystemConfig(_Strict):
    kind: KVKind = "hbm-only"
    capacity_gb: float = Field(2000.0, gt=0, description="pool size (local-dram: per server)")
    chunk_tokens: int = Field(16, gt=0, description="granularity of the tier: 16 native, 256 LMCache-like")
    copy_method: Literal["gather-kernel", "memcpy-per-fragment"] = Field(
        "gather-kernel", description="how the GPU side moves a batch of fragmented blocks"
    )
    coherence: Literal["uncacheable", "flush", "none"] = Field(
        "uncacheable", description="CXL visibility method for GPU copies (Table 4)"
    )
    interleave: bool = Field(True, description="stripe pool data over devices and adapters")
    stripe_mb: float = Field(2.0, gt=0)
    load_mode: Literal["async", "sync", "layerwise"] = Field(
        "async", description="connector loads: async (request waits, others step), sync (the admitting step "
        "waits, whole batch), layerwise (layer i waits for layer i's KV); see policy/connector.py")
    save_mode: Literal["async", "sync-step-end"] = Field(
        "async", description="connector saves: async, or sync-step-end (the step waits for its saves)")
    hold_blocks_until_saved: bool = Field(
        False, description="a finished request keeps its HBM blocks until its saves land")
    ordered_transfers: bool = Field(
        False, description="each GPU moves its loads one after another in issue order, and its saves likewise "
        "(one copy stream per direction, as vLLM's OffloadingConnector: vllm/v1/kv_offload/worker/cpu_gpu.py); "
        "false: concurrent transfers share the links")
    layer_sync_us: float = Field(
        0.0, ge=0, description="layerwise loads: launch + wait cost per layer per step")
    save: bool = True
    metadata_rpc: Literal["auto", "cxl-slots", "rdma", "none"] = "auto"
    rpc_keys_per_call: int = Field(64, gt=0, description="keys batched into one metadata RPC")
    pipeline_chunks: int = Field(4, gt=0, description="bounce-buffer path: chunks staged per pipeline unit")
    staging_gather: bool = Field(
        True, description="bounce-buffer path gathers a chunk contiguously on the GPU before the NIC"
    )


class RouterConfig(_Strict):
    policy: Literal["round-robin", "least-loaded", "cache-aware"] = "round-robin"
    load_cap: float = Field(
        1.5, gt=1, description="cache-aware: skip an instance whose load exceeds this x the least loaded + 1 prompt"
    )
    use_tier_hits: bool = Field(False, description="cache-aware: count pool hits too (they are equal everywhere)")


class SystemConfig(_Strict):
    name: str
    stack: StackCard | None = Field(None, description="software stack card (models/stacks/); sets kv defaults")
    kv: KVSystemConfig = Field(default_factory=KVSystemConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    description: str = ""


class PhaseConfig(_Strict):
    name: str
    workload: WorkloadConfig | None = Field(None, description="None: the scenario's workload (same prompts)")
    clear_hbm_cache: bool = Field(False, description="restart the engines (empty HBM cache) before the phase")
    wait_for_saves: bool = Field(
        False, description="let the saves still in flight finish before the phase (a benchmark's warm-up then measure)"
    )


# 16.8M gaps, 128 MiB: the conversation trace's 343 output tokens a request make that about
# 49,000 requests a phase, kept exactly; a million would need 2.7 GB.
ITL_EXACT_GAPS = 1 << 24


class RunConfig(_Strict):
    seed: int = 1
    phases: list[PhaseConfig] = Field(
        default_factory=lambda: [PhaseConfig(name="populate"), PhaseConfig(name="hit")], min_length=1,
        description="run one after another on the same caches; at least one",
    )

    @model_validator(mode="after")
    def _unique_phases(self) -> RunConfig:
        names = [p.name for p in self.phases]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"phase names must be unique, repeated: {dup}")
        return self
    max_sim_time_s: float = Field(7 * 24 * 3600.0, gt=0, description="stop a phase that runs longer than this")
    utilisation_series: bool = Field(
        False, description="record link utilisation and pool occupancy over time for the reports "
                           "(off by default: about 12% slower on the quickstart)")
    itl_exact_gaps: int = Field(
        ITL_EXACT_GAPS, ge=0,
        description="inter-token gaps kept one by one per system and phase (8 bytes each) for the "
                    "ITL statistics; past this many, they are folded into a histogram whose "
                    "quantiles are within 0.1% (the result's itl_rel_error says which)")


class PlanConfig(_Strict):
    """What `belusim plan --target-qps` may size: dotted paths with the values to try (e.g.
    cluster.servers: [1, 2, 4], cluster.cxl_devices: [8, 16, 32]); `systems.NAME.` paths
    apply to that system only."""

    sizeable: dict[str, list[Any]] = Field(default_factory=dict)


class Scenario(_Strict):
    name: str
    description: str = ""
    model: LLMCard
    gpu: GPUCard
    interconnect: InterconnectCard = Field(description="GPU-to-GPU link of tensor-parallel ranks (default: the GPU card's)")
    attention: AttentionBackendCard = Field(description="attention backend (default: the GPU card's)")
    hardware: HardwareConfig
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    systems: list[SystemConfig] = Field(min_length=1)
    workload: WorkloadConfig
    run: RunConfig = Field(default_factory=RunConfig)
    calibration: str | None = Field(None, description="calibration profile name or path")
    plan: PlanConfig = Field(default_factory=PlanConfig, description="knobs `belusim plan --target-qps` sizes")
    # Where relative paths in the scenario (trace files) are resolved from.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    # What the loader noticed but accepted (a calibration profile of another GPU...).
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    def size_problems(self) -> list[tuple[tuple, str]]:
        """Sizes past SIZE_LIMITS and sizes that do not fit together, as (field path, message)."""
        out = []
        for dotted, (limit, why) in SIZE_LIMITS.items():
            for loc, value in _values_at(self, dotted.split(".")):
                if isinstance(value, (int, float)) and value > limit:
                    out.append((loc, f"{value:,} is past the bound {limit:,} ({why})"))
        bs = self.engine.block_size
        bad = [f"{s.name} ({s.kv.chunk_tokens})" for s in self.systems
               if s.kv.kind != "hbm-only" and s.kv.chunk_tokens % bs]
        if bad:
            out.append((("engine", "block_size"), f"{bs} does not divide the kv.chunk_tokens of system "
                        f"{', '.join(bad)}: a tier chunk is a whole number of engine blocks"))
        return out

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @model_validator(mode="after")
    def _tensor_parallel_fits_model(self) -> Scenario:
        self.model.check_tensor_parallel(self.cluster.tensor_parallel)
        return self

    @model_validator(mode="after")
    def _unique_systems(self) -> Scenario:
        names = [s.name for s in self.systems]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"system names must be unique, repeated: {sorted(dup)}")
        return self

    def system(self, name: str) -> SystemConfig:
        for s in self.systems:
            if s.name == name:
                return s
        raise ConfigError(f"scenario {self.name!r} has no system {name!r}; it has {[s.name for s in self.systems]}")


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path, error=ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def list_cards(kind: str) -> list[str]:
    folder = models_dir() / kind
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_card_dict(kind: str, card_id: str) -> dict:
    path = models_dir() / kind / f"{card_id}.yaml"
    if not path.is_file():
        raise ConfigError(f"no {kind} card {card_id!r} (looked in {path.parent}); available: {list_cards(kind)}")
    data = _read_yaml(path)
    data.setdefault("id", card_id)
    return data


def load_card(kind: str, card_id: str) -> Card:
    data = load_card_dict(kind, card_id)
    try:
        return CARD_KINDS[kind].model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, models_dir() / kind / f"{card_id}.yaml")) from None


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _get_path(data: dict, dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _values_at(obj: Any, parts: list[str], loc: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every field at a dotted path; `*` runs over a list's items."""
    if not parts:
        return [(loc, obj)]
    head, rest = parts[0], parts[1:]
    if head == "*":
        return [x for i, item in enumerate(obj or []) for x in _values_at(item, rest, loc + (i,))]
    if isinstance(obj, BaseModel) and head in type(obj).model_fields:
        return _values_at(getattr(obj, head), rest, loc + (head,))
    return []


# Sane bounds on sizes. Past them memory or run time grows without limit (a typo such as
# `servers: 1e9` once grew to 6.9 GB before it was stopped). Each is far beyond a real
# deployment: change a bound here, with its reason, if a study needs more.
SIZE_LIMITS: dict[str, tuple[float, str]] = {
    "cluster.servers": (4096, "a simulated cluster of at most 4,096 servers"),
    "cluster.gpus_per_server": (64, "HGX-class servers hold 8; 64 allows large NVLink domains"),
    "cluster.gpus_per_pcie_switch": (64, "no PCIe switch has more downstream GPUs"),
    "cluster.cxl_adapters_per_server": (64, "a server has at most a few x16 slots"),
    "cluster.cxl_devices": (4096, "memory devices behind the CXL switches"),
    "cluster.cxl_switches": (256, "switch chips in the CXL fabric"),
    "cluster.nics_per_server": (64, "NICs per server"),
    "engine.block_size": (4096, "tokens per KV block"),
    "engine.max_num_seqs": (1 << 20, "requests in one batch"),
    "engine.max_num_batched_tokens": (1 << 24, "tokens in one step"),
    "engine.kv_blocks": (1 << 28, "HBM KV blocks per instance"),
    "systems.*.kv.capacity_gb": (1e8, "100 PB of pool"),
    "systems.*.kv.chunk_tokens": (1 << 20, "tokens per tier chunk"),
    "workload.num_prompts": (10_000_000, "requests per phase are held in memory"),
    "workload.arrival.clients": (1_000_000, "closed-loop clients"),
    "run.phases.*.workload.num_prompts": (10_000_000, "requests per phase are held in memory"),
    "run.phases.*.workload.arrival.clients": (1_000_000, "closed-loop clients"),
}


# The paper's testbed parts, used where a scenario names none.
DEFAULT_HARDWARE: dict[str, str] = {
    "host": "xeon-8575c",
    "pcie_switch": "gen5-x16",
    "root_complex": "xeon-8575c",
    "cxl_adapter": "pcie5-x16-cxl",
    "cxl_switch": "xconn-xc50256",
    "cxl_memory": "ddr5-256g",
    "nic": "cx7-2x200",
    "network_switch": "roce-400g",
    "cxl_rpc": "cxl-shared-slots",
    "rdma_rpc": "rdma-rc",
}


def _card(kind: str, card_id: Any, where: str, dotted: str) -> dict:
    if not isinstance(card_id, str):
        raise ConfigError(f"{where}: field '{dotted}' must be a card id, got {_short(card_id)}")
    try:
        return load_card_dict(kind, card_id)
    except ConfigError as e:
        raise ConfigError(f"{where}: field '{dotted}': {e}") from None


def _expand_cards(raw: dict, where: str, origin: dict[str, str] | None = None) -> dict:
    data = copy.deepcopy(raw)
    hw = data.setdefault("hardware", {})
    if not isinstance(hw, dict):
        raise ConfigError(f"{where}: field 'hardware' must be a mapping of part -> card id")
    for part, card_id in DEFAULT_HARDWARE.items():
        hw.setdefault(part, card_id)
    for dotted, kind in CARD_FIELDS.items():
        parent_path, _, leaf = dotted.rpartition(".")
        parent = _get_path(data, parent_path) if parent_path else data
        if not isinstance(parent, dict) or leaf not in parent:
            continue
        ref = parent[leaf]
        at = (origin or {}).get(dotted, where)
        if isinstance(ref, str):
            parent[leaf] = _card(kind, ref, at, dotted)
        elif isinstance(ref, dict) and "card" in ref:
            over = {k: v for k, v in ref.items() if k != "card"}
            base = _card(kind, ref["card"], at, f"{dotted}.card")
            merged = deep_merge(base, over)
            if over:
                merged["id"] = over.get("id", f"{base['id']}+overrides")
            parent[leaf] = merged
        elif not isinstance(ref, dict):
            raise ConfigError(f"{where}: field '{dotted}' must be a card id or a mapping, got {ref!r}")
    # The GPU card names the link its tensor-parallel ranks use and its attention backend,
    # unless the scenario names others.
    for field, kind in (("interconnect", "interconnects"), ("attention", "attention_backends")):
        gpu_field = "attention_backend" if field == "attention" else field
        if field not in data and isinstance(data.get("gpu"), dict):
            ref = data["gpu"].get(gpu_field, GPUCard.model_fields[gpu_field].default)
            if not isinstance(ref, str):
                raise ConfigError(f"{where}: field 'gpu.{gpu_field}' must be a {kind} card id, got {ref!r}")
            data[field] = _card(kind, ref, where, f"gpu.{gpu_field}")
    systems = data.get("systems")
    if isinstance(systems, list):
        for i, system in enumerate(systems):
            if isinstance(system, dict) and "stack" in system:
                _expand_stack(system, f"{where}: systems.{i}")
    return data


def _expand_stack(system: dict, where: str) -> None:
    """Expand a system's stack card and put its kv defaults under the system's own kv."""
    ref = system["stack"]
    if isinstance(ref, str):
        card = _card("stacks", ref, where, "stack")
    elif isinstance(ref, dict) and "card" in ref:
        over = {k: v for k, v in ref.items() if k != "card"}
        card = deep_merge(_card("stacks", ref["card"], where, "stack.card"), over)
        if over:
            card["id"] = over.get("id", f"{ref['card']}+overrides")
    elif ref is None or isinstance(ref, dict):
        return
    else:
        raise ConfigError(f"{where}.stack must be a stack card id or a mapping, got {ref!r}")
    system["stack"] = card
    kv = system.get("kv", {})
    if not isinstance(kv, dict):
        raise ConfigError(f"{where}.kv must be a mapping")
    defaults = card.get("kv", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"stack card {card.get('id')!r}: kv must be a mapping")
    system["kv"] = deep_merge({k: v for k, v in defaults.items() if k not in ("kind", "capacity_gb")}, kv)


def set_path(data: dict, dotted: str, value: Any, where: str = "--set") -> tuple:
    """Set a dotted path; list items of `systems`/`phases` can be named by their `name`.
    Returns the path as set, list items as indices (to tell which errors it caused)."""
    parts = dotted.split(".")
    cur: Any = data
    done: list = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            idx = None
            if part.isdigit() and int(part) < len(cur):
                idx = int(part)
            else:
                for j, item in enumerate(cur):
                    if isinstance(item, dict) and item.get("name") == part:
                        idx = j
                        break
            if idx is None:
                raise ConfigError(f"{where}: '{dotted}': no list item named {part!r}")
            done.append(idx)
            if last:
                cur[idx] = value
            else:
                cur = cur[idx]
            continue
        if not isinstance(cur, dict):
            raise ConfigError(f"{where}: '{dotted}': '{'.'.join(parts[:i])}' is not a mapping")
        done.append(part)
        if last:
            cur[part] = value
        else:
            if part not in cur or cur[part] is None:
                cur[part] = {}
            cur = cur[part]
    return tuple(done)


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected path.to.field=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not p.strip() for p in key.split(".")):
            raise ConfigError(f"--set {item!r}: the field path {key!r} has an empty part")
        # a value that is not valid YAML is an error, not silently a string: quote strings
        value = parse_yaml(text, f"--set {item!r}", error=ConfigError, lines=False) if text != "" else ""
        out.append((key, value))
    return out


def find_profile(name_or_path: str, base_dir: Path | None = None) -> Path:
    p = Path(name_or_path)
    candidates = [p]
    if base_dir is not None and not p.is_absolute():
        candidates.append(base_dir / p)
    stem = p.name if p.suffix == ".json" else f"{p.name}.json"
    candidates.append(calibration_dir() / stem)
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"calibration profile {name_or_path!r} not found (looked at {[str(c) for c in candidates]})")


def load_profile_overrides(path: Path) -> dict[str, Any]:
    """The fitted parameters of a calibration profile as {dotted.path: value}."""
    prof = read_json(path, error=ConfigError)
    fitted = prof.get("fitted") if isinstance(prof, dict) else None
    if not isinstance(fitted, dict):
        raise ConfigError(f"{path}: a calibration profile needs a 'fitted' mapping of dotted.path -> value")
    from belusim.calibration.fit import LEGACY_KEYS

    out = {}
    for key, v in fitted.items():
        key = LEGACY_KEYS.get(key, key)
        out[key] = v["value"] if isinstance(v, dict) and "value" in v else v
    return out


def _short(x: Any, limit: int = 80) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _origin_of(loc: tuple, origins: list[tuple[tuple, str]]) -> str | None:
    """The override (--set item or profile) that set the field at `loc`, if any: its path
    must run along `loc` (pydantic may add a union tag in between) or contain it."""
    best = None
    for path, label in origins:
        it = iter(loc)
        if all(any(p == x for x in it) for p in path) or (loc and tuple(path[: len(loc)]) == tuple(loc)):
            best = label  # the last override of a field wins, as when applying them
    return best


def _dotted(loc: tuple, data: Any = None) -> str:
    return ".".join(str(x) for x in loc) or "(top level)"


def _format_validation(err: ValidationError, where: Path | str, origins: list[tuple[tuple, str]] = (),
                       what: str = "invalid scenario", data: Any = None) -> str:
    """One line per error, each blamed on the file or on the override that set the field."""
    items = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = _dotted(loc, data)
        msg = e["msg"]
        if e["type"] != "missing" and not isinstance(e.get("input"), (dict, list)):
            msg += f" (got {_short(e.get('input'))})"
        items.append((_origin_of(loc, list(origins)), f"{dotted}: {msg}"))
    sources = {src for src, _ in items}
    if len(sources) == 1 and None not in sources:
        head = f"{next(iter(sources))}: {what}"
        return "\n".join([head] + [f"  {line}" for _, line in items])
    lines = [f"{where}: {what}"]
    lines += [f"  {line}" + (f" (set by {src})" if src else "") for src, line in items]
    return "\n".join(lines)


def resolve_scenario(
    source: Path | dict,
    overrides: list[str] | None = None,
    calibration: str | None = None,
) -> tuple[Scenario, dict]:
    """Load, expand cards, calibrate, override, validate. Returns the scenario and its resolved dict."""
    if isinstance(source, dict):
        raw, where, base_dir = source, "<scenario>", Path.cwd()
    else:
        path = Path(source)
        raw, where, base_dir = _read_yaml(path), str(path), path.resolve().parent
        if {"scenario", "parameter", "values"} <= raw.keys():
            raise ConfigError(f"{path} is a sweep, not a scenario: run it with `belusim sweep {path}`")
    items = list(overrides or [])
    sets = parse_set(items)
    labels = [f"--set {item}" for item in items]
    # Which override set which field, so that an error names it rather than the file.
    origins: list[tuple[tuple, str]] = []
    # A card-valued field set to a card id (--set gpu=h100) is applied before the cards
    # are expanded; everything else after, so it can reach into a card.
    raw = copy.deepcopy(raw)
    early: dict[str, str] = {}
    for (key, value), label in zip(sets, labels):
        if key in CARD_FIELDS:
            origins.append((set_path(raw, key, value, where=label), label))
            early[key] = label
    data = _expand_cards(raw, where, early)
    cal = calibration or data.get("calibration")
    warnings: list[str] = []
    if cal is not None and not isinstance(cal, str):
        # Checked before the profile is looked up: pydantic only sees the field afterwards.
        raise ConfigError(f"{where}: calibration: expected a profile name or path (a string), "
                          f"got a {type(cal).__name__}: {cal!r:.80}")
    if cal:
        prof = find_profile(cal, base_dir)
        fitted = load_profile_overrides(prof)
        warnings += _calibration_mismatch(prof, fitted, data)
        for key, value in fitted.items():
            origins.append((set_path(data, key, value, where=str(prof)), f"calibration profile {prof}"))
            _note_source(data, key, f"measured: calibration profile {prof.name}")
        data["calibration"] = str(cal)
    for (key, value), label in zip(sets, labels):
        if key not in CARD_FIELDS:
            origins.append((set_path(data, key, value, where=label), label))
    try:
        apply_vllm_profile(data)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where, origins, data=data)) from None
    problems = scenario.size_problems()
    if problems:
        lines = [(_origin_of(loc, origins), f"{_dotted(loc, data)}: {msg}") for loc, msg in problems]
        srcs = {src for src, _ in lines}
        head = next(iter(srcs)) if len(srcs) == 1 and None not in srcs else where
        raise ConfigError("\n".join([f"{head}: invalid scenario"] + [
            f"  {line}" + (f" (set by {src})" if src and head == where else "") for src, line in lines]))
    scenario._base_dir = base_dir
    scenario._warnings = warnings
    return scenario, data


def _calibration_mismatch(prof: Path, fitted: dict[str, Any], data: dict) -> list[str]:
    """A profile measured on one GPU applied to a scenario on another: say so."""
    if not any(k.startswith("gpu.") for k in fitted):
        return []
    try:
        measured = (read_json(prof, error=ConfigError).get("machine") or {}).get("gpu") or {}
    except (ConfigError, AttributeError):
        return []
    name = measured.get("name") if isinstance(measured, dict) else None
    card = str((data.get("gpu") or {}).get("id", "?")).split("+")[0]
    if not name:
        return [f"calibration profile {prof} does not say which GPU it measured; its gpu.* values "
                f"are applied to the scenario's {card}"]
    from belusim.calibration.models import nominal_gpu_peaks

    match = nominal_gpu_peaks(str(name))
    if match is None or match[0] != card:
        return [f"calibration profile {prof} measured {name!r} but the scenario's GPU is {card!r}: "
                f"its gpu.* values ({', '.join(k for k in fitted if k.startswith('gpu.'))}) are applied anyway"]
    return []


def _note_source(data: dict, dotted: str, note: str) -> None:
    parent_path, _, leaf = dotted.rpartition(".")
    parent = _get_path(data, parent_path) if parent_path else None
    if isinstance(parent, dict) and isinstance(parent.get("sources"), dict):
        parent["sources"][leaf] = note
