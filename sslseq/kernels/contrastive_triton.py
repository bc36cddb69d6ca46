"""Triton forward and backward of the InfoNCE loss over cosine logits (see ``contrastive.py``).

One program per frame i: its K negative indices and their target rows are gathered in
(BLOCK_K, BLOCK_D) tiles, straight from ``t`` (L2-resident: N·D floats), so nothing of size
(K+1, N, D) or (N, K, D) exists. The forward writes per-row loss, accuracy, positive logit,
the K negative logits (-inf where dropped) and the log-sum-exp; the backward reads those back,
forms the softmax weights, and in one more gather pass writes the context gradient and the
positive's target gradient, and either atomically adds the negatives' target gradients or
(deterministic) leaves them to a CSR segment sum (``segment_triton.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sslseq.kernels.segment_triton import scatter_add_rows

BLOCK_D = 64  # feature columns per gather step: (BLOCK_K=128) x 64 fp32 tile = 32 KB in registers (8 warps)


@triton.jit
def _infonce_fwd_kernel(c, t, t_raw, neg, codes, loss, correct, pos_out, neg_out, lse_out, K, D, inv_temp,
                        USE_CODES: tl.constexpr, G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    km = ks < K
    nidx = tl.load(neg + i * K + ks, mask=km, other=-1)
    valid = nidx >= 0
    safe = tl.where(valid, nidx, 0)
    gm = km & valid
    dots = tl.zeros((BLOCK_K,), dtype=tl.float32)
    pos = tl.zeros((BLOCK_D,), dtype=tl.float32)
    differ = tl.zeros((BLOCK_K,), dtype=tl.int32)
    for d0 in range(0, D, BLOCK_D):
        dc = d0 + tl.arange(0, BLOCK_D)
        dm = dc < D
        ci = tl.load(c + i * D + dc, mask=dm, other=0.0).to(tl.float32)
        ti = tl.load(t + i * D + dc, mask=dm, other=0.0).to(tl.float32)
        tn = tl.load(t + safe[:, None] * D + dc[None, :], mask=gm[:, None] & dm[None, :], other=0.0).to(tl.float32)
        dots += tl.sum(tn * ci[None, :], 1)
        pos += ci * ti
        if not USE_CODES:  # fairseq compares the raw target vectors
            ri = tl.load(t_raw + i * D + dc, mask=dm, other=0.0)
            rn = tl.load(t_raw + safe[:, None] * D + dc[None, :], mask=gm[:, None] & dm[None, :], other=0.0)
            differ = tl.maximum(differ, tl.max(((rn != ri[None, :]) & dm[None, :]).to(tl.int32), 1))
    if USE_CODES:
        same = gm
        for g in tl.static_range(G):
            cpos = tl.load(codes + i * G + g)
            cneg = tl.load(codes + safe * G + g, mask=gm, other=-1)
            same = same & (cneg == cpos)
    else:
        same = differ == 0
    l0 = tl.sum(pos, 0) * inv_temp
    ln = tl.where(gm & ~same, dots * inv_temp, float("-inf"))
    mx = tl.maximum(tl.max(ln, 0), l0)
    lse = mx + tl.log(tl.exp(l0 - mx) + tl.sum(tl.exp(ln - mx), 0))
    # Accuracy as torch: argmax is 0 (index 0 wins ties) and argmin is not 0.
    mn = tl.min(tl.where(km, ln, float("inf")), 0)
    ok = (l0 >= tl.max(ln, 0)) & ~(l0 <= mn)
    tl.store(loss + i, lse - l0)
    tl.store(correct + i, ok.to(tl.int32))
    tl.store(pos_out + i, l0)
    tl.store(lse_out + i, lse)
    tl.store(neg_out + i * K + ks, ln, mask=km)


@triton.jit
def _infonce_bwd_kernel(c, t, neg, pos_in, neg_in, lse_in, gloss, gc, gt, wneg, K, D, inv_temp,
                        ATOMIC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    km = ks < K
    nidx = tl.load(neg + i * K + ks, mask=km, other=-1)
    valid = km & (nidx >= 0)
    safe = tl.where(valid, nidx, 0)
    go = tl.load(gloss)
    lse = tl.load(lse_in + i)
    # d loss_i / d logit_j = softmax_j - [j == 0]; logits are cos / temperature.
    w0 = go * (tl.exp(tl.load(pos_in + i) - lse) - 1.0) * inv_temp
    wn = go * tl.exp(tl.load(neg_in + i * K + ks, mask=km, other=float("-inf")) - lse) * inv_temp
    wn = tl.where(valid, wn, 0.0)
    if not ATOMIC:
        tl.store(wneg + i * K + ks, wn, mask=km)
    for d0 in range(0, D, BLOCK_D):
        dc = d0 + tl.arange(0, BLOCK_D)
        dm = dc < D
        ci = tl.load(c + i * D + dc, mask=dm, other=0.0).to(tl.float32)
        ti = tl.load(t + i * D + dc, mask=dm, other=0.0).to(tl.float32)
        tn = tl.load(t + safe[:, None] * D + dc[None, :], mask=valid[:, None] & dm[None, :], other=0.0).to(tl.float32)
        tl.store(gc + i * D + dc, w0 * ti + tl.sum(wn[:, None] * tn, 0), mask=dm)
        if ATOMIC:
            tl.atomic_add(gt + i * D + dc, w0 * ci, mask=dm)
            tl.atomic_add(gt + safe[:, None] * D + dc[None, :], wn[:, None] * ci[None, :],
                          mask=valid[:, None] & dm[None, :] & (wn[:, None] != 0.0))
        else:
            tl.store(gt + i * D + dc, w0 * ci, mask=dm)  # row i is this program's alone


def launch_options(K: int) -> dict:
    """Block sizes and launch options for K negatives (shared with ``compile_check``)."""
    return dict(BLOCK_K=max(16, triton.next_power_of_2(max(K, 1))), BLOCK_D=BLOCK_D, num_warps=8 if K > 32 else 4)


def forward(c, t, neg_idx, target_codes, t_raw, temperature: float):
    N, D = c.shape
    K = neg_idx.size(1)
    dev = c.device
    loss = torch.empty(N, dtype=torch.float32, device=dev)
    correct = torch.empty(N, dtype=torch.int32, device=dev)
    pos = torch.empty(N, dtype=torch.float32, device=dev)
    neg = torch.empty((N, K), dtype=torch.float32, device=dev)
    lse = torch.empty(N, dtype=torch.float32, device=dev)
    if N:
        use_codes = target_codes is not None
        codes = target_codes.contiguous() if use_codes else neg_idx
        raw = t if use_codes else t_raw.contiguous()
        _infonce_fwd_kernel[(N,)](
            c.contiguous(), t.contiguous(), raw, neg_idx.contiguous(), codes, loss, correct, pos, neg, lse, K, D,
            1.0 / temperature, USE_CODES=use_codes, G=target_codes.size(1) if use_codes else 1, **launch_options(K),
        )
    return loss.to(c.dtype), correct.sum().to(torch.int64), pos, neg, lse


def backward(c, t, neg_idx, pos, neg, lse, grad_loss, temperature: float, deterministic: bool):
    N, D = c.shape
    K = neg_idx.size(1)
    gc = torch.empty((N, D), dtype=torch.float32, device=c.device)
    gt = torch.zeros((N, D), dtype=torch.float32, device=c.device)
    if N:
        wneg = torch.empty((N, K), dtype=torch.float32, device=c.device) if deterministic else gt
        _infonce_bwd_kernel[(N,)](
            c.contiguous(), t.contiguous(), neg_idx.contiguous(), pos, neg, lse, grad_loss.float().reshape(1),
            gc, gt, wneg, K, D, 1.0 / temperature, ATOMIC=not deterministic, **launch_options(K),
        )
        if deterministic:
            # Negatives' target gradients: gt[neg_idx[i, k]] += wneg[i, k] * c[i], summed in a fixed order.
            rows = torch.arange(N, device=c.device).repeat_interleave(K)
            scatter_add_rows(gt, neg_idx.reshape(-1), c.float().contiguous(), rows, wneg.reshape(-1), True)
    return gc.to(c.dtype), gt.to(t.dtype)
