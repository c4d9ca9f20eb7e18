"""build_workload: a WorkloadConfig -> the requests of one phase.

Prompt content (lengths, keys, output lengths) depends only on the config and the seed, so
the same workload built for a "populate" and a "hit" phase has identical keys. Only the
open-loop arrival times draw from a stream that also depends on the phase name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .arrivals import gamma_arrivals, poisson_arrivals, stage_arrivals
from .config import (
    BelusimTraceConfig,
    ClosedArrival,
    FixedOutput,
    GammaArrival,
    LvevalCapsOutput,
    LvevalFilesConfig,
    LvevalSyntheticConfig,
    MooncakeConfig,
    MultiTurnConfig,
    PoissonArrival,
    SharedPrefixConfig,
    StagesArrival,
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
from .mooncake import MooncakeTrace, engine_block_keys, read_mooncake, trace_slice
from .spec import RequestList, RequestSpec, Workload
from .synthetic import prompts_block_keys, session_prompts, shared_prefix_prompts
from .trace_format import read_trace


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, purpose)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, hash_str(*parts)])


DATA_DIR_ENV = "BELUSIM_DATA_DIR"


def resolve_path(p: Path, base_dir: Path | None, field: str = "path") -> Path:
    """Absolute paths as they are; a relative one against base_dir (the scenario file's
    directory), then the current directory, then $BELUSIM_DATA_DIR if set (there the path
    as written, without its leading `..` parts, then its bare file name: a scenario installed
    in site-packages keeps its repository-relative path but its data lives elsewhere)."""
    p = Path(p).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise WorkloadError.at(p, f"not found; point at the file with --set workload.{field}=PATH",
                                   field=field)
        return p
    cands: list[Path] = []
    for base in ([Path(base_dir)] if base_dir is not None else []) + [Path.cwd()]:
        cands.append(base / p)
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        d = Path(data_dir).expanduser()
        parts = p.parts
        while parts and parts[0] in ("..", "."):
            parts = parts[1:]
        cands += [d / p] + ([d.joinpath(*parts)] if parts else []) + [d / p.name]
    tried: list[str] = []
    for cand in cands:
        if str(cand) in tried:
            continue
        tried.append(str(cand))
        if cand.exists():  # LV-Eval's path may be a folder
            return cand
    how = (f"point at the file with --set workload.{field}=PATH"
           + ("" if data_dir else f", or set {DATA_DIR_ENV} to the folder that holds it"))
    raise WorkloadError.at(p, "not found; tried:\n  " + "\n  ".join(tried) + f"\n{how}", field=field)


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
                    "header_tokens": p.header_tokens,
                    "haystack_tokens": p.haystack_tokens,
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


def _apply_arrivals(reqs: list[RequestSpec] | RequestList, arrival, seed: int, phase: str, recorded: np.ndarray | None,
                    what: str) -> Workload:
    n = len(reqs)
    lazy = isinstance(reqs, RequestList)
    if isinstance(arrival, ClosedArrival):
        if lazy:
            reqs.arrival_s = None
        for r in [] if lazy else reqs:
            r.arrival_s = None
        return Workload(reqs, 0, mode="closed", clients=arrival.clients, think_time_s=arrival.think_time_s)
    rng = rng_for(seed, "arrivals", phase)
    if isinstance(arrival, PoissonArrival):
        t = poisson_arrivals(n, arrival.rate_qps, rng)
    elif isinstance(arrival, GammaArrival):
        t = gamma_arrivals(n, arrival.rate_qps, arrival.cv, rng)
    elif isinstance(arrival, StagesArrival):
        t = stage_arrivals([(s.rate_qps, s.duration_s) for s in arrival.stages], rng)
        if len(t) < n:
            raise WorkloadError(f"{what}: the arrival stages send {len(t)} requests but the workload has {n}")
        t = t[:n]
    elif isinstance(arrival, TraceArrival):
        if recorded is None:
            raise WorkloadError(f"{what}: arrival.process 'trace' needs timestamps, which this source lacks")
        t = recorded
    else:
        raise WorkloadError(f"unsupported arrival process {arrival!r}")
    if lazy:
        reqs.arrival_s = np.asarray(t, dtype=np.float64)
        return Workload(reqs, 0, mode="open")
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
            reuse=cfg.reuse,
            factrecall_insertions=cfg.factrecall_insertions,
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
        outs = np.asarray(_outputs(cfg.output, len(tr), seed, tr.output_length, None), dtype=np.int64)
        reqs = RequestList(len(tr), _MooncakeSpecs(tr, outs, block_size))
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
    elif isinstance(cfg, SharedPrefixConfig):
        wl = _apply_arrivals(shared_prefix_requests(cfg, block_size, seed), cfg.arrival, seed, phase, None, "shared-prefix")
    elif isinstance(cfg, MultiTurnConfig):
        wl = multi_turn_workload(cfg, block_size, seed, phase)
    else:  # pragma: no cover - the union is closed
        raise WorkloadError(f"unsupported workload kind {type(cfg).__name__}")
    wl.block_size = block_size
    return wl


class _MooncakeSpecs:
    """RequestSpecs of a Mooncake trace, their engine-block keys computed a window of
    requests at a time as they are read (in order, each window once)."""

    # Requests per key computation: numpy's arrays for 128 conversation-trace requests (about
    # 100,000 keys) stay in the caches; at 256 the whole trace's keys took 1.7x as long
    WINDOW = 128

    def __init__(self, trace: MooncakeTrace, outputs: np.ndarray, block_size: int):
        self.trace = trace
        self.bs = block_size
        self.il = trace.input_length
        self.ol = outputs
        self.name = trace.path.name
        self._win = (0, 0)
        self._keys = None
        # the window's numbers as Python ints, made once (a numpy scalar per field per
        # request cost more than the rest of the request's spec)
        self._off: list[int] = []
        self._nums: list[tuple[int, int, int]] = []

    def __call__(self, i: int, arrival: float | None) -> RequestSpec:
        w0, w1 = self._win
        if not w0 <= i < w1:
            w0, w1 = i, min(len(self.trace), i + self.WINDOW)
            self._keys, off = engine_block_keys(trace_slice(self.trace, w0, w1), self.bs)
            self._off = off.tolist()
            self._nums = list(zip([int(v) for v in self.il[w0:w1].tolist()], [int(v) for v in self.ol[w0:w1].tolist()],
                                  [int(v) for v in self.trace.index[w0:w1].tolist()]))
            self._win = (w0, w1)
        off = self._off
        j = i - w0
        il, ol, index = self._nums[j]
        return RequestSpec(i, il, ol, self._keys[off[j]:off[j + 1]], arrival, f"mooncake:{self.name}:{index}")


def shared_prefix_requests(cfg: SharedPrefixConfig, block_size: int, seed: int) -> RequestList:
    """N x M prompts sent num_requests times in the configured order."""
    prompts = shared_prefix_prompts(
        name=cfg.name,
        seed=seed,
        num_groups=cfg.num_groups,
        prompts_per_group=cfg.prompts_per_group,
        system_prompt_tokens=cfg.system_prompt_tokens,
        question_tokens=cfg.question_tokens,
    )
    n_prompts = len(prompts)
    n = cfg.num_requests
    if n is None:
        n = cfg.arrival.total_requests if isinstance(cfg.arrival, StagesArrival) else n_prompts
    if cfg.order == "sequential":
        which = np.arange(n) % n_prompts
    else:
        rng = rng_for(seed, "shared-prefix", cfg.name, "order")
        passes = -(-n // n_prompts)
        which = np.concatenate([rng.permutation(n_prompts) for _ in range(passes)])[:n]
    keys, off = prompts_block_keys(prompts, block_size, hash_str("belusim-ns", "shared-prefix", cfg.name))
    outs = np.asarray(_outputs(cfg.output, n, seed, None, None), dtype=np.int64)
    total = cfg.system_prompt_tokens + cfg.question_tokens
    m = cfg.prompts_per_group
    name = cfg.name

    def build(i: int, arrival: float | None) -> RequestSpec:
        p = int(which[i])
        return RequestSpec(i, total, int(outs[i]), keys[off[p] : off[p + 1]], arrival,
                           f"shared-prefix:{name}:{p // m}:{p % m}", tags={"group": p // m, "prompt": p % m})

    return RequestList(n, build)


def multi_turn_workload(cfg: MultiTurnConfig, block_size: int, seed: int, phase: str) -> Workload:
    """Sessions whose turns nest: each turn's prompt extends the previous turn's prompt and
    answer. Requests carry tags session, turn and think_s (the pause before this turn)."""
    rng = rng_for(seed, "multi-turn", cfg.name, "lengths")
    S, T = cfg.num_sessions, cfg.turns
    if cfg.user_tokens_cv > 0:
        sigma2 = np.log1p(cfg.user_tokens_cv**2)
        user = np.maximum(1, np.rint(rng.lognormal(np.log(cfg.user_tokens) - sigma2 / 2, np.sqrt(sigma2), size=(S, T)))).astype(np.int64)
    else:
        user = np.full((S, T), cfg.user_tokens, dtype=np.int64)
    answers = np.asarray(_outputs(cfg.output, S * T, seed, None, None), dtype=np.int64).reshape(S, T)
    trng = rng_for(seed, "multi-turn", cfg.name, "think")
    if cfg.think_time_dist == "exponential" and cfg.think_time_s > 0:
        think = trng.exponential(cfg.think_time_s, size=(S, T))
    else:
        think = np.full((S, T), cfg.think_time_s)
    shared_sys = hash_str("multi-turn", cfg.name, seed, "system", "shared") if cfg.shared_system_prompt else None
    prompts = []
    for s in range(S):
        prompts += session_prompts(
            name=cfg.name, seed=seed, session=s, turns=T, system_id=shared_sys,
            system_prompt_tokens=cfg.system_prompt_tokens, user_tokens=user[s], answer_tokens=answers[s],
        )
    keys, off = prompts_block_keys(prompts, block_size, hash_str("belusim-ns", "multi-turn", cfg.name))
    # Session start times from the arrival process (one start per session).
    starts = _apply_arrivals(
        [RequestSpec(s, 1, 1, np.zeros(0, dtype=np.int64)) for s in range(S)], cfg.arrival, seed, phase, None, "multi-turn"
    ).requests
    reqs = []
    for s in range(S):
        for t in range(T):
            i = s * T + t
            segs = prompts[i]
            reqs.append(
                RequestSpec(
                    i, sum(n for _, n in segs), int(answers[s, t]), keys[off[i] : off[i + 1]],
                    starts[s].arrival_s if t == 0 else None, f"multi-turn:{cfg.name}:{s}:{t}",
                    tags={"session": s, "turn": t, "think_s": float(think[s, t]) if t else 0.0},
                )
            )
    return Workload(reqs, block_size, mode="sessions")
