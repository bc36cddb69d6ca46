"""wav2vec 2.0's waveform feature encoder (§2): a stack of strided 1-D convolutions + GELU.

Base layout ``[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2``: 25 ms receptive field, 20 ms hop
(total stride 320 → 50 Hz at 16 kHz). ``mode="group_norm"`` (fairseq "default", Base models)
normalises only the first layer with GroupNorm(C, C); ``mode="layer_norm"`` (Large models)
puts a LayerNorm over channels after every conv.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sslseq.utils import SslseqError

__all__ = ["ConvFeatureExtractor", "BASE_CONV_LAYERS", "conv_output_lengths"]

BASE_CONV_LAYERS: list[tuple[int, int, int]] = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


def conv_output_lengths(lengths: torch.Tensor, conv_layers: Sequence[Sequence[int]]) -> torch.Tensor:
    """Frames whose whole receptive field lies inside the first ``lengths`` samples."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def _masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm(C, C) whose per-channel statistics use only each row's first ``lengths`` frames.

    fairseq/transformers normalise over the padded length too, so a batched utterance's features
    depend on its neighbours' lengths; restricting the statistics to valid frames makes batched
    and single-utterance outputs identical. One fused GroupNorm per row (cheaper in forward and
    backward than masked elementwise statistics on this, the largest activation of the model);
    padded frames keep their un-normalised values, which no valid frame ever sees.
    """
    T = x.size(2)
    rows = []
    for b, n in enumerate(lengths.tolist()):
        n = max(1, min(int(n), T))
        y = norm(x[b : b + 1, :, :n])
        rows.append(torch.cat([y, x[b : b + 1, :, n:]], dim=2) if n < T else y)
    return torch.cat(rows, dim=0)


class ConvLayer(nn.Module):
    """Conv1d → optional norm → GELU."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, norm: str | None, bias: bool):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm_type = norm
        if norm == "group":
            self.norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths``: valid frames of the *output* (after this conv)."""
        x = self.conv(x)
        if self.norm_type == "group":
            if lengths is None or bool((lengths >= x.size(2)).all()):
                x = self.norm(x)  # nothing padded: the fused kernel
            else:
                x = _masked_group_norm(x, lengths, self.norm)
        elif self.norm_type == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class ConvFeatureExtractor(nn.Module):
    """Raw waveform (B, S) → features (B, C, T)."""

    def __init__(
        self,
        conv_layers: Sequence[Sequence[int]] = BASE_CONV_LAYERS,
        mode: str = "group_norm",
        conv_bias: bool = False,
    ):
        super().__init__()
        if mode not in ("group_norm", "layer_norm"):
            raise SslseqError(f"extractor_mode must be 'group_norm' or 'layer_norm', got '{mode}'")
        self.conv_layers_spec = [tuple(int(v) for v in layer) for layer in conv_layers]
        layers, in_dim = [], 1
        for i, (dim, kernel, stride) in enumerate(self.conv_layers_spec):
            if mode == "layer_norm":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(in_dim, dim, kernel, stride, norm, conv_bias))
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)
        self.out_dim = in_dim
        self.total_stride = math.prod(s for _, _, s in self.conv_layers_spec)
        # Samples needed for one output frame.
        rf = 1
        for _, kernel, stride in reversed(self.conv_layers_spec):
            rf = (rf - 1) * stride + kernel
        self.receptive_field = rf

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(lengths, self.conv_layers_spec)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (B,) in samples; when given, GroupNorm statistics ignore padding."""
        if wav.dim() != 2:
            raise SslseqError(f"expected a (batch, samples) waveform tensor, got shape {tuple(wav.shape)}")
        if wav.size(1) < self.receptive_field:
            raise SslseqError(
                f"audio of {wav.size(1)} samples is shorter than the conv frontend's receptive field "
                f"({self.receptive_field} samples); drop or pad such short utterances"
            )
        x = wav.unsqueeze(1)
        for spec, layer in zip(self.conv_layers_spec, self.conv_layers):
            if lengths is not None:
                lengths = conv_output_lengths(lengths, [spec])  # valid frames of this layer's output
            x = layer(x, lengths)
        return x
