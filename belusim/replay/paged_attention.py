"""Paged decode attention for the CUDA replay: one query token per sequence, its K/V read in
place from the paged cache through the sequence's block table, as vLLM's paged-attention
kernels do (no contiguous copy of the context). Split-K ("flash decoding"): each program
takes one sequence, one KV head (all the query heads of its group together) and one
partition of the context, and keeps a running max and sum; a second kernel merges the
partitions. Triton; imported only by the CUDA backend.

Cache of one layer: K and V each [num_blocks, block_size, kv_heads, head_dim] (the card's
layout); queries [B, q_heads, head_dim]; block table [B, max_blocks] and lengths [B] int64.
"""

from __future__ import annotations

import triton
import triton.language as tl

TILE = 64  # context tokens per inner iteration
PART_MIN = 512  # context tokens per partition, at least
MAX_PROGRAMS = 8192  # bound on B x kv_heads x partitions (partial results stay a few MB)


@triton.jit(do_not_specialize=["q_stride", "bt_stride", "num_parts"])  # one compile for all steps
def _paged_decode_part(Q, K, V, BT, LENS, ACC, M, L, scale, q_stride, bt_stride, num_parts,
                       HKV: tl.constexpr, GRP: tl.constexpr, GRP_P: tl.constexpr, D: tl.constexpr,
                       BS: tl.constexpr, TILE: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    p = tl.program_id(2)
    n = tl.load(LENS + b)
    part_tokens = tl.cdiv(tl.cdiv(n, num_parts), TILE) * TILE  # per sequence: its context split evenly
    start = p * part_tokens
    end = tl.minimum(start + part_tokens, n)
    g = tl.arange(0, GRP_P)
    d = tl.arange(0, D)
    gm = g < GRP
    q = tl.load(Q + b * q_stride + (h * GRP + g)[:, None] * D + d[None, :], mask=gm[:, None], other=0.0)
    m_i = tl.full([GRP_P], float("-inf"), tl.float32)
    l_i = tl.zeros([GRP_P], tl.float32)
    acc = tl.zeros([GRP_P, D], tl.float32)
    t = tl.arange(0, TILE)
    for t0 in range(start, end, TILE):
        tok = t0 + t
        tm = tok < end
        blk = tl.load(BT + b * bt_stride + tok // BS, mask=tm, other=0)
        row = ((blk * BS + tok % BS) * HKV + h) * D
        k = tl.load(K + row[:, None] + d[None, :], mask=tm[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(tm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        pr = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        v = tl.load(V + row[:, None] + d[None, :], mask=tm[:, None], other=0.0)
        l_i = l_i * alpha + tl.sum(pr, 1)
        acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
        m_i = m_new
    base = (b * HKV + h) * num_parts + p
    used = start < n  # the merge reads only the partitions a sequence uses
    tl.store(ACC + (base * GRP_P + g)[:, None] * D + d[None, :], acc, mask=used)
    tl.store(M + base * GRP_P + g, m_i, mask=used)
    tl.store(L + base * GRP_P + g, l_i, mask=used)


@triton.jit(do_not_specialize=["num_parts"])
def _paged_decode_merge(ACC, M, L, LENS, OUT, num_parts, HKV: tl.constexpr, GRP: tl.constexpr,
                        GRP_P: tl.constexpr, D: tl.constexpr, PARTS_P: tl.constexpr, TILE: tl.constexpr):
    b = tl.program_id(0)
    qh = tl.program_id(1)  # query head
    h = qh // GRP
    g = qh % GRP
    p = tl.arange(0, PARTS_P)
    d = tl.arange(0, D)
    n = tl.load(LENS + b)
    part_tokens = tl.cdiv(tl.cdiv(n, num_parts), TILE) * TILE
    pm = p < tl.cdiv(n, part_tokens)
    base = ((b * HKV + h) * num_parts + p) * GRP_P + g
    m = tl.load(M + base, mask=pm, other=float("-inf"))
    l = tl.load(L + base, mask=pm, other=0.0)
    mx = tl.max(m, 0)
    w = tl.exp(m - mx)
    a = tl.load(ACC + base[:, None] * D + d[None, :], mask=pm[:, None], other=0.0)
    o = tl.sum(a * w[:, None], 0) / tl.sum(l * w, 0)
    tl.store(OUT + (b * HKV * GRP + qh) * D + d, o.to(OUT.dtype.element_ty))


class PagedDecode:
    """The launch plan of one decode step (partitioning and partial-result buffers), made once
    per step and run once per layer. B sequences of Hq query heads over caches of Hkv heads of
    head_dim D; max_len: an upper bound on the context lengths, known on the host (so nothing
    is read back from the GPU)."""

    def __init__(self, B: int, Hq: int, HKV: int, D: int, max_len: int, device):
        import torch

        if Hq % HKV or D & (D - 1):
            raise ValueError(f"paged decode: {Hq} query heads over {HKV} KV heads of dim {D} not supported")
        self.B, self.Hq, self.HKV, self.D = B, Hq, HKV, D
        self.grp = Hq // HKV
        self.grp_p = max(16, triton.next_power_of_2(self.grp))  # tl.dot needs 16 rows
        # partitions per sequence: enough to fill the GPU at long context, each at least
        # PART_MIN tokens of the longest; a sequence shorter than that leaves some unused
        self.parts = max(1, min(triton.cdiv(max_len, PART_MIN), MAX_PROGRAMS // max(1, B * HKV)))
        self.acc = torch.empty(B, HKV, self.parts, self.grp_p, D, device=device, dtype=torch.float32)
        self.m = torch.empty(B, HKV, self.parts, self.grp_p, device=device, dtype=torch.float32)
        self.l = torch.empty_like(self.m)
        self.scale = D ** -0.5

    def __call__(self, q, k_cache, v_cache, block_table, lens, out):
        """q [B, Hq, D] (heads contiguous, any stride between sequences); k_cache, v_cache [num_blocks, block_size, Hkv, D];
        block_table [B, nb] and lens [B] int64 on the GPU; out [B, Hq, D] contiguous."""
        BS = k_cache.shape[1]
        _paged_decode_part[(self.B, self.HKV, self.parts)](
            q, k_cache, v_cache, block_table, lens, self.acc, self.m, self.l, self.scale, q.stride(0),
            block_table.stride(0), self.parts, HKV=self.HKV, GRP=self.grp, GRP_P=self.grp_p, D=self.D, BS=BS, TILE=TILE)
        _paged_decode_merge[(self.B, self.Hq)](
            self.acc, self.m, self.l, lens, out, self.parts, HKV=self.HKV, GRP=self.grp, GRP_P=self.grp_p, D=self.D,
            PARTS_P=max(2, triton.next_power_of_2(self.parts)), TILE=TILE)
        return out


def paged_decode(q, k_cache, v_cache, block_table, lens, max_len: int):
    """One call of PagedDecode: q [B, Hq, D] -> [B, Hq, D]."""
    import torch

    B, Hq, D = q.shape
    if k_cache.shape[3] != D:
        raise ValueError(f"paged decode: q {tuple(q.shape)} and cache {tuple(k_cache.shape)} do not fit")
    out = torch.empty_like(q)
    return PagedDecode(B, Hq, k_cache.shape[2], D, max_len, q.device)(q, k_cache, v_cache,
                                                                      block_table, lens, out)
