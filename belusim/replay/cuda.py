"""The CUDA backend: real compute and real KV copies on one GPU.

Compute: a transformer of the model card's shape with random bf16 weights made on the GPU
(nothing downloaded). Every step runs the batch's tokens through every layer: RMSNorm, QKV
GEMM, the new K/V written into the paged cache, attention, O GEMM, residual, RMSNorm, gated
MLP, residual; then the LM head on each sequence's last token. Attention, as vLLM runs it:
decode tokens by a paged split-K kernel (paged_attention.py) that reads each sequence's K/V
blocks in place through its block table; prefill chunks one sequence at a time by PyTorch's
scaled_dot_product_attention over the context gathered from the paged cache (a copy vLLM's
kernels do not make, small beside a chunk's GEMMs), with a lower-right causal mask.
Decode-only steps run as CUDA graphs captured per padded batch size (vLLM's default sizes);
other steps of up to vLLM's largest capture size (512 tokens at most) as piecewise CUDA graphs
per padded token count, everything but attention captured, attention eager between the pieces
(vLLM V1's FULL_AND_PIECEWISE default); larger steps eagerly. A step's index arrays reach
the GPU in one copy from pinned memory, so issuing a step never waits for the GPU, and a step
waits for its own stream only, never for the transfers running beside it. No rotary
embedding, no q/k norms, no sampling: output lengths come from the workload.

KV cache: one bf16 tensor [layers, 2, blocks, block_size, kv_heads, head_dim], so a block is
2 x layers fragments of block_size x kv_heads x head_dim, the card's layout.

Pool: a host region registered with CUDA (anonymous pinned memory from cudaHostAlloc by
default; a file or device-DAX window mapped and cudaHostRegister'ed), a block stored as its
2 x layers fragments back to back. Loads and saves run on their own stream with the system's
copy method: one gather/scatter kernel per batch of blocks (the calibration probe's kernel,
8 CTAs of 256 threads, reading and writing the mapped host memory), or one
cudaMemcpyAsync per fragment. A checksum per block (a position-weighted sum over its words,
computed on the GPU) is written with every save and checked on every load.
"""

from __future__ import annotations

import math
import time
from unittest.mock import patch

import numpy as np

from belusim.config.scenario import GB, Scenario, SystemConfig
from belusim.replay.emulated import ChecksumError
from belusim.replay.pool import PoolRegion, PoolSpec

SUM_KERNEL = r"""
extern "C" __global__ void frag_sum(const unsigned long long* __restrict__ ptrs, const int nfrag,
                                    const long long words, const int frags_per_block,
                                    unsigned long long* __restrict__ out) {
    for (int f = blockIdx.x; f < nfrag; f += gridDim.x) {
        const unsigned int* p = reinterpret_cast<const unsigned int*>(ptrs[f]);
        unsigned long long s = 0;
        for (long long i = threadIdx.x; i < words; i += blockDim.x)
            s += (unsigned long long)p[i] * (unsigned long long)(i + 1 + (f % frags_per_block) * words);
        for (int o = 16; o; o >>= 1) s += __shfl_down_sync(0xffffffff, s, o);
        if ((threadIdx.x & 31) == 0) atomicAdd(&out[f / frags_per_block], s);
    }
}
"""
COPY_CTAS = 8  # as the calibration probe measured the kernel


