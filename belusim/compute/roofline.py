"""How long one engine step takes on one instance, from the batch's token composition.

A roofline per step on each of the instance's TP ranks (all times in seconds):
  linear   = max((tokens x body FLOPs + sequences x LM-head FLOPs) / TP / (peak x linear_efficiency),
               weight bytes / TP / (HBM bandwidth x weight-streaming efficiency at `tokens`))
  attention= prefill attention FLOPs / TP / (bf16 peak x backend prefill_efficiency)
  kv read  = KV bytes read by decoding requests, this rank's heads / (HBM x backend decode_efficiency)
  comm     = 2 x layers all-reduces of tokens x hidden activations over the interconnect (TP > 1)
  step     = step_overhead + sequences x request_overhead + linear + attention + kv read + comm
The weight-streaming efficiency comes from the GPU's decode_efficiency_by_batch (a step of few
tokens is latency-bound: small GEMMs and the kernels between them do not reach HBM bandwidth),
interpolated in log2(tokens), or decode_bandwidth_efficiency where the table is empty. The
attention efficiencies belong to the attention backend (FlashAttention-2/3, FlashInfer).
The LM head runs once per scheduled sequence per step (vLLM computes logits only at each
request's last scheduled position: gpu_model_runner.py, logits_indices), not per prefill
token. Prefill attention FLOPs for n new tokens after c cached ones: 4 x layers x q_heads x
head_dim x n x (c + n/2) (components.md). Tensor parallelism splits every matrix and the
attention heads over the ranks (Megatron-style: one all-reduce after attention, one after the
MLP, per layer), all costed with the interconnect card's NCCL ring formula. Calibration fits
the efficiencies from per-layer timings with `layer_prefill_time` / `layer_decode_time`, which
use the same formula.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

from belusim.config.scenario import AttentionBackendCard, GPUCard, InterconnectCard, LLMCard, load_card

ACTIVATION_BYTES = 2  # bf16 activations are what the TP all-reduces carry


@dataclass(frozen=True, slots=True)
class ComputeModel:
    peak_flops: float
    hbm_bytes_per_s: float
    body_flops_per_token: float  # the transformer layers, per rank
    head_flops_per_seq: float  # the LM head for one sampled position, per rank
    attn_flops_coeff: float  # 4 * layers * q_heads * head_dim / TP
    weight_bytes: float  # per rank
    kv_bytes_per_token: float  # per rank
    step_overhead_s: float
    linear_rate: float  # achieved FLOP/s for GEMMs
    attn_rate: float
    mem_rate: float  # achieved HBM bytes/s streaming the weights (no table)
    kv_rate: float = 0.0  # achieved HBM bytes/s reading the KV cache in decode attention
    request_overhead_s: float = 0.0
    eff_log2_tokens: tuple = ()  # the weight-streaming table: log2(tokens) ...
    eff_values: tuple = ()  # ... and the efficiency there
    tp: int = 1
    layers: int = 0
    allreduce_bytes_per_token: float = 0.0  # hidden x activation bytes
    interconnect: InterconnectCard | None = None

    @classmethod
    def build(cls, model: LLMCard, gpu: GPUCard, tp: int = 1, interconnect: InterconnectCard | None = None,
              attention: AttentionBackendCard | None = None) -> ComputeModel:
        if tp > 1 and interconnect is None:
            raise ValueError("tensor_parallel > 1 needs an interconnect card to cost its all-reduces")
        if attention is None:
            attention = load_card("attention_backends", gpu.attention_backend)  # type: ignore
        peak, linear_rate, attn_rate, mem_rate = _rates(model, gpu, attention)
        table = sorted(gpu.decode_efficiency_by_batch.items())
        return cls(
            peak_flops=peak,
            hbm_bytes_per_s=gpu.hbm_gbps * 1e9,
            body_flops_per_token=2.0 * model.layers * model.params_per_layer / tp,
            head_flops_per_seq=2.0 * model.vocab * model.hidden / tp,
            attn_flops_coeff=4.0 * model.layers * model.q_heads * model.head_dim / tp,
            weight_bytes=model.weight_bytes_per_rank(tp),
            kv_bytes_per_token=model.kv_bytes_per_token_per_rank(tp),
            step_overhead_s=gpu.step_overhead_us * 1e-6,
            linear_rate=linear_rate,
            attn_rate=attn_rate,
            mem_rate=mem_rate,
            kv_rate=gpu.hbm_gbps * 1e9 * attention.decode_efficiency,  # type: ignore
            request_overhead_s=gpu.request_overhead_us * 1e-6,
            eff_log2_tokens=tuple(math.log2(b) for b, _ in table),
            eff_values=tuple(e for _, e in table),
            tp=tp,
            layers=model.layers,
            allreduce_bytes_per_token=model.hidden * ACTIVATION_BYTES,
            interconnect=interconnect if tp > 1 else None,
        )

    def comm_time(self, tokens: int) -> float:
        """The step's tensor-parallel all-reduces: two per layer of tokens x hidden activations."""
        if self.interconnect is None or tokens <= 0:
            return 0.0
        return 2 * self.layers * self.interconnect.all_reduce_s(tokens * self.allreduce_bytes_per_token, self.tp)

    def weight_rate(self, tokens: int) -> float:
        """HBM bytes/s a step of `tokens` tokens reaches while streaming the weights."""
        xs = self.eff_log2_tokens
        if not xs:
            return self.mem_rate
        x = math.log2(max(tokens, 1))
        i = bisect_right(xs, x)
        if i == 0:
            e = self.eff_values[0]
        elif i == len(xs):
            e = self.eff_values[-1]
        else:
            f = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            e = self.eff_values[i - 1] + f * (self.eff_values[i] - self.eff_values[i - 1])
        return self.hbm_bytes_per_s * e

    def _linear(self, tokens: int, seqs: int) -> float:
        flops = tokens * self.body_flops_per_token + seqs * self.head_flops_per_seq
        return max(flops / self.linear_rate, self.weight_bytes / self.weight_rate(tokens)) + seqs * self.request_overhead_s

    def step_time(self, tokens: int, prefill_attn_units: float, decode_context_tokens: int, seqs: int) -> float:
        """tokens: all tokens scheduled this step; prefill_attn_units: sum over prefill chunks
        of n x (c + n/2); decode_context_tokens: total context of the decoding requests;
        seqs: requests scheduled this step (each samples once through the LM head)."""
        if tokens <= 0:
            return 0.0
        attention = prefill_attn_units * self.attn_flops_coeff / self.attn_rate
        kv_read = decode_context_tokens * self.kv_bytes_per_token / self.kv_rate
        return self.step_overhead_s + self._linear(tokens, seqs) + attention + kv_read + self.comm_time(tokens)

    def compute_bound(self, tokens: int, prefill_attn_units: float, decode_context_tokens: int, seqs: int) -> bool:
        """Whether the step spends longer on FLOPs (GEMMs at the FLOP rate, prefill attention)
        than on streaming HBM (the weights, the decoding requests' KV): a prefill-like step,
        not a decode-like one. Same terms as step_time."""
        flops = (tokens * self.body_flops_per_token + seqs * self.head_flops_per_seq) / self.linear_rate \
            + prefill_attn_units * self.attn_flops_coeff / self.attn_rate
        streaming = self.weight_bytes / self.weight_rate(tokens) + decode_context_tokens * self.kv_bytes_per_token / self.kv_rate
        return flops > streaming

    def decode_run(self, batch: int, context0: int):
        """Coefficients (a, b) of a pure-decode step: t_j = a + b x (context0 + j x batch),
        so m steps take m*a + b*(m*context0 + batch*m*(m-1)/2)."""
        a = self.step_overhead_s + self._linear(batch, batch) + self.comm_time(batch)
        b = self.kv_bytes_per_token / self.kv_rate
        return a, b


