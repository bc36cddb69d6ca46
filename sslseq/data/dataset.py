"""Training data sets: audio read lazily from a Kaldi data dir, with k-means labels or text.

Pretraining items are randomly cropped to ``max_sample_seconds`` (offsets on a 320-sample
grid, so 50 Hz model frames and 100 Hz / 50 Hz labels stay aligned); CTC items are never
cropped (the transcript covers the whole utterance), longer ones are dropped instead.
The crop of item ``i`` in epoch ``e`` depends only on (seed, e, i): results do not depend
on worker processes or on where a run was resumed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sslseq.utils import SslseqError, get_logger

log = get_logger(__name__)

CROP_GRID = 320  # samples: one 50 Hz frame, two 100 Hz frames at 16 kHz


def expected_frames(num_samples: int, frame_rate: float, sample_rate: int = 16000) -> int:
    """Frames of 25 ms windows with snip-edges at ``frame_rate`` (100 Hz: 1 + (S - 400) // 160)."""
    win = int(round(0.025 * sample_rate))
    hop = int(round(sample_rate / frame_rate))
    return 0 if num_samples < win else 1 + (num_samples - win) // hop


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances of a data dir; ``ds[i]`` or ``ds[(i, epoch)]`` -> dict (see ``__getitem__``)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        labels: str | os.PathLike | None = None,
        tokenizer: Any = None,
        max_sample_seconds: float = 15.625,
        min_sample_seconds: float = 0.5,
        sample_rate: int = 16000,
        random_crop: bool = True,
        seed: int = 0,
        allow_pipes: bool = False,
        speed_factors: Sequence[float] = (),
    ):
        from sslseq.data.kaldi import load_data_dir

        self.data_dir = Path(data_dir)
        data = load_data_dir(self.data_dir)
        self.sample_rate = int(sample_rate)
        self.max_samples = int(round(max_sample_seconds * sample_rate))
        self.random_crop = random_crop
        self.seed = int(seed)
        self.allow_pipes = allow_pipes
        self.epoch = 0
        self.tokenizer = tokenizer
        self.crop = tokenizer is None  # CTC transcripts cover the whole utterance: never crop them
        self.label_rate: float | None = None
        self.num_classes: int | None = None
        self.labels_path = Path(labels) if labels is not None else None
        # Speed perturbation: each item at one of these speeds, drawn per (seed, epoch, item).
        self.speed_factors = tuple(float(f) for f in speed_factors)
        if any(not f > 0 for f in self.speed_factors):
            raise SslseqError(f"data.speed_perturb: speeds must be positive, got {list(self.speed_factors)}")
        if self.speed_factors and labels is not None:
            raise SslseqError(
                f"{labels}: frame labels cannot follow speed perturbation (they would no longer align with the "
                "audio); use data.speed_perturb for CTC fine-tuning only"
            )

        all_labels = self._read_labels(data) if labels is not None else None
        keep: list[int] = []
        too_short = too_long = 0
        for i, utt in enumerate(data.utts):
            dur = data.utt2dur[utt]
            if dur < min_sample_seconds:
                too_short += 1
            elif not self.crop and dur > max_sample_seconds:
                too_long += 1
            else:
                keep.append(i)
        if too_short or too_long:
            log.info(
                "%s: dropped %d utterance(s) shorter than %.2f s%s",
                self.data_dir,
                too_short,
                min_sample_seconds,
                f" and {too_long} longer than {max_sample_seconds:.2f} s (data.max_sample_seconds)" if too_long else "",
            )
        if not keep:
            raise SslseqError(
                f"{self.data_dir}: no utterance left between data.min_sample_seconds={min_sample_seconds} "
                f"and data.max_sample_seconds={max_sample_seconds}; check utt2dur or the limits"
            )
        self.utts = [data.utts[i] for i in keep]
        self.specs = [data.wav[u] for u in self.utts]
        self.num_samples = [int(round(data.utt2dur[u] * sample_rate)) for u in self.utts]
        self.labels = [all_labels[i] for i in keep] if all_labels is not None else None
        self.texts: list[str] | None = None
        self.targets: list[np.ndarray] | None = None
        if tokenizer is not None:
            self._tokenize(data)
        # Seconds each item will have in a batch (after cropping): what batching sorts on.
        cap = self.max_samples if self.crop else math.inf
        self.durations = [min(n, cap) / sample_rate for n in self.num_samples]

    # ------------------------------------------------------------ loading
    def _read_labels(self, data) -> list[np.ndarray]:
        from sslseq.data.labels import LABELS_DICT, check_labels_match, read_labels

        km = self.labels_path
        utts, labels, meta = read_labels(km)
        dict_path = km.parent / LABELS_DICT
        if "k" not in meta and dict_path.is_file():  # labels made by other tools: fairseq dictionary
            meta = {**meta, "k": len(dict_path.read_text().splitlines())}
        if "label_rate" not in meta or "k" not in meta:
            raise SslseqError(
                f"{km.parent / 'labels.yaml'}: needed beside {km.name} with 'label_rate' (Hz) and 'k' (clusters); "
                "'sslseq kmeans label' writes it; for labels made elsewhere, write it by hand (e.g. label_rate: 100.0, k: 100)"
            )
        self.label_rate = float(meta["label_rate"])
        self.num_classes = int(meta["k"])
        check_labels_match(
            labels, data.utts,
            [expected_frames(int(round(data.utt2dur[u] * self.sample_rate)), self.label_rate, self.sample_rate)
             for u in data.utts],
            km, label_utts=utts, num_classes=self.num_classes, seconds=[data.utt2dur[u] for u in data.utts],
            label_rate=self.label_rate, data=self.data_dir,
        )  # fmt: skip
        return [np.asarray(lab, dtype=np.int64) for lab in labels]

    def _tokenize(self, data) -> None:
        text_file = self.data_dir / "text"
        self.texts, self.targets = [], []
        for utt in self.utts:
            if utt not in data.text:
                raise SslseqError(f"{text_file}: utterance {utt} has no transcript; CTC training needs one per utterance")
            text = data.text[utt]
            try:
                ids = self.tokenizer.encode(text)
            except SslseqError as e:
                raise SslseqError(f"{text_file}: utterance {utt}: {e}") from None
            self.texts.append(text)
            self.targets.append(np.asarray(ids, dtype=np.int64))

    # ------------------------------------------------------------ items
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utts)

    def crop_offset(self, idx: int, num_samples: int, epoch: int) -> int:
        """Start sample of the crop of item ``idx`` (0 when it fits or crops are not random)."""
        if not self.crop or num_samples <= self.max_samples or not self.random_crop:
            return 0
        grid = CROP_GRID
        if self.label_rate:
            hop = int(round(self.sample_rate / self.label_rate))
            grid = math.lcm(CROP_GRID, hop)
        steps = (num_samples - self.max_samples) // grid
        rng = np.random.default_rng([self.seed, epoch, idx])
        return int(rng.integers(0, steps + 1)) * grid

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Keys: idx, utt, wav (float32), labels (int64 | None), targets (int64 | None), text."""
        idx, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        utt = self.utts[idx]
        from sslseq.audio import read_audio, speed_perturb

        wav = read_audio(
            self.specs[idx],
            sample_rate=self.sample_rate,
            allow_pipes=self.allow_pipes,
            where=f"{self.data_dir / 'wav.scp'}: {utt}",
        )
        labels = self.labels[idx] if self.labels is not None else None
        if self.speed_factors:
            rng = np.random.default_rng([self.seed, epoch, idx, 1])
            wav = speed_perturb(wav, self.speed_factors[rng.integers(len(self.speed_factors))], self.sample_rate)
        if self.crop and len(wav) > self.max_samples:
            off = self.crop_offset(idx, len(wav), epoch)
            wav = wav[off : off + self.max_samples]
            if labels is not None:
                hop = int(round(self.sample_rate / self.label_rate))
                start = off // hop
                labels = labels[start : start + expected_frames(len(wav), self.label_rate, self.sample_rate)]
        return {
            "idx": idx,
            "utt": utt,
            "wav": np.ascontiguousarray(wav, dtype=np.float32),
            "labels": labels,
            "targets": self.targets[idx] if self.targets is not None else None,
            "text": self.texts[idx] if self.texts is not None else None,
        }


def _pad(seqs: list[np.ndarray], value: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), int(lens.max()) if len(seqs) else 0), value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    return out, lens


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch dict: wav (B,S) zero-padded, wav_lens; labels/targets (B,L) padded with -1 and
    their lengths when the items have them; utts and texts (lists) for logging and scoring."""
    wav, wav_lens = _pad([it["wav"] for it in items], 0.0, torch.float32)
    batch: dict[str, Any] = {"wav": wav, "wav_lens": wav_lens, "utts": [it["utt"] for it in items]}
    if items[0]["labels"] is not None:
        batch["labels"], batch["label_lens"] = _pad([it["labels"] for it in items], -1, torch.int64)
    if items[0]["targets"] is not None:
        batch["targets"], batch["target_lens"] = _pad([it["targets"] for it in items], -1, torch.int64)
        batch["texts"] = [it["text"] for it in items]
    return batch
