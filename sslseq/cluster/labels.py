"""Reading k-means label files, checking them against features, and cluster quality metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sslseq.utils import SslseqError, read_yaml_mapping

LABELS_META = "labels.yaml"
LABELS_DICT = "dict.km.txt"  # fairseq's dictionary: one line per cluster
# fairseq's HuBERT dataset allows labels and frames to differ by this many (padding/rounding).
LENGTH_TOLERANCE = 2


def read_labels(km_path: Path) -> tuple[list[str] | None, list[np.ndarray], dict]:
    """Read ``<set>.km``: (utterance ids from ``<set>.utts`` or None, one int64 array per line,
    ``labels.yaml`` beside it as a dict, or {} when absent (labels made by other tools))."""
    km_path = Path(km_path)
    if not km_path.is_file():
        raise SslseqError(f"label file {km_path} not found; run 'sslseq kmeans label' first")
    labels: list[np.ndarray] = []
    with open(km_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                labels.append(np.array(line.split(), dtype=np.int64))
            except ValueError:
                raise SslseqError(
                    f"{km_path}:{lineno}: expected space-separated integer cluster ids, got {line[:60].strip()!r}; "
                    "regenerate the labels"
                ) from None
    utts_path = km_path.with_suffix(".utts")
    utts = utts_path.read_text(encoding="utf-8").split() if utts_path.is_file() else None
    if utts is not None and len(utts) != len(labels):
        raise SslseqError(
            f"{utts_path} lists {len(utts)} utterances but {km_path} has {len(labels)} lines; "
            "they were written by different runs: regenerate the labels"
        )
    meta_path = km_path.parent / LABELS_META
    fix = "regenerate the labels ('sslseq kmeans label', recipe stage 3)"
    meta = read_yaml_mapping(meta_path, fix) if meta_path.is_file() else {}
    k = meta.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise SslseqError(f"{meta_path}: 'k: {k!r}' is not a number of clusters; {fix}")
    dict_path = km_path.parent / LABELS_DICT
    if k is not None and dict_path.is_file():
        n_dict = len(dict_path.read_text(encoding="utf-8").splitlines())
        if n_dict != k:
            raise SslseqError(
                f"{dict_path} lists {n_dict} clusters but {meta_path} says k={k}; the label dir mixes files "
                f"of different k-means runs: {fix}"
            )
    if k is not None:
        for lineno, lab in enumerate(labels, 1):
            if len(lab) and (lab.min() < 0 or lab.max() >= int(k)):
                raise SslseqError(
                    f"{km_path}:{lineno}: cluster id {int(lab.max() if lab.max() >= int(k) else lab.min())} is outside "
                    f"0..{int(k) - 1} (k in {meta_path}); the labels and labels.yaml disagree: regenerate them"
                )
    return utts, labels, meta


def check_labels_match(
    labels: Sequence[np.ndarray],
    utts: Sequence[str],
    frame_counts: Sequence[int],
    where: str | Path,
    *,
    label_utts: Sequence[str] | None = None,
    tolerance: int = LENGTH_TOLERANCE,
) -> None:
    """Raise SslseqError unless there is one label line per expected utterance and each has
    ``frame_counts[i]`` labels (within ``tolerance``). ``utts`` are the expected utterance
    ids (used in messages); ``label_utts``, when given (from ``<set>.utts``), must equal them."""
    if len(utts) != len(frame_counts):
        raise ValueError(f"{len(utts)} utterance ids but {len(frame_counts)} frame counts")
    if len(labels) != len(frame_counts):
        raise SslseqError(
            f"{where}: {len(labels)} label lines but {len(frame_counts)} utterances expected; "
            "the labels were made for another data dir: rerun 'sslseq kmeans label'"
        )
    if label_utts is not None:
        for i, (a, b) in enumerate(zip(label_utts, utts)):
            if a != b:
                raise SslseqError(
                    f"{where}: line {i + 1} is labelled for utterance {a!r} but the data has {b!r} there; "
                    "the labels are for another data dir or order: rerun 'sslseq kmeans label'"
                )
    for i, (lab, n, utt) in enumerate(zip(labels, frame_counts, utts)):
        if abs(len(lab) - int(n)) > tolerance:
            raise SslseqError(
                f"{where}: line {i + 1} (utterance {utt}) has {len(lab)} labels but {int(n)} frames are expected "
                f"(tolerance {tolerance}); the labels were made from other features or another label rate: "
                "relabel with features of the right frame rate"
            )


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
