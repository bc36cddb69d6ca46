"""Import a transformers ``HubertModel`` / ``Wav2Vec2Model`` encoder into our ``SpeechEncoder``.

Only the encoder is converted (conv frontend, feature projection, mask embedding, Transformer);
pretraining heads are not part of transformers' base models.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.nn.transformer import TransformerEncoderConfig
from sslseq.utils import SslseqError

__all__ = ["encoder_config_from_hf", "convert_hf_state_dict", "speech_encoder_from_hf"]

# transformers name → ours (regex on the full key; first match wins).
_KEY_MAP: list[tuple[str, str]] = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.norm."),
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_g$", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_v$", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.conv."),
    (r"^encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]


def encoder_config_from_hf(hf_cfg: Any) -> SpeechEncoderConfig:
    """Our encoder config equivalent to a transformers Hubert/Wav2Vec2 config."""
    unsupported = []
    if getattr(hf_cfg, "feat_proj_layer_norm", True) is not True:
        unsupported.append("feat_proj_layer_norm=False")
    if getattr(hf_cfg, "conv_pos_batch_norm", False):
        unsupported.append("conv_pos_batch_norm=True")
    for key in ("hidden_act", "feat_extract_activation"):
        if getattr(hf_cfg, key, "gelu") != "gelu":
            unsupported.append(f"{key}={getattr(hf_cfg, key)!r}")
    if abs(getattr(hf_cfg, "layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
        unsupported.append(f"layer_norm_eps={hf_cfg.layer_norm_eps}")
    if unsupported:
        raise SslseqError(f"cannot convert this transformers model: unsupported settings {', '.join(unsupported)}")
    mode = {"group": "group_norm", "layer": "layer_norm"}.get(hf_cfg.feat_extract_norm)
    if mode is None:
        raise SslseqError(f"unknown transformers feat_extract_norm '{hf_cfg.feat_extract_norm}'")
    return SpeechEncoderConfig(
        conv_layers=[(int(d), int(k), int(s)) for d, k, s in zip(hf_cfg.conv_dim, hf_cfg.conv_kernel, hf_cfg.conv_stride)],
        extractor_mode=mode,
        conv_bias=bool(hf_cfg.conv_bias),
        dropout_input=float(hf_cfg.feat_proj_dropout),
        mask_prob=float(hf_cfg.mask_time_prob),
        mask_length=int(hf_cfg.mask_time_length),
        mask_min_masks=int(getattr(hf_cfg, "mask_time_min_masks", 2)),
        mask_channel_prob=float(hf_cfg.mask_feature_prob),
        mask_channel_length=int(hf_cfg.mask_feature_length),
        encoder=TransformerEncoderConfig(
            embed_dim=hf_cfg.hidden_size,
            ffn_dim=hf_cfg.intermediate_size,
            num_layers=hf_cfg.num_hidden_layers,
            num_heads=hf_cfg.num_attention_heads,
            dropout=float(hf_cfg.hidden_dropout),
            attention_dropout=float(hf_cfg.attention_dropout),
            activation_dropout=float(hf_cfg.activation_dropout),
            layerdrop=float(hf_cfg.layerdrop),
            layer_norm_first=bool(hf_cfg.do_stable_layer_norm),
            conv_pos=hf_cfg.num_conv_pos_embeddings,
            conv_pos_groups=hf_cfg.num_conv_pos_embedding_groups,
        ),
    )


def convert_hf_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers base-model state dict to SpeechEncoder keys (unknown keys are errors)."""
    out, unknown = {}, []
    for key, value in hf_state.items():
        key = re.sub(r"^(hubert|wav2vec2)\.", "", key)  # tolerate task-model prefixes
        for pattern, repl in _KEY_MAP:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise SslseqError(f"transformers parameters with no SpeechEncoder counterpart: {', '.join(unknown[:8])}")
    return out


def speech_encoder_from_hf(hf_model: torch.nn.Module) -> SpeechEncoder:
    """A SpeechEncoder with the weights of a transformers ``HubertModel`` / ``Wav2Vec2Model``."""
    from sslseq.models import load_weights

    cfg = encoder_config_from_hf(hf_model.config)
    enc = SpeechEncoder(cfg)
    state = convert_hf_state_dict(hf_model.state_dict())
    if "mask_emb" not in state:  # transformers omits it when masking is disabled in its config
        state["mask_emb"] = enc.mask_emb.detach().clone()
    load_weights(enc, state, where=f"transformers {type(hf_model).__name__}")
    return enc
