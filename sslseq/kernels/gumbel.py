"""Gumbel vector quantizer op: straight-through (hard) Gumbel-softmax over G groups of V codes,
codevector gather, and the per-group mean softmax for the diversity loss.

Semantics (all implementations), per row n and group g, with ``z = (logits + gumbel) / tau`` computed in at
least float32 and ``gumbel`` from :mod:`sslseq.kernels.rng` at the element offset of the logit:
  y_soft = softmax(z); code = argmax(z);
  hard: quantized = codebook[g, code]   (forward value of fairseq's y_hard - y_soft.detach() + y_soft)
  soft: quantized = y_soft @ codebook[g];
  gradients flow through y_soft in both cases (straight-through), and to the codebook through the
  one-hot (hard) or y_soft (soft); soft_probs_mean = mean over rows of softmax(logits) (no noise).

``reference`` is fairseq's literal computation (builds the (N, G·V, d) product); ``chunked`` and
``triton`` share :class:`GumbelQuantizeFn` and never build it, in forward or backward.
"""

from __future__ import annotations

import torch

from sslseq.kernels.rng import gumbel_noise

__all__ = ["gumbel_quantize_reference", "GumbelQuantizeFn", "chunked_forward", "chunked_backward"]

# Logit elements per row chunk of the chunked implementation (fp32 temporaries of a few times 4 MB).
CHUNK_ELEMS = 1 << 18


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute dtype: float32, or float64 for float64 inputs (fairseq casts half logits up)."""
    return torch.promote_types(dtype, torch.float32)


def out_dtype(logits: torch.Tensor, codebook: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, codebook.dtype)


def _noise(rows: slice, n_total_cols: int, seed: int, device, dtype) -> torch.Tensor:
    """Gumbel noise of logit rows ``rows`` (offset = row * G·V + column)."""
    offs = torch.arange(rows.start * n_total_cols, rows.stop * n_total_cols, device=device, dtype=torch.int64)
    return gumbel_noise(offs, seed).view(-1, n_total_cols).to(dtype)


def gumbel_quantize_reference(logits, codebook, tau: float, hard: bool, seed: int, groups: int):
    """fairseq GumbelVectorQuantizer.forward (training) written out literally, apart from the noise source."""
    N, GV = logits.shape
    G, V, d = groups, GV // groups, codebook.size(-1)
    wide = logits.to(wide_dtype(logits.dtype))
    g = _noise(slice(0, N), GV, seed, logits.device, wide.dtype)
    z = ((wide + g) / tau).view(N * G, V)
    y_soft = z.softmax(-1)
    k = y_soft.max(-1, keepdim=True)[1]  # F.gumbel_softmax's index
    if hard:
        y_hard = torch.zeros_like(y_soft).scatter_(-1, k, 1.0)
        onehot = y_hard - y_soft.detach() + y_soft
    else:
        onehot = y_soft
    onehot = onehot.view(N, GV).to(out_dtype(logits, codebook))
    q = (onehot.unsqueeze(-1) * codebook).view(N, G, V, d).sum(-2).view(N, G * d)
    mean = wide.view(N, G, V).softmax(-1).mean(0)
    return q, k.view(N, G), mean


# ------------------------------------------------------------------ chunked (plain torch)


def _rows_per_chunk(GV: int) -> int:
    return max(1, CHUNK_ELEMS // max(GV, 1))


def chunked_forward(logits, codebook, tau: float, hard: bool, seed: int, groups: int):
    N, GV = logits.shape
    G, V, d = groups, GV // groups, codebook.size(-1)
    dt = wide_dtype(logits.dtype)
    book = codebook.view(G, V, d)
    q = logits.new_empty((N, G, d), dtype=out_dtype(logits, codebook))
    idx = torch.empty((N, G), dtype=torch.int64, device=logits.device)
    psum = torch.zeros((G, V), dtype=dt, device=logits.device)
    R = _rows_per_chunk(GV)
    for s in range(0, N, R):
        e = min(s + R, N)
        lw = logits[s:e].to(dt)
        z = ((lw + _noise(slice(s, e), GV, seed, logits.device, dt)) / tau).view(-1, G, V)
        k = z.argmax(-1)
        idx[s:e] = k
        if hard:
            q[s:e] = book[torch.arange(G, device=k.device), k].to(q.dtype)
        else:
            q[s:e] = torch.bmm(z.softmax(-1).transpose(0, 1).to(q.dtype), book.to(q.dtype)).transpose(0, 1)
        psum += lw.view(-1, G, V).softmax(-1).sum(0)
    return q.view(N, G * d), idx, psum / max(N, 1)


def chunked_backward(logits, codebook, idx, tau, hard, seed, groups, grad_q, grad_mean, deterministic):
    """Gradients to logits (through y_soft, and softmax(logits) for the mean) and to the codebook."""
    del deterministic  # index_add_ follows torch's own deterministic-algorithms setting
    N, GV = logits.shape
    G, V, d = groups, GV // groups, codebook.size(-1)
    dt = wide_dtype(logits.dtype)
    book = codebook.view(G, V, d).to(dt)
    g_logits = torch.empty_like(logits)
    g_book = torch.zeros((G * V, d), dtype=dt, device=codebook.device)
    gm = None if grad_mean is None else (grad_mean.to(dt) / max(N, 1))[None]  # (1, G, V)
    gq = None if grad_q is None else grad_q.view(N, G, d).to(dt)
    R = _rows_per_chunk(GV)
    for s in range(0, N, R):
        e = min(s + R, N)
        lw = logits[s:e].to(dt)
        gz = torch.zeros((e - s, G, V), dtype=dt, device=logits.device)
        if gq is not None:
            y = ((lw + _noise(slice(s, e), GV, seed, logits.device, dt)) / tau).view(-1, G, V).softmax(-1)
            go = torch.bmm(gq[s:e].transpose(0, 1), book.transpose(1, 2)).transpose(0, 1)  # (n, G, V)
            gz += y * (go - (y * go).sum(-1, keepdim=True)) / tau
            if hard:
                keys = (idx[s:e] + torch.arange(G, device=idx.device) * V).reshape(-1)
                g_book.index_add_(0, keys, gq[s:e].reshape(-1, d))
            else:
                g_book.view(G, V, d).add_(torch.bmm(y.transpose(0, 1).transpose(1, 2), gq[s:e].transpose(0, 1)))
        if gm is not None:
            p = lw.view(-1, G, V).softmax(-1)
            gz += p * (gm - (p * gm).sum(-1, keepdim=True))
        g_logits[s:e] = gz.view(e - s, GV).to(logits.dtype)
    return g_logits, g_book.to(codebook.dtype)


# ------------------------------------------------------------------ autograd wiring (chunked, triton)


class GumbelQuantizeFn(torch.autograd.Function):
    """Forward/backward of one implementation (``impl``: a module with ``forward``/``backward``
    of the chunked signature). Saves logits, codebook and code ids only: the noise is regenerated."""

    @staticmethod
    def forward(ctx, logits, codebook, tau, hard, seed, groups, impl, deterministic):
        with torch.autocast(device_type=logits.device.type, enabled=False):  # dtypes are chosen inside
            q, idx, mean = impl.forward(logits, codebook, tau, hard, seed, groups)
        ctx.save_for_backward(logits, codebook, idx)
        ctx.args = (tau, hard, seed, groups, impl, deterministic)
        ctx.mark_non_differentiable(idx)
        ctx.set_materialize_grads(False)
        return q, idx, mean

    @staticmethod
    def backward(ctx, grad_q, _grad_idx, grad_mean):
        logits, codebook, idx = ctx.saved_tensors
        tau, hard, seed, groups, impl, deterministic = ctx.args
        if grad_q is None and grad_mean is None:
            return (None,) * 8
        with torch.autocast(device_type=logits.device.type, enabled=False):
            g_logits, g_book = impl.backward(logits, codebook, idx, tau, hard, seed, groups, grad_q, grad_mean, deterministic)
        return (
            g_logits if ctx.needs_input_grad[0] else None,
            g_book if ctx.needs_input_grad[1] else None,
            None, None, None, None, None, None,
        )