def _rates(model, gpu, attention=None) -> tuple[float, float, float, float]:
    """(peak, achieved GEMM FLOP/s, achieved attention FLOP/s, achieved HBM bytes/s).

    Without an attention backend, `gpu` carries the prefill attention efficiency itself (the
    calibration fits pass such a namespace)."""
    fp8 = model.weight_bytes_per_param <= 1 and gpu.dense_fp8_tflops
    peak = (gpu.dense_fp8_tflops if fp8 else gpu.dense_bf16_tflops) * 1e12
    # Attention runs at bf16 even for FP8 weights.
    e_attn = attention.prefill_efficiency if attention is not None else gpu.attention_efficiency
    attn = gpu.dense_bf16_tflops * 1e12 * e_attn
    return peak, peak * gpu.linear_efficiency, attn, gpu.hbm_gbps * 1e9 * gpu.decode_bandwidth_efficiency


# --- per-layer forms, used by calibration to fit the efficiencies -----------------------
# (one GPU; `model` and `gpu` may be any objects with the card's attributes, `gpu` then also
# carrying attention_efficiency; the decode form uses one HBM efficiency for weights and KV)


def layer_prefill_time(model: LLMCard, gpu: GPUCard, new_tokens: int, cached_tokens: int) -> float:
    _, linear_rate, attn_rate, _ = _rates(model, gpu)
    lin = new_tokens * model.params_per_layer * 2.0 / linear_rate
    attn = 4.0 * model.q_heads * model.head_dim * new_tokens * (cached_tokens + new_tokens / 2) / attn_rate
    return lin + attn


def layer_decode_time(model: LLMCard, gpu: GPUCard, batch: int, context_tokens: int) -> float:
    _, linear_rate, _, mem_rate = _rates(model, gpu)
    layer_weights = model.params_per_layer * model.weight_bytes_per_param
    lin = max(batch * model.params_per_layer * 2.0 / linear_rate, layer_weights / mem_rate)
    kv = batch * context_tokens * model.kv_bytes_per_token / model.layers / mem_rate
    return lin + kv
