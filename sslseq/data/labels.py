"""The label dir format (``<set>.km`` + ``.utts``, ``labels.yaml``, fairseq's ``dict.km.txt``):
reading label files and checking them against features. Written by ``sslseq.cluster.kmeans``."""

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
