"""How long one engine step takes on one GPU, from the batch's token composition.

A roofline per step (all times in seconds):
  linear   = max(linear FLOPs of all scheduled tokens / (peak x linear_efficiency),
               weight bytes / (HBM bandwidth x decode_bandwidth_efficiency))
  attention= prefill attention FLOPs / (peak x attention_efficiency)
  kv read  = KV bytes read by decoding requests / (HBM bandwidth x decode_bandwidth_efficiency)
  step     = step_overhead + linear + attention + kv read
Prefill attention FLOPs for n new tokens after c cached ones: 4 x layers x q_heads x
head_dim x n x (c + n/2) (components.md). Calibration fits the three efficiencies from
per-layer timings with `layer_prefill_time` / `layer_decode_time`, which use the same formula.
"""

from __future__ import annotations

from dataclasses import dataclass

from belusim.config.scenario import GPUCard, LLMCard


@dataclass(frozen=True, slots=True)
class ComputeModel:
    peak_flops: float
    hbm_bytes_per_s: float
    linear_flops_per_token: float
    attn_flops_coeff: float  # 4 * layers * q_heads * head_dim
    weight_bytes: float
    kv_bytes_per_token: float
    step_overhead_s: float
    linear_rate: float  # achieved FLOP/s for GEMMs
    attn_rate: float
    mem_rate: float  # achieved HBM bytes/s

    @classmethod
    def build(cls, model: LLMCard, gpu: GPUCard) -> ComputeModel:
        fp8 = model.weight_bytes_per_param <= 1 and gpu.dense_fp8_tflops
        peak = (gpu.dense_fp8_tflops if fp8 else gpu.dense_bf16_tflops) * 1e12
        hbm = gpu.hbm_gbps * 1e9
        return cls(
            peak_flops=peak,
            hbm_bytes_per_s=hbm,
            linear_flops_per_token=model.linear_flops_per_token,
            attn_flops_coeff=4.0 * model.layers * model.q_heads * model.head_dim,
            weight_bytes=model.weight_bytes,
            kv_bytes_per_token=model.kv_bytes_per_token,
            step_overhead_s=gpu.step_overhead_us * 1e-6,
            linear_rate=peak * gpu.linear_efficiency,
            # Attention runs at bf16 even for FP8 weights.
            attn_rate=gpu.dense_bf16_tflops * 1e12 * gpu.attention_efficiency,
            mem_rate=hbm * gpu.decode_bandwidth_efficiency,
        )

    def step_time(self, tokens: int, prefill_attn_units: float, decode_context_tokens: int) -> float:
        """tokens: all tokens scheduled this step; prefill_attn_units: sum over prefill chunks
        of n x (c + n/2); decode_context_tokens: total context of the decoding requests."""
        if tokens <= 0:
            return 0.0
        linear = max(tokens * self.linear_flops_per_token / self.linear_rate, self.weight_bytes / self.mem_rate)
        attention = prefill_attn_units * self.attn_flops_coeff / self.attn_rate
        kv_read = decode_context_tokens * self.kv_bytes_per_token / self.mem_rate
        return self.step_overhead_s + linear + attention + kv_read

    def decode_run(self, batch: int, context0: int):
        """Coefficients (a, b) of a pure-decode step: t_j = a + b x (context0 + j x batch),
        so m steps take m*a + b*(m*context0 + batch*m*(m-1)/2)."""
        a = self.step_overhead_s + max(
            batch * self.linear_flops_per_token / self.linear_rate, self.weight_bytes / self.mem_rate
        )
        b = self.kv_bytes_per_token / self.mem_rate
        return a, b


# --- per-layer forms, used by calibration to fit the efficiencies -----------------------


def layer_prefill_time(model: LLMCard, gpu: GPUCard, new_tokens: int, cached_tokens: int) -> float:
    cm = ComputeModel.build(model, gpu)
    lin = new_tokens * model.params_per_layer * 2.0 / cm.linear_rate
    attn = 4.0 * model.q_heads * model.head_dim * new_tokens * (cached_tokens + new_tokens / 2) / cm.attn_rate
    return lin + attn


def layer_decode_time(model: LLMCard, gpu: GPUCard, batch: int, context_tokens: int) -> float:
    cm = ComputeModel.build(model, gpu)
    layer_weights = model.params_per_layer * model.weight_bytes_per_param
    lin = max(batch * model.params_per_layer * 2.0 / cm.linear_rate, layer_weights / cm.mem_rate)
    kv = batch * context_tokens * model.kv_bytes_per_token / model.layers / cm.mem_rate
    return lin + kv
