"""A seeded sample of the frames of a feature dir for a k-means fit, read memory-mapped
(never the whole corpus), and splittable over processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslseq.utils import SslseqError, progress


def sample_frames(
    feat_dir: Path,
    *,
    sample_frac: float = 1.0,
    max_frames: int = 2_000_000,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[np.ndarray, dict]:
    """Seeded sample of frames from a feature dir, read memory-mapped (never the whole corpus).

    A fraction ``sample_frac`` of the utterances (at least one) is drawn, then, if their
    frames exceed ``max_frames``, ``max_frames`` of those frames are drawn uniformly
    without replacement. The sample is in data-dir order. Returns (frames (n, dim) float32,
    the store's meta plus ``sampled_frames``: the size of the whole sample).

    With ``world_size`` > 1, only block ``rank`` of the sample is read and returned: the
    sample is split into ``world_size`` contiguous blocks (sizes differ by at most one), so
    each process reads a contiguous run of utterances, and the blocks of ranks 0, 1, ...
    concatenated are exactly the one-process sample (the draws do not depend on the split).
    """
    from sslseq.features.store import FeatureStore, shard_bounds

    if not 0.0 < sample_frac <= 1.0:
        raise SslseqError(f"--sample-frac {sample_frac} must be in (0, 1]")
    if max_frames < 1:
        raise SslseqError(f"--max-frames {max_frames} must be positive")
    store = FeatureStore(feat_dir)
    rng = np.random.default_rng(seed)
    n_utts = len(store)
    if n_utts == 0 or store.num_frames == 0:
        raise SslseqError(f"{feat_dir}: the feature dir holds no frames; check the data dir and rerun the dump")
    # Per-utterance (shard, row offset, length) in data-dir order.
    shard_of = np.concatenate([np.full(len(s.utts), i, np.int64) for i, s in enumerate(store.shards)])
    offsets = np.concatenate([s.offsets for s in store.shards])
    lengths = store.lengths
    n_pick = n_utts if sample_frac >= 1.0 else max(1, int(round(sample_frac * n_utts)))
    picked = np.arange(n_utts) if n_pick == n_utts else np.sort(rng.choice(n_utts, n_pick, replace=False))
    picked = picked[lengths[picked] > 0]
    p_len = lengths[picked]
    total = int(p_len.sum())
    if total == 0:
        raise SslseqError(f"{feat_dir}: the sampled utterances hold no frames; raise --sample-frac")
    take = min(total, max_frames)
    # Sorted positions of the sampled frames in the concatenation of the picked utterances.
    frame_idx = None if take == total else _sample_without_replacement(rng, total, take)
    starts = np.concatenate([[0], np.cumsum(p_len)[:-1]])
    lo, hi = shard_bounds(take, world_size, rank)
    out = np.empty((hi - lo, store.dim), np.float32)
    block = 1 << 18
    bar = progress(None, desc="sampling frames", total=hi - lo, unit="frame")
    try:
        for b in range(lo, hi, block):
            e = min(hi, b + block)
            g = np.arange(b, e, dtype=np.int64) if frame_idx is None else frame_idx[b:e]
            u = np.searchsorted(starts, g, side="right") - 1  # which picked utterance each frame is in
            shard = shard_of[picked[u]]
            rows = offsets[picked[u]] + (g - starts[u])
            # Rows are sorted, so each shard's rows are one run: gather them from its memmap.
            cuts = np.flatnonzero(np.diff(shard)) + 1
            for run_lo, run_hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(g)]])):
                src, r = store.shards[shard[run_lo]].frames, rows[run_lo:run_hi]
                if r[-1] - r[0] + 1 == len(r):  # consecutive rows (every frame taken): one slice copy
                    out[b - lo + run_lo : b - lo + run_hi] = src[r[0] : r[-1] + 1]
                else:
                    out[b - lo + run_lo : b - lo + run_hi] = src[r]
            bar.update(e - b)
    finally:
        bar.close()
    return out, {**store.meta, "sampled_frames": take}


def _sample_without_replacement(rng: np.random.Generator, population: int, size: int) -> np.ndarray:
    """Sorted uniform sample of ``size`` distinct ints in [0, population), memory O(size)."""
    if population <= 4 * size:
        return np.sort(rng.choice(population, size, replace=False))
    # Sparse case: draw with replacement, drop duplicates, top up; then trim to ``size`` at random.
    got = np.unique(rng.integers(0, population, size + size // 8 + 16))
    while len(got) < size:
        got = np.unique(np.concatenate([got, rng.integers(0, population, size - len(got) + 16)]))
    return np.sort(rng.choice(got, size, replace=False))
