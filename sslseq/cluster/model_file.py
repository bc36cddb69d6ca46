"""The k-means model file: centroids (K, D) float32 in safetensors, with the fit's metadata
(k, dim, frame rate, inertia, ... as strings in the safetensors header)."""

from __future__ import annotations

from pathlib import Path

import torch

from sslseq.utils import SslseqError, atomic_path


def save_kmeans(model_path: Path, centroids: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write the model atomically (a reader never sees half a file)."""
    from safetensors.torch import save_file

    with atomic_path(Path(model_path)) as tmp:
        save_file({"centroids": centroids.float().contiguous()}, str(tmp), metadata=metadata)


def load_kmeans(model_path: Path) -> tuple[torch.Tensor, dict]:
    """(centroids (K, D) float32, metadata with k/dim/n_frames as int, frame_rate/inertia as float)."""
    from safetensors import safe_open

    model_path = Path(model_path)
    if not model_path.is_file():
        raise SslseqError(f"k-means model {model_path} not found; run 'sslseq kmeans fit' first")
    try:
        with safe_open(str(model_path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            if "centroids" not in f.keys():
                raise SslseqError(f"{model_path}: no 'centroids' tensor; not a sslseq k-means model (refit it)")
            centroids = f.get_tensor("centroids").float()
    except SslseqError:
        raise
    except Exception as e:  # corrupt or foreign file
        raise SslseqError(f"{model_path}: cannot read k-means model ({e}); refit it with 'sslseq kmeans fit'") from None
    meta: dict = dict(raw)
    for key in ("k", "dim", "n_frames", "n_iter", "seed", "max_frames"):
        if key in raw:
            meta[key] = int(raw[key])
    for key in ("frame_rate", "inertia", "sample_frac"):
        if key in raw:
            meta[key] = float(raw[key])
    if centroids.ndim != 2 or ("k" in meta and centroids.shape[0] != meta["k"]):
        raise SslseqError(f"{model_path}: centroids of shape {tuple(centroids.shape)} disagree with k={meta.get('k')}")
    meta.setdefault("k", centroids.shape[0])
    meta.setdefault("dim", centroids.shape[1])
    return centroids, meta
