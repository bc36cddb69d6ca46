"""wav2vec 2.0 contrastive objective (§3.3; fairseq ``sample_negatives`` / ``compute_preds`` /
``Wav2vecCriterion`` with ``infonce``), computed by index.

The N masked frames of a batch are numbered in row-major order of the (B, T) mask. Each
frame's distractors are other masked frames of the same utterance (``neg_idx`` (N, K) into
those N rows, -1 = none). Logits are cosine similarities / temperature, the positive at
column 0; distractors equal to the positive are set to -inf. The computation is
``sslseq.kernels.contrastive_loss`` (implementation by device or $SSLSEQ_KERNEL_IMPL: the fused Triton
kernel on CUDA; on CPU chunked gathers of ``kernels.contrastive.CHUNK_ELEMS`` elements, never a
(K+1, N, D) copy, in forward or backward).
"""

from __future__ import annotations

import torch

from sslseq import kernels

__all__ = ["sample_negatives", "contrastive_loss"]


def _draw_excluding_self(n_others: torch.Tensor, self_pos: torch.Tensor, k: int, generator, device) -> torch.Tensor:
    """(N, k) uniform draws from ``[0, n_others]`` minus ``self_pos`` (with replacement); -1 where n_others == 0."""
    u = torch.rand((n_others.numel(), k), generator=generator, device=device)
    draw = torch.floor(u * n_others[:, None]).long()
    draw = torch.minimum(draw, (n_others - 1).clamp(min=0)[:, None])  # float rounding at u → 1
    draw = draw + (draw >= self_pos[:, None]).long()  # skip the positive itself
    return torch.where(n_others[:, None] > 0, draw, torch.full_like(draw, -1))


# Data-dependent sizes (nonzero, draws per masked frame): under torch.compile it runs eagerly
# (a graph break; tracing torch.rand over symbolic sizes fails), as the span masking does.
@torch.compiler.disable
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


def contrastive_loss(
    context: torch.Tensor,
    targets: torch.Tensor,
    neg_idx: torch.Tensor,
    target_codes: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed InfoNCE cross-entropy (target: column 0) and the number of frames whose positive
    scores highest (fairseq's accuracy: argmax is 0 and not all logits tie). The kernels'
    dispatcher picks the implementation for the device (``sslseq.kernels.contrastive_loss``)."""
    return kernels.contrastive_loss(context, targets, neg_idx, target_codes, temperature)
