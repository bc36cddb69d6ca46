"""The wav2vec 2.0 / HuBERT context network: convolutional positional embedding + Transformer.

Post-LN (``layer_norm_first=False``, Base): LayerNorm after the positional conv and after each
sub-block. Pre-LN (``layer_norm_first=True``, Large): LayerNorm before each sub-block and once
after the last layer. Module names follow fairseq (``self_attn``, ``fc1``, ``final_layer_norm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from sslseq.utils import SslseqError

__all__ = ["TransformerEncoderConfig", "activation_fn", "PositionalConv", "MultiheadSelfAttention", "TransformerEncoderLayer", "TransformerEncoder",
           "run_layers"]


@dataclass
class TransformerEncoderConfig:
    embed_dim: int = 768
    ffn_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layerdrop: float = 0.05
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    layer_type: str = "transformer"  # "conformer": w2v-BERT blocks (sslseq/nn/conformer.py)
    activation: str = "gelu"  # FFN (and conformer conv) activation: gelu | swish | relu
    depthwise_kernel: int = 31  # conformer only: depthwise conv kernel
    max_rel_pos_left: int = 64  # conformer only: relative_key distances clipped to [-left, right]
    max_rel_pos_right: int = 8


_ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu, "silu": F.silu, "relu": F.relu}


def activation_fn(name: str):
    if name not in _ACTIVATIONS:
        raise SslseqError(f"encoder.encoder.activation: unknown activation '{name}'; one of: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def init_bert_linear(module: nn.Module) -> None:
    """fairseq ``init_bert_params`` for Linear layers: N(0, 0.02) weights, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PositionalConv(nn.Module):
    """Relative positional embedding: grouped Conv1d (weight-normalised over the kernel axis) + GELU."""

    def __init__(self, embed_dim: int, kernel: int, groups: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % groups:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by conv_pos_groups {groups}")
        conv = nn.Conv1d(embed_dim, embed_dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        # fairseq's init keeps the output variance ~ independent of kernel size and width.
        std = math.sqrt(4.0 * (1.0 - dropout) / (kernel * embed_dim))
        nn.init.normal_(conv.weight, mean=0.0, std=std)
        nn.init.zeros_(conv.bias)
        self.conv = weight_norm(conv, name="weight", dim=2)
        # "SamePad": padding k//2 on both sides yields one extra frame for even kernels.
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, D)."""
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : -self.remove]
        return F.gelu(y).transpose(1, 2)


class MultiheadSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_padding_mask`` (B, T): True on padded keys, which get no attention."""
        B, T, D = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        attn_mask = None
        if key_padding_mask is not None:
            keep = ~key_padding_mask
            # An all-padding row would softmax over nothing (NaN); let it attend everywhere instead.
            keep = keep | ~keep.any(dim=1, keepdim=True)
            attn_mask = keep[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class TransformerEncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerEncoderConfig):
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn = MultiheadSelfAttention(cfg.embed_dim, cfg.num_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout1 = nn.Dropout(cfg.dropout)  # after attention
        self.dropout2 = nn.Dropout(cfg.activation_dropout)  # inside the FFN
        self.dropout3 = nn.Dropout(cfg.dropout)  # after the FFN
        self.act = activation_fn(cfg.activation)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.act(self.fc1(x)))))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), padding_mask))
            x = x + self._ffn(self.final_layer_norm(x))
        else:
            x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, padding_mask)))
            x = self.final_layer_norm(x + self._ffn(x))
        return x


def run_layers(
    layers: nn.ModuleList, x: torch.Tensor, padding_mask: torch.Tensor | None, layerdrop: float, output_hidden_states: bool
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Apply ``layers`` in turn, skipping each with probability ``layerdrop`` (LayerDrop, Fan et
    al. 2019; 0 outside training); the hidden states are [input, output of each layer]."""
    hidden = [x] if output_hidden_states else None
    for layer in layers:
        if not (layerdrop > 0 and torch.rand(()).item() < layerdrop):
            x = layer(x, padding_mask)
        if hidden is not None:
            hidden.append(x)
    return x, hidden


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: TransformerEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_conv = PositionalConv(cfg.embed_dim, cfg.conv_pos, cfg.conv_pos_groups, cfg.dropout)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerEncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(init_bert_linear)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """(B, T, D) → (B, T, D) and, if asked, ``num_layers + 1`` hidden states:
        [input to the first layer (after positional conv, and LayerNorm when post-LN),
        output of each layer]; pre-LN's final LayerNorm applies to the returned output only."""
        if padding_mask is not None:
            # Padded frames must not leak into valid ones through the positional conv.
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_conv(x)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        x, hidden = run_layers(self.layers, x, padding_mask, self.cfg.layerdrop if self.training else 0.0,
                               output_hidden_states)
        if self.cfg.layer_norm_first:
            # The returned output is normalised; hidden states stay raw layer outputs (as
            # transformers 5 and fairseq's layer_results).
            x = self.layer_norm(x)
        return x, hidden
