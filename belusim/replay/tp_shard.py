"""Which part of the random-weight model a tensor-parallel rank holds.

As vLLM's column/row-parallel layers split a Llama/Qwen layer (and as docs/compute.md's TP
model assumes): the fused QKV projection by attention heads (q heads / TP, KV heads / TP, or
one KV head replicated over TP / kv_heads ranks: QKVParallelLinear), the output projection by
its rows (RowParallelLinear, then an all-reduce), gate/up by MLP columns
(MergedColumnParallelLinear), down by its rows (then an all-reduce), the LM head by vocabulary
(VocabParallelEmbedding / ParallelLMHead).

Each rank draws the whole model's matrices in the TP-1 order from the same seed and keeps its
slice, so the ranks together hold exactly the TP-1 model and a TP-2 forward pass computes the
same function as the TP-1 one (tests/test_replay_tp.py checks this on two GPUs).
"""

from __future__ import annotations


def kv_head_range(kv_heads: int, rank: int, tp: int) -> tuple[int, int]:
    """(first KV head, count) held by `rank`."""
    if kv_heads >= tp:
        n = kv_heads // tp
        return rank * n, n
    return rank // (tp // kv_heads), 1


def split(n: int, rank: int, tp: int) -> tuple[int, int]:
    """(start, stop) of rank's part of n columns, the first ranks taking one more when tp does
    not divide n (vLLM pads the vocabulary instead; the step's cost is the same to a column)."""
    base, extra = divmod(n, tp)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_weights(w, m, rank: int, tp: int):
    """w(rows, cols) draws a full matrix; returns (layers, lm_head) of this rank, each layer
    (wqkv, wo, wgu, wd) as CudaBackend uses them."""
    import torch

    D, h = m.head_dim, m.hidden
    qd_full, kvd_full = m.q_heads * D, m.kv_heads * D
    q0, q1 = split(m.q_heads, rank, tp)
    k0, nk = kv_head_range(m.kv_heads, rank, tp)
    f0, f1 = split(m.ffn, rank, tp)
    layers = []
    for _ in range(m.layers):
        qkv = w(h, qd_full + 2 * kvd_full)
        wqkv = torch.cat([qkv[:, q0 * D:q1 * D],
                          qkv[:, qd_full + k0 * D:qd_full + (k0 + nk) * D],
                          qkv[:, qd_full + kvd_full + k0 * D:qd_full + kvd_full + (k0 + nk) * D]], dim=1)
        del qkv
        wo = w(qd_full, h)[q0 * D:q1 * D].contiguous()
        gu = w(h, 2 * m.ffn)
        wgu = torch.cat([gu[:, f0:f1], gu[:, m.ffn + f0:m.ffn + f1]], dim=1)
        del gu
        wd = w(m.ffn, h)[f0:f1].contiguous()
        layers.append((wqkv, wo, wgu, wd))
    v0, v1 = split(m.vocab, rank, tp)
    lm_head = w(h, m.vocab)[:, v0:v1].contiguous()
    return layers, lm_head
