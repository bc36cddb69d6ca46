"""k-means benchmark: sslseq fit vs scikit-learn MiniBatchKMeans (fairseq simple_kmeans settings) and faiss.

Every method fits the same deterministic MFCC-like data set in this process; inertia is
then measured for each on the full data set with the same function, so the printed
ratios compare like with like. ``sslseq kmeans fit`` is also timed as a whole command (a new
process: start-up, reading the data set written as a feature dir, the fit, writing the model),
what a user waits for, beside the in-process fit.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from sslseq.cluster.kmeans import fit_kmeans, inertia
from sslseq.utils import get_logger

log = get_logger("sslseq.bench.kmeans")


def make_data(frames: int, dim: int, seed: int, n_components: int = 1000) -> np.ndarray:
    """A Gaussian mixture shaped like MFCC(+delta) frames: per-dimension scales that decay
    with the coefficient index, skewed component weights and varied component widths."""
    rng = np.random.default_rng(seed)
    dim_scale = 1.0 / (1.0 + 0.25 * np.arange(dim))  # low cepstra carry most of the variance
    weights = 1.0 / np.arange(1, n_components + 1) ** 0.7  # a few frequent "phones", a long tail
    weights = rng.permutation(weights / weights.sum())
    means = rng.normal(0.0, 3.0, (n_components, dim)) * dim_scale
    widths = rng.uniform(0.3, 1.5, (n_components, 1)) * rng.uniform(0.6, 1.4, (n_components, dim)) * dim_scale
    comp = rng.choice(n_components, frames, p=weights)
    x = rng.standard_normal((frames, dim), dtype=np.float32)
    x *= widths[comp].astype(np.float32)
    x += means[comp].astype(np.float32)
    return x


def _fit_sslseq(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    centroids, _, n_iter = fit_kmeans(torch.from_numpy(x), k, seed=seed, device="cpu", verbose=False)
    log.info("sslseq: %d Lloyd iterations on all frames (after the subsample stages)", n_iter)
    return centroids.numpy()


def _fit_sklearn(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    # fairseq examples/hubert/simple_kmeans/learn_kmeans.py defaults.
    km = MiniBatchKMeans(
        n_clusters=k,
        init="k-means++",
        max_iter=100,
        batch_size=10000,
        tol=0.0,
        max_no_improvement=100,
        n_init=20,
        reassignment_ratio=0.0,
        compute_labels=False,
        init_size=None,
        random_state=seed,
        verbose=0,
    )
    km.fit(x)
    return km.cluster_centers_.astype(np.float32)


def _fit_faiss(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    # faiss defaults otherwise (incl. subsampling to 256 points per centroid), as users run it.
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, verbose=False)
    km.train(np.ascontiguousarray(x))
    return km.centroids.astype(np.float32)


def _fit_command(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``sslseq kmeans fit`` in a new process on ``x`` written as a 2-shard feature dir."""
    from sslseq.cluster.model_file import load_kmeans
    from sslseq.features.store import write_meta, write_shard

    with tempfile.TemporaryDirectory(prefix="sslseq_bench_kmeans_") as tmp:
        feats = Path(tmp) / "feats"
        # utterances of 500 frames (5 s at 100 Hz), as a feature dump holds them
        utts = [x[s:s + 500] for s in range(0, len(x), 500)]
        names = [f"utt{i:07d}" for i in range(len(utts))]
        half = (len(utts) + 1) // 2
        for r, (lo, hi) in enumerate(((0, half), (half, len(utts)))):
            write_shard(feats, r, 2, names[lo:hi], utts[lo:hi])
        write_meta(feats, feat_type="bench", dim=x.shape[1], frame_rate=100.0, nj=2)
        model = Path(tmp) / "km.safetensors"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sslseq.cli", "kmeans", "fit", "--k", str(k), "--seed", str(seed),
                        "--max-frames", str(len(x)), "--device", "cpu", str(feats), str(model)],
                       check=True, capture_output=True)
        secs = time.perf_counter() - t0
        return load_kmeans(model)[0].numpy(), secs


def main(args) -> None:
    frames, dim, k, seed = int(args.frames), int(args.dim), int(args.k), int(args.seed)
    skip = set(getattr(args, "skip", None) or [])
    if "sklearn" not in skip:
        print(
            "note: scikit-learn MiniBatchKMeans with n_init=20 (fairseq settings) takes about a minute at "
            "1M x 39, K=500 on 2 idle cores and several minutes on busy ones; pass --skip sklearn to leave it out",
            flush=True,
        )
    print(f"data: {frames} frames x {dim} dims (MFCC-like Gaussian mixture, seed {seed}), K={k}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    x = make_data(frames, dim, seed)
    xt = torch.from_numpy(x)

    methods = [("sslseq (Lloyd, k-means++)", _fit_sslseq)]
    if "sklearn" not in skip:
        methods.append(("sklearn MiniBatchKMeans", _fit_sklearn))
    if "faiss" not in skip:
        methods.append(("faiss Kmeans (niter=20)", _fit_faiss))

    rows = []
    print("timing the whole command 'sslseq kmeans fit' (a new process) ...", flush=True)
    centroids, secs = _fit_command(x, k, seed)
    rows.append(SimpleNamespace(name="sslseq kmeans fit (command)", secs=secs,
                                inertia=inertia(xt, torch.from_numpy(centroids))))
    print(f"  {secs:.1f}s, inertia {rows[-1].inertia:.6g}", flush=True)
    for name, fn in methods:
        print(f"fitting {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            centroids = fn(x, k, seed)
        except ImportError as e:
            print(f"  skipped: {e}", flush=True)
            continue
        secs = time.perf_counter() - t0
        inert = inertia(xt, torch.from_numpy(centroids))  # same function, full data set, for all
        rows.append(SimpleNamespace(name=name, secs=secs, inertia=inert))
        print(f"  {secs:.1f}s, inertia {inert:.6g}", flush=True)

    ref = next((r for r in rows if r.name.startswith("sklearn")), None)
    print()
    print(f"{'method':<28} {'fit s':>9} {'inertia':>14} {'per frame':>10} {'speedup vs MBK':>15} {'inertia / MBK':>14}")
    for r in rows:
        speed = f"{ref.secs / r.secs:.1f}x" if ref else "-"
        ratio = f"{r.inertia / ref.inertia:.4f}" if ref else "-"
        print(f"{r.name:<28} {r.secs:>9.2f} {r.inertia:>14.6g} {r.inertia / frames:>10.4f} {speed:>15} {ratio:>14}")
