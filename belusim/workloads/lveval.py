"""LV-Eval: the statistics table, a seeded synthetic generator and a local-file loader.

A prompt is context then question. Records with the same context share the context's
blocks; the block holding the first question token and every block after it are unique to
the record, and keyed from the record's identity, so replaying a record in a later phase
gives the same keys (a full hit).

Figures marked "components.md" come from shared/reference/components.md (Qwen3 tokenizer);
every figure marked "assumed" is derived by the rule written next to it.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from belusim.inputs import decode, iter_lines, parse_json

from .errors import WorkloadError
from .keys import chain_keys, combine, hash_bytes, hash_str, hash_token_blocks, row_offsets_from_lengths

LEVELS: tuple[str, ...] = ("16k", "32k", "64k", "128k", "256k")

# components.md: mean prompt tokens (Qwen3 tokenizer) and mean answer tokens.
_KNOWN_PROMPT_TOKENS: dict[str, tuple[int, int, int, int, int]] = {
    "hotpotwikiqa_mixup": (30_020, 53_695, 100_741, 194_951, 385_330),
    "multifieldqa_en_mixup": (29_155, 54_478, 104_504, 203_904, 402_491),
    "loogle_SD_mixup": (23_464, 47_244, 87_622, 165_263, 316_637),
    "factrecall_en": (15_171, 30_177, 60_096, 118_998, 233_909),
}
_KNOWN_ANSWER_TOKENS = {
    "hotpotwikiqa_mixup": 3.7,
    "multifieldqa_en_mixup": 14.9,
    "loogle_SD_mixup": 13.9,
    "factrecall_en": 5.0,
}
# (subset, language, QA pairs per level) from components.md.
_SUBSET_ROWS = [
    ("loogle_SD_mixup", "en", 160),
    ("cmrc_mixup", "zh", 200),
    ("multifieldqa_en_mixup", "en", 101),
    ("multifieldqa_zh_mixup", "zh", 133),
    ("factrecall_en", "en", 200),
    ("factrecall_zh", "zh", 200),
    ("dureader_mixup", "zh", 176),
    ("loogle_CR_mixup", "en", 99),
    ("loogle_MIR_mixup", "en", 139),
    ("hotpotwikiqa_mixup", "en", 124),
    ("lic_mixup", "zh", 197),
]
# Assumed rules for the rows components.md gives no figure for.
EN_TOKENS_PER_WORD = 1.3  # typical
ZH_TOKENS_PER_CHAR = 0.8  # midpoint of components.md's 0.6-1.0
# Sibling subset whose figures stand in for a subset without figures (same source task).
_SIBLING = {
    "loogle_CR_mixup": "loogle_SD_mixup",
    "loogle_MIR_mixup": "loogle_SD_mixup",
    "multifieldqa_zh_mixup": "multifieldqa_en_mixup",
    "factrecall_zh": "factrecall_en",
}
# Tokens after the context that are unique to a record: the question plus the prompt
# template's closing instruction (assumed; LV-Eval questions are one sentence).
QUESTION_TOKENS_ASSUMED = 32


# Documented reuse (reuse: documented). LV-Eval prompts are built from one template per
# subset, "<instruction>\n\nArticle: {context}\n\n<instruction>\n\nQuestion: {input}\nAnswer:"
# (infinigence/LVEval config.py, DATASET_PROMPT), so every record of a subset starts with the
# same instruction. Its length here is an estimate from its words (en, x1.3 tokens per word)
# or characters (zh, x0.8 tokens per character), the same rule as the rest of this table:
TEMPLATE_HEADER_TOKENS: dict[str, int] = {
    "hotpotwikiqa_mixup": 42,  # 32 words
    "loogle_SD_mixup": 44,  # 34 words
    "loogle_CR_mixup": 44,
    "loogle_MIR_mixup": 44,
    "multifieldqa_en_mixup": 44,
    "multifieldqa_zh_mixup": 50,  # 62 characters
    "factrecall_en": 14,  # 11 words
    "factrecall_zh": 14,  # 18 characters
    "cmrc_mixup": 27,  # 34 characters
    "lic_mixup": 27,
    "dureader_mixup": 27,
}
# LV-Eval's README (infinigence/LVEval, "Overview"): the mixup subsets have 5 contexts per QA
# pair (one per length level), so within a level no two records share a context; the
# factrecall subsets have ONE QA pair and 200 contexts per level, a needle-in-a-haystack
# pressure test. Assumed from that design: a level's 200 factrecall contexts are one haystack
# with the fact inserted at a depth drawn uniformly per record (and any confusing facts at
# depths of their own), so two records share the haystack up to the first insertion of either.


@dataclass(frozen=True)
class SubsetStats:
    """One LV-Eval subset: where each figure comes from is in the *_source fields."""

    name: str
    language: str
    qa_pairs: int
    mean_prompt_tokens: dict[str, float]
    prompt_tokens_source: str
    mean_answer_tokens: float
    answer_tokens_source: str
    question_tokens: int
    gen_cap: int  # LV-Eval's max_gen: 16 for factrecall, else 64


def _build_table() -> dict[str, SubsetStats]:
    mean_en = [float(np.mean([v[i] for v in _KNOWN_PROMPT_TOKENS.values()])) for i in range(5)]
    mean_ans = float(np.mean(list(_KNOWN_ANSWER_TOKENS.values())))
    table: dict[str, SubsetStats] = {}
    for name, lang, qa in _SUBSET_ROWS:
        if name in _KNOWN_PROMPT_TOKENS:
            toks = [float(x) for x in _KNOWN_PROMPT_TOKENS[name]]
            src = "components.md (Qwen3 tokenizer)"
        else:
            sib = _SIBLING.get(name)
            base = [float(x) for x in _KNOWN_PROMPT_TOKENS[sib]] if sib else mean_en
            base_src = sib if sib else "mean of the 4 English subsets"
            if lang == "en":
                toks = base
                src = f"assumed: same as {base_src}"
            else:
                # A Chinese record has as many characters as its English base has words.
                toks = [t / EN_TOKENS_PER_WORD * ZH_TOKENS_PER_CHAR for t in base]
                src = (
                    f"assumed: {base_src} / {EN_TOKENS_PER_WORD} tokens per word "
                    f"x {ZH_TOKENS_PER_CHAR} tokens per char"
                )
        if name in _KNOWN_ANSWER_TOKENS:
            ans, ans_src = _KNOWN_ANSWER_TOKENS[name], "components.md"
        elif name in _SIBLING:
            ans = _KNOWN_ANSWER_TOKENS[_SIBLING[name]]
            ans_src = f"assumed: same as {_SIBLING[name]}"
        else:
            ans, ans_src = round(mean_ans, 2), "assumed: mean of the 4 English subsets"
        table[name] = SubsetStats(
            name=name,
            language=lang,
            qa_pairs=qa,
            mean_prompt_tokens=dict(zip(LEVELS, toks)),
            prompt_tokens_source=src,
            mean_answer_tokens=ans,
            answer_tokens_source=ans_src,
            question_tokens=QUESTION_TOKENS_ASSUMED,
            gen_cap=gen_cap(name),
        )
    return table


def gen_cap(subset: str) -> int:
    """LV-Eval's generation cap: 16 tokens for the fact-recall subsets, 64 otherwise."""
    return 16 if subset.startswith("factrecall") else 64


