"""build_workload: a WorkloadConfig -> the requests of one phase.

Prompt content (lengths, keys, output lengths) depends only on the config and the seed, so
the same workload built for a "populate" and a "hit" phase has identical keys. Only the
open-loop arrival times draw from a stream that also depends on the phase name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .arrivals import gamma_arrivals, poisson_arrivals
from .config import (
    BelusimTraceConfig,
    ClosedArrival,
    FixedOutput,
    GammaArrival,
    LvevalCapsOutput,
    LvevalFilesConfig,
    LvevalSyntheticConfig,
    MooncakeConfig,
    PoissonArrival,
    TraceArrival,
    TraceOutput,
    UniformOutput,
    parse_workload_config,
)
from .errors import WorkloadError
from .keys import hash_str
from .lveval import (
    LvevalPrompt,
    TokenCounter,
    file_answer_tokens,
    load_files,
    prompt_block_keys,
    synthesize,
    synthetic_answer_tokens,
)
from .mooncake import engine_block_keys, read_mooncake
from .spec import RequestSpec, Workload
from .trace_format import read_trace


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, purpose)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, hash_str(*parts)])


def resolve_path(p: Path, base_dir: Path | None, field: str = "path") -> Path:
    """Absolute paths as they are; relative ones against base_dir (the scenario file's
    directory), then the current directory."""
    p = Path(p).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise WorkloadError.at(p, "not found", field=field)
        return p
    tried = []
    for base in ([Path(base_dir)] if base_dir is not None else []) + [Path.cwd()]:
        cand = base / p
        tried.append(str(cand))
        if cand.exists():
            return cand
    raise WorkloadError.at(p, f"not found (tried {', '.join(tried)})", field=field)


def lveval_requests(prompts: list[LvevalPrompt], block_size: int, outputs: np.ndarray) -> list[RequestSpec]:
    """RequestSpecs for LV-Eval prompts, with chained keys (views into one flat array)."""
    keys, off = prompt_block_keys(prompts, block_size)
    reqs = []
    for i, p in enumerate(prompts):
        reqs.append(
            RequestSpec(
                req_id=i,
                prompt_tokens=p.prompt_tokens,
                output_tokens=int(outputs[i]),
                block_keys=keys[off[i] : off[i + 1]],
                source=f"{p.origin}:{p.subset}:{p.level}:{p.index}",
                tags={
                    "subset": p.subset,
                    "level": p.level,
                    "language": p.language,
                    "context_tokens": p.context_tokens,
                    "question_tokens": p.question_tokens,
                    "shared_context": p.shared_context,
                },
            )
        )
    return reqs


def _outputs(output, n: int, seed: int, recorded: np.ndarray | None, lveval_caps: np.ndarray | None) -> np.ndarray:
    if isinstance(output, FixedOutput):
        return np.full(n, output.tokens, dtype=np.int64)
    if isinstance(output, UniformOutput):
        return rng_for(seed, "output", "uniform").integers(output.low, output.high + 1, size=n)
    if isinstance(output, TraceOutput):
        assert recorded is not None
        return recorded
    if isinstance(output, LvevalCapsOutput):
        assert lveval_caps is not None
        return lveval_caps
    raise WorkloadError(f"unsupported output mode {output!r}")


def _apply_arrivals(reqs: list[RequestSpec], arrival, seed: int, phase: str, recorded: np.ndarray | None, what: str) -> Workload:
    n = len(reqs)
    if isinstance(arrival, ClosedArrival):
        for r in reqs:
            r.arrival_s = None
        return Workload(reqs, 0, mode="closed", clients=arrival.clients, think_time_s=arrival.think_time_s)
    rng = rng_for(seed, "arrivals", phase)
    if isinstance(arrival, PoissonArrival):
        t = poisson_arrivals(n, arrival.rate_qps, rng)
    elif isinstance(arrival, GammaArrival):
        t = gamma_arrivals(n, arrival.rate_qps, arrival.cv, rng)
    elif isinstance(arrival, TraceArrival):
        if recorded is None:
            raise WorkloadError(f"{what}: arrival.process 'trace' needs timestamps, which this source lacks")
        t = recorded
    else:
        raise WorkloadError(f"unsupported arrival process {arrival!r}")
    for r, a in zip(reqs, t.tolist()):
        r.arrival_s = a
    return Workload(reqs, 0, mode="open")


def build_workload(cfg, *, block_size: int, seed: int, base_dir: Path | None = None, phase: str = "main") -> Workload:
    """Build the requests of one phase from a WorkloadConfig (or a dict that validates as one).

    Requests come in issue order. Open-loop workloads set arrival_s on every request;
    closed-loop ones carry the clients and think time instead.
    """
    cfg = parse_workload_config(cfg)
    if type(block_size) is not int or block_size < 1:
        raise WorkloadError(f"block_size must be an integer >= 1, got {block_size!r}")
    if isinstance(cfg, LvevalSyntheticConfig):
        prompts = synthesize(
            subsets=list(cfg.subsets),
            level=cfg.level,
            num_prompts=cfg.num_prompts,
            seed=seed,
            min_prompt_tokens=cfg.min_prompt_tokens,
            truncate_tokens=cfg.truncate_tokens,
            length_cv=cfg.length_cv,
            shared_context_fraction=cfg.shared_context_fraction,
        )
        caps = synthetic_answer_tokens(prompts, rng_for(seed, "output", "lveval-synthetic"))
        outs = _outputs(cfg.output, len(prompts), seed, None, caps)
        wl = _apply_arrivals(lveval_requests(prompts, block_size, outs), cfg.arrival, seed, phase, None, "lveval-synthetic")
    elif isinstance(cfg, LvevalFilesConfig):
        path = resolve_path(cfg.path, base_dir)
        tok = resolve_path(cfg.tokenizer_json, base_dir, "tokenizer_json") if cfg.tokenizer_json else None
        prompts = load_files(
            path,
            subsets=cfg.subsets,
            levels=list(cfg.levels),
            counter=TokenCounter(tok, cfg.tokens_per_word_en, cfg.tokens_per_char_zh),
            block_size=block_size,
            min_prompt_tokens=cfg.min_prompt_tokens,
            truncate_tokens=cfg.truncate_tokens,
        )
        if cfg.shuffle:
            perm = rng_for(seed, "lveval-files", "order").permutation(len(prompts))
            prompts = [prompts[i] for i in perm]
        if cfg.max_records is not None:
            prompts = prompts[: cfg.max_records]
        if not prompts:
            raise WorkloadError.at(path, f"no LV-Eval records left (min_prompt_tokens={cfg.min_prompt_tokens})")
        outs = _outputs(cfg.output, len(prompts), seed, None, file_answer_tokens(prompts))
        wl = _apply_arrivals(lveval_requests(prompts, block_size, outs), cfg.arrival, seed, phase, None, "lveval-files")
    elif isinstance(cfg, MooncakeConfig):
        path = resolve_path(cfg.path, base_dir)
        tr = read_mooncake(path, start_s=cfg.start_s, duration_s=cfg.duration_s, max_requests=cfg.max_requests)
        keys, off = engine_block_keys(tr, block_size)
        outs = _outputs(cfg.output, len(tr), seed, tr.output_length, None)
        il = tr.input_length.tolist()
        ol = np.asarray(outs).tolist()
        idx = tr.index.tolist()
        name = path.name
        reqs = [
            RequestSpec(i, il[i], ol[i], keys[off[i] : off[i + 1]], None, f"mooncake:{name}:{idx[i]}")
            for i in range(len(tr))
        ]
        recorded = (tr.timestamp_ms / 1000.0 - cfg.start_s) / cfg.rate_scale
        wl = _apply_arrivals(reqs, cfg.arrival, seed, phase, recorded, "mooncake")
    elif isinstance(cfg, BelusimTraceConfig):
        path = resolve_path(cfg.path, base_dir)
        src = read_trace(path, block_size=block_size)
        reqs = src.requests[: cfg.max_requests] if cfg.max_requests else src.requests
        recorded_out = np.array([r.output_tokens for r in reqs], dtype=np.int64)
        outs = _outputs(cfg.output, len(reqs), seed, recorded_out, None)
        for r, o in zip(reqs, outs.tolist()):
            r.output_tokens = o
        if isinstance(cfg.arrival, TraceArrival) and src.mode == "closed":
            # The trace was recorded closed-loop: keep its clients.
            for r in reqs:
                r.arrival_s = None
            wl = Workload(reqs, 0, mode="closed", clients=src.clients or ClosedArrival().clients, think_time_s=src.think_time_s)
        else:
            recorded = None
            if all(r.arrival_s is not None for r in reqs):
                recorded = np.array([r.arrival_s for r in reqs], dtype=np.float64)
            wl = _apply_arrivals(reqs, cfg.arrival, seed, phase, recorded, f"belusim-trace {path}")
    else:  # pragma: no cover - the union is closed
        raise WorkloadError(f"unsupported workload kind {type(cfg).__name__}")
    wl.block_size = block_size
    return wl
