"""Filterbank frontends: the model reads the waveform and computes its features itself.

``FbankFrontend`` is w2v-BERT 2.0 / SeamlessM4T's (transformers ``SeamlessM4TFeatureExtractor``):
waveform → Kaldi fbank (80 bins, 25 ms window, 10 ms hop, int16 scale; ``sslseq.features.kaldi``)
→ per-utterance, per-bin mean/variance normalisation over the utterance's own frames (unbiased
variance + 1e-7, as the reference) → pairs of consecutive frames stacked into one 160-dim frame
(20 ms hop, 50 Hz). A trailing odd frame is dropped. No parameters: the model's LayerNorm and
projection follow in ``SpeechEncoder``.

``FbankConvFrontend`` is the small-compute frontend of Fast-HuBERT / MelHuBERT: the same
normalised fbank at 100 Hz (no stacking) → strided 1-D convolutions + GELU, by default two of
kernel 3 and stride 2 → 25 Hz, a quarter of the frames (and of the Transformer's work) of a
50 Hz model. Features are computed on the fly rather than read from the stage-2 store, so the
model stays waveform-in: crops, decoding, layer-feature dumping and checkpoints need nothing
else, and computing fbank costs a few percent of a training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sslseq.features import kaldi
from sslseq.nn.frontend import conv_output_lengths
from sslseq.utils import SslseqError

__all__ = ["FbankFrontend", "FbankConvFrontend", "FAST_CONV_LAYERS"]

# (channels, kernel, stride) over 100 Hz fbank frames: 100 Hz → 50 Hz → 25 Hz.
FAST_CONV_LAYERS: list[tuple[int, int, int]] = [(256, 3, 2), (256, 3, 2)]

_VAR_EPS = 1e-7  # SeamlessM4TFeatureExtractor: x / sqrt(var + 1e-7)


class FbankFrontend(nn.Module):
    """Raw waveform (B, S) float in [-1, 1] → normalised, stacked fbank (B, num_mel_bins·stack, T)."""

    def __init__(self, num_mel_bins: int = 80, stack: int = 2, sample_rate: int = 16000):
        super().__init__()
        if num_mel_bins < 1 or stack < 1:
            raise SslseqError(f"fbank frontend needs num_mel_bins >= 1 and stack_frames >= 1, got {num_mel_bins}, {stack}")
        self.opts = kaldi.FbankOptions(num_mel_bins=num_mel_bins, sample_rate=sample_rate)
        self.stack = stack
        self.out_dim = num_mel_bins * stack
        _, shift, _ = kaldi._frame_geometry(self.opts)
        self.total_stride = shift * stack  # samples per output frame
        self.receptive_field = int(sample_rate * 0.001 * self.opts.frame_length_ms) + shift * (stack - 1)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(kaldi.num_frames(lengths, self.opts), self.stack, rounding_mode="floor")

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if wav.dim() != 2:
            raise SslseqError(f"expected a (batch, samples) waveform tensor, got shape {tuple(wav.shape)}")
        if wav.size(1) < self.receptive_field:
            raise SslseqError(
                f"audio of {wav.size(1)} samples is shorter than one stacked fbank frame "
                f"({self.receptive_field} samples); drop or pad such short utterances"
            )
        B = wav.size(0)
        if lengths is None:
            lengths = torch.full((B,), wav.size(1), dtype=torch.long, device=wav.device)
        # Full precision even inside a bf16/fp16 autocast region: log energies need float32 matmuls.
        with torch.autocast(device_type=wav.device.type, enabled=False):
            feats, n = kaldi.fbank(wav.float(), lengths, self.opts)  # (B, T, F), zero beyond n
        feats = feats.double()  # statistics over a whole utterance: float64 keeps them batch-independent
        valid = (torch.arange(feats.size(1), device=feats.device)[None, :] < n[:, None])[..., None]
        count = n.clamp(min=1).to(feats.dtype)[:, None, None]
        mean = (feats * valid).sum(1, keepdim=True) / count
        centred = (feats - mean) * valid
        var = centred.square().sum(1, keepdim=True) / (count - 1).clamp(min=1)  # unbiased, as the reference
        feats = centred / torch.sqrt(var + _VAR_EPS)
        T = feats.size(1) // self.stack
        stacked = feats[:, : T * self.stack].reshape(B, T, self.out_dim)
        # A stacked frame is valid only if all its frames are: zero the partial last one too.
        keep = torch.arange(T, device=feats.device)[None, :] < torch.div(n, self.stack, rounding_mode="floor")[:, None]
        return (stacked * keep[..., None]).to(wav.dtype if wav.is_floating_point() else torch.float32).transpose(1, 2)


class FbankConvFrontend(nn.Module):
    """Raw waveform (B, S) → normalised 100 Hz fbank → strided Conv1d + GELU layers → (B, C, T)."""

    def __init__(self, num_mel_bins: int = 80, conv_layers=FAST_CONV_LAYERS, sample_rate: int = 16000):
        super().__init__()
        self.fbank = FbankFrontend(num_mel_bins, 1, sample_rate)
        self.conv_layers_spec = [tuple(int(v) for v in layer) for layer in conv_layers]
        if not self.conv_layers_spec or any(len(l) != 3 or min(l) < 1 for l in self.conv_layers_spec):
            raise SslseqError(f"fbank_conv_layers must be a non-empty list of [channels, kernel, stride], got {conv_layers}")
        layers, in_dim = [], num_mel_bins
        for dim, kernel, stride in self.conv_layers_spec:
            layers.append(nn.Conv1d(in_dim, dim, kernel, stride=stride))
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)
        self.out_dim = in_dim
        frames = 1  # fbank frames one output frame needs
        for _, kernel, stride in reversed(self.conv_layers_spec):
            frames = (frames - 1) * stride + kernel
        shift = self.fbank.total_stride
        self.total_stride = shift * math.prod(s for _, _, s in self.conv_layers_spec)
        self.receptive_field = self.fbank.receptive_field + shift * (frames - 1)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(self.fbank.output_lengths(lengths), self.conv_layers_spec)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if wav.dim() == 2 and wav.size(1) < self.receptive_field:
            raise SslseqError(
                f"audio of {wav.size(1)} samples is shorter than the fbank_conv frontend's receptive field "
                f"({self.receptive_field} samples); drop or pad such short utterances"
            )
        # Padded fbank frames are zero, and a valid output frame reads valid inputs only, so
        # batched and single-utterance outputs agree.
        x = self.fbank(wav, lengths)
        for conv in self.conv_layers:
            x = F.gelu(conv(x))
        return x
