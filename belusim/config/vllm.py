"""vLLM version profiles: the engine defaults a given vLLM release picks by itself.

A scenario that says ``engine: {vllm: "0.8.5"}`` takes block size, token budget, sequence
cap, memory fraction, chunked prefill and prefix caching from ``models/vllm/0.8.5.yaml``,
where each figure cites the vLLM source file and line it comes from. vLLM picks the batch
limits from the GPU's total memory, its name and the entry point (``vllm serve`` vs the
offline ``LLM`` class), so the profile holds an ordered list of tiers and the first whose
conditions the scenario's GPU card meets applies. Fields the scenario (or ``--set``) gives
explicitly are left as they are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from belusim.inputs import read_yaml
from belusim.paths import models_dir

EntryPoint = Literal["openai-api-server", "llm-class"]
GiB = 1024**3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TierCondition(_Strict):
    min_gpu_memory_gib: float = Field(0.0, ge=0, description="GPU total memory at least this (GiB)")
    exclude_gpu_names: list[str] = Field(
        default_factory=list, description="not when the GPU card id contains one of these (lower case)"
    )


class BatchTier(_Strict):
    when: TierCondition = Field(default_factory=TierCondition)
    max_num_batched_tokens: dict[EntryPoint, int]
    max_num_seqs: dict[EntryPoint, int]


class VllmProfile(_Strict):
    id: str
    description: str = ""
    block_size: int = Field(gt=0)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    enable_prefix_caching: bool
    enable_chunked_prefill: bool
    prefix_caching_hash_algo: str
    batch_tiers: list[BatchTier] = Field(min_length=1)
    sources: dict[str, str] = Field(default_factory=dict)

    def tier_for(self, gpu_id: str, hbm_gb: float) -> BatchTier:
        """The first tier whose conditions the GPU meets (the last one has none)."""
        mem_gib = hbm_gb * 1e9 / GiB
        name = gpu_id.lower()
        for tier in self.batch_tiers:
            c = tier.when
            if mem_gib >= c.min_gpu_memory_gib and not any(x in name for x in c.exclude_gpu_names):
                return tier
        raise ValueError(f"vLLM profile {self.id}: no batch tier matches GPU {gpu_id!r} ({mem_gib:.1f} GiB)")

    def engine_defaults(self, gpu_id: str, hbm_gb: float, entry_point: EntryPoint) -> dict:
        tier = self.tier_for(gpu_id, hbm_gb)
        return {
            "block_size": self.block_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enable_chunked_prefill": self.enable_chunked_prefill,
            "prefix_caching_hash_algo": self.prefix_caching_hash_algo,
            "max_num_batched_tokens": tier.max_num_batched_tokens[entry_point],
            "max_num_seqs": tier.max_num_seqs[entry_point],
        }


def list_profiles() -> list[str]:
    return sorted(p.stem for p in (models_dir() / "vllm").glob("*.yaml"))


def load_profile(version: str) -> VllmProfile:
    path = models_dir() / "vllm" / f"{version}.yaml"
    if not path.is_file():
        raise ValueError(f"no vLLM profile {version!r} (looked in {path.parent}); available: {list_profiles()}")
    try:
        return VllmProfile.model_validate(read_yaml(path))
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{path}: invalid vLLM profile: {msgs}") from None


def apply_vllm_profile(data: dict) -> None:
    """Fill the engine fields a vLLM release defaults, where the scenario left them unset.

    `data` is a scenario dict whose cards are already expanded (gpu is a mapping). Each
    filled field gets its citation under engine.sources.
    """
    engine = data.get("engine")
    if not isinstance(engine, dict) or engine.get("vllm") is None:
        return
    version = str(engine["vllm"])
    engine["vllm"] = version
    profile = load_profile(version)
    gpu = data.get("gpu")
    if not isinstance(gpu, dict) or "hbm_gb" not in gpu:
        raise ValueError("engine.vllm needs a GPU card with hbm_gb (vLLM picks its batch limits by GPU memory)")
    entry = engine.get("entry_point", "openai-api-server")
    if entry not in ("openai-api-server", "llm-class"):
        raise ValueError(f"engine.entry_point must be 'openai-api-server' or 'llm-class', got {entry!r}")
    sources = engine.setdefault("sources", {})
    if not isinstance(sources, dict):
        raise ValueError("engine.sources must be a mapping of field -> source")
    for key, value in profile.engine_defaults(str(gpu.get("id", "")), float(gpu["hbm_gb"]), entry).items():
        if engine.get(key) is not None:  # explicit (null counts as unset)
            continue
        engine[key] = value
        cite = profile.sources.get(key, f"models/vllm/{version}.yaml")
        sources[key] = f"vllm {version} default: {cite}"
