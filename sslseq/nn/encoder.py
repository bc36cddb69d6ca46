"""The speech encoder shared by every SSL family (wav2vec 2.0 / HuBERT / w2v-BERT / DinoSR):

waveform → frontend → LayerNorm over channels → ``post_extract_proj`` (C → D) → input dropout →
span masking (masked frames replaced by a learned ``mask_emb``) and channel masking → context network.

Frontend (``frontend``): ``conv``, wav2vec 2.0's waveform CNN (gradient scaled by
``feature_grad_mult``); ``fbank``, w2v-BERT 2.0's normalised Kaldi fbank stacked ×2 (no
parameters); or ``fbank_conv``, normalised fbank through a small strided conv subsampler to
25 Hz (Fast-HuBERT; ``fbank_conv_layers``, gradient scaled by ``feature_grad_mult``).
Context network (``encoder.layer_type``): ``transformer`` (positional conv +
Transformer) or ``conformer`` (relative-position conformer blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from sslseq.nn.conformer import ConformerEncoder
from sslseq.nn.fbank import FAST_CONV_LAYERS, FbankConvFrontend, FbankFrontend
from sslseq.nn.frontend import BASE_CONV_LAYERS, ConvFeatureExtractor
from sslseq.nn.masking import compute_channel_mask, compute_mask_indices
from sslseq.nn.transformer import TransformerEncoder, TransformerEncoderConfig
from sslseq.utils import SslseqError

__all__ = ["SpeechEncoderConfig", "SpeechEncoder", "EncoderOutput", "GradMultiply"]


@dataclass
class SpeechEncoderConfig:
    """Defaults are HuBERT Base's pretraining settings (fairseq hubert_base_librispeech)."""

    frontend: str = "conv"  # "conv": waveform CNN (conv_layers...); "fbank": stacked fbank (w2v-BERT); "fbank_conv": fbank + conv subsampler
    num_mel_bins: int = 80  # fbank frontends only
    stack_frames: int = 2  # fbank frontend only: consecutive 10 ms frames per output frame
    # fbank_conv frontend only: (channels, kernel, stride) over 100 Hz fbank frames (default → 25 Hz)
    fbank_conv_layers: list[tuple[int, int, int]] = field(default_factory=lambda: list(FAST_CONV_LAYERS))
    conv_layers: list[tuple[int, int, int]] = field(default_factory=lambda: list(BASE_CONV_LAYERS))
    extractor_mode: str = "group_norm"  # "layer_norm" for Large models
    conv_bias: bool = False
    feature_grad_mult: float = 0.1  # 0 freezes the conv frontend (fine-tuning)
    encoder: TransformerEncoderConfig = field(default_factory=TransformerEncoderConfig)
    dropout_input: float = 0.1
    dropout_features: float = 0.1
    mask_prob: float = 0.8
    mask_length: int = 10
    mask_min_masks: int = 2  # fairseq HuBERT/wav2vec2 pass min_masks=2
    require_same_masks: bool = True
    mask_dropout: float = 0.0
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    sample_rate: int = 16000


class EncoderOutput(NamedTuple):
    x: torch.Tensor  # (B, T, D) final encoder output
    padding_mask: torch.Tensor  # (B, T) bool, True on padding
    mask_indices: torch.Tensor | None  # (B, T) bool, True on masked frames
    features_pen: torch.Tensor  # scalar: mean squared conv feature (valid frames)
    hidden_states: list[torch.Tensor] | None  # [after positional conv, after each layer]
    frame_lens: torch.Tensor  # (B,) int64
    features: torch.Tensor | None = None  # (B, T, C) unmasked normalised conv features (wav2vec 2.0 targets)


