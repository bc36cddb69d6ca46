"""Cluster quality metrics of k-means labels (HuBERT's purity and PNMI). The label files
themselves are ``sslseq.data.labels``."""

from __future__ import annotations

import numpy as np

from sslseq.utils import SslseqError


def cluster_purity_pnmi(labels, phone_labels) -> dict:
    """HuBERT's cluster quality measures from frame-aligned cluster ids z and phone ids y.

    purity: E_z[max_y p(y|z)] (phone purity); cluster_purity: E_y[max_z p(z|y)];
    pnmi: I(y; z) / H(y) (phone-normalised mutual information).
    Both inputs are int arrays of equal length, or equal-length lists of per-utterance arrays.
    """
    z = _flat(labels)
    y = _flat(phone_labels)
    if z.shape != y.shape:
        raise SslseqError(f"cluster_purity_pnmi: {len(z)} cluster labels but {len(y)} phone labels; align them first")
    if len(z) == 0:
        raise SslseqError("cluster_purity_pnmi: no frames")
    # Joint counts over the phones and clusters that occur (ids need not be contiguous).
    _, yi = np.unique(y, return_inverse=True)
    _, zi = np.unique(z, return_inverse=True)
    ny, nz = int(yi.max()) + 1, int(zi.max()) + 1
    joint = np.bincount(yi * nz + zi, minlength=ny * nz).reshape(ny, nz).astype(np.float64)
    pxy = joint / joint.sum()
    py = pxy.sum(1)
    pz = pxy.sum(0)
    purity = float(pxy.max(0).sum())  # sum_z p(z) max_y p(y|z)
    cluster_purity = float(pxy.max(1).sum())  # sum_y p(y) max_z p(z|y)
    nzm = pxy > 0
    mi = float((pxy[nzm] * np.log(pxy[nzm] / np.outer(py, pz)[nzm])).sum())
    hy = float(-(py[py > 0] * np.log(py[py > 0])).sum())
    pnmi = mi / hy if hy > 0 else 0.0  # one phone only: nothing to explain
    return {"purity": purity, "cluster_purity": cluster_purity, "pnmi": pnmi}


def _flat(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.reshape(-1).astype(np.int64, copy=False)
    x = list(x)
    if x and np.ndim(x[0]) > 0:  # a list of per-utterance arrays
        return np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a in x])
    return np.asarray(x, dtype=np.int64).reshape(-1)
