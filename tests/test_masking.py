"""Span masking: statistics against a numpy re-statement of fairseq's algorithm, invariants."""

import numpy as np
import pytest
import torch

from sslseq.nn.masking import compute_channel_mask, compute_mask_indices


def fairseq_reference(shape, padding_mask, mask_prob, mask_length, min_masks, require_same_masks, rng):
    """fairseq ``compute_mask_indices`` (static lengths, overlap allowed), restated in numpy."""
    bsz, all_sz = shape
    mask = np.full((bsz, all_sz), False)
    mask_idcs = []
    for i in range(bsz):
        sz = all_sz - int(padding_mask[i].sum()) if padding_mask is not None else all_sz
        num_mask = max(min_masks, int(mask_prob * sz / float(mask_length) + rng.random()))
        lengths = np.full(num_mask, mask_length)
        min_len = min(lengths)
        if sz - min_len <= num_mask:
            min_len = sz - num_mask - 1
        mask_idc = rng.choice(sz - min_len, num_mask, replace=False)
        mask_idc = np.asarray([mask_idc[j] + off for j in range(len(mask_idc)) for off in range(lengths[j])])
        mask_idcs.append(np.unique(mask_idc[mask_idc < sz]))
    min_len = min(len(m) for m in mask_idcs)
    for i, mask_idc in enumerate(mask_idcs):
        if len(mask_idc) > min_len and require_same_masks:
            mask_idc = rng.choice(mask_idc, min_len, replace=False)
        mask[i, mask_idc] = True
    return mask


def runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    out, n = [], 0
    for v in row:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    if n:
        out.append(n)
    return out


@pytest.mark.parametrize(
    "T,lens,p,L,same",
    [
        (400, [400, 400, 400, 400], 0.65, 10, True),
        (400, [400, 300, 250, 120], 0.8, 10, False),
        (400, [400, 300, 250, 120], 0.8, 10, True),
        (200, [200, 200, 60, 30], 0.5, 5, False),
    ],
)
def test_statistics_match_fairseq(T, lens, p, L, same):
    B = len(lens)
    pad = torch.arange(T)[None, :] >= torch.tensor(lens)[:, None]
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    ours, ref = [], []
    for _ in range(150):
        m = compute_mask_indices((B, T), pad, p, L, min_masks=2, require_same_masks=same, generator=gen)
        ours.append(m.numpy())
        ref.append(fairseq_reference((B, T), pad.numpy(), p, L, 2, same, rng))
    ours, ref = np.stack(ours), np.stack(ref)
    # Per-row masked fraction of the unpadded frames: same mean and spread as fairseq.
    for b, n in enumerate(lens):
        fo, fr = ours[:, b, :n].mean(1), ref[:, b, :n].mean(1)
        assert abs(fo.mean() - fr.mean()) < 0.03, (b, fo.mean(), fr.mean())
        assert abs(fo.std() - fr.std()) < 0.03 + 0.3 * fr.std()
    # Distribution of masked run lengths (overlaps merge spans into longer runs).
    ro = np.bincount(np.concatenate([runs(r) for r in ours.reshape(-1, T)]), minlength=200)[:200]
    rr = np.bincount(np.concatenate([runs(r) for r in ref.reshape(-1, T)]), minlength=200)[:200]
    if not same:  # random trimming breaks runs up; compare only untrimmed spans
        assert abs(ro[L:].sum() / ro.sum() - rr[L:].sum() / rr.sum()) < 0.05
    # Where masks fall along the row (fairseq leaves the last frames less often masked).
    po, pr = ours[:, 0].mean(0), ref[:, 0].mean(0)
    assert np.abs(np.convolve(po - pr, np.ones(20) / 20, "valid")).max() < 0.12


def test_mask_ratio_formula():
    # With overlap, expected coverage ≈ 1 - (1 - n/(T-L))^L for n = p*T/L spans.
    T, p, L = 2000, 0.65, 10
    gen = torch.Generator().manual_seed(1)
    m = compute_mask_indices((64, T), None, p, L, require_same_masks=False, generator=gen)
    n = p * T / L
    expected = 1 - (1 - n / (T - L)) ** L
    assert abs(m.float().mean().item() - expected) < 0.01
    assert m.float().mean().item() < p  # overlaps make the ratio smaller than mask_prob


def test_spans_have_mask_length_and_no_padding_masked():
    T, L = 300, 10
    lens = torch.tensor([300, 200, 150, 77])
    pad = torch.arange(T)[None, :] >= lens[:, None]
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        m = compute_mask_indices((4, T), pad, 0.3, L, min_masks=2, require_same_masks=False, generator=gen)
        assert not (m & pad).any()
        for b in range(4):
            rl = runs(m[b].numpy())
            assert rl and all(r >= L or (r < L and _touches_end(m[b].numpy(), int(lens[b]), r)) for r in rl)


def _touches_end(row, n, r):
    """A run shorter than L must be a span clipped at the row's end."""
    return row[n - r : n].all() and (n == len(row) or not row[n])


def test_require_same_masks_equal_counts():
    lens = torch.tensor([500, 480, 200, 90, 500])
    pad = torch.arange(500)[None, :] >= lens[:, None]
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        m = compute_mask_indices((5, 500), pad, 0.65, 10, min_masks=2, require_same_masks=True, generator=gen)
        counts = m.sum(1)
        assert (counts == counts[0]).all() and counts[0] > 0
        assert not (m & pad).any()


def test_deterministic_given_generator():
    pad = torch.arange(100)[None, :] >= torch.tensor([100, 70, 40])[:, None]
    a = compute_mask_indices((3, 100), pad, 0.5, 5, generator=torch.Generator().manual_seed(7))
    b = compute_mask_indices((3, 100), pad, 0.5, 5, generator=torch.Generator().manual_seed(7))
    c = compute_mask_indices((3, 100), pad, 0.5, 5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_min_masks_and_short_rows():
    # A 12-frame row with p small still gets min_masks spans (fairseq shrinks the start range).
    m = compute_mask_indices((2, 12), None, 0.01, 10, min_masks=2, require_same_masks=False,
                             generator=torch.Generator().manual_seed(0))
    assert (m.sum(1) >= 10).all() and (m.sum(1) < 12).all()
    assert not compute_mask_indices((2, 12), None, 0.0, 10, min_masks=2).any()


def test_mask_dropout_unmasks_fraction():
    gen = torch.Generator().manual_seed(0)
    full = compute_mask_indices((8, 1000), None, 0.5, 10, require_same_masks=True, generator=gen)
    gen = torch.Generator().manual_seed(0)
    dropped = compute_mask_indices((8, 1000), None, 0.5, 10, require_same_masks=True, mask_dropout=0.25, generator=gen)
    assert not (dropped & ~full).any()
    ratio = dropped.sum(1).float() / full.sum(1).float()
    assert torch.allclose(ratio, torch.full_like(ratio, 0.75), atol=0.01)


def test_channel_mask():
    gen = torch.Generator().manual_seed(0)
    m = compute_channel_mask(200, 256, 0.5, 64, generator=gen)
    assert m.shape == (200, 256)
    frac = m.float().mean().item()
    # fairseq: n = int(0.5*256/64 + u) ∈ {2, 3} spans of 64 over 192 starts, overlapping.
    assert 0.25 < frac < 0.6
    assert not compute_channel_mask(4, 256, 0.0, 64).any()
