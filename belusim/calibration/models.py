"""Model shapes, GPU peaks and the compute formula as the calibration fit needs them.

The fit must use exactly the simulator's compute model (`belusim.compute.roofline.layer_prefill_time`
and `layer_decode_time`). Those live next to the pydantic configuration; where that cannot be
imported (a GPU host with only torch and numpy, say) the same formula is evaluated by
`_mirror_prefill` / `_mirror_decode` below, and a test checks that the two agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from belusim.calibration.errors import CalibrationError

# Model cards this module knows without models/llms (the fields of belusim.config.scenario.LLMCard).
BUILTIN_LLMS: dict[str, dict[str, Any]] = {
    "qwen3-32b": {
        "id": "qwen3-32b",
        "layers": 64,
        "hidden": 5120,
        "q_heads": 64,
        "kv_heads": 8,
        "head_dim": 128,
        "ffn": 25600,
        "vocab": 151936,
        "kv_dtype_bytes": 2,
        "weight_bytes_per_param": 2,
    },
}

# Nominal (datasheet) peaks used to turn measured times into efficiencies; the same figures
# as the GPU cards (dense bf16 TFLOP/s without sparsity, HBM GB/s).
NOMINAL_GPUS: list[tuple[str, str, float, float]] = [
    # (pattern on the device name, card id, dense_bf16_tflops, hbm_gbps)
    (r"H200", "h200", 989.0, 4800.0),
    (r"H100 PCIe", "h100-pcie", 756.0, 2000.0),  # the PCIe card (HBM2e); not the SXM-class HBM3 part
    (r"H100", "h100", 989.0, 3350.0),
    (r"H20\b", "h20", 148.0, 4000.0),
]

BLOCK_TOKENS = 16


@dataclass(frozen=True)
class ModelShape:
    """The LLMCard fields and derived figures that calibration uses (same formulas)."""

    id: str
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    kv_dtype_bytes: float = 2
    weight_bytes_per_param: float = 2
    weight_gb: float | None = None

    @property
    def params_per_layer(self) -> int:
        attn = self.hidden * self.q_heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return attn + 3 * self.hidden * self.ffn

    @property
    def params(self) -> int:
        return self.layers * self.params_per_layer + 2 * self.vocab * self.hidden

    @property
    def linear_flops_per_token(self) -> float:
        return 2.0 * (self.layers * self.params_per_layer + self.vocab * self.hidden)

    @property
    def weight_bytes(self) -> float:
        if self.weight_gb is not None:
            return self.weight_gb * 1e9
        return self.params * self.weight_bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    def fragment_bytes(self, block_size: int = BLOCK_TOKENS) -> float:
        return block_size * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def fragments_per_block(self) -> int:
        return 2 * self.layers

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "layers": self.layers,
            "hidden": self.hidden,
            "q_heads": self.q_heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "ffn": self.ffn,
            "vocab": self.vocab,
            "kv_dtype_bytes": self.kv_dtype_bytes,
            "weight_bytes_per_param": self.weight_bytes_per_param,
            "weight_gb": self.weight_gb,
            "params_per_layer": self.params_per_layer,
            "fragment_bytes": int(self.fragment_bytes()),
            "fragments_per_block": self.fragments_per_block,
        }


_SHAPE_FIELDS = ("layers", "hidden", "q_heads", "kv_heads", "head_dim", "ffn", "vocab")


def shape_from_dict(d: dict[str, Any], source: str) -> ModelShape:
    missing = [f for f in _SHAPE_FIELDS if f not in d]
    if missing:
        raise CalibrationError(f"{source}: model card lacks {missing}")
    try:
        return ModelShape(
            id=str(d.get("id", "model")),
            **{f: int(d[f]) for f in _SHAPE_FIELDS},
            kv_dtype_bytes=float(d.get("kv_dtype_bytes", 2)),
            weight_bytes_per_param=float(d.get("weight_bytes_per_param", 2)),
            weight_gb=float(d["weight_gb"]) if d.get("weight_gb") is not None else None,
        )
    except (TypeError, ValueError) as e:
        raise CalibrationError(f"{source}: bad model card field: {e}") from None


def load_model_shape(name: str) -> tuple[ModelShape, str]:
    """The model's layer shapes: models/llms/<name>.yaml when present, else a built-in card.
    Returns the shape and where it came from."""
    from belusim.paths import models_dir

    path = models_dir() / "llms" / f"{name}.yaml"
    if path.is_file():
        from belusim.errors import InputError
        from belusim.inputs import read_yaml

        try:
            data = read_yaml(path) or {}
        except InputError as e:
            raise CalibrationError(str(e)) from None
        data.setdefault("id", name)
        return shape_from_dict(data, str(path)), f"models/llms/{name}.yaml"
    if name in BUILTIN_LLMS:
        return shape_from_dict(BUILTIN_LLMS[name], "built-in"), "built-in card (belusim.calibration.models)"
    raise CalibrationError(f"unknown model {name!r}: no {path} and no built-in card (built in: {sorted(BUILTIN_LLMS)})")


def nominal_gpu_peaks(device_name: str) -> tuple[str, float, float, str] | None:
    """(card id, dense bf16 TFLOP/s, HBM GB/s, where from) for a device name, or None.

    A card in models/gpus/<id>.yaml wins over the built-in table."""
    for pattern, card_id, tflops, gbps in NOMINAL_GPUS:
        if re.search(pattern, device_name, re.IGNORECASE):
            try:
                from belusim.paths import models_dir

                path = models_dir() / "gpus" / f"{card_id}.yaml"
                if path.is_file():
                    import yaml

                    card = yaml.safe_load(path.read_text()) or {}
                    if card.get("dense_bf16_tflops") and card.get("hbm_gbps"):
                        return (card_id, float(card["dense_bf16_tflops"]), float(card["hbm_gbps"]),
                                f"models/gpus/{card_id}.yaml")
            except Exception:  # a malformed card falls back to the table
                pass
            return card_id, tflops, gbps, "built-in nominal figures (belusim.calibration.models)"
    return None


# ------------------------------------------------------------------------ compute formula


def gpu_namespace(tflops: float, hbm_gbps: float, e_lin: float, e_attn: float, e_mem: float) -> SimpleNamespace:
    """The GPUCard attributes that belusim.compute.roofline reads."""
    return SimpleNamespace(
        dense_bf16_tflops=tflops,
        dense_fp8_tflops=None,
        hbm_gbps=hbm_gbps,
        step_overhead_us=0.0,
        linear_efficiency=e_lin,
        attention_efficiency=e_attn,
        decode_bandwidth_efficiency=e_mem,
    )


def _mirror_prefill(model, gpu, new_tokens: int, cached_tokens: int) -> float:
    peak = gpu.dense_bf16_tflops * 1e12
    lin = new_tokens * model.params_per_layer * 2.0 / (peak * gpu.linear_efficiency)
    attn = (
        4.0 * model.q_heads * model.head_dim * new_tokens * (cached_tokens + new_tokens / 2)
        / (peak * gpu.attention_efficiency)
    )
    return lin + attn


def _mirror_decode(model, gpu, batch: int, context_tokens: int) -> float:
    peak = gpu.dense_bf16_tflops * 1e12
    mem = gpu.hbm_gbps * 1e9 * gpu.decode_bandwidth_efficiency
    layer_weights = model.params_per_layer * model.weight_bytes_per_param
    lin = max(batch * model.params_per_layer * 2.0 / (peak * gpu.linear_efficiency), layer_weights / mem)
    kv = batch * context_tokens * model.kv_bytes_per_token / model.layers / mem
    return lin + kv


def compute_functions() -> tuple[Callable, Callable, str]:
    """(layer_prefill_time, layer_decode_time, origin) — belusim.compute.roofline's when importable."""
    try:
        from belusim.compute.roofline import layer_decode_time, layer_prefill_time

        return layer_prefill_time, layer_decode_time, "belusim.compute.roofline"
    except Exception:  # pydantic or a sibling module missing on this host
        return _mirror_prefill, _mirror_decode, "belusim.calibration.models (same formula as belusim.compute.roofline)"
