"""Contrastive (InfoNCE) loss op over cosine similarities, negatives by index.

Semantics (all implementations): logits[i] = [cos(c_i, t_i), cos(c_i, t[neg_idx[i, k]]) ...] / temperature,
cosine as F.normalize (eps 1e-8) then dot, in at least float32; a negative is -inf where
neg_idx is -1 or where it equals the positive (same code ids when ``target_codes`` is given,
else the same target vector: fairseq's ``neg_is_pos``). loss_sum = Σ_i CE(logits[i], 0);
correct = #rows whose argmax is 0 and whose argmin is not 0 (not all tied).

``reference``: fairseq's literal computation (gathers (K, N, D), cosine over (K+1, N, D)).
``chunked``: gathers bounded row chunks only (forward and backward, ``NegativeDot``).
``triton``: one fused kernel per direction (``contrastive_triton.py``), wired by :class:`InfoNCEFn`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "contrastive_loss_reference", "contrastive_loss_chunked", "chunked_logits", "negative_dot", "NegativeDot",
    "InfoNCEFn", "CHUNK_ELEMS",
]

# Elements of one gathered (rows, K, D) chunk: bounds the temporary at 16 MB in fp32.
CHUNK_ELEMS = 1 << 22


def compute_dtype(context: torch.Tensor, targets: torch.Tensor) -> torch.dtype:
    """At least fp32 (as fairseq's .float()); fp64 stays fp64 for exact reference checks."""
    return torch.promote_types(torch.promote_types(context.dtype, targets.dtype), torch.float32)


def _accuracy(logits: torch.Tensor) -> torch.Tensor:
    if logits.size(0) == 0:
        return torch.zeros((), dtype=torch.long, device=logits.device)
    best = logits.argmax(dim=-1) == 0
    worst = logits.argmin(dim=-1) == 0
    return (best & ~worst).sum()


# ------------------------------------------------------------------ reference


def contrastive_loss_reference(context, targets, neg_idx, target_codes=None, temperature: float = 0.1):
    """fairseq ``compute_preds`` + ``Wav2vecCriterion`` (infonce) literally: (K+1, N, D) stacked targets."""
    dt = compute_dtype(context, targets)
    x, y = context.to(dt), targets.to(dt)
    safe = neg_idx.clamp(min=0)
    negs = y[safe].permute(1, 0, 2)  # (K, N, D)
    with torch.no_grad():
        if target_codes is not None:
            neg_is_pos = (target_codes[safe] == target_codes[:, None, :]).all(-1).t()
        else:
            neg_is_pos = (targets[None] == targets[safe].permute(1, 0, 2)).all(-1)
        neg_is_pos = neg_is_pos | (neg_idx.t() < 0)
    stacked = torch.cat([y[None], negs], dim=0)
    xn = F.normalize(x, dim=-1, eps=1e-8)
    sn = F.normalize(stacked, dim=-1, eps=1e-8)
    logits = (xn[None] * sn).sum(-1) / temperature  # (K+1, N)
    logits = torch.cat([logits[:1], logits[1:].masked_fill(neg_is_pos, float("-inf"))], dim=0).t()
    loss = F.cross_entropy(logits, logits.new_zeros(logits.size(0), dtype=torch.long), reduction="sum")
    with torch.no_grad():
        correct = _accuracy(logits)
    return loss, correct


# ------------------------------------------------------------------ chunked


class NegativeDot(torch.autograd.Function):
    """out[i, k] = <c[i], t[idx[i, k]]>, chunked in forward and backward (nothing (N, K, D) saved)."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, chunk_elems: int) -> torch.Tensor:
        N, K = idx.shape
        D = c.size(-1)
        chunk = max(1, chunk_elems // max(K * D, 1))
        out = c.new_empty((N, K))
        with torch.autocast(device_type=c.device.type, enabled=False):
            for s in range(0, N, chunk):
                e = min(s + chunk, N)
                out[s:e] = torch.bmm(t[idx[s:e]], c[s:e, :, None]).squeeze(-1)
        ctx.save_for_backward(c, t, idx)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        c, t, idx = ctx.saved_tensors
        N, D = idx.size(0), c.size(-1)
        need_c, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gc = torch.empty_like(c) if need_c else None
        gt = torch.zeros_like(t) if need_t else None
        grad = grad.to(c.dtype)
        with torch.autocast(device_type=c.device.type, enabled=False):
            for s in range(0, N, ctx.chunk):
                e = min(s + ctx.chunk, N)
                g = grad[s:e]  # (n, K)
                if need_c:
                    gc[s:e] = torch.bmm(g[:, None, :], t[idx[s:e]]).squeeze(1)
                if need_t:
                    gt.index_add_(0, idx[s:e].reshape(-1), (g[:, :, None] * c[s:e, None, :]).reshape(-1, D))
        return gc, gt, None, None


def negative_dot(c: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """(N, K) dot products of rows ``c`` (N, D) with rows ``t[idx]`` (``idx`` (N, K) in [0, M))."""
    if idx.numel() == 0:
        return c.new_zeros(idx.shape) + 0.0 * c.sum() + 0.0 * t.sum()  # keep both in the graph
    return NegativeDot.apply(c, t, idx, chunk_elems)


@torch.no_grad()
def _same_rows(t: torch.Tensor, idx: torch.Tensor, chunk_elems: int) -> torch.Tensor:
    """(N, K) bool: ``t[idx[i, k]]`` equals ``t[i]`` exactly (chunked)."""
    N, K = idx.shape
    out = torch.zeros((N, K), dtype=torch.bool, device=idx.device)
    chunk = max(1, chunk_elems // max(K * t.size(-1), 1))
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        out[s:e] = (t[idx[s:e]] == t[s:e, None, :]).all(dim=-1)
    return out


@torch.no_grad()
def drop_mask(targets, neg_idx, target_codes, chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """(N, K) bool: negatives whose logit is -inf (no negative, or equal to the positive)."""
    safe = neg_idx.clamp(min=0)
    if target_codes is not None:
        same = (target_codes[safe] == target_codes[:, None, :]).all(dim=-1)
    else:
        same = _same_rows(targets, safe, chunk_elems)
    return same | (neg_idx < 0)


def chunked_logits(context, targets, neg_idx, target_codes=None, temperature: float = 0.1, chunk_elems: int = CHUNK_ELEMS):
    """(N, K+1) logits without any (N, K, D) tensor (see the module docstring)."""
    dtype = compute_dtype(context, targets)
    c = F.normalize(context.to(dtype), dim=-1, eps=1e-8)
    t = F.normalize(targets.to(dtype), dim=-1, eps=1e-8)
    pos = (c * t).sum(dim=-1, keepdim=True)
    neg = negative_dot(c, t, neg_idx.clamp(min=0), chunk_elems)
    neg = neg.masked_fill(drop_mask(targets, neg_idx, target_codes, chunk_elems), float("-inf"))
    return torch.cat([pos, neg], dim=1) / temperature


def contrastive_loss_chunked(context, targets, neg_idx, target_codes=None, temperature: float = 0.1,
                             chunk_elems: int = CHUNK_ELEMS):
    logits = chunked_logits(context, targets, neg_idx, target_codes, temperature, chunk_elems)
    loss = F.cross_entropy(logits, logits.new_zeros(logits.size(0), dtype=torch.long), reduction="sum")
    with torch.no_grad():
        correct = _accuracy(logits)
    return loss, correct


# ------------------------------------------------------------------ fused (triton) wiring


class InfoNCEFn(torch.autograd.Function):
    """Fused loss on unit vectors ``c``, ``t`` (normalised outside, by autograd). The forward
    saves the (N, K+1) logits and the per-row log-sum-exp, never gathered negatives."""

    @staticmethod
    def forward(ctx, c, t, neg_idx, target_codes, t_raw, temperature, impl, deterministic):
        loss_rows, correct, pos, neg, lse = impl.forward(c, t, neg_idx, target_codes, t_raw, temperature)
        ctx.save_for_backward(c, t, neg_idx, pos, neg, lse)
        ctx.args = (temperature, impl, deterministic)
        ctx.mark_non_differentiable(correct)
        return loss_rows.sum(), correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        c, t, neg_idx, pos, neg, lse = ctx.saved_tensors
        temperature, impl, deterministic = ctx.args
        gc, gt = impl.backward(c, t, neg_idx, pos, neg, lse, grad_loss, temperature, deterministic)
        return gc, gt, None, None, None, None, None, None
