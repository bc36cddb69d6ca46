"""HuBERT (Hsu et al., 2021): masked prediction of offline cluster labels.

frontend → mask (p=0.8, l=10) → Transformer → ``final_proj`` → cosine similarity with one
learned embedding per cluster / ``logit_temp`` → cross-entropy over masked frames
(+ ``feature_pen_weight`` × squared-feature penalty, as fairseq).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslseq.models.base import LogValue, ModelOutput, SpeechModel, nothing_masked
from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.utils import SslseqError

__all__ = ["HubertConfig", "HuBERT"]


@dataclass
class HubertConfig:
    """Defaults: HuBERT Base (fairseq hubert_base_librispeech); ``num_classes`` is set by the trainer."""

    encoder: SpeechEncoderConfig = field(default_factory=SpeechEncoderConfig)
    num_classes: int = 0  # K: size of the label dictionary
    final_dim: int = 256
    logit_temp: float = 0.1
    label_rate: float = 100.0  # Hz; MFCC iteration 100, later iterations 50
    pred_masked_weight: float = 1.0
    pred_nomask_weight: float = 0.0
    feature_pen_weight: float = 10.0
    # fairseq option for several label sets (one projection each); with the single label set
    # supported here both settings build the same model.
    untie_final_proj: bool = False


def label_frame_ratio(label_rate: float, frame_rate: float) -> int:
    """Labels per encoder frame; must be a positive integer (100 Hz labels / 50 Hz frames = 2)."""
    ratio = label_rate / frame_rate
    if label_rate <= 0 or ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
        raise SslseqError(
            f"label rate {label_rate:g} Hz is not an integer multiple of the model's frame rate "
            f"{frame_rate:g} Hz; set model.label_rate to the rate the labels were made at "
            f"(e.g. 100 for MFCC labels, 50 for labels from HuBERT layer features)"
        )
    return int(round(ratio))


class HuBERT(SpeechModel):
    needs_labels = True  # offline k-means labels

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        if cfg.num_classes < 2:
            raise SslseqError(
                f"model.num_classes must be the number of label classes (>= 2), got {cfg.num_classes}; "
                f"the trainer sets it from the label dictionary (dict.km.txt)"
            )
        self.cfg = cfg
        self.encoder = SpeechEncoder(cfg.encoder)
        self.label_ratio = label_frame_ratio(cfg.label_rate, self.frame_rate)
        self.final_proj = nn.Linear(cfg.encoder.encoder.embed_dim, cfg.final_dim)
        self.label_embs_concat = nn.Parameter(torch.empty(cfg.num_classes, cfg.final_dim).uniform_())

    def align_labels(self, labels: torch.Tensor, label_lens: torch.Tensor, frame_lens: torch.Tensor, T: int) -> torch.Tensor:
        """(B, L) labels at ``label_rate`` → (B, T) frame targets (-1 = none), as fairseq:
        frame t takes label ``t * label_rate / frame_rate``."""
        idx = torch.arange(T, device=labels.device) * self.label_ratio
        L = labels.size(1)
        targets = labels.gather(1, idx.clamp(max=max(L - 1, 0)).expand(labels.size(0), T)) if L else torch.full(
            (labels.size(0), T), -1, dtype=torch.long, device=labels.device
        )
        ok = (idx[None, :] < label_lens[:, None]) & (torch.arange(T, device=labels.device)[None, :] < frame_lens[:, None])
        return torch.where(ok, targets, torch.full_like(targets, -1))

    def _check_labels(self, labels: torch.Tensor, label_lens: torch.Tensor, frame_lens: torch.Tensor) -> None:
        valid = torch.arange(labels.size(1), device=labels.device)[None, :] < label_lens[:, None]
        bad = valid & ((labels < 0) | (labels >= self.cfg.num_classes))
        if bool(bad.any()):
            b, j = (int(v) for v in bad.nonzero()[0])
            raise SslseqError(
                f"label {int(labels[b, j])} (utterance {b} of the batch, position {j}) is outside "
                f"[0, {self.cfg.num_classes}); model.num_classes must match the label dictionary"
            )
        # Same tolerance as fairseq's verify_label_lengths (0.1 s), plus one frame of edge effects.
        label_sec = label_lens.double() / self.cfg.label_rate
        frame_sec = frame_lens.double() / self.frame_rate
        off = (label_sec - frame_sec).abs() > 0.1 + 1.0 / self.frame_rate
        if bool(off.any()):
            b = int(off.nonzero()[0, 0])
            raise SslseqError(
                f"utterance {b} of the batch: {int(label_lens[b])} labels at {self.cfg.label_rate:g} Hz "
                f"({label_sec[b]:.2f} s) but its audio gives {int(frame_lens[b])} frames at "
                f"{self.frame_rate:g} Hz ({frame_sec[b]:.2f} s); check model.label_rate and that the "
                f"labels were made from the same audio"
            )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) encoder frames → (N, K) cosine similarities / logit_temp, all classes at once."""
        proj = F.normalize(self.final_proj(x).float(), dim=-1)
        embs = F.normalize(self.label_embs_concat.float(), dim=-1)
        return proj @ embs.t() / self.cfg.logit_temp

    def forward(self, batch: dict[str, Any]):
        cfg = self.cfg
        out = self.encoder(batch["wav"], batch["wav_lens"], mask=True)
        labels = batch["labels"].to(out.x.device)
        label_lens = batch["label_lens"].to(out.x.device)
        self._check_labels(labels, label_lens, out.frame_lens)
        targets = self.align_labels(labels, label_lens, out.frame_lens, out.x.size(1))
        has_target = targets >= 0
        masked = has_target & out.mask_indices if out.mask_indices is not None else torch.zeros_like(has_target)
        unmasked = has_target & ~masked

        loss = out.x.new_zeros((), dtype=torch.float32)
        sample_size = 0
        logs: dict[str, LogValue] = {}
        K = cfg.num_classes
        for name, sel, weight in (("m", masked, cfg.pred_masked_weight), ("u", unmasked, cfg.pred_nomask_weight)):
            if weight <= 0:
                continue
            logit = self.logits(out.x[sel])
            tgt = targets[sel]
            n = int(tgt.numel())
            part = F.cross_entropy(logit, tgt, reduction="sum")
            loss = loss + weight * part
            sample_size += n
            with torch.no_grad():  # detached float64 tensors: no host sync here (models/base.py)
                per = part.detach().double() / max(n, 1)
                logs[f"loss_{name}"] = per
                logs[f"loss_{name}_bits"] = per / math.log(2)
                logs[f"acc_{name}"] = (logit.argmax(-1) == tgt).float().mean().double() if n else 0.0
                logs[f"n_{'masked' if name == 'm' else 'unmasked'}"] = float(n)
        if cfg.feature_pen_weight > 0:
            # fairseq scales the penalty by sample_size so it survives the trainer's division.
            loss = loss + cfg.feature_pen_weight * out.features_pen * sample_size
        logs["features_pen"] = out.features_pen.detach().double()
        logs["chance_bits"] = math.log2(K)
        if "loss_m_bits" in logs:  # the masked-prediction task is what the health checks judge
            logs["loss_bits"] = logs["loss_m_bits"]
        if sample_size == 0:
            return nothing_masked(self, logs)
        logs["loss"] = loss.detach().double() / max(sample_size, 1)
        return ModelOutput(loss, sample_size, logs)
