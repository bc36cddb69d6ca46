"""Span masking (wav2vec 2.0 §3.1, HuBERT §III-B) computed on-device, vectorised over the batch.

Semantics follow fairseq's ``compute_mask_indices`` with ``mask_type="static"``:
per row, ``num_mask = int(mask_prob * sz / mask_length + U[0,1))`` (at least ``min_masks``)
span starts are drawn without replacement from ``[0, sz - mask_length)``, spans may overlap
and are clipped at the row's unpadded length ``sz``; with ``require_same_masks`` every row is
trimmed (random frames dropped) to the smallest masked count in the batch; ``mask_dropout``
then unmasks a random fraction of each row's masked frames.
"""

from __future__ import annotations

import torch

__all__ = ["compute_mask_indices", "compute_channel_mask"]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _keep_random(mask: torch.Tensor, keep: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Keep ``keep[b]`` uniformly chosen True entries of each row of ``mask`` (``keep[b] <= count``)."""
    B, T = mask.shape
    keys = _rand((B, T), generator, mask.device)
    keys = keys.masked_fill(~mask, 2.0)  # unmasked frames sort after every masked one
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(T, device=mask.device).expand(B, T))
    return rank < keep[:, None]


# Random spans of data-dependent sizes: under torch.compile (dynamic shapes) tracing this fails
# ("SymIntArrayRef expected to contain only concrete integers" at the first torch.rand), and it
# is a handful of small index ops anyway, so it always runs eagerly (a graph break).
@torch.compiler.disable
def compute_mask_indices(
    shape: tuple[int, int],
    padding_mask: torch.Tensor | None,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    require_same_masks: bool = True,
    mask_dropout: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random span mask of ``shape`` (B, T); True = masked. Padded frames are never masked.

    ``padding_mask`` is (B, T) bool, True on padding. Deterministic given ``generator``
    (which must live on ``device``).
    """
    B, T = shape
    if padding_mask is not None:
        device = padding_mask.device
    device = torch.device(device or "cpu")
    if mask_prob <= 0 or T == 0 or B == 0:
        return torch.zeros(B, T, dtype=torch.bool, device=device)
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")

    if padding_mask is not None:
        sz = T - padding_mask.long().sum(dim=1)
    else:
        sz = torch.full((B,), T, dtype=torch.long, device=device)

    # Number of spans per row from its own unpadded length; the uniform term rounds stochastically.
    num_mask = torch.floor(mask_prob * sz / mask_length + _rand((B,), generator, device)).long()
    num_mask = num_mask.clamp(min=min_masks)
    # fairseq shrinks the "room at the end" when the row is too short to hold num_mask starts.
    min_len = torch.where(sz - mask_length <= num_mask, sz - num_mask - 1, torch.full_like(sz, mask_length))
    n_start = (sz - min_len).clamp(0, T)
    num_mask = torch.minimum(num_mask, n_start)

    # Starts without replacement: a random permutation of the valid starts comes first in `order`.
    pos = torch.arange(T, device=device)
    keys = _rand((B, T), generator, device) + (pos[None, :] >= n_start[:, None]).float()
    starts = keys.argsort(dim=1)  # (B, T); only the first num_mask columns are used
    span_used = pos[None, :] < num_mask[:, None]  # (B, T)

    frames = starts[:, :, None] + torch.arange(mask_length, device=device)  # (B, T, L)
    valid = span_used[:, :, None] & (frames < sz[:, None, None])
    frames = torch.where(valid, frames, torch.full_like(frames, T))  # column T is a dump slot
    mask = torch.zeros(B, T + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, frames.reshape(B, -1), True)
    mask = mask[:, :T]

    if require_same_masks and B > 1:
        counts = mask.sum(dim=1)
        mask = _keep_random(mask, counts.min().expand(B), generator)
    if mask_dropout > 0:
        counts = mask.sum(dim=1)
        holes = torch.round(counts.float() * mask_dropout).long()
        mask = _keep_random(mask, counts - holes, generator)
    return mask


def compute_channel_mask(
    batch_size: int,
    num_channels: int,
    mask_channel_prob: float,
    mask_channel_length: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, C) bool mask of feature channels to zero (the same channels for every frame of a row)."""
    return compute_mask_indices(
        (batch_size, num_channels),
        None,
        mask_channel_prob,
        mask_channel_length,
        min_masks=0,
        require_same_masks=True,  # fairseq's default for channel masks too
        generator=generator,
        device=device,
    )
