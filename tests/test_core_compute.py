"""Compute model: the roofline pieces of one step and the closed form of a decode run."""

from __future__ import annotations

import pytest

from belusim.calibration.models import gpu_namespace
from belusim.compute.roofline import ComputeModel, layer_decode_time, layer_prefill_time
from belusim.config.scenario import GB, load_card


@pytest.fixture
def cm():
    return ComputeModel.build(load_card("llms", "qwen3-32b"), load_card("gpus", "h20"))


def test_build_from_cards():
    m, g = load_card("llms", "qwen3-32b"), load_card("gpus", "h20")
    cm = ComputeModel.build(m, g)
    assert cm.peak_flops == g.dense_bf16_tflops * 1e12
    assert cm.linear_rate == pytest.approx(g.dense_bf16_tflops * 1e12 * g.linear_efficiency)
    att = load_card("attention_backends", g.attention_backend)
    assert cm.attn_rate == pytest.approx(g.dense_bf16_tflops * 1e12 * att.prefill_efficiency)
    assert cm.kv_rate == pytest.approx(g.hbm_gbps * 1e9 * att.decode_efficiency)
    assert cm.mem_rate == pytest.approx(g.hbm_gbps * 1e9 * g.decode_bandwidth_efficiency)
    assert cm.attn_flops_coeff == 4 * 64 * 64 * 128
    assert cm.weight_bytes == 60.0 * GB
    assert cm.kv_bytes_per_token == 256 * 1024
    assert cm.step_overhead_s == pytest.approx(g.step_overhead_us * 1e-6)
    # FP8 weights use the FP8 peak for GEMMs but attention stays at bf16
    fp8 = ComputeModel.build(load_card("llms", "qwen3-32b-fp8"), g)
    assert fp8.linear_rate == pytest.approx(g.dense_fp8_tflops * 1e12 * g.linear_efficiency)
    assert fp8.attn_rate == pytest.approx(cm.attn_rate)


def test_llm_params_and_linear_flops():
    m = load_card("llms", "llama-3.1-8b")
    per_layer = 4096 * 32 * 128 * 2 + 4096 * 8 * 128 * 2 + 3 * 4096 * 14336
    assert m.params_per_layer == per_layer
    assert m.params == 32 * per_layer + 2 * 128256 * 4096
    assert m.linear_flops_per_token == 2.0 * (32 * per_layer + 128256 * 4096)
    assert m.weight_bytes == m.params * 2  # no weight_gb on this card: derived


def test_zero_tokens_take_no_time(cm):
    assert cm.step_time(0, 0.0, 0, 0) == 0.0


def test_small_batch_is_weight_bound(cm):
    t = cm.step_time(1, 0.0, 0, 1)
    weights = cm.weight_bytes / cm.mem_rate
    assert (cm.body_flops_per_token + cm.head_flops_per_seq) / cm.linear_rate < weights
    assert t == pytest.approx(cm.step_overhead_s + weights, rel=1e-12)


def test_large_prefill_is_flop_bound_with_attention(cm):
    n, c = 2048, 4096
    units = n * (c + n / 2)
    t = cm.step_time(n, units, 0, 1)
    # one prefill sequence: the LM head runs once, not for each of its n tokens
    linear = (n * cm.body_flops_per_token + cm.head_flops_per_seq) / cm.linear_rate
    assert linear > cm.weight_bytes / cm.mem_rate
    attention = units * cm.attn_flops_coeff / cm.attn_rate
    assert t == pytest.approx(cm.step_overhead_s + linear + attention, rel=1e-12)
    # the attention term is linear in its units
    assert cm.step_time(n, 2 * units, 0, 1) - t == pytest.approx(attention, rel=1e-9)


def test_kv_read_term_of_decoders(cm):
    t0 = cm.step_time(8, 0.0, 0, 8)
    t1 = cm.step_time(8, 0.0, 100_000, 8)
    assert t1 - t0 == pytest.approx(100_000 * cm.kv_bytes_per_token / cm.mem_rate, rel=1e-9)


def test_linear_term_is_max_of_flops_and_weights(cm):
    # the crossover batch where the GEMMs become slower than streaming the weights
    per_seq = cm.body_flops_per_token + cm.head_flops_per_seq  # a decode token samples once
    cross = cm.weight_bytes / cm.mem_rate * cm.linear_rate / per_seq
    below, above = int(cross * 0.5), int(cross * 2)
    assert cm.step_time(below, 0, 0, below) == pytest.approx(cm.step_overhead_s + cm.weight_bytes / cm.mem_rate)
    assert cm.step_time(above, 0, 0, above) == pytest.approx(
        cm.step_overhead_s + above * per_seq / cm.linear_rate)


@pytest.mark.parametrize("batch,c0,m", [(1, 100, 1), (3, 5000, 7), (40, 123_457, 300), (300, 10, 50)])
def test_decode_run_closed_form_equals_sum_of_steps(cm, batch, c0, m):
    a, b = cm.decode_run(batch, c0)
    closed = m * a + b * (m * c0 + batch * m * (m - 1) / 2)
    summed = sum(cm.step_time(batch, 0.0, c0 + j * batch, batch) for j in range(m))
    assert closed == pytest.approx(summed, rel=1e-12)
    assert a + b * c0 == pytest.approx(cm.step_time(batch, 0.0, c0, batch), rel=1e-12)


