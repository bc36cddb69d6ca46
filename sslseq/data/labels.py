"""The label dir format (``<set>.km`` + ``.utts``, ``labels.yaml``, fairseq's ``dict.km.txt``):
reading and writing label files, and checking them against features or audio (the labels
themselves are made by ``sslseq.cluster.jobs.label_features``).

``labels.yaml`` holds ``label_rate`` (Hz), ``k`` and ``dim``, and under ``files`` the size and
SHA-256 of each set's ``.km`` and ``.utts`` as written; ``read_labels`` checks them, so a label
file changed afterwards (even with the same number of lines) is an error, not training data."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

import yaml

from sslseq.utils import SslseqError, atomic_write_text, check_file_record, file_record, read_yaml_mapping

LABELS_META = "labels.yaml"
LABELS_DICT = "dict.km.txt"  # fairseq's dictionary: one line per cluster
LABELS_FILES = "files"  # labels.yaml: file name -> {bytes, sha256} as written
RELABEL = "rerun 'sslseq kmeans label' (recipe stage 3)"
# fairseq's HuBERT dataset allows labels and frames to differ by this many (padding/rounding).
LENGTH_TOLERANCE = 2


def check_label_dir_accepts(label_dir: Path, label_rate: float, k: int, source: str) -> None:
    """Refuse to add a set to a label dir whose ``labels.yaml`` says another rate or K
    (``source``: what the new labels come from, for the message)."""
    meta_path = Path(label_dir) / LABELS_META
    if not meta_path.is_file():
        return
    old = yaml.safe_load(meta_path.read_text()) or {}
    if float(old.get("label_rate", -1)) != label_rate or int(old.get("k", -1)) != k:
        raise SslseqError(
            f"{meta_path} says label_rate={old.get('label_rate')}, k={old.get('k')} but {source} "
            f"gives label_rate={label_rate}, k={k}; write these labels to another dir or delete the old ones"
        )


def finish_label_set(km_path: Path, utts: Sequence[str], *, label_rate: float, k: int, dim: int) -> None:
    """Complete a set whose ``<set>.km`` is in place: write ``<set>.utts``, ``dict.km.txt`` and
    ``labels.yaml`` with the size and SHA-256 of this set's files (other sets' records kept),
    each atomically."""
    km_path = Path(km_path)
    meta_path = km_path.parent / LABELS_META
    old = (yaml.safe_load(meta_path.read_text()) or {}) if meta_path.is_file() else {}
    utts_path = km_path.with_suffix(".utts")
    atomic_write_text(utts_path, "".join(f"{u}\n" for u in utts))
    atomic_write_text(km_path.parent / LABELS_DICT, "".join(f"{i} 1\n" for i in range(k)))
    kept = old.get(LABELS_FILES) if isinstance(old.get(LABELS_FILES), dict) else {}
    files = {n: r for n, r in kept.items() if n not in (km_path.name, utts_path.name)}
    files.update({p.name: file_record(p) for p in (km_path, utts_path)})
    meta = {"label_rate": float(label_rate), "k": int(k), "dim": int(dim), LABELS_FILES: dict(sorted(files.items()))}
    atomic_write_text(meta_path, yaml.safe_dump(meta, sort_keys=False))


def read_labels(km_path: Path) -> tuple[list[str] | None, list[np.ndarray], dict]:
    """Read ``<set>.km``: (utterance ids from ``<set>.utts`` or None, one int64 array per line,
    ``labels.yaml`` beside it as a dict, or {} when absent (labels made by other tools))."""
    km_path = Path(km_path)
    if not km_path.is_file():
        raise SslseqError(f"label file {km_path} not found; run 'sslseq kmeans label' first")
    utts_path = km_path.with_suffix(".utts")
    meta_path = km_path.parent / LABELS_META
    fix = "regenerate the labels ('sslseq kmeans label', recipe stage 3)"
    meta = read_yaml_mapping(meta_path, fix) if meta_path.is_file() else {}
    files = meta.get(LABELS_FILES)
    if isinstance(files, dict):  # labels of other tools, or of older sslseq, have no records
        for path in (km_path, utts_path):
            if path.name in files:
                check_file_record(path, files[path.name], f"{fix}; {meta_path} records the files as written")
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
    utts = utts_path.read_text(encoding="utf-8").split() if utts_path.is_file() else None
    if utts is not None and len(utts) != len(labels):
        raise SslseqError(
            f"{utts_path} lists {len(utts)} utterances but {km_path} has {len(labels)} lines; "
            "they were written by different runs: regenerate the labels"
        )
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
    num_classes: int | None = None,
    seconds: Sequence[float] | None = None,
    label_rate: float | None = None,
    data: str | Path | None = None,
) -> None:
    """Raise SslseqError unless there is one label line per expected utterance and each has
    ``frame_counts[i]`` labels (within ``tolerance``), and (with ``num_classes``) every id is in
    0..num_classes-1. ``utts`` are the expected utterance ids (used in messages); ``label_utts``,
    when given (from ``<set>.utts``), must equal them. The checks of ``kmeans label`` output
    against features and of a training set's labels against its audio (``seconds`` and
    ``label_rate``, to say where the frame counts come from; ``data``: the data dir, named in
    messages)."""
    if len(utts) != len(frame_counts):
        raise ValueError(f"{len(utts)} utterance ids but {len(frame_counts)} frame counts")
    if len(labels) != len(frame_counts):
        expected = f"{data} has {len(frame_counts)} utterances" if data is not None else \
            f"{len(frame_counts)} utterances expected"
        raise SslseqError(
            f"{where}: {len(labels)} label lines but {expected}; the labels were made for another data dir: {RELABEL}"
        )
    if label_utts is not None:
        for i, (a, b) in enumerate(zip(label_utts, utts)):
            if a != b:
                raise SslseqError(
                    f"{where}:{i + 1}: line {i + 1} is labelled for utterance {a!r} but "
                    f"{'line %d of %s' % (i + 1, data) if data is not None else 'the data'} has {b!r} there; "
                    f"the labels are for another data dir or order: {RELABEL}"
                )
    for i, (lab, n, utt) in enumerate(zip(labels, frame_counts, utts)):
        if abs(len(lab) - int(n)) > tolerance:
            source = f" from its {seconds[i]:.3f} s of audio at {label_rate:g} Hz" if seconds is not None else ""
            raise SslseqError(
                f"{where}:{i + 1}: utterance {utt} has {len(lab)} labels but {int(n)} frames are expected{source} "
                f"(tolerance {tolerance}); the labels were made from other audio or features, or at another label "
                "rate: redo the features and labels (recipe stages 2-3) with the right frame rate"
            )
        if num_classes is not None and len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            bad = int(lab.max() if lab.max() >= num_classes else lab.min())
            raise SslseqError(
                f"{where}:{i + 1}: utterance {utt}: cluster id {bad} is outside 0..{num_classes - 1} "
                f"(k in labels.yaml or dict.km.txt); {RELABEL}"
            )