class CudaBackend:
    name = "cuda"

    def __init__(self, scenario: Scenario, system: SystemConfig, num_gpu_blocks: int, pool_spec: PoolSpec,
                 rank: int = 0, tp: int = 1, all_reduce=None, cuda_graphs: bool = True):
        """rank/tp: this process's tensor-parallel shard (replay/tp.py starts one process per
        rank); all_reduce(t) sums t in place over the ranks (NCCL), twice per layer."""
        try:
            import cupy as cp
            import torch
        except ImportError as e:
            raise RuntimeError(f"--backend cuda needs PyTorch and CuPy with a CUDA GPU ({e})") from None
        if not torch.cuda.is_available():
            raise RuntimeError("--backend cuda: no CUDA GPU visible (use --backend emulated)")
        from belusim.calibration.gpu import COPY_KERNEL, COPY_THREADS

        self.torch, self.cp = torch, cp
        m, eng, kv = scenario.model, scenario.engine, system.kv
        self.m, self.bs = m, eng.block_size
        self.copy_method = kv.copy_method
        dev, dt = torch.device("cuda"), torch.bfloat16
        self.dev, self.dt = dev, dt
        self.rank, self.tp = rank, tp
        self._ar = all_reduce if tp > 1 else None
        self.L, self.Hq, self.Hkv, self.D = m.layers, m.q_heads // tp, m.kv_heads_per_rank(tp), m.head_dim
        self.qd, self.kvd = self.Hq * m.head_dim, self.Hkv * m.head_dim  # this rank's q and K/V widths
        g = torch.Generator(device=dev).manual_seed(scenario.run.seed)

        def w(rows, cols):
            t = torch.empty(rows, cols, device=dev, dtype=dt)
            t.normal_(0.0, 1.0 / math.sqrt(rows), generator=g)
            return t

        h = m.hidden
        if tp == 1:
            self.layers = [(w(h, self.qd + 2 * self.kvd), w(self.qd, h), w(h, 2 * m.ffn), w(m.ffn, h))
                           for _ in range(m.layers)]
            self.lm_head = w(h, m.vocab)
        else:  # the same random model as at TP 1, each rank keeping its shard (tp_shard.py)
            from belusim.replay.tp_shard import shard_weights

            self.layers, self.lm_head = shard_weights(w, m, rank, tp)
        self.ln = torch.ones(h, device=dev, dtype=dt)
        self.x = w(eng.max_num_batched_tokens, h)  # the step's input activations (no embedding lookup)
        self.num_gpu_blocks = num_gpu_blocks
        # one block more than the engine's: the padding rows of a CUDA-graph decode step write
        # their K/V there (vLLM's padded slots write nowhere the scheduler can see)
        self.pad_block = num_gpu_blocks
        self.kv = torch.empty(m.layers, 2, num_gpu_blocks + 1, self.bs, self.Hkv, self.D, device=dev, dtype=dt)
        self.kv.normal_(generator=g)
        self.frag_bytes = self.bs * self.Hkv * self.D * 2
        self.block_bytes = self.frag_bytes * 2 * m.layers
        self.fpb = 2 * m.layers
        self.copy_stream = cp.cuda.Stream(non_blocking=True)
        self.copy_kernel = cp.RawKernel(COPY_KERNEL, "frag_copy")
        self.copy_threads = COPY_THREADS
        self.sum_kernel = cp.RawKernel(SUM_KERNEL, "frag_sum")
        # fragment addresses of GPU block b: base + ((l*2 + kv) * NB + b) * frag_bytes
        self.kv_base = self.kv.data_ptr()
        lk = np.arange(self.fpb, dtype=np.uint64)  # l*2 + kv, in the pool's order
        self._gpu_frag_off = lk * np.uint64((num_gpu_blocks + 1) * self.frag_bytes)
        self.pool = None
        self.num_pool_chunks = 0
        self._host_ptr = None
        self.chunk_blocks = max(1, kv.chunk_tokens // self.bs)
        try:
            from belusim.replay.paged_attention import PagedDecode
        except ImportError as e:
            raise RuntimeError(f"--backend cuda needs Triton for its paged decode attention ({e})") from None
        self._paged_decode = PagedDecode
        from torch.nn.attention.bias import causal_lower_right

        self._causal_lower_right = causal_lower_right
        self._ref_ev, self._ref_t = None, 0.0  # GPU time reference (see landed_at)
        self._pin = None  # pinned host staging buffer of the step's index arrays (see _stage)
        self._graphs, self._graph_sizes = {}, []  # decode-only steps (see _capture_decode_graphs)
        self._pw_graphs, self._pw_sizes = {}, []  # other steps, in pieces (see _capture_piecewise_graphs)
        self.piecewise = True  # use the piecewise graphs when captured (the benchmark turns it off)
        self.path_steps = {"decode_graph": 0, "piecewise_graphs": 0, "eager": 0}
        self.last_hidden = None
        self.info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                     "attention": "prefill: torch sdpa over K/V gathered from the paged cache; decode: "
                                  "paged split-K Triton kernel reading K/V blocks in place",
                     "copy_method": self.copy_method}
        if kv.kind != "hbm-only":
            if kv.kind != "local-dram":
                raise RuntimeError(f"--backend cuda replays host-memory pools (local-dram); system {system.name!r} "
                                   f"is {kv.kind}")
            chunk_bytes = m.kv_bytes_per_token * kv.chunk_tokens
            cap = int(kv.capacity_gb * GB // chunk_bytes)
            self.num_pool_chunks = cap + 1024
            nbytes = self.num_pool_chunks * self.chunk_blocks * self.block_bytes
            t0 = time.perf_counter()
            if pool_spec.kind == "anon":
                self._host_ptr = cp.cuda.runtime.hostAlloc(nbytes, 3)  # portable | mapped
                self.pool_base = self._host_ptr
                self.info["pool"] = f"anonymous pinned host memory (cudaHostAlloc mapped), {nbytes / GB:.1f} GB"
            else:
                self.pool = PoolRegion(pool_spec, nbytes)
                ptr = self.pool.array.ctypes.data
                cp.cuda.runtime.hostRegister(ptr, nbytes, 3)  # portable | mapped
                self.pool_base = ptr
                self.info["pool"] = f"{pool_spec.kind} window registered with CUDA: {self.pool.info}"
            self.info["pool_setup_s"] = time.perf_counter() - t0
            self.pool_sums = cp.zeros(self.num_pool_chunks * self.chunk_blocks, dtype=cp.uint64)
        self._warm_up()
        if cuda_graphs:
            self._graph_pool = torch.cuda.graph_pool_handle()
            self._capture_decode_graphs(eng.max_num_seqs)
            if tp == 1:
                self._capture_piecewise_graphs(eng.max_num_seqs, eng.max_num_batched_tokens)
            else:  # not yet run with the all-reduce inside the pieces
                self.info["piecewise_cuda_graphs"] = "off at tensor parallel > 1"
        else:
            self.info["decode_cuda_graphs"] = self.info["piecewise_cuda_graphs"] = "off"
        if tp > 1:
            self.info["tensor_parallel"] = {"rank": rank, "tp": tp, "q_heads": self.Hq, "kv_heads": self.Hkv,
                                            "ffn": self.layers[0][3].shape[0], "vocab": self.lm_head.shape[1],
                                            "all_reduce": "NCCL via torch.distributed, 2 per layer"}
        torch.cuda.synchronize()
        if self.num_pool_chunks:
            self._clock()
        shard = f" (TP rank {rank} of {tp})" if tp > 1 else ""
        self.description = (f"cuda: {self.info['gpu']}, random-weight {m.id} shape in bf16{shard}, "
                            f"{self.info['attention']}; KV copies by {self.copy_method}")

    def _warm_up(self) -> None:
        """Run each kind of step and transfer once before the clock starts: the first call
        of a kernel pays for its loading and autotuning, which serving engines do at start."""
        from types import SimpleNamespace

        nb = min(self.num_gpu_blocks, 2 * (self.x.shape[0] // self.bs) + 4)
        n = min(self.x.shape[0], (nb // 2) * self.bs)
        half = list(range(nb // 2))
        other = list(range(nb // 2, nb))
        for seqs in ([(half, 0, n)], [(half, n - self.bs, self.bs)], [(half, n - 1, 1)],
                     [(half, n - 1, 1), (other, n // 2, 1)], [(half, n - 1, 1), (other, 0, n // 2)]):
            self.compute(seqs, SimpleNamespace(tokens=sum(k for _t, _c, k in seqs)))
        self._warm_up_paged_decode()
        if self.num_pool_chunks:
            h = self.save([0], [0], 1)
            self.wait(h)
            h = self.load([1], [0], 1)
            self.wait(h)
            self.verify_load(h)
            for n in (1, 1 << 10, 1 << 13, 1 << 17):  # CuPy builds its scan kernels by size class
                a = self.cp.zeros(n, dtype=self.cp.uint64)
                self._mismatches(a, a)
            self.pool_sums.fill(0)
        self.sync()

    def _warm_up_paged_decode(self) -> None:
        """Compile the paged decode for every partition count an eager (mixed) step can ask
        for: its merge kernel is specialised on the partition count's next power of two, and a
        first compile in the middle of a replay stalls it for about a second."""
        from belusim.replay.paged_attention import MAX_PROGRAMS, PART_MIN

        torch = self.torch
        q = torch.zeros(1, self.Hq, self.D, device=self.dev, dtype=self.dt)
        out = torch.empty_like(q)
        bt = torch.full((1, 1), self.pad_block, dtype=torch.int64, device=self.dev)
        lens = torch.ones(1, dtype=torch.int64, device=self.dev)
        top = max(1, MAX_PROGRAMS // self.Hkv)
        parts = 1
        while True:
            pd = self._paged_decode(1, self.Hq, self.Hkv, self.D, parts * PART_MIN, self.dev)
            pd(q, self.kv[0, 0], self.kv[0, 1], bt, lens, out)
            if pd.parts >= top or parts * PART_MIN >= (self.num_gpu_blocks + 1) * self.bs:
                break
            parts *= 2

    # -- compute ----------------------------------------------------------------------------
    def _token_slots(self, table, upto: int) -> np.ndarray:
        t = np.asarray(table, dtype=np.int64)
        s = (t[:, None] * self.bs + np.arange(self.bs)[None, :]).reshape(-1)
        return s[:upto]

    def _stage(self, arrays):
        """Copy int64 index arrays to the GPU in one non-blocking copy out of a pinned host
        buffer (a copy from pageable memory waits for the stream, which would serialize the
        step's issue with its execution). Safe to reuse: every step ends synchronized."""
        torch = self.torch
        n = sum(len(a) for a in arrays)
        if self._pin is None or self._pin.numel() < n:
            cap = max(n, 2 * (0 if self._pin is None else self._pin.numel()), 4096)
            self._pin = torch.empty(cap, dtype=torch.int64, pin_memory=True)
            self._pin_np = self._pin.numpy()
            self._dev_idx = torch.empty(cap, dtype=torch.int64, device=self.dev)
        out, o = [], 0
        for a in arrays:
            self._pin_np[o:o + len(a)] = a
            out.append((o, len(a)))
            o += len(a)
        self._dev_idx[:n].copy_(self._pin[:n], non_blocking=True)
        return [self._dev_idx[i:i + k] for i, k in out]

    def compute(self, seqs, plan) -> None:
        """One engine step. Decode-only batches replay a full CUDA graph; other steps of at
        most the largest piecewise capture size replay the captured pieces between eager
        attention calls (see _capture_piecewise_graphs); larger ones run eagerly."""
        t_issue = time.perf_counter()
        if self._graphs and len(seqs) <= self._graph_sizes[-1] and all(n == 1 and c > 0 for _t, c, n in seqs):
            self._replay_decode(seqs)
            self.path_steps["decode_graph"] += 1
            self.last_issue_s = time.perf_counter() - t_issue
            self.torch.cuda.current_stream().synchronize()
            return
        T = plan.tokens
        Tp = 0
        if self.piecewise and self._pw_sizes and T <= self._pw_sizes[-1]:
            Tp = next(s for s in self._pw_sizes if s >= T)
        write_slots, prefills, decodes = [], [], []
        off = 0
        for table, ctx, n in seqs:
            if n == 1 and ctx > 0:
                slots = np.asarray(table[ctx // self.bs:ctx // self.bs + 1], dtype=np.int64) * self.bs + ctx % self.bs
                write_slots.append(slots)
                decodes.append((off, table, ctx + 1))
            else:
                slots = self._token_slots(table, ctx + n)
                write_slots.append(slots[ctx:])
                prefills.append((off, ctx, n, slots))
            off += n
        if Tp > T:  # padding rows write their K/V into the padding block
            write_slots.append(np.full(Tp - T, self.pad_block * self.bs, dtype=np.int64))
        arrays = [np.concatenate(write_slots), np.cumsum([n for _t, _c, n in seqs]) - 1]
        arrays += [s for _o, _c, _n, s in prefills]
        if decodes:
            B = len(decodes)
            nbmax = max(-(-ln // self.bs) for _o, _t, ln in decodes)
            bt = np.zeros((B, nbmax), dtype=np.int64)
            for i, (_o, t, ln) in enumerate(decodes):
                k = -(-ln // self.bs)
                bt[i, :k] = t[:k]
            lens = np.array([ln for _o, _t, ln in decodes], dtype=np.int64)
            arrays += [bt.reshape(-1), lens, np.array([o for o, _t, _l in decodes], dtype=np.int64)]
        staged = self._stage(arrays)
        wslots, last = staged[0], staged[1]
        pre = [(o, c, n, s) for (o, c, n, _s), s in zip(prefills, staged[2:2 + len(prefills)])]
        dec = None
        if decodes:
            dbt, dlens, drows = staged[-3].view(B, nbmax), staged[-2], staged[-1]
            pd = self._paged_decode(B, self.Hq, self.Hkv, self.D, int(lens.max()), self.dev)
            dout = self.torch.empty(B, self.Hq, self.D, device=self.dev, dtype=self.dt)
            dec = (pd, dbt, dlens, drows, dout, B)
        if Tp:
            x = self._compute_piecewise(T, Tp, wslots, pre, dec)
            self.path_steps["piecewise_graphs"] += 1
        else:
            x = self._compute_eager(T, wslots, pre, dec)
            self.path_steps["eager"] += 1
        self.last_hidden = x.index_select(0, last)  # each sequence's last token, into the LM head
        logits = self.last_hidden @ self.lm_head
        logits.argmax(dim=-1)
        self.last_issue_s = time.perf_counter() - t_issue  # CPU time to issue the step's kernels
        # the step's outputs are ready when its own stream is: transfers in flight on the copy
        # stream go on (a device-wide synchronize made every step wait for all of them)
        self.torch.cuda.current_stream().synchronize()

    def _attention(self, li, q, attn, pre, dec) -> None:
        """Layer li's attention for a step's T rows (q: [T, qd]) into attn [T, qd], eager in
        both paths, as vLLM keeps attention outside its piecewise graphs: each prefill chunk by
        SDPA over its context gathered from the paged cache, the decode rows by the paged kernel."""
        F, causal_lower_right = self.torch.nn.functional, self._causal_lower_right
        Hq, Hkv, D, qd = self.Hq, self.Hkv, self.D, self.qd
        nb = (self.num_gpu_blocks + 1) * self.bs
        kc = self.kv[li, 0].view(nb, Hkv, D)
        vc = self.kv[li, 1].view(nb, Hkv, D)
        for o, c, n, s in pre:
            S = c + n
            kk = kc.index_select(0, s).transpose(0, 1).unsqueeze(0)
            vv = vc.index_select(0, s).transpose(0, 1).unsqueeze(0)
            qq = q[o:o + n].reshape(n, Hq, D).transpose(0, 1).unsqueeze(0)
            if c == 0:
                a = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
            else:
                a = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=causal_lower_right(n, S), enable_gqa=True)
            attn[o:o + n] = a[0].transpose(0, 1).reshape(n, qd)
        if dec is not None:
            pd, dbt, dlens, drows, dout, B = dec
            pd(q.index_select(0, drows).view(B, Hq, D), self.kv[li, 0], self.kv[li, 1], dbt, dlens, dout)
            attn.index_copy_(0, drows, dout.view(B, qd))

    def _pre_attention(self, li, x, qkv, wslots) -> None:
        """RMSNorm, the QKV projection into qkv, and the new K/V written into the paged cache."""
        F = self.torch.nn.functional
        Hkv, D, qd, kvd = self.Hkv, self.D, self.qd, self.kvd
        nb = (self.num_gpu_blocks + 1) * self.bs
        T = x.shape[0]
        h = F.rms_norm(x, (x.shape[-1],), self.ln, 1e-6)
        self.torch.matmul(h, self.layers[li][0], out=qkv)
        _q, k, v = qkv.split([qd, kvd, kvd], dim=-1)
        self.kv[li, 0].view(nb, Hkv, D).index_copy_(0, wslots, k.reshape(T, Hkv, D))
        self.kv[li, 1].view(nb, Hkv, D).index_copy_(0, wslots, v.reshape(T, Hkv, D))

    def _post_attention(self, li, x, attn):
        """O projection, residual, RMSNorm, gated MLP, residual: layer li's output."""
        F = self.torch.nn.functional
        _wqkv, wo, wgu, wd = self.layers[li]
        o = attn @ wo
        if self._ar:
            self._ar(o)
        x2 = x + o
        h2 = F.rms_norm(x2, (x2.shape[-1],), self.ln, 1e-6)
        gate, up = (h2 @ wgu).chunk(2, dim=-1)
        d = (F.silu(gate) * up) @ wd
        if self._ar:
            self._ar(d)
        return x2 + d

    def _compute_eager(self, T, wslots, pre, dec):
        torch = self.torch
        x = self.x[:T]
        qkv = torch.empty(T, self.qd + 2 * self.kvd, device=self.dev, dtype=self.dt)
        attn = torch.empty(T, self.qd, device=self.dev, dtype=self.dt)
        for li in range(self.L):
            self._pre_attention(li, x, qkv, wslots)
            self._attention(li, qkv[:, :self.qd], attn, pre, dec)
            x = self._post_attention(li, x, attn)
        return x

    # -- mixed and prefill steps as piecewise CUDA graphs -----------------------------------
    def _piece(self, i: int, Tp: int) -> None:
        """Piece i of a step padded to Tp tokens, everything between two attention calls, as
        vLLM splits its compiled model at attention: layer i-1 after its attention (i > 0),
        then layer i up to its attention (i < L). Reads and writes only the static buffers."""
        if i == 0:
            x = self.x[:Tp]
        else:
            x = self._post_attention(i - 1, self._p_res[:Tp], self._p_attn[:Tp])
        if i < self.L:
            self._pre_attention(i, x, self._p_qkv[:Tp], self._p_wslots[:Tp])
        self._p_res[:Tp].copy_(x)

    def _compute_piecewise(self, T, Tp, wslots, pre, dec):
        self._p_wslots[:Tp].copy_(wslots)
        pieces = self._pw_graphs[Tp]
        for li in range(self.L):
            pieces[li].replay()
            self._attention(li, self._p_qkv[:T, :self.qd], self._p_attn[:T], pre, dec)
        pieces[self.L].replay()
        return self._p_res[:T]

    def _capture_piecewise_graphs(self, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        """Capture every step of up to vLLM's largest piecewise capture size as L + 1 graphs
        per padded token count, attention left eager between them (vLLM V1's default
        FULL_AND_PIECEWISE mode: vllm/config/compilation.py cudagraph_mode, splitting_ops at the
        attention ops; vllm/compilation/backends.py splits the graph there). Sizes as vLLM's
        default (vllm/config/vllm.py VllmConfig._set_cudagraph_sizes): 1, 2, 4, multiples of 8
        below 256, then multiples of 16, up to min(2 x max_num_seqs, 512) and at most
        max_num_batched_tokens; a step's token count is padded up to the next size
        (vllm/v1/cudagraph_dispatcher.py); larger steps run without graphs."""
        torch = self.torch
        top = min(2 * max_num_seqs, 512, max_num_batched_tokens, self.x.shape[0])
        sizes = [s for s in (1, 2, 4) if s <= top] + list(range(8, min(top + 1, 256), 8))
        sizes += list(range(256, top + 1, 16))
        if max_num_batched_tokens <= top and max_num_batched_tokens not in sizes:
            sizes.append(max_num_batched_tokens)
        sizes = sorted(set(sizes))
        if not sizes:
            return
        Tm = sizes[-1]
        self._p_res = torch.zeros(Tm, self.m.hidden, device=self.dev, dtype=self.dt)
        self._p_qkv = torch.zeros(Tm, self.qd + 2 * self.kvd, device=self.dev, dtype=self.dt)
        self._p_attn = torch.zeros(Tm, self.qd, device=self.dev, dtype=self.dt)
        self._p_wslots = torch.full((Tm,), self.pad_block * self.bs, dtype=torch.int64, device=self.dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for Tp in sizes:  # GEMM heuristics and kernels loaded outside capture
                for i in range(self.L + 1):
                    self._piece(i, Tp)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        # each capture would run gc.collect() and empty the allocator's cache: thousands of
        # small graphs then take minutes; vLLM's CUDAGraphWrapper (vllm/compilation/cuda_graph.py)
        # skips both after the first capture the same way
        with patch("gc.collect", lambda *a: 0), patch("torch.cuda.empty_cache", lambda: None):
            for Tp in reversed(sizes):  # largest first; all share the decode graphs' memory pool
                pieces = []
                for i in range(self.L + 1):
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=self._graph_pool):
                        self._piece(i, Tp)
                    pieces.append(g)
                self._pw_graphs[Tp] = pieces
        for Tp in sizes:  # the first launch of a graph uploads it: not inside the replay
            for g in self._pw_graphs[Tp]:
                g.replay()
        torch.cuda.synchronize()
        self._pw_sizes = sizes
        self.info["piecewise_cuda_graphs"] = {"token_counts": sizes, "graphs": len(sizes) * (self.L + 1),
                                              "capture_s": round(time.perf_counter() - t0, 3)}

    # -- decode steps as CUDA graphs ----------------------------------------------------------
    def _decode_body(self, Bp: int) -> None:
        """A decode-only step of Bp sequences (rows 0..Bp-1), reading its indices from the
        static buffers; captured once per padded batch size."""
        F = self.torch.nn.functional
        Hq, Hkv, D, qd, kvd = self.Hq, self.Hkv, self.D, self.qd, self.kvd
        nb = (self.num_gpu_blocks + 1) * self.bs
        x = self.x[:Bp]
        wslots, bt, lens = self._g_wslots[:Bp], self._g_bt[:Bp], self._g_lens[:Bp]
        pd = self._g_plans[Bp]
        attn = self.torch.empty(Bp, Hq, D, device=self.dev, dtype=self.dt)
        for li, (wqkv, *_rest) in enumerate(self.layers):
            h = F.rms_norm(x, (x.shape[-1],), self.ln, 1e-6)
            q, k, v = (h @ wqkv).split([qd, kvd, kvd], dim=-1)
            self.kv[li, 0].view(nb, Hkv, D).index_copy_(0, wslots, k.reshape(Bp, Hkv, D))
            self.kv[li, 1].view(nb, Hkv, D).index_copy_(0, wslots, v.reshape(Bp, Hkv, D))
            pd(q.view(Bp, Hq, D), self.kv[li, 0], self.kv[li, 1], bt, lens, attn)
            x = self._post_attention(li, x, attn.view(Bp, qd))
        (x @ self.lm_head).argmax(dim=-1)

    def _capture_decode_graphs(self, max_num_seqs: int) -> None:
        """Capture decode-only steps as CUDA graphs, one per padded batch size (vLLM's
        default capture sizes 1, 2, 4, 8, 16, 24, ... up to max_num_seqs, here capped at 256),
        so a decode step is one graph launch instead of hundreds of kernel launches from
        Python. Mixed prefill/decode steps stay eager."""
        torch = self.torch
        top = min(max_num_seqs, 256, self.x.shape[0])
        sizes = sorted({s for s in [1, 2, 4] + list(range(8, top + 1, 8)) if s <= top} | {top})
        cap_tokens = self.num_gpu_blocks * self.bs  # the longest context the cache can hold
        nbmax = self.num_gpu_blocks
        self._g_wslots = torch.full((top,), self.pad_block * self.bs, dtype=torch.int64, device=self.dev)
        self._g_lens = torch.ones(top, dtype=torch.int64, device=self.dev)
        self._g_bt = torch.full((top, nbmax), self.pad_block, dtype=torch.int64, device=self.dev)
        self._g_plans = {Bp: self._paged_decode(Bp, self.Hq, self.Hkv, self.D, cap_tokens, self.dev) for Bp in sizes}
        pool = self._graph_pool
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for Bp in sizes:  # compile and autotune outside capture
                self._decode_body(Bp)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for Bp in reversed(sizes):  # largest first: the smaller ones reuse its memory pool
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self._decode_body(Bp)
            self._graphs[Bp] = g
        torch.cuda.synchronize()
        self._graph_sizes = sizes
        self.info["decode_cuda_graphs"] = {"batch_sizes": sizes, "capture_s": round(time.perf_counter() - t0, 3)}

    def _replay_decode(self, seqs) -> None:
        B = len(seqs)
        Bp = next(s for s in self._graph_sizes if s >= B)
        bs = self.bs
        nbmax = max(-(-(c + 1) // bs) for _t, c, _n in seqs)
        bt = np.full((Bp, nbmax), self.pad_block, dtype=np.int64)
        wslots = np.full(Bp, self.pad_block * bs, dtype=np.int64)
        lens = np.ones(Bp, dtype=np.int64)
        for i, (t, c, _n) in enumerate(seqs):
            k = c // bs + 1
            bt[i, :k] = t[:k]
            wslots[i] = bt[i, c // bs] * bs + c % bs
            lens[i] = c + 1
        d_w, d_l, d_bt = self._stage([wslots, lens, bt.reshape(-1)])
        self._g_wslots[:Bp].copy_(d_w)
        self._g_lens[:Bp].copy_(d_l)
        self._g_bt[:Bp, :nbmax].copy_(d_bt.view(Bp, nbmax))
        self._graphs[Bp].replay()

    # -- transfers --------------------------------------------------------------------------
    def _gpu_frags(self, blocks) -> np.ndarray:
        b = np.asarray(blocks, dtype=np.uint64)
        return (np.uint64(self.kv_base) + self._gpu_frag_off[None, :]
                + b[:, None] * np.uint64(self.frag_bytes)).reshape(-1)

    def _pool_frags(self, rows) -> np.ndarray:
        r = np.asarray(rows, dtype=np.uint64)
        return (np.uint64(self.pool_base) + r[:, None] * np.uint64(self.block_bytes)
                + np.arange(self.fpb, dtype=np.uint64)[None, :] * np.uint64(self.frag_bytes)).reshape(-1)

    def _rows(self, slots, chunk_blocks, n):
        return [s * chunk_blocks + j for s in slots for j in range(chunk_blocks)][:n]

    def _copy(self, src: np.ndarray, dst: np.ndarray, direction: str):
        cp, st = self.cp, self.copy_stream
        if self.copy_method == "gather-kernel":
            with st:
                s = cp.asarray(src)
                d = cp.asarray(dst)
            self.copy_kernel((COPY_CTAS,), (self.copy_threads,),
                             (s, d, np.int32(len(src)), np.int64(self.frag_bytes // 16)), stream=st)
            return (s, d)
        kind = cp.cuda.runtime.memcpyHostToDevice if direction == "load" else cp.cuda.runtime.memcpyDeviceToHost
        for a, b in zip(src.tolist(), dst.tolist()):
            cp.cuda.runtime.memcpyAsync(b, a, self.frag_bytes, kind, st.ptr)
        return None

    def _sums(self, gpu_frags: np.ndarray, nblocks: int):
        cp, st = self.cp, self.copy_stream
        with st:
            p = cp.asarray(gpu_frags)
            out = cp.zeros(nblocks, dtype=cp.uint64)
        self.sum_kernel((264,), (256,), (p, np.int32(len(gpu_frags)), np.int64(self.frag_bytes // 4),
                                         np.int32(self.fpb), out), stream=st)
        return out, p

    def load(self, gpu_blocks, slots, chunk_blocks):
        rows = self._rows(slots, chunk_blocks, len(gpu_blocks))
        g = self._gpu_frags(gpu_blocks)
        keep = self._copy(self._pool_frags(rows), g, "load")
        sums, p = self._sums(g, len(gpu_blocks))
        return {"ev": self._end_event(), "rows": rows, "sums": sums, "keep": (keep, p), "n": len(gpu_blocks)}

    def save(self, gpu_blocks, slots, chunk_blocks):
        rows = self._rows(slots, chunk_blocks, len(gpu_blocks))
        g = self._gpu_frags(gpu_blocks)
        keep = self._copy(g, self._pool_frags(rows), "store")
        sums, p = self._sums(g, len(gpu_blocks))
        with self.copy_stream:
            self.pool_sums[self.cp.asarray(np.asarray(rows, dtype=np.int64))] = sums
        return {"ev": self._end_event(), "keep": (keep, p, sums)}

    def _end_event(self):
        ev = self.cp.cuda.Event(block=False)  # with timing: landed_at() reads it
        ev.record(self.copy_stream)
        return ev

    def landed_at(self, h) -> float:
        """When a finished transfer's last kernel ended, in time.perf_counter() seconds: the
        executor only sees it at its next poll (between steps), later by up to a step, while the
        simulator reports the landing itself. Measured from a reference event whose host time
        is known (recorded on an idle GPU, see _clock)."""
        if self._ref_ev is None:
            self._clock()
        return self._ref_t + self.cp.cuda.get_elapsed_time(self._ref_ev, h["ev"]) * 1e-3

    def _clock(self) -> None:
        self.sync()
        ev = self.cp.cuda.Event()
        t0 = time.perf_counter()
        ev.record(self.copy_stream)
        ev.synchronize()
        self._ref_ev, self._ref_t = ev, (t0 + time.perf_counter()) / 2

    def done(self, h) -> bool:
        return h["ev"].done

    def wait(self, h) -> None:
        while not h["ev"].done:
            pass

    def verify_load(self, h) -> int:
        cp = self.cp
        want = self.pool_sums[cp.asarray(np.asarray(h["rows"], dtype=np.int64))]
        bad = self._mismatches(want, h["sums"])
        if bad.size:
            i = int(bad[0])
            raise ChecksumError(f"KV block read back from pool row {h['rows'][i]} fails its checksum "
                                f"(written {int(want[i])}, read {int(h['sums'][i])}); {int(bad.size)} of {h['n']} "
                                "blocks of this load differ")
        return h["n"]

    def _mismatches(self, want, got):
        return self.cp.nonzero(want != got)[0]

    def finish_save(self, h) -> None:
        pass

    def sync(self) -> None:
        self.copy_stream.synchronize()
        self.torch.cuda.synchronize()

    def close(self) -> None:
        try:
            self.sync()
        except Exception:
            pass
        cp = self.cp
        if self._host_ptr is not None:
            cp.cuda.runtime.freeHost(self._host_ptr)
            self._host_ptr = None
        if self.pool is not None:
            try:
                cp.cuda.runtime.hostUnregister(self.pool.array.ctypes.data)
            except Exception:
                pass
            self.pool.close()
        self.layers = self.kv = None
        self.torch.cuda.empty_cache()
