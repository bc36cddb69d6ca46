"""wav2vec 2.0 (Baevski et al., 2020): contrastive prediction of quantized latent speech units.

frontend → LayerNorm → (unmasked copy → ``dropout_features`` → Gumbel quantizer → ``project_q``
= targets) and (``post_extract_proj`` → mask (p=0.65, l=10) → Transformer → ``final_proj`` =
context). At each masked frame the context must pick its own target among ``num_negatives``
distractors drawn from the same utterance's masked frames (InfoNCE over cosine similarity /
``logit_temp``). Loss as fairseq's ``Wav2vecCriterion``: summed cross-entropy + ``diversity_weight``
× codebook-diversity penalty + ``feature_pen_weight`` × feature penalty, both × sample_size (the
number of masked frames). Needs no labels. Parameter names follow fairseq.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sslseq.models.base import LogValue, ModelOutput, SpeechModel, nothing_masked
from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.objectives.contrastive import contrastive_loss, sample_negatives
from sslseq.objectives.quantizer import GumbelVectorQuantizer, codebook_use
from sslseq.utils import SslseqError

__all__ = ["Wav2Vec2EncoderConfig", "Wav2Vec2Config", "Wav2Vec2"]



@dataclass
class Wav2Vec2EncoderConfig(SpeechEncoderConfig):
    """SpeechEncoderConfig with wav2vec 2.0 Base's masking (p=0.65); also the default for
    encoder keys a config leaves out. Everything else equals HuBERT Base's encoder."""

    mask_prob: float = 0.65


@dataclass
class Wav2Vec2Config:
    """Defaults: wav2vec 2.0 Base (fairseq wav2vec2_base_librispeech)."""

    encoder: Wav2Vec2EncoderConfig = field(default_factory=Wav2Vec2EncoderConfig)
    final_dim: int = 256  # 0: the encoder width
    quantize_targets: bool = True  # False: targets are the (projected) unquantized features
    quantize_input: bool = False  # fairseq option (quantized Transformer input); not supported
    latent_vars: int = 320  # V: entries per codebook
    latent_groups: int = 2  # G: codebooks
    latent_dim: int = 0  # codebook vector size (all groups); 0: final_dim
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # start, end, decay per update
    quantizer_depth: int = 1
    quantizer_factor: int = 3
    num_negatives: int = 100
    cross_sample_negatives: int = 0  # distractors from any utterance of the batch
    logit_temp: float = 0.1
    diversity_weight: float = 0.1  # fairseq loss_weights[0]
    feature_pen_weight: float = 10.0  # fairseq loss_weights[1]


class Wav2Vec2(SpeechModel):
    needs_labels = False  # self-supervised targets: the trainer reads no k-means labels

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        if cfg.quantize_input:
            raise SslseqError("model.quantize_input=true is not supported; the wav2vec 2.0 Base/Large recipes use false")
        if cfg.num_negatives + cfg.cross_sample_negatives < 1:
            raise SslseqError("model.num_negatives + model.cross_sample_negatives must be >= 1 (the contrastive task needs distractors)")
        if not cfg.encoder.mask_prob > 0:
            raise SslseqError("model.encoder.mask_prob must be > 0: wav2vec 2.0 predicts masked frames")
        self.cfg = cfg
        self.encoder = SpeechEncoder(cfg.encoder)
        C, D = self.encoder.feature_extractor.out_dim, self.encoder.embed_dim
        final_dim = cfg.final_dim if cfg.final_dim > 0 else D
        if cfg.quantize_targets:
            vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else final_dim
            if vq_dim % cfg.latent_groups:
                raise SslseqError(f"model.latent_dim ({vq_dim}) must be divisible by model.latent_groups ({cfg.latent_groups})")
            self.quantizer = GumbelVectorQuantizer(
                C, num_vars=cfg.latent_vars, groups=cfg.latent_groups, vq_dim=vq_dim, temp=tuple(cfg.latent_temp),
                weight_proj_depth=cfg.quantizer_depth, weight_proj_factor=cfg.quantizer_factor,
            )
            self.project_q = nn.Linear(vq_dim, final_dim)
        else:
            self.quantizer = None
            self.project_q = nn.Linear(C, final_dim)
        self.final_proj = nn.Linear(D, final_dim)

    def set_num_updates(self, step: int) -> None:
        """Called once per optimizer step: anneals the Gumbel temperature."""
        self.num_updates = step
        if self.quantizer is not None:
            self.quantizer.set_num_updates(step)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        cfg = self.cfg
        out = self.encoder(batch["wav"], batch["wav_lens"], mask=True, return_features=True)
        sel = out.mask_indices & ~out.padding_mask  # (B, T) frames to predict
        n = int(sel.sum())
        logs: dict[str, LogValue] = {"features_pen": out.features_pen.detach().double(), "n_masked": float(n)}
        if n == 0:
            return nothing_masked(self, logs)

        feats = out.features[sel]  # (N, C) unmasked, dropout_features applied by the encoder
        codes = None
        if self.quantizer is not None:
            q = self.quantizer(feats[None], produce_targets=True)
            y = self.project_q(q.x[0])
            codes = q.targets[0]
        else:
            y = self.project_q(feats)
        context = self.final_proj(out.x[sel])
        neg_idx = sample_negatives(cfg.num_negatives, sel, cross_sample_negatives=cfg.cross_sample_negatives)
        loss_c, n_correct = contrastive_loss(context, y, neg_idx, codes, cfg.logit_temp)

        loss = loss_c
        if self.quantizer is not None:
            # Codebook diversity: 0 when the mean softmax over frames is uniform over all G·V codes.
            diversity = (q.num_vars - q.prob_perplexity) / q.num_vars
            if cfg.diversity_weight > 0:
                loss = loss + cfg.diversity_weight * diversity * n
        if cfg.feature_pen_weight > 0:
            # fairseq scales the extra losses by sample_size so they survive the trainer's division.
            loss = loss + cfg.feature_pen_weight * out.features_pen * n

        with torch.no_grad():  # detached float64 tensors: no host sync here (models/base.py)
            K = neg_idx.size(1)
            contrastive = loss_c.detach().double() / n
            logs.update(
                loss=loss.detach().double() / n,
                contrastive=contrastive,
                loss_bits=contrastive / math.log(2),  # the contrastive task, judged against chance
                chance_bits=math.log2(K + 1),
                acc=n_correct.double() / n,
            )
            if self.quantizer is not None:
                logs.update(
                    code_perplexity=q.code_perplexity.double(),
                    prob_perplexity=q.prob_perplexity.detach().double(),
                    diversity=diversity.detach().double(),
                    temp=q.temp,
                )
                for g, ppl in enumerate(q.code_perplexity_groups.double().unbind()):
                    logs[f"code_perplexity_g{g}"] = ppl
                logs["codebook_use"] = codebook_use(q.code_perplexity_groups, cfg.latent_vars, n)
        return ModelOutput(loss, n, logs)
