"""Triton forward and backward of the Gumbel vector quantizer (see ``gumbel.py`` for the
semantics). One program per (block of BLOCK_N rows, group): the group's V logits of each row
sit in registers (V padded to a power of two), the Gumbel noise is regenerated from
(seed, offset) by the same uint32 hash as ``rng.py``, and the codevectors are gathered (hard) or
contracted (soft) in BLOCK_D column slices, so no (N, G·V, d) tensor exists anywhere.

Forward writes quantized (N, G·d), code ids (N, G) and per-block softmax sums (blocks, G, V),
reduced in a fixed order on the host (deterministic, no atomics). Backward computes the logit
gradient in one kernel (grad_q @ codebookᵀ by ``tl.dot``, then the softmax Jacobians) and the
codebook gradient by row scatter-add (atomic, or a CSR segment sum when deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sslseq.kernels.rng import seed_keys
from sslseq.kernels.gumbel import out_dtype, wide_dtype
from sslseq.kernels.segment_triton import scatter_add_rows

BLOCK_N = 16  # rows per program: 16 x 512 fp32 tiles (V=320 padded) stay in registers with 8 warps
BLOCK_D = 32  # codevector columns per step: the fp32 tl.dot's (32, 512) codebook tile is 64 KB of shared memory
NUM_STAGES = 2  # pipelined copies of that tile: 3 (Hopper's default) would need more than the 227 KB per block


@triton.jit
def _lowbias32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _gumbel(offs, k1, k2):
    """Same as rng.gumbel_noise: hash(offset mod 2**32) → 23-bit uniform → -log(-log(u))."""
    x = offs.to(tl.uint32) ^ k1.to(tl.uint32, bitcast=True)
    x = _lowbias32(x)
    x = _lowbias32(x ^ k2.to(tl.uint32, bitcast=True))
    u = ((x >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    return -tl.log(-tl.log(u))


@triton.jit
def _load_group(logits, rows, cols, g, N, V, GV):
    """(BLOCK_N, BLOCK_V) fp32 logits of group g (-inf in padded columns, 0 in rows past N) and offsets."""
    rmask = rows < N
    cmask = cols < V
    offs = rows[:, None].to(tl.int64) * GV + g * V + cols[None, :]
    lg = tl.load(logits + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    lg = tl.where(cmask[None, :], lg, float("-inf"))
    return lg, offs


@triton.jit
def _dot(a, b):
    """In fp32, exactly (no TF32), as the torch implementations. 16-bit operands are widened too: the
    Triton interpreter's bf16 dot is wrong, and the CPU tests must run the code the GPU runs."""
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _softmax_rows(x):
    e = tl.exp(x - tl.max(x, 1)[:, None])
    return e / tl.sum(e, 1)[:, None]