SUBSETS: dict[str, SubsetStats] = _build_table()


@dataclass
class LvevalPrompt:
    """One LV-Eval record reduced to what the simulator needs (lengths and key sources)."""

    subset: str
    level: str
    index: int  # record index within its (subset, level) source
    language: str
    context_tokens: int  # after truncation
    question_tokens: int  # after truncation
    full_prompt_tokens: int  # before truncation
    context_id: int  # equal for equal contexts
    uid: int  # unique per record; stable across runs
    answer_tokens: int | None = None  # reference answer length (files only)
    shared_context: bool = False
    origin: str = "lveval"  # "lveval" (files) or "lveval-synthetic"
    # Per-block content ids of the context when a real tokenizer gave token ids.
    context_block_hashes: np.ndarray | None = field(default=None, repr=False)
    # reuse: documented: the template header before the context (shared by the subset) and
    # the context tokens shared with the level's haystack (factrecall), both in context_tokens.
    header_tokens: int = 0
    haystack_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.context_tokens + self.question_tokens


def truncate(context_tokens: int, question_tokens: int, limit: int | None) -> tuple[int, int]:
    """Cut a prompt to `limit` tokens: keep the question at the end, the head of the context."""
    if limit is None:
        return context_tokens, question_tokens
    q = min(question_tokens, limit)
    return min(context_tokens, limit - q), q


