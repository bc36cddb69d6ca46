"""The filterbank frontend of w2v-BERT 2.0 / SeamlessM4T (transformers ``SeamlessM4TFeatureExtractor``):

waveform → Kaldi fbank (80 bins, 25 ms window, 10 ms hop, int16 scale; ``sslseq.features.kaldi``)
→ per-utterance, per-bin mean/variance normalisation over the utterance's own frames (unbiased
variance + 1e-7, as the reference) → pairs of consecutive frames stacked into one 160-dim frame
(20 ms hop, 50 Hz). A trailing odd frame is dropped. No parameters: the model's LayerNorm and
projection follow in ``SpeechEncoder``.
"""

from __future__ import annotations

import torch
from torch import nn

from sslseq.features import kaldi
from sslseq.utils import SslseqError

__all__ = ["FbankFrontend"]

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