@triton.jit(do_not_specialize=["k1", "k2"])
def _gumbel_fwd_kernel(logits, book, q, idx, psum, N, V, GV, D, tau, k1, k2, HARD: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    G = tl.num_programs(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_V)
    rmask = rows < N
    cmask = cols < V
    lg, offs = _load_group(logits, rows, cols, g, N, V, GV)
    z = (lg + _gumbel(offs, k1, k2)) / tau
    code = tl.argmax(z, 1)  # first maximum on ties, as torch.argmax
    tl.store(idx + rows.to(tl.int64) * G + g, code.to(tl.int64), mask=rmask)
    # Noise-free softmax summed over this block's rows (the diversity loss's mean).
    p = tl.where(rmask[:, None], _softmax_rows(lg), 0.0)
    tl.store(psum + (pid * G + g).to(tl.int64) * V + cols, tl.sum(p, 0), mask=cmask)
    if not HARD:
        y = _softmax_rows(z)
    brow = g * V + code  # (BLOCK_N,) codebook row of each frame's choice
    for d0 in range(0, D, BLOCK_D):
        dc = d0 + tl.arange(0, BLOCK_D)
        dm = dc < D
        if HARD:
            val = tl.load(book + brow[:, None].to(tl.int64) * D + dc[None, :], mask=rmask[:, None] & dm[None, :], other=0.0)
        else:
            bk = tl.load(book + (g * V + cols)[:, None].to(tl.int64) * D + dc[None, :],
                         mask=cmask[:, None] & dm[None, :], other=0.0)
            val = _dot(y, bk)
        tl.store(q + rows[:, None].to(tl.int64) * (G * D) + g * D + dc[None, :], val.to(q.dtype.element_ty),
                 mask=rmask[:, None] & dm[None, :])


@triton.jit(do_not_specialize=["k1", "k2"])
def _gumbel_bwd_kernel(logits, book, gq, gmean, glogits, ysoft, N, V, GV, D, tau, inv_n, k1, k2,
                       HAS_GQ: tl.constexpr, HAS_GMEAN: tl.constexpr, STORE_Y: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    G = tl.num_programs(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_V)
    rmask = rows < N
    cmask = cols < V
    m2 = rmask[:, None] & cmask[None, :]
    if HAS_GQ:
        # d quantized / d y_soft = grad_q[n, g] · codebook[g, v], accumulated over column slices
        # first, so that only the accumulator is live across the loop (register pressure).
        go = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dc = d0 + tl.arange(0, BLOCK_D)
            dm = dc < D
            a = tl.load(gq + rows[:, None].to(tl.int64) * (G * D) + g * D + dc[None, :],
                        mask=rmask[:, None] & dm[None, :], other=0.0)
            bt = tl.load(book + (g * V + cols)[None, :].to(tl.int64) * D + dc[:, None],
                         mask=dm[:, None] & cmask[None, :], other=0.0)
            go += _dot(a, bt)
    lg, offs = _load_group(logits, rows, cols, g, N, V, GV)
    gz = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if HAS_GQ:
        y = _softmax_rows((lg + _gumbel(offs, k1, k2)) / tau)
        if STORE_Y:
            tl.store(ysoft + offs, y, mask=m2)
        gz += y * (go - tl.sum(y * go, 1)[:, None]) / tau
    if HAS_GMEAN:
        p = _softmax_rows(lg)
        gm = tl.load(gmean + g * V + cols, mask=cmask, other=0.0) * inv_n
        gz += p * (gm[None, :] - tl.sum(p * gm[None, :], 1)[:, None])
    tl.store(glogits + offs, gz.to(glogits.dtype.element_ty), mask=m2)


def launch_options(V: int, backward: bool = False) -> dict:
    """Block sizes and launch options for V codes per group (shared with ``compile_check``).
    The backward keeps four (BLOCK_N, BLOCK_V) fp32 tiles live: 16 warps keep it near 128
    registers a thread (8 warps: 255 and spills, on sm_90)."""
    BV = max(16, triton.next_power_of_2(V))  # tl.dot needs >= 16
    warps = (16 if backward else 8) if BV >= 256 else 4
    return dict(BLOCK_N=BLOCK_N, BLOCK_V=BV, BLOCK_D=BLOCK_D, num_warps=warps, num_stages=NUM_STAGES)


def _keys(seed: int) -> tuple[int, int]:
    """The rng round keys as signed int32 bit patterns: an int >= 2**31 would be passed as int64
    and promote the uint32 hash arithmetic to 64 bits (the kernel bitcasts them back)."""
    return tuple(k - (1 << 32) if k >= 1 << 31 else k for k in seed_keys(seed))


def forward(logits, codebook, tau: float, hard: bool, seed: int, groups: int):
    N, GV = logits.shape
    G, V, D = groups, GV // groups, codebook.size(-1)
    logits, codebook = logits.contiguous(), codebook.contiguous()
    q = torch.empty((N, G * D), dtype=out_dtype(logits, codebook), device=logits.device)
    idx = torch.empty((N, G), dtype=torch.int64, device=logits.device)
    nb = triton.cdiv(N, BLOCK_N)
    psum = torch.empty((max(nb, 1), G, V), dtype=torch.float32, device=logits.device)
    if N == 0:
        return q, idx, torch.zeros((G, V), dtype=wide_dtype(logits.dtype), device=logits.device)
    k1, k2 = _keys(seed)
    _gumbel_fwd_kernel[(nb, G)](logits, codebook, q, idx, psum, N, V, GV, D, float(tau), k1, k2, HARD=bool(hard),
                                **launch_options(V))
    mean = psum.sum(0).to(wide_dtype(logits.dtype)) / N  # fixed-order reduction over blocks
    return q, idx, mean


def backward(logits, codebook, idx, tau, hard, seed, groups, grad_q, grad_mean, deterministic):
    N, GV = logits.shape
    G, V, D = groups, GV // groups, codebook.size(-1)
    logits, codebook = logits.contiguous(), codebook.contiguous()
    g_logits = torch.empty_like(logits)
    g_book = torch.zeros((GV, D), dtype=torch.float32, device=codebook.device)
    if N == 0:
        return g_logits, g_book.to(codebook.dtype)
    has_gq, has_gm = grad_q is not None, grad_mean is not None
    gq = grad_q.contiguous() if has_gq else g_book
    gm = grad_mean.float().contiguous() if has_gm else g_book
    store_y = has_gq and not hard
    ysoft = torch.empty((N, GV), dtype=torch.float32, device=logits.device) if store_y else g_book
    k1, k2 = _keys(seed)
    _gumbel_bwd_kernel[(triton.cdiv(N, BLOCK_N), G)](
        logits, codebook, gq, gm, g_logits, ysoft, N, V, GV, D, float(tau), 1.0 / N, k1, k2,
        HAS_GQ=has_gq, HAS_GMEAN=has_gm, STORE_Y=store_y, **launch_options(V, backward=True),
    )
    if has_gq:
        if hard:
            # grad codebook[g*V + code] += grad_q[n, g]: rows of grad_q viewed (N*G, D).
            dst = (idx + torch.arange(G, device=idx.device) * V).reshape(-1)
            rows = torch.arange(N * G, device=idx.device)
            scatter_add_rows(g_book, dst, gq.view(N * G, D), rows, None, deterministic)
        else:
            # Dense: grad codebook[g] = y_softᵀ @ grad_q[:, g] (a matmul, no scatter).
            y = ysoft.view(N, G, V).transpose(0, 1)
            g_book.view(G, V, D).add_(torch.bmm(y.transpose(1, 2), gq.view(N, G, D).transpose(0, 1).float()))
    return g_logits, g_book.to(codebook.dtype)