def documented_block_keys(prompts: list[LvevalPrompt], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys of prompts built as template header + (haystack prefix) + own context + question."""
    from .synthetic import prompts_block_keys

    rows = []
    for p in prompts:
        segs = []
        if p.header_tokens:
            segs.append((hash_str("lveval-template", p.subset), p.header_tokens))
        if p.haystack_tokens:
            segs.append((hash_str("lveval-haystack", p.origin, p.subset, p.level), p.haystack_tokens))
        own = p.context_tokens - p.header_tokens - p.haystack_tokens
        if own:
            segs.append((p.context_id, own))
        segs.append((p.uid, p.question_tokens))
        rows.append(segs)
    return prompts_block_keys(rows, block_size, hash_str("belusim-ns", "lveval-documented"))


def prompt_block_keys(prompts: list[LvevalPrompt], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Chained keys of all prompts: (flat int64 keys, row offsets)."""
    if block_size < 1:
        raise WorkloadError(f"block_size must be >= 1, got {block_size}")
    if any(p.header_tokens or p.haystack_tokens for p in prompts):
        return documented_block_keys(prompts, block_size)
    n = len(prompts)
    total = np.fromiter((p.prompt_tokens for p in prompts), dtype=np.int64, count=n)
    nblk = total // block_size
    # Blocks fully inside the context are shared; the rest hold question tokens.
    nctx = np.minimum(
        np.fromiter((p.context_tokens for p in prompts), dtype=np.int64, count=n) // block_size, nblk
    )
    off = row_offsets_from_lengths(nblk)
    m = int(off[-1])
    row = np.repeat(np.arange(n), nblk)
    local = (np.arange(m, dtype=np.int64) - off[:-1][row]).astype(np.uint64)
    ctx_ids = np.fromiter((p.context_id for p in prompts), dtype=np.uint64, count=n)
    uids = np.fromiter((p.uid for p in prompts), dtype=np.uint64, count=n)
    is_ctx = local < nctx[row].astype(np.uint64)
    contents = np.where(is_ctx, combine(ctx_ids[row], local), combine(uids[row], local))
    for i, p in enumerate(prompts):
        if p.context_block_hashes is not None and nctx[i] > 0:
            contents[off[i] : off[i] + nctx[i]] = p.context_block_hashes[: nctx[i]]
    keys = chain_keys(contents, off, hash_str("belusim-ns", "lveval"), premixed=True)
    return keys, off


# --- synthetic generator -----------------------------------------------------------------


def _lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


def _draw_lengths(
    rng: np.random.Generator, n: int, mean: float, cv: float, minimum: int, subset: str, level: str
) -> np.ndarray:
    """n prompt lengths, lognormal around `mean`, rejecting those below `minimum`."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if cv == 0:
        if mean < minimum:
            raise WorkloadError(
                f"min_prompt_tokens={minimum} is above every prompt of {subset} at {level} "
                f"(mean {mean:.0f}, length_cv 0)"
            )
        return np.full(n, int(round(mean)), dtype=np.int64)
    mu, sigma = _lognormal_params(mean, cv)
    if minimum > 0:
        accept = 0.5 * math.erfc((math.log(minimum) - mu) / (sigma * math.sqrt(2.0)))
    else:
        accept = 1.0
    if accept < 1e-4:
        raise WorkloadError(
            f"min_prompt_tokens={minimum} keeps only {accept:.1e} of {subset} prompts at {level} "
            f"(mean {mean:.0f}, length_cv {cv}); lower it or pick a longer level"
        )
    out: list[np.ndarray] = []
    need = n
    while need > 0:
        x = np.rint(rng.lognormal(mu, sigma, size=max(64, int(2 * need / accept)))).astype(np.int64)
        x = x[x >= minimum]
        out.append(x[:need])
        need -= len(out[-1])
    return np.concatenate(out)


def _subset_rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, hash_str(*parts)])


def synthesize(
    *,
    subsets: list[str],
    level: str,
    num_prompts: int,
    seed: int,
    min_prompt_tokens: int = 0,
    truncate_tokens: int | None = None,
    length_cv: float = 0.15,
    shared_context_fraction: float = 0.0,
    reuse: str = "none",
    factrecall_insertions: int = 1,
) -> list[LvevalPrompt]:
    """LV-Eval-like prompts from the statistics table; same seed -> identical prompts.

    Subsets are drawn in proportion to their QA pairs; lengths are lognormal around the
    subset mean (length_cv is an assumption: the table has means only). A record re-uses an
    earlier context of its subset with probability shared_context_fraction.

    reuse="documented" adds the reuse LV-Eval's construction implies (see
    TEMPLATE_HEADER_TOKENS): each prompt opens with its subset's template header, and a
    factrecall context shares its level's haystack up to the first of `factrecall_insertions`
    insertions at uniform depths.
    """
    if reuse not in ("none", "documented"):
        raise WorkloadError(f"reuse must be 'none' or 'documented', got {reuse!r}")
    depth_u = (
        _subset_rng(seed, "lveval-synthetic", "insertion-depth", level)
        .random((num_prompts, max(1, factrecall_insertions)))
        .min(axis=1)
    )
    for s in subsets:
        if s not in SUBSETS:
            raise WorkloadError(f"unknown LV-Eval subset {s!r}; known: {sorted(SUBSETS)}")
    if level not in LEVELS:
        raise WorkloadError(f"unknown LV-Eval level {level!r}; known: {list(LEVELS)}")
    rng = _subset_rng(seed, "lveval-synthetic", "order", level)
    weights = np.array([SUBSETS[s].qa_pairs for s in subsets], dtype=np.float64)
    which = rng.choice(len(subsets), size=num_prompts, p=weights / weights.sum())
    share_u = rng.random(num_prompts)
    pick_u = rng.random(num_prompts)
    lengths: dict[str, np.ndarray] = {}
    for j, s in enumerate(subsets):
        st = SUBSETS[s]
        cnt = int((which == j).sum())
        lengths[s] = _draw_lengths(
            _subset_rng(seed, "lveval-synthetic", "length", s, level),
            cnt,
            st.mean_prompt_tokens[level],
            length_cv,
            min_prompt_tokens,
            s,
            level,
        )
    used = {s: 0 for s in subsets}
    contexts: dict[str, list[tuple[int, int]]] = {s: [] for s in subsets}  # (ctx_id, tokens)
    out: list[LvevalPrompt] = []
    for i in range(num_prompts):
        s = subsets[int(which[i])]
        st = SUBSETS[s]
        k = used[s]
        used[s] += 1
        q = st.question_tokens
        earlier = contexts[s]
        shared = bool(earlier) and bool(share_u[i] < shared_context_fraction)
        if shared:
            ctx_id, ctx = earlier[int(pick_u[i] * len(earlier))]
        else:
            total = max(int(lengths[s][k]), q + 1)
            ctx = total - q
            ctx_id = hash_str("lveval-synthetic-context", seed, s, level, len(earlier))
            earlier.append((ctx_id, ctx))
        c_t, q_t = truncate(ctx, q, truncate_tokens)
        header = haystack = 0
        if reuse == "documented":
            # The header is part of the prompt: it takes the head of the context's length.
            header = min(TEMPLATE_HEADER_TOKENS.get(s, 0), c_t)
            if s.startswith("factrecall") and not shared:
                haystack = max(0, min(int(depth_u[i] * (ctx - header)), c_t - header))
        out.append(
            LvevalPrompt(
                subset=s,
                level=level,
                index=k,
                language=st.language,
                context_tokens=c_t,
                question_tokens=q_t,
                full_prompt_tokens=ctx + q,
                context_id=ctx_id,
                uid=hash_str("lveval-synthetic-record", seed, s, level, k),
                shared_context=shared,
                origin="lveval-synthetic",
                header_tokens=header,
                haystack_tokens=haystack,
            )
        )
    return out


def synthetic_answer_tokens(prompts: list[LvevalPrompt], rng: np.random.Generator) -> np.ndarray:
    """Answer lengths: geometric around the subset's mean answer tokens, >= 1, capped."""
    n = len(prompts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    means = np.array([max(SUBSETS[p.subset].mean_answer_tokens, 1.0) for p in prompts])
    caps = np.array([gen_cap(p.subset) for p in prompts], dtype=np.int64)
    draws = rng.geometric(1.0 / means)
    return np.minimum(draws, caps).astype(np.int64)


# --- token counting ----------------------------------------------------------------------


class TokenCounter:
    """Counts tokens with a real tokenizer.json when given, else estimates from words/chars."""

    def __init__(
        self,
        tokenizer_json: Path | None = None,
        tokens_per_word_en: float = EN_TOKENS_PER_WORD,
        tokens_per_char_zh: float = ZH_TOKENS_PER_CHAR,
    ) -> None:
        self.per_word_en = tokens_per_word_en
        self.per_char_zh = tokens_per_char_zh
        self.tokenizer = None
        if tokenizer_json is not None:
            try:
                from tokenizers import Tokenizer  # optional dependency, imported lazily
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise WorkloadError(
                    "tokenizer_json was given but the 'tokenizers' package is not installed "
                    "(pip install 'belusim[tokenizer]' or tokenizers)"
                ) from e
            p = Path(tokenizer_json)
            if not p.is_file():
                raise WorkloadError.at(p, "tokenizer file not found", field="tokenizer_json")
            try:
                self.tokenizer = Tokenizer.from_file(str(p))
            except Exception as e:  # tokenizers raises a plain Exception on bad JSON
                raise WorkloadError.at(p, f"cannot load tokenizer: {e}", field="tokenizer_json") from e

    def estimate(self, text: str, language: str) -> int:
        """Token estimate without a tokenizer: words x ratio (en), characters x ratio (zh)."""
        if language == "zh":
            chars = len("".join(text.split()))
            return int(round(chars * self.per_char_zh))
        return int(round(len(text.split()) * self.per_word_en))

    def encode(self, text: str) -> np.ndarray:
        assert self.tokenizer is not None
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def count(self, text: str, language: str) -> int:
        if self.tokenizer is None:
            return self.estimate(text, language)
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


# --- file loader -------------------------------------------------------------------------

_NAME_RE = re.compile(r"^(?P<subset>.+)_(?P<level>16k|32k|64k|128k|256k)\.jsonl$")


@dataclass(frozen=True)
class LvevalSource:
    """One {subset}_{level}.jsonl, either a plain file or a member of a zip archive."""

    subset: str
    level: str
    file: Path
    member: str | None = None

    def label(self) -> str:
        return f"{self.file}[{self.member}]" if self.member else str(self.file)


def discover(path: Path, subsets: list[str] | None = None, levels: list[str] | None = None) -> list[LvevalSource]:
    """Find LV-Eval sources under a directory (jsonl files and zips), or in one file.

    Plain jsonl files win over zip members of the same name. Order: subsets as given (or
    sorted), then levels as given.
    """
    path = Path(path)
    if not path.exists():
        raise WorkloadError.at(path, "LV-Eval path not found", field="path")
    found: dict[tuple[str, str], LvevalSource] = {}
    zips: list[Path] = []
    if path.is_dir():
        jsonls = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        zips = sorted(p for p in path.rglob("*.zip") if p.is_file())
    elif path.suffix == ".zip":
        jsonls, zips = [], [path]
    else:
        jsonls = [path]
    for p in jsonls:
        m = _NAME_RE.match(p.name)
        if m is None:
            if path.is_file():
                raise WorkloadError.at(p, "file name must be {subset}_{level}.jsonl (e.g. factrecall_en_16k.jsonl)")
            continue
        found.setdefault((m["subset"], m["level"]), LvevalSource(m["subset"], m["level"], p))
    for z in zips:
        try:
            with zipfile.ZipFile(z) as zf:
                names = sorted(zf.namelist())
        except zipfile.BadZipFile as e:
            raise WorkloadError.at(z, f"not a valid zip archive: {e}") from e
        for name in names:
            m = _NAME_RE.match(name.rsplit("/", 1)[-1])
            if m is not None:
                found.setdefault((m["subset"], m["level"]), LvevalSource(m["subset"], m["level"], z, name))
    if not found:
        raise WorkloadError.at(path, "no LV-Eval files ({subset}_{level}.jsonl, or zips holding them) found")
    all_subsets = sorted({s for s, _ in found})
    want_subsets = subsets if subsets is not None else all_subsets
    want_levels = list(levels) if levels is not None else [lv for lv in LEVELS if any(l == lv for _, l in found)]
    out = []
    for s in want_subsets:
        if s not in all_subsets:
            raise WorkloadError.at(path, f"subset {s!r} not found (found: {all_subsets})", field="subsets")
        for lv in want_levels:
            src = found.get((s, lv))
            if src is None:
                if levels is None or subsets is None:
                    continue  # "every subset found": take the levels each one has
                raise WorkloadError.at(path, f"no file for subset {s!r} at level {lv!r}", field="levels")
            out.append(src)
    if not out:
        raise WorkloadError.at(path, f"no LV-Eval files for levels {want_levels}", field="levels")
    return out


def _open_lines(src: LvevalSource) -> Iterator[tuple[int, str]]:
    if src.member is None:
        yield from iter_lines(src.file, error=WorkloadError)
    else:
        where = f"{src.file}[{src.member}]"
        with zipfile.ZipFile(src.file) as zf, zf.open(src.member) as raw:
            for i, line in enumerate(raw, 1):
                yield i, decode(line, where, line=i, error=WorkloadError)


@dataclass
class LvevalRecord:
    """The fields of one LV-Eval line that the loader uses."""

    line: int
    question: str
    context: str
    answers: list[str]
    language: str
    dataset: str | None
    length: int | None


def iter_records(src: LvevalSource) -> Iterator[LvevalRecord]:
    """Parse and validate the records of one source, one line at a time."""
    default_lang = SUBSETS[src.subset].language if src.subset in SUBSETS else None

    def err(line: int, msg: str, fld: str | None = None) -> WorkloadError:
        return WorkloadError.at(src.file, msg, line=line, field=fld, member=src.member)

    try:
        for ln, line in _open_lines(src):
            if not line.strip():
                continue
            d = parse_json(line, f"{src.file}[{src.member}]" if src.member else src.file, line=ln,
                           error=WorkloadError)
            if not isinstance(d, dict):
                raise err(ln, f"expected a JSON object, got {type(d).__name__}")
            for fld in ("input", "context", "answers"):
                if fld not in d:
                    raise err(ln, "missing", fld)
            for fld in ("input", "context"):
                if not isinstance(d[fld], str):
                    raise err(ln, f"expected a string, got {type(d[fld]).__name__}", fld)
            ans = d["answers"]
            if isinstance(ans, str):
                ans = [ans]
            if not isinstance(ans, list) or not all(isinstance(a, str) for a in ans):
                raise err(ln, "expected a list of strings", "answers")
            length = d.get("length")
            if length is not None and (type(length) is not int or length < 0):
                raise err(ln, f"expected a non-negative integer, got {length!r}", "length")
            dataset = d.get("dataset")
            if dataset is not None and not isinstance(dataset, str):
                raise err(ln, f"expected a string, got {type(dataset).__name__}", "dataset")
            lang = d.get("language", default_lang)
            if lang is None:
                raise err(ln, "missing (and the subset is not in the LV-Eval table)", "language")
            if not isinstance(lang, str) or lang.lower() not in ("en", "zh"):
                raise err(ln, f"expected 'en' or 'zh', got {lang!r}", "language")
            yield LvevalRecord(ln, d["input"], d["context"], ans, lang.lower(), dataset, length)
    except UnicodeDecodeError as e:
        raise WorkloadError.at(src.file, f"not UTF-8 text: {e}", member=src.member) from None


def load_files(
    path: Path,
    *,
    subsets: list[str] | None = None,
    levels: list[str] | None = ("16k",),
    counter: TokenCounter | None = None,
    block_size: int = 16,
    min_prompt_tokens: int = 0,
    truncate_tokens: int | None = None,
) -> list[LvevalPrompt]:
    """Records of real LV-Eval files as prompts, in file order, filtered and truncated.

    Keys come from the real context text: with a tokenizer, from the token ids of each
    block (so contexts sharing a prefix share blocks); without one, from a hash of the
    whole context (equal contexts share every context block).
    """
    counter = counter or TokenCounter()
    out: list[LvevalPrompt] = []
    for src in discover(Path(path), subsets, list(levels) if levels is not None else None):
        for idx, rec in enumerate(iter_records(src)):
            hashes = None
            if counter.tokenizer is not None:
                ctx_ids = counter.encode(rec.context)
                ctx = len(ctx_ids)
                q = len(counter.encode(rec.question))
            else:
                ctx = counter.estimate(rec.context, rec.language)
                q = counter.estimate(rec.question, rec.language)
            q = max(q, 1)  # a prompt always ends with at least one question token
            full = ctx + q
            if full < min_prompt_tokens:
                continue
            c_t, q_t = truncate(ctx, q, truncate_tokens)
            if counter.tokenizer is not None:
                hashes = hash_token_blocks(ctx_ids[:c_t], block_size)
            ans = counter.count(rec.answers[0], rec.language) if rec.answers else 0
            out.append(
                LvevalPrompt(
                    subset=src.subset,
                    level=src.level,
                    index=idx,
                    language=rec.language,
                    context_tokens=c_t,
                    question_tokens=q_t,
                    full_prompt_tokens=full,
                    context_id=hash_bytes(b"lveval-context\x1f" + rec.context.encode("utf-8")),
                    uid=hash_str("lveval-record", src.subset, src.level, idx, rec.question),
                    answer_tokens=ans,
                    context_block_hashes=hashes,
                )
            )
    return out


def file_answer_tokens(prompts: list[LvevalPrompt]) -> np.ndarray:
    """Reference-answer lengths, at least 1, capped at LV-Eval's generation cap."""
    return np.array(
        [min(max(p.answer_tokens or 1, 1), gen_cap(p.subset)) for p in prompts], dtype=np.int64
    )


def stats_table_rows() -> list[dict]:
    """The statistics table as plain rows (for docs and the CLI)."""
    return [
        {
            "subset": s.name,
            "language": s.language,
            "qa_pairs": s.qa_pairs,
            **{f"tokens_{lv}": round(s.mean_prompt_tokens[lv]) for lv in LEVELS},
            "prompt_tokens_source": s.prompt_tokens_source,
            "mean_answer_tokens": s.mean_answer_tokens,
            "answer_tokens_source": s.answer_tokens_source,
            "gen_cap": s.gen_cap,
        }
        for s in SUBSETS.values()
    ]
