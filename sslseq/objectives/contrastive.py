"""wav2vec 2.0 contrastive objective (§3.3; fairseq ``sample_negatives`` / ``compute_preds`` /
``Wav2vecCriterion`` with ``infonce``), computed by index.

The N masked frames of a batch are numbered in row-major order of the (B, T) mask. Each
frame's distractors are other masked frames of the same utterance (``neg_idx`` (N, K) into
those N rows, -1 = none). Logits are cosine similarities / temperature, the positive at
column 0; distractors equal to the positive are set to -inf. Negative rows are gathered in
bounded chunks (forward and backward), never as a (K+1, N, D) copy, so a fused kernel with the
same signature (``sslseq.kernels.contrastive_loss``) can replace :func:`contrastive_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sample_negatives", "negative_dot", "contrastive_logits", "contrastive_loss"]

# Elements of one gathered (rows, K, D) chunk: bounds the temporary at 16 MB in fp32.
_CHUNK_ELEMS = 1 << 22


def _draw_excluding_self(n_others: torch.Tensor, self_pos: torch.Tensor, k: int, generator, device) -> torch.Tensor:
    """(N, k) uniform draws from ``[0, n_others]`` minus ``self_pos`` (with replacement); -1 where n_others == 0."""
    u = torch.rand((n_others.numel(), k), generator=generator, device=device)
    draw = torch.floor(u * n_others[:, None]).long()
    draw = torch.minimum(draw, (n_others - 1).clamp(min=0)[:, None])  # float rounding at u → 1
    draw = draw + (draw >= self_pos[:, None]).long()  # skip the positive itself
    return torch.where(n_others[:, None] > 0, draw, torch.full_like(draw, -1))


@torch.no_grad()
def sample_negatives(
    num_negatives: int,
    mask_indices: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    cross_sample_negatives: int = 0,
) -> torch.Tensor:
    """(N, num_negatives + cross_sample_negatives) int64 distractor indices into the N masked
    (and unpadded) frames of ``mask_indices`` (B, T), sampled on its device.

    The first ``num_negatives`` come uniformly, with replacement, from the other masked frames of
    the same utterance (fairseq samples among the masked time steps of ``y``); the rest from the
    other masked frames of the whole batch. Never the frame itself, never padding; -1 where no
    other frame exists (an utterance with a single masked frame).
    """
    sel = mask_indices if padding_mask is None else mask_indices & ~padding_mask.to(mask_indices.device)
    device = sel.device
    counts = sel.sum(dim=1)  # (B,)
    starts = counts.cumsum(0) - counts  # first flat index of each utterance's masked frames
    utt = sel.nonzero(as_tuple=True)[0]  # (N,) utterance of each masked frame, row-major order
    N = utt.numel()
    flat = torch.arange(N, device=device)
    parts = []
    if num_negatives > 0:
        first = starts[utt]
        rank = flat - first  # position among its utterance's masked frames
        local = _draw_excluding_self(counts[utt] - 1, rank, num_negatives, generator, device)
        parts.append(torch.where(local >= 0, local + first[:, None], local))
    if cross_sample_negatives > 0:
        others = torch.full((N,), N - 1, dtype=torch.long, device=device)
        parts.append(_draw_excluding_self(others, flat, cross_sample_negatives, generator, device))
    if not parts:
        return torch.empty((N, 0), dtype=torch.long, device=device)
    return torch.cat(parts, dim=1)


class _NegativeDot(torch.autograd.Function):
    """out[i, k] = <c[i], t[idx[i, k]]>, chunked in forward and backward (nothing (N, K, D) saved)."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        N, K = idx.shape
        D = c.size(-1)
        chunk = max(1, _CHUNK_ELEMS // max(K * D, 1))
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
        return gc, gt, None


def negative_dot(c: torch.Tensor, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(N, K) dot products of rows ``c`` (N, D) with rows ``t[idx]`` (``idx`` (N, K) in [0, M))."""
    if idx.numel() == 0:
        return c.new_zeros(idx.shape) + 0.0 * c.sum() + 0.0 * t.sum()  # keep both in the graph
    return _NegativeDot.apply(c, t, idx)


@torch.no_grad()
def _same_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(N, K) bool: ``t[idx[i, k]]`` equals ``t[i]`` exactly (chunked)."""
    N, K = idx.shape
    out = torch.zeros((N, K), dtype=torch.bool, device=idx.device)
    chunk = max(1, _CHUNK_ELEMS // max(K * t.size(-1), 1))
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        out[s:e] = (t[idx[s:e]] == t[s:e, None, :]).all(dim=-1)
    return out


def contrastive_logits(
    context: torch.Tensor,
    targets: torch.Tensor,
    neg_idx: torch.Tensor,
    target_codes: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """(N, K+1) logits (float32, or float64 for float64 inputs): cos(context_i, [targets_i, targets[neg_idx_i]]) / temperature.

    ``context``, ``targets`` (N, D); ``neg_idx`` (N, K), -1 = no negative (logit -inf);
    negatives identical to the positive get -inf (fairseq ``neg_is_pos``): compared by code ids
    when ``target_codes`` (N, G) is given (the same codes give the same vector), else by value.
    """
    # At least fp32 (as fairseq's .float()); fp64 stays fp64 for exact reference checks.
    dtype = torch.promote_types(torch.promote_types(context.dtype, targets.dtype), torch.float32)
    c = F.normalize(context.to(dtype), dim=-1, eps=1e-8)
    t = F.normalize(targets.to(dtype), dim=-1, eps=1e-8)
    pos = (c * t).sum(dim=-1, keepdim=True)
    safe = neg_idx.clamp(min=0)
    neg = negative_dot(c, t, safe)
    with torch.no_grad():
        if target_codes is not None:
            same = (target_codes[safe] == target_codes[:, None, :]).all(dim=-1)
        else:
            same = _same_rows(targets, safe)
        drop = same | (neg_idx < 0)
    neg = neg.masked_fill(drop, float("-inf"))
    return torch.cat([pos, neg], dim=1) / temperature


def contrastive_loss(
    context: torch.Tensor,
    targets: torch.Tensor,
    neg_idx: torch.Tensor,
    target_codes: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed InfoNCE cross-entropy (target: column 0) and the number of frames whose positive
    scores highest (fairseq's accuracy: argmax is 0 and not all logits tie)."""
    logits = contrastive_logits(context, targets, neg_idx, target_codes, temperature)
    loss = F.cross_entropy(logits, logits.new_zeros(logits.size(0), dtype=torch.long), reduction="sum")
    with torch.no_grad():
        if logits.size(0):
            best = logits.argmax(dim=-1) == 0
            worst = logits.argmin(dim=-1) == 0
            n_correct = (best & ~worst).sum()
        else:
            n_correct = torch.zeros((), dtype=torch.long, device=logits.device)
    return loss, n_correct