def test_layer_forms_times_layers_match_step_without_overhead():
    m, card = load_card("llms", "qwen2.5-32b"), load_card("gpus", "h20")
    # the calibration fits pass a namespace with the attention efficiency on the GPU, and one HBM
    # efficiency for weights and KV
    g = gpu_namespace(card.dense_bf16_tflops, card.hbm_gbps, card.linear_efficiency, 0.45,
                      card.decode_bandwidth_efficiency)
    att = load_card("attention_backends", "flash-attention-2").model_copy(
        update={"prefill_efficiency": 0.45, "decode_efficiency": card.decode_bandwidth_efficiency})
    cm = ComputeModel.build(m, card, attention=att)
    n, c = 1024, 2048
    per_layer = layer_prefill_time(m, g, n, c)
    attn = 4 * m.q_heads * m.head_dim * n * (c + n / 2) / cm.attn_rate
    assert per_layer == pytest.approx(n * m.params_per_layer * 2 / cm.linear_rate + attn, rel=1e-12)
    # summed over layers, the attention part equals the step model's attention term
    assert m.layers * attn == pytest.approx(n * (c + n / 2) * cm.attn_flops_coeff / cm.attn_rate, rel=1e-12)
    d = layer_decode_time(m, g, 4, 1000)
    lw = m.params_per_layer * m.weight_bytes_per_param
    assert d == pytest.approx(max(4 * m.params_per_layer * 2 / cm.linear_rate, lw / cm.mem_rate)
                              + 4 * 1000 * m.kv_bytes_per_token / m.layers / cm.kv_rate, rel=1e-12)


def test_lm_head_counts_once_per_sequence(cm):
    m = load_card("llms", "qwen3-32b")
    assert cm.head_flops_per_seq == 2.0 * m.vocab * m.hidden
    assert cm.body_flops_per_token == 2.0 * m.layers * m.params_per_layer
    # a 4096-token prefill chunk of one request vs the same tokens spread over 4 requests:
    # only the LM head differs, by 3 sequences' worth
    one = cm.step_time(4096, 0.0, 0, 1)
    four = cm.step_time(4096, 0.0, 0, 4)
    assert four - one == pytest.approx(3 * cm.head_flops_per_seq / cm.linear_rate, rel=1e-9)
    # and the prefill chunk costs far less than it would with the head run for every token
    per_token_head = cm.step_overhead_s + 4096 * (cm.body_flops_per_token + cm.head_flops_per_seq) / cm.linear_rate
    assert one < per_token_head - 4000 * cm.head_flops_per_seq / cm.linear_rate


def test_decode_weight_efficiency_follows_the_batch_table():
    m = load_card("llms", "qwen3-32b")
    g = load_card("gpus", "h200").model_copy(update={"decode_efficiency_by_batch": {1: 0.5, 16: 0.7, 256: 0.6}})
    cm = ComputeModel.build(m, g)
    hbm = g.hbm_gbps * 1e9
    assert cm.weight_rate(1) == pytest.approx(0.5 * hbm)
    assert cm.weight_rate(4) == pytest.approx(0.6 * hbm)  # halfway in log2 between 1 and 16
    assert cm.weight_rate(16) == pytest.approx(0.7 * hbm)
    assert cm.weight_rate(10_000) == pytest.approx(0.6 * hbm)  # held past the last point
    # a batch-1 decode step streams the weights at the batch-1 efficiency
    t = cm.step_time(1, 0.0, 0, 1) - cm.step_overhead_s - cm.request_overhead_s
    assert t == pytest.approx(cm.weight_bytes / (0.5 * hbm))
    # with no table, the single decode_bandwidth_efficiency
    plain = ComputeModel.build(m, load_card("gpus", "h200"))
    assert plain.weight_rate(1) == plain.weight_rate(256) == plain.mem_rate


def test_request_overhead_counts_per_scheduled_request():
    m = load_card("llms", "qwen3-32b")
    g = load_card("gpus", "h200").model_copy(update={"request_overhead_us": 3.0})
    cm = ComputeModel.build(m, g)
    base = ComputeModel.build(m, load_card("gpus", "h200"))
    assert cm.step_time(64, 0.0, 1000, 64) - base.step_time(64, 0.0, 1000, 64) == pytest.approx(64 * 3e-6)
    a, _ = cm.decode_run(64, 1000)
    assert a - base.decode_run(64, 1000)[0] == pytest.approx(64 * 3e-6)


def test_attention_backend_comes_from_the_gpu_card_or_the_scenario(scenario_dict):
    from belusim.config.scenario import resolve_scenario

    sc, _ = resolve_scenario(scenario_dict(gpu="a100-80gb"))
    assert sc.attention.id == "flash-attention-2"
    sc, _ = resolve_scenario(scenario_dict(gpu="h100"))
    assert sc.attention.id == "flash-attention-3"
    sc, _ = resolve_scenario(scenario_dict(gpu="h100", attention="flashinfer"))
    assert sc.attention.id == "flashinfer"
    # a profile's legacy key lands on the backend
    sc, _ = resolve_scenario(scenario_dict(gpu="h100", calibration="h100-host"))
    assert sc.attention.prefill_efficiency == pytest.approx(0.3147)


def test_compute_bound_tells_prefill_like_steps_from_decode_like_ones():
    """The step kinds the copy kernel's measured rates belong to: a 2048-token prefill chunk is
    FLOP-bound, decodes (and a 16-token chunk beside them) stream weights and KV."""
    m = ComputeModel.build(load_card("llms", "llama-3.1-8b"), load_card("gpus", "h200"))
    assert m.compute_bound(2048, 2048 * 1024, 0, 1)
    assert not m.compute_bound(8, 0, 8 * 4096, 8)
    assert not m.compute_bound(24, 16 * (4080 + 8), 8 * 4096, 9)
    # a short chunk far into a long context: the attention FLOPs decide
    assert m.compute_bound(256, 256 * (200_000 + 128), 0, 1)