class GradMultiply(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``scale`` (slows the conv frontend, wav2vec 2.0 §4.2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class SpeechEncoder(nn.Module):
    def __init__(self, cfg: SpeechEncoderConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.frontend == "conv":
            self.feature_extractor = ConvFeatureExtractor(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
        elif cfg.frontend == "fbank":
            self.feature_extractor = FbankFrontend(cfg.num_mel_bins, cfg.stack_frames, cfg.sample_rate)
        elif cfg.frontend == "fbank_conv":
            self.feature_extractor = FbankConvFrontend(cfg.num_mel_bins, cfg.fbank_conv_layers, cfg.sample_rate)
        else:
            raise SslseqError(f"encoder.frontend must be 'conv', 'fbank' or 'fbank_conv', got '{cfg.frontend}'")
        C, D = self.feature_extractor.out_dim, cfg.encoder.embed_dim
        self.layer_norm = nn.LayerNorm(C)
        self.post_extract_proj = nn.Linear(C, D)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(D).uniform_())
        if cfg.encoder.layer_type == "transformer":
            self.encoder = TransformerEncoder(cfg.encoder)
        elif cfg.encoder.layer_type == "conformer":
            self.encoder = ConformerEncoder(cfg.encoder)
        else:
            raise SslseqError(f"encoder.encoder.layer_type must be 'transformer' or 'conformer', got '{cfg.encoder.layer_type}'")
        self.frame_rate = cfg.sample_rate / self.feature_extractor.total_stride
        self.embed_dim = D

    def output_lengths(self, wav_lens: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor.output_lengths(wav_lens)

    def forward(
        self,
        wav: torch.Tensor,
        wav_lens: torch.Tensor | None = None,
        mask: bool = False,
        output_hidden_states: bool = False,
        return_features: bool = False,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """``wav`` (B, S) float, ``wav_lens`` (B,) samples (None: no padding); ``mask``: apply
        span/channel masking (pretraining and fine-tuning augmentation)."""
        cfg = self.cfg
        B, S = wav.shape
        if wav_lens is not None:
            wav_lens = wav_lens.to(device=wav.device, dtype=torch.long).clamp(max=S)
        if cfg.frontend == "fbank":
            feats = self.feature_extractor(wav, wav_lens)  # fixed features: no gradient to scale
        elif cfg.feature_grad_mult > 0:
            feats = self.feature_extractor(wav, wav_lens)
            if cfg.feature_grad_mult != 1.0:
                feats = GradMultiply.apply(feats, cfg.feature_grad_mult)
        else:
            with torch.no_grad():
                feats = self.feature_extractor(wav, wav_lens)
        T = feats.size(2)
        if wav_lens is None:
            frame_lens = torch.full((B,), T, dtype=torch.long, device=wav.device)
        else:
            frame_lens = self.output_lengths(wav_lens).clamp(max=T)
        padding_mask = torch.arange(T, device=wav.device)[None, :] >= frame_lens[:, None]

        # HuBERT/wav2vec 2.0 feature penalty: keeps conv activations small (over valid frames).
        if cfg.frontend != "fbank":
            valid = (~padding_mask).to(torch.float32)
            sq = feats.float().pow(2).mean(dim=1)  # (B, T)
            features_pen = (sq * valid).sum() / valid.sum().clamp(min=1.0)
        else:  # fixed fbank features: nothing to keep small
            features_pen = feats.new_zeros((), dtype=torch.float32)

        x = self.layer_norm(feats.transpose(1, 2))
        features = self.dropout_features(x) if return_features else None
        x = self.dropout_input(self.post_extract_proj(x))

        mask_indices = None
        if mask and cfg.mask_prob > 0:
            mask_indices = compute_mask_indices(
                (B, T),
                padding_mask,
                cfg.mask_prob,
                cfg.mask_length,
                min_masks=cfg.mask_min_masks,
                require_same_masks=cfg.require_same_masks,
                mask_dropout=cfg.mask_dropout,
                generator=generator,
            )
            x = torch.where(mask_indices[..., None], self.mask_emb.to(x.dtype), x)
        if mask and cfg.mask_channel_prob > 0:
            channel_mask = compute_channel_mask(
                B, x.size(-1), cfg.mask_channel_prob, cfg.mask_channel_length, generator=generator, device=x.device
            )
            x = x.masked_fill(channel_mask[:, None, :], 0.0)

        # Skipping the key-padding mask when nothing is padded lets SDPA use its fastest kernels.
        attn_padding = padding_mask if bool(padding_mask.any()) else None
        x, hidden = self.encoder(x, attn_padding, output_hidden_states=output_hidden_states)
        return EncoderOutput(x, padding_mask, mask_indices, features_pen, hidden, frame_lens, features)

    @torch.no_grad()
    def extract_features(self, wav: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states of every layer, computed in eval mode without masking (mode restored after)."""
        was_training = self.training
        self.eval()
        try:
            out = self.forward(wav, wav_lens, mask=False, output_hidden_states=True)
        finally:
            self.train(was_training)
        return out.hidden_states, out.frame_lens
