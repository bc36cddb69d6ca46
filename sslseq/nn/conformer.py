"""Conformer context network of w2v-BERT (Chung et al. 2021; Gulati et al. 2020), as in w2v-BERT 2.0
(fairseq2 / transformers ``Wav2Vec2BertEncoder``).

Each block (macaron style, pre-LN):
    x = x + ½·FFN1(LN(x))
    x = x + MHSA(LN(x))            relative_key positions (Shaw et al. 2018), clipped to [-left, right]
    x = x + Conv(x)                LN → pointwise (D→2D) → GLU → causal depthwise conv (kernel 31,
                                   k-1 frames of left padding) → LN → swish → pointwise
    x = x + ½·FFN2(LN(x))
    x = LN(x)
No positional embedding besides the attention's relative one, no final LayerNorm. Padded
frames are zeroed at the input and before every depthwise conv, and are never attended to,
so they cannot leak into valid frames. Module names follow transformers' where it is
unambiguous (``ffn1``, ``conv_module``, ``distance_embedding``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslseq.nn.transformer import MultiheadSelfAttention, TransformerEncoderConfig, activation_fn, init_bert_linear, run_layers

__all__ = ["FeedForward", "RelativeKeySelfAttention", "ConvModule", "ConformerLayer", "ConformerEncoder"]


class FeedForward(nn.Module):
    """Linear → activation → dropout → Linear → dropout."""

    def __init__(self, dim: int, inner: int, activation: str, activation_dropout: float, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)
        self.act = activation_fn(activation)
        self.dropout_inner = nn.Dropout(activation_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout_inner(self.act(self.fc1(x)))))


class RelativeKeySelfAttention(MultiheadSelfAttention):
    """Self-attention with a learned embedding per clipped relative distance ``key - query`` in
    [-left, right]; its dot product with the query is added to the scaled content score."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, left: int, right: int):
        super().__init__(embed_dim, num_heads, dropout)
        self.left, self.right = left, right
        self.distance_embedding = nn.Embedding(left + right + 1, self.head_dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        pos = torch.arange(T, device=x.device)
        distance = (pos[None, :] - pos[:, None]).clamp(-self.left, self.right) + self.left  # (T, T)
        # q·E[d] for the few distinct distances, then gathered: never a (T, T, head_dim) tensor.
        q_dot_e = torch.matmul(q, self.distance_embedding.weight.to(q.dtype).t())  # (B, H, T, L+R+1)
        bias = q_dot_e.gather(-1, distance.expand(B, self.num_heads, T, T)) * self.head_dim**-0.5
        if key_padding_mask is not None:
            keep = ~key_padding_mask
            keep = keep | ~keep.any(dim=1, keepdim=True)  # an all-padding row attends everywhere (no NaN)
            bias = bias.masked_fill(~keep[:, None, None, :], float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class ConvModule(nn.Module):
    def __init__(self, dim: int, kernel: int, activation: str, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, groups=dim, bias=False)
        self.depthwise_layer_norm = nn.LayerNorm(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)
        self.act = activation_fn(activation)
        self.dropout = nn.Dropout(dropout)
        self.kernel = kernel

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) → (B, T, D)."""
        x = self.layer_norm(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        x = self.depthwise_conv(F.pad(x, (self.kernel - 1, 0)))  # causal: only past and present frames
        x = self.act(self.depthwise_layer_norm(x.transpose(1, 2)).transpose(1, 2))
        return self.dropout(self.pointwise_conv2(x)).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, cfg: TransformerEncoderConfig):
        super().__init__()
        D = cfg.embed_dim
        self.ffn1_layer_norm = nn.LayerNorm(D)
        self.ffn1 = FeedForward(D, cfg.ffn_dim, cfg.activation, cfg.activation_dropout, cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(D)
        self.self_attn = RelativeKeySelfAttention(D, cfg.num_heads, cfg.attention_dropout, cfg.max_rel_pos_left, cfg.max_rel_pos_right)
        self.self_attn_dropout = nn.Dropout(cfg.dropout)
        self.conv_module = ConvModule(D, cfg.depthwise_kernel, cfg.activation, cfg.dropout)
        self.ffn2_layer_norm = nn.LayerNorm(D)
        self.ffn2 = FeedForward(D, cfg.ffn_dim, cfg.activation, cfg.activation_dropout, cfg.dropout)
        self.final_layer_norm = nn.LayerNorm(D)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn_dropout(self.self_attn(self.self_attn_layer_norm(x), padding_mask))
        x = x + self.conv_module(x, padding_mask)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class ConformerEncoder(nn.Module):
    """Same interface as ``TransformerEncoder``: (B, T, D) → (B, T, D) and, if asked,
    ``num_layers + 1`` hidden states [input to the first layer (padding zeroed), output of each layer]."""

    def __init__(self, cfg: TransformerEncoderConfig):
        super().__init__()
        if cfg.depthwise_kernel < 1:
            raise ValueError(f"depthwise_kernel must be >= 1, got {cfg.depthwise_kernel}")
        self.cfg = cfg
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(init_bert_linear)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = self.dropout(x)
        return run_layers(self.layers, x, padding_mask, self.cfg.layerdrop if self.training else 0.0, output_hidden_states)
