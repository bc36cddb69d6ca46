"""w2v-BERT (Chung et al., 2021), in its w2v-BERT 2.0 form (fairseq2 / transformers ``Wav2Vec2BertModel``):
contrastive learning and masked language modelling of discretised speech in one encoder.

frontend: 80-bin Kaldi fbank, normalised per utterance, stacked ×2 (160 dims, 50 Hz) → LayerNorm →
  (unmasked copy → ``dropout_features`` → Gumbel quantizer → code ids + ``project_q`` = targets)
  and (``post_extract_proj`` → mask (p=0.65, l=10)) →
contrastive module: the lower ``num_layers - num_mlm_layers`` conformer layers; at each masked
  frame ``final_proj`` of their output must pick its quantized target among ``num_negatives``
  distractors from the same utterance (wav2vec 2.0's InfoNCE) →
MLM module: the top ``num_mlm_layers`` conformer layers; ``mlm_proj`` of the final output
  predicts, at masked frames only, the code id the quantizer chose for that frame (one softmax
  over V entries per codebook group; the ids are detached targets).
loss = mlm_weight · MLM + contrastive + diversity_weight · codebook diversity · n (all summed over
the n masked frames, the sample size). The quantizer learns only through the contrastive
targets and the diversity term. Needs no labels.
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
from sslseq.nn.transformer import TransformerEncoderConfig
from sslseq.objectives.contrastive import contrastive_loss, sample_negatives
from sslseq.objectives.quantizer import GumbelVectorQuantizer, codebook_use
from sslseq.utils import SslseqError

__all__ = ["W2VBertConformerConfig", "W2VBertEncoderConfig", "W2VBertConfig", "W2VBert"]


@dataclass
class W2VBertConformerConfig(TransformerEncoderConfig):
    """TransformerEncoderConfig with w2v-BERT 2.0's conformer (transformers Wav2Vec2BertConfig
    defaults) for every key a config leaves out: 24 × 1024, 16 heads, FFN 4096, swish,
    relative_key positions clipped to [-64, 8], depthwise kernel 31."""

    embed_dim: int = 1024
    ffn_dim: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    layerdrop: float = 0.1
    layer_type: str = "conformer"
    activation: str = "swish"
    depthwise_kernel: int = 31
    max_rel_pos_left: int = 64
    max_rel_pos_right: int = 8


@dataclass
class W2VBertEncoderConfig(SpeechEncoderConfig):
    """SpeechEncoderConfig with w2v-BERT 2.0's fbank frontend, conformer and masking (p=0.65);
    also the default for encoder keys a config leaves out."""

    frontend: str = "fbank"
    mask_prob: float = 0.65
    dropout_input: float = 0.0
    dropout_features: float = 0.0
    encoder: W2VBertConformerConfig = field(default_factory=W2VBertConformerConfig)


@dataclass
class W2VBertConfig:
    """Defaults: w2v-BERT 2.0 (fairseq2 w2v-bert 600m): 16 of 24 layers in the MLM module, one
    codebook of 1024 entries, 768-dim contrastive space, 100 distractors."""

    encoder: W2VBertEncoderConfig = field(default_factory=W2VBertEncoderConfig)
    num_mlm_layers: int = 16  # top layers; the contrastive module is the rest
    final_dim: int = 768  # contrastive space; 0: the encoder width
    latent_vars: int = 1024  # V: entries per codebook (the MLM vocabulary)
    latent_groups: int = 1  # G: codebooks (MLM predicts each group's id)
    latent_dim: int = 1024  # codebook vector size (all groups); 0: final_dim
    latent_temp: tuple[float, float, float] = (2.0, 0.1, 0.999995)  # start, end, decay per update
    num_negatives: int = 100
    cross_sample_negatives: int = 0
    logit_temp: float = 0.1
    diversity_weight: float = 0.1  # the paper's α (fairseq2's 600m recipe uses 0.2)
    mlm_weight: float = 1.0  # the paper's β


class W2VBert(SpeechModel):
    needs_labels = False  # self-supervised targets: the trainer reads no k-means labels
    default_ctc_config = "ctc_w2vbert_cpu.yaml"  # a conformer scratch encoder, like the model's

    def __init__(self, cfg: W2VBertConfig):
        super().__init__()
        L = cfg.encoder.encoder.num_layers
        if not 1 <= cfg.num_mlm_layers < L:
            raise SslseqError(
                f"model.num_mlm_layers must be in [1, {L - 1}] (model.encoder.encoder.num_layers={L}): both the "
                f"contrastive and the MLM module need at least one layer; got {cfg.num_mlm_layers}"
            )
        if cfg.num_negatives + cfg.cross_sample_negatives < 1:
            raise SslseqError("model.num_negatives + model.cross_sample_negatives must be >= 1 (the contrastive task needs distractors)")
        if not cfg.encoder.mask_prob > 0:
            raise SslseqError("model.encoder.mask_prob must be > 0: w2v-BERT predicts masked frames")
        self.cfg = cfg
        self.encoder = SpeechEncoder(cfg.encoder)
        self.num_contrastive_layers = L - cfg.num_mlm_layers
        C, D = self.encoder.feature_extractor.out_dim, self.encoder.embed_dim
        final_dim = cfg.final_dim if cfg.final_dim > 0 else D
        vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else final_dim
        if vq_dim % cfg.latent_groups:
            raise SslseqError(f"model.latent_dim ({vq_dim}) must be divisible by model.latent_groups ({cfg.latent_groups})")
        self.quantizer = GumbelVectorQuantizer(
            C, num_vars=cfg.latent_vars, groups=cfg.latent_groups, vq_dim=vq_dim, temp=tuple(cfg.latent_temp)
        )
        self.project_q = nn.Linear(vq_dim, final_dim)
        self.final_proj = nn.Linear(D, final_dim)  # contrastive module output → contrastive space
        self.mlm_proj = nn.Linear(D, cfg.latent_groups * cfg.latent_vars)  # MLM module output → code logits

    def set_num_updates(self, step: int) -> None:
        """Called once per optimizer step: anneals the Gumbel temperature."""
        self.num_updates = step
        self.quantizer.set_num_updates(step)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        cfg = self.cfg
        out = self.encoder(batch["wav"], batch["wav_lens"], mask=True, output_hidden_states=True, return_features=True)
        sel = out.mask_indices & ~out.padding_mask  # (B, T) frames to predict
        n = int(sel.sum())
        logs: dict[str, LogValue] = {"n_masked": float(n)}
        if n == 0:
            return nothing_masked(self, logs)

        # Targets: the quantized unmasked features of the masked frames, and their code ids.
        q = self.quantizer(out.features[sel][None], produce_targets=True)
        y = self.project_q(q.x[0])  # (N, final_dim)
        codes = q.targets[0]  # (N, G), detached

        # Contrastive module: output of the lower layers against the quantized targets.
        context = self.final_proj(out.hidden_states[self.num_contrastive_layers][sel])
        neg_idx = sample_negatives(cfg.num_negatives, sel, cross_sample_negatives=cfg.cross_sample_negatives)
        loss_c, n_correct = contrastive_loss(context, y, neg_idx, codes, cfg.logit_temp)

        # MLM module: the top layers' output predicts each masked frame's code ids.
        G, V = cfg.latent_groups, cfg.latent_vars
        logits = self.mlm_proj(out.x[sel]).view(n * G, V).float()
        loss_m = F.cross_entropy(logits, codes.reshape(-1), reduction="sum")

        diversity = (q.num_vars - q.prob_perplexity) / q.num_vars  # 0 when all G·V codes are used evenly
        loss = cfg.mlm_weight * loss_m + loss_c + cfg.diversity_weight * diversity * n

        with torch.no_grad():  # detached float64 tensors: no host sync here (models/base.py)
            K = neg_idx.size(1)
            lc, lm = loss_c.detach().double(), loss_m.detach().double()
            logs.update(
                loss=loss.detach().double() / n,
                loss_bits=(lc + cfg.mlm_weight * lm) / n / math.log(2),  # contrastive + MLM tasks (no diversity term), judged against chance
                contrastive=lc / n,
                contrastive_bits=lc / n / math.log(2),
                contrastive_chance_bits=math.log2(K + 1),
                acc=n_correct.double() / n,
                mlm=lm / n,
                mlm_bits=lm / n / math.log(2),
                mlm_chance_bits=G * math.log2(V),
                # What guessing scores on both tasks (the trainer's health check compares loss_bits to it).
                chance_bits=math.log2(K + 1) + cfg.mlm_weight * G * math.log2(V),
                mlm_acc=(logits.argmax(-1) == codes.reshape(-1)).float().mean().double(),
                code_perplexity=q.code_perplexity.double(),
                prob_perplexity=q.prob_perplexity.detach().double(),
                diversity=diversity.detach().double(),
                temp=q.temp,
            )
            for g, ppl in enumerate(q.code_perplexity_groups.double().unbind()):
                logs[f"code_perplexity_g{g}"] = ppl
            logs["codebook_use"] = codebook_use(q.code_perplexity_groups, V, n)  # the trainer warns on collapse
        return ModelOutput(loss, n, logs)
