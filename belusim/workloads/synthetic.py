"""Synthetic prompts built from segments: shared-prefix groups and multi-turn sessions.

A prompt is a list of segments (id, tokens): a system prompt, a question, a turn of a
conversation. Two prompts share block i exactly when their segment lists agree on every
token up to the end of block i, as a real tokenizer's output would: a block that lies inside
one segment is keyed by (segment, offset); a block that straddles segments mixes every piece
it covers. Blocks inside one segment are keyed with numpy; only the few straddling blocks of
a prompt take a Python step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .keys import U64, chain_keys, combine, hash_str, row_offsets_from_lengths

Segment = tuple[int, int]  # (64-bit segment id, tokens)


def segment_block_contents(segments: list[Segment], block_size: int) -> np.ndarray:
    """Content id per full block of a prompt made of `segments` (uint64, premixed)."""
    total = sum(n for _, n in segments)
    nblk = total // block_size
    out = np.empty(nblk, dtype=U64)
    if nblk == 0:
        return out
    starts = np.cumsum([0] + [n for _, n in segments])
    for s, (sid, n) in enumerate(segments):
        a, b = int(starts[s]), int(starts[s] + n)
        # blocks fully inside [a, b)
        first = -(-a // block_size)
        last = min(b // block_size, nblk)
        if last > first:
            offs = np.arange(first, last, dtype=np.int64) * block_size - a
            out[first:last] = combine(np.full(last - first, sid, dtype=U64), offs.astype(U64))
    # straddling blocks: mix (segment, offset, length) of every piece they cover
    straddling = sorted({int(p) // block_size for p in starts[1:-1] if p % block_size})
    for j in straddling:
        if j >= nblk:
            break
        lo, hi = j * block_size, (j + 1) * block_size
        s = int(np.searchsorted(starts, lo, side="right")) - 1
        h = hash_str("straddle")
        while s < len(segments) and starts[s] < hi:
            sid, n = segments[s]
            a = max(lo, int(starts[s]))
            b = min(hi, int(starts[s] + n))
            if b > a:
                h = int(combine(combine(h, sid), (a - int(starts[s])) << 32 | (b - a)))
            s += 1
        out[j] = U64(h)
    return out


def prompts_block_keys(prompts: list[list[Segment]], block_size: int, namespace: int) -> tuple[np.ndarray, np.ndarray]:
    """Chained keys of many segment prompts: (flat int64 keys, row offsets)."""
    contents = [segment_block_contents(p, block_size) for p in prompts]
    off = row_offsets_from_lengths(np.array([len(c) for c in contents], dtype=np.int64))
    flat = np.concatenate(contents) if contents else np.zeros(0, dtype=U64)
    return chain_keys(flat, off, namespace, premixed=True), off


@dataclass
class SyntheticPrompt:
    segments: list[Segment]
    output_tokens: int
    source: str
    tags: dict = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(n for _, n in self.segments)


def shared_prefix_prompts(
    *,
    name: str,
    seed: int,
    num_groups: int,
    prompts_per_group: int,
    system_prompt_tokens: int,
    question_tokens: int,
) -> list[list[Segment]]:
    """The N x M distinct prompts: group g's system prompt, then question (g, m).

    Returned group-major: prompt index g * M + m.
    """
    out = []
    for g in range(num_groups):
        sys_id = hash_str("shared-prefix", name, seed, "system", g)
        for m in range(prompts_per_group):
            segs = [(sys_id, system_prompt_tokens)] if system_prompt_tokens else []
            if question_tokens:
                segs.append((hash_str("shared-prefix", name, seed, "question", g, m), question_tokens))
            out.append(segs)
    return out


def session_prompts(
    *,
    name: str,
    seed: int,
    session: int,
    turns: int,
    system_id: int | None,
    system_prompt_tokens: int,
    user_tokens: np.ndarray,
    answer_tokens: np.ndarray,
) -> list[list[Segment]]:
    """Prompt of each turn: system, (user_1, answer_1), ..., user_t.

    The answer segment stands for the tokens the model generated in that turn (the client
    sends them back as history), so turn t's prompt starts with turn t-1's whole prompt.
    """
    history: list[Segment] = []
    if system_prompt_tokens:
        sid = system_id if system_id is not None else hash_str("multi-turn", name, seed, "system", session)
        history.append((sid, system_prompt_tokens))
    out = []
    for t in range(turns):
        user = (hash_str("multi-turn", name, seed, "user", session, t), int(user_tokens[t]))
        out.append(history + [user])
        history = history + [user, (hash_str("multi-turn", name, seed, "answer", session, t), int(answer_tokens[t]))]
    return out
