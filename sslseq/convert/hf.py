"""Import a transformers ``HubertModel`` / ``Wav2Vec2Model`` encoder into our ``SpeechEncoder``,
or a whole ``Wav2Vec2ForPreTraining`` (encoder + quantizer + projections) into our ``Wav2Vec2``,
or a ``Wav2Vec2BertModel`` / ``Wav2Vec2BertForCTC`` (w2v-BERT 2.0: fbank frontend + conformer).

The encoder layout (conv frontend, feature projection, mask embedding, Transformer) is shared
by HuBERT and wav2vec 2.0, so one key map serves both; w2v-BERT has its own table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.nn.transformer import TransformerEncoderConfig
from sslseq.utils import SslseqError

__all__ = ["encoder_config_from_hf", "w2vbert_encoder_config_from_hf", "convert_hf_state_dict", "speech_encoder_from_hf", "wav2vec2_from_hf"]

# (transformers name, our name) of every SpeechEncoder parameter: prefixes ending in "." or
# exact names; "{i}" stands for a layer index. The one table both directions are built from.
HF_NAME_PAIRS: list[tuple[str, str]] = [
    ("feature_extractor.conv_layers.{i}.conv.", "feature_extractor.conv_layers.{i}.conv."),
    ("feature_extractor.conv_layers.{i}.layer_norm.", "feature_extractor.conv_layers.{i}.norm."),
    ("feature_projection.layer_norm.", "layer_norm."),
    ("feature_projection.projection.", "post_extract_proj."),
    ("masked_spec_embed", "mask_emb"),
    ("encoder.pos_conv_embed.conv.", "encoder.pos_conv.conv."),
    ("encoder.layer_norm.", "encoder.layer_norm."),
    ("encoder.layers.{i}.attention.", "encoder.layers.{i}.self_attn."),
    ("encoder.layers.{i}.layer_norm.", "encoder.layers.{i}.self_attn_layer_norm."),
    ("encoder.layers.{i}.feed_forward.intermediate_dense.", "encoder.layers.{i}.fc1."),
    ("encoder.layers.{i}.feed_forward.output_dense.", "encoder.layers.{i}.fc2."),
    ("encoder.layers.{i}.final_layer_norm.", "encoder.layers.{i}.final_layer_norm."),
]


# The same for w2v-BERT 2.0 (transformers Wav2Vec2Bert*): the fbank frontend has no weights.
HF_W2VBERT_NAME_PAIRS: list[tuple[str, str]] = [
    ("feature_projection.layer_norm.", "layer_norm."),
    ("feature_projection.projection.", "post_extract_proj."),
    ("masked_spec_embed", "mask_emb"),
    ("encoder.layers.{i}.ffn1_layer_norm.", "encoder.layers.{i}.ffn1_layer_norm."),
    ("encoder.layers.{i}.ffn1.intermediate_dense.", "encoder.layers.{i}.ffn1.fc1."),
    ("encoder.layers.{i}.ffn1.output_dense.", "encoder.layers.{i}.ffn1.fc2."),
    ("encoder.layers.{i}.self_attn_layer_norm.", "encoder.layers.{i}.self_attn_layer_norm."),
    ("encoder.layers.{i}.self_attn.linear_q.", "encoder.layers.{i}.self_attn.q_proj."),
    ("encoder.layers.{i}.self_attn.linear_k.", "encoder.layers.{i}.self_attn.k_proj."),
    ("encoder.layers.{i}.self_attn.linear_v.", "encoder.layers.{i}.self_attn.v_proj."),
    ("encoder.layers.{i}.self_attn.linear_out.", "encoder.layers.{i}.self_attn.out_proj."),
    ("encoder.layers.{i}.self_attn.distance_embedding.", "encoder.layers.{i}.self_attn.distance_embedding."),
    ("encoder.layers.{i}.conv_module.", "encoder.layers.{i}.conv_module."),
    ("encoder.layers.{i}.ffn2_layer_norm.", "encoder.layers.{i}.ffn2_layer_norm."),
    ("encoder.layers.{i}.ffn2.intermediate_dense.", "encoder.layers.{i}.ffn2.fc1."),
    ("encoder.layers.{i}.ffn2.output_dense.", "encoder.layers.{i}.ffn2.fc2."),
    ("encoder.layers.{i}.final_layer_norm.", "encoder.layers.{i}.final_layer_norm."),
]


def name_map(pairs: list[tuple[str, str]], reverse: bool = False) -> list[tuple[str, str]]:
    """(regex, replacement) rules from name pairs, source → target (target → source if reverse)."""
    rules = []
    for src, dst in pairs:
        if reverse:
            src, dst = dst, src
        pattern = "^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + ("" if src.endswith(".") else "$")
        rules.append((pattern, dst.replace("{i}", r"\1")))
    return rules


# transformers name → ours (first match wins); old-style weight norm (g, v) comes first.
_KEY_MAP: list[tuple[str, str]] = [
    (r"^encoder\.pos_conv_embed\.conv\.weight_g$", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_v$", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    *name_map(HF_NAME_PAIRS),
]
_W2VBERT_KEY_MAP: list[tuple[str, str]] = name_map(HF_W2VBERT_NAME_PAIRS)


def _expected_prefixes(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(dict.fromkeys(src.replace("{i}", "N") for src, _ in pairs))


def _hf_masking(hf_cfg: Any) -> dict[str, Any]:
    """SpeechEncoderConfig input dropout and masking fields of any transformers speech config."""
    return dict(
        dropout_input=float(hf_cfg.feat_proj_dropout),
        mask_prob=float(hf_cfg.mask_time_prob),
        mask_length=int(hf_cfg.mask_time_length),
        mask_min_masks=int(getattr(hf_cfg, "mask_time_min_masks", 2)),
        mask_channel_prob=float(hf_cfg.mask_feature_prob),
        mask_channel_length=int(hf_cfg.mask_feature_length),
    )


def _hf_layers(hf_cfg: Any) -> dict[str, Any]:
    """TransformerEncoderConfig sizes and dropouts of any transformers speech config."""
    return dict(
        embed_dim=hf_cfg.hidden_size,
        ffn_dim=hf_cfg.intermediate_size,
        num_layers=hf_cfg.num_hidden_layers,
        num_heads=hf_cfg.num_attention_heads,
        dropout=float(hf_cfg.hidden_dropout),
        attention_dropout=float(hf_cfg.attention_dropout),
        activation_dropout=float(hf_cfg.activation_dropout),
        layerdrop=float(hf_cfg.layerdrop),
    )


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
        **_hf_masking(hf_cfg),
        encoder=TransformerEncoderConfig(
            **_hf_layers(hf_cfg),
            layer_norm_first=bool(hf_cfg.do_stable_layer_norm),
            conv_pos=hf_cfg.num_conv_pos_embeddings,
            conv_pos_groups=hf_cfg.num_conv_pos_embedding_groups,
        ),
    )


def w2vbert_encoder_config_from_hf(hf_cfg: Any) -> SpeechEncoderConfig:
    """Our encoder config equivalent to a transformers Wav2Vec2BertConfig (fbank frontend + conformer)."""
    unsupported = []
    if getattr(hf_cfg, "add_adapter", False):
        unsupported.append("add_adapter=True")
    if getattr(hf_cfg, "use_intermediate_ffn_before_adapter", False):
        unsupported.append("use_intermediate_ffn_before_adapter=True")
    if hf_cfg.position_embeddings_type != "relative_key":
        unsupported.append(f"position_embeddings_type={hf_cfg.position_embeddings_type!r} (only 'relative_key')")
    if hf_cfg.hidden_act not in ("swish", "silu", "gelu", "relu"):
        unsupported.append(f"hidden_act={hf_cfg.hidden_act!r}")
    if abs(getattr(hf_cfg, "layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
        unsupported.append(f"layer_norm_eps={hf_cfg.layer_norm_eps}")
    if hf_cfg.feature_projection_input_dim % 2:
        unsupported.append(f"feature_projection_input_dim={hf_cfg.feature_projection_input_dim} (not fbank stacked x2)")
    if unsupported:
        raise SslseqError(f"cannot convert this transformers w2v-BERT model: unsupported settings {', '.join(unsupported)}")
    return SpeechEncoderConfig(
        frontend="fbank",
        num_mel_bins=int(hf_cfg.feature_projection_input_dim) // 2,
        stack_frames=2,  # SeamlessM4TFeatureExtractor's stride
        feature_grad_mult=1.0,
        dropout_features=0.0,
        **_hf_masking(hf_cfg),
        encoder=TransformerEncoderConfig(
            **_hf_layers(hf_cfg),
            layer_type="conformer",
            activation="swish" if hf_cfg.hidden_act == "silu" else hf_cfg.hidden_act,
            depthwise_kernel=int(hf_cfg.conv_depthwise_kernel_size),
            max_rel_pos_left=int(hf_cfg.left_max_position_embeddings),
            max_rel_pos_right=int(hf_cfg.right_max_position_embeddings),
        ),
    )


def convert_hf_state_dict(hf_state: dict[str, torch.Tensor], w2vbert: bool = False) -> dict[str, torch.Tensor]:
    """Rename a transformers base-model state dict to SpeechEncoder keys (unknown keys are errors);
    ``w2vbert``: the state is a Wav2Vec2Bert* model's."""
    key_map = _W2VBERT_KEY_MAP if w2vbert else _KEY_MAP
    out, unknown = {}, []
    for key, value in hf_state.items():
        key = re.sub(r"^(hubert|wav2vec2|wav2vec2_bert)\.", "", key)  # tolerate task-model prefixes
        for pattern, repl in key_map:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        pairs = HF_W2VBERT_NAME_PAIRS if w2vbert else HF_NAME_PAIRS
        raise SslseqError(
            f"transformers parameters with no SpeechEncoder counterpart: {', '.join(unknown[:8])}; "
            f"expected keys starting with: {_expected_prefixes(pairs)}"
        )
    return out


def speech_encoder_from_hf(hf_model: torch.nn.Module) -> SpeechEncoder:
    """A SpeechEncoder with the weights of a transformers ``HubertModel`` / ``Wav2Vec2Model`` /
    ``Wav2Vec2BertModel``."""
    from sslseq.models import load_state

    w2vbert = type(hf_model).__name__.startswith("Wav2Vec2Bert")
    cfg = w2vbert_encoder_config_from_hf(hf_model.config) if w2vbert else encoder_config_from_hf(hf_model.config)
    enc = SpeechEncoder(cfg)
    state = convert_hf_state_dict(hf_model.state_dict(), w2vbert=w2vbert)
    if "mask_emb" not in state:  # transformers omits it when masking is disabled in its config
        state["mask_emb"] = enc.mask_emb.detach().clone()
    load_state(enc, state, where=f"transformers {type(hf_model).__name__}")
    return enc


# ------------------------------------------------------------------ saved transformers dirs → sslseq models
# (used by ``sslseq convert --from hf``; the functions above convert in-memory modules)

HF_ARCHITECTURES = ("HubertModel", "HubertForCTC", "Wav2Vec2Model", "Wav2Vec2ForCTC", "Wav2Vec2ForPreTraining",
                    "Wav2Vec2BertModel", "Wav2Vec2BertForCTC")
# Wav2Vec2ForPreTraining's contrastive head (quantizer, projections) → our wav2vec2 model.
_HF_PRETRAINING_PREFIXES = ("quantizer.", "project_hid.", "project_q.")
# transformers' defaults for the fields we read, for config.json files written without them.
_HF_DEFAULTS: dict[str, Any] = {
    "feat_extract_norm": "group", "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_bias": False, "feat_proj_dropout": 0.0,
    "mask_time_prob": 0.05, "mask_time_length": 10, "mask_time_min_masks": 2, "mask_feature_prob": 0.0,
    "mask_feature_length": 10, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "hidden_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
    "layerdrop": 0.1, "do_stable_layer_norm": False, "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16, "final_dropout": 0.1, "pad_token_id": 0,
}


# transformers' Wav2Vec2BertConfig defaults for the fields we read.
_HF_W2VBERT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
    "feature_projection_input_dim": 160, "hidden_act": "swish", "hidden_dropout": 0.0, "activation_dropout": 0.0,
    "attention_dropout": 0.0, "feat_proj_dropout": 0.0, "final_dropout": 0.1, "layerdrop": 0.1,
    "layer_norm_eps": 1e-5, "mask_time_prob": 0.05, "mask_time_length": 10, "mask_time_min_masks": 2,
    "mask_feature_prob": 0.0, "mask_feature_length": 10, "pad_token_id": 0, "add_adapter": False,
    "use_intermediate_ffn_before_adapter": False, "position_embeddings_type": "relative_key",
    "left_max_position_embeddings": 64, "right_max_position_embeddings": 8, "conv_depthwise_kernel_size": 31,
}


def load_hf_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, int] | None]:
    """(config.json, weights, vocab.json or None) of a ``save_pretrained`` dir; never unpickles code."""
    import json

    from sslseq.convert import load_torch_file
    from sslseq.models.exp_dir import read_weights

    d = Path(path)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise SslseqError(f"{d}: no config.json; expected a directory written by transformers' save_pretrained")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SslseqError(f"{cfg_path}: not valid JSON ({e})") from None
    single, index, legacy = d / "model.safetensors", d / "model.safetensors.index.json", d / "pytorch_model.bin"
    fix = "copy or download the model again"
    if single.is_file():
        state = read_weights(single, fix)
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (ValueError, AttributeError) as e:
            raise SslseqError(f"{index}: not a JSON object ({e}); {fix}") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise SslseqError(f"{index}: no 'weight_map' (parameter name → shard file), so the shards are unknown; {fix}")
        state = {}
        for shard in sorted(set(map(str, weight_map.values()))):
            state.update(read_weights(d / shard, fix))
    elif legacy.is_file():
        state = load_torch_file(legacy)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SslseqError(f"{legacy}: expected a state dict (parameter name → tensor)")
    else:
        raise SslseqError(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    vocab = None
    vocab_path = d / "vocab.json"
    if vocab_path.is_file():
        raw = json.loads(vocab_path.read_text(encoding="utf-8"))
        if isinstance(raw, dict) and all(isinstance(v, int) for v in raw.values()):
            vocab = raw
        else:  # e.g. multi-language vocabularies ({lang: {token: id}})
            from sslseq.utils import get_logger

            get_logger(__name__).warning("%s is not a flat token → id map; numbering the units instead", vocab_path)
    return cfg, state, vocab


def convert_hf_dir(path: str | Path) -> tuple[torch.nn.Module, list[str] | None, dict[str, Any]]:
    """A ``save_pretrained`` dir of one of ``HF_ARCHITECTURES`` → (sslseq model, units or None, provenance).

    *ForCTC → ``ctc`` model (``lm_head`` → ``proj``; units from vocab.json, else numbered);
    Wav2Vec2ForPreTraining → ``wav2vec2`` model; base models → ``encoder`` model.
    """
    from types import SimpleNamespace

    from sslseq.convert import assemble_model, units_from_tokens

    cfg, state, vocab = load_hf_dir(path)
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in HF_ARCHITECTURES:
        raise SslseqError(
            f"{path}: transformers architecture {arch!r} is not supported; supported: {', '.join(HF_ARCHITECTURES)}"
        )
    if cfg.get("add_adapter"):
        raise SslseqError(f"{path}: models with an adapter (add_adapter=true) are not supported")
    w2vbert = arch.startswith("Wav2Vec2Bert")
    defaults = _HF_W2VBERT_DEFAULTS if w2vbert else _HF_DEFAULTS
    hf_cfg = SimpleNamespace(**{**defaults, **{k: v for k, v in cfg.items() if v is not None}})
    enc_cfg = w2vbert_encoder_config_from_hf(hf_cfg) if w2vbert else encoder_config_from_hf(hf_cfg)

    enc_in, lm_head, dropped = {}, {}, []
    for key, value in state.items():
        if key.startswith("lm_head."):
            lm_head[key[len("lm_head."):]] = value
        elif key.startswith(_HF_PRETRAINING_PREFIXES):
            dropped.append(key)
        else:
            enc_in[key] = value
    enc_state = convert_hf_state_dict(enc_in, w2vbert=w2vbert)

    head, units = None, None
    head_map = globals().get("_W2V2_HEAD_MAP", {})  # transformers → our wav2vec2 names
    if arch == "Wav2Vec2ForPreTraining" and dropped and all(k in head_map for k in dropped):
        import dataclasses

        from sslseq.convert import wav2vec2_head

        enc_cfg = dataclasses.replace(enc_cfg, dropout_features=float(cfg.get("feat_quantizer_dropout", 0.0)))
        w2v_cfg = {"num_negatives": int(cfg.get("num_negatives", 100)),
                   "logit_temp": float(cfg.get("contrastive_logits_temperature", 0.1)),
                   "diversity_weight": float(cfg.get("diversity_loss_weight", 0.1))}
        head = wav2vec2_head({head_map[k]: state[k] for k in dropped}, w2v_cfg, enc_cfg)
        if head is not None:
            dropped = []
    if arch.endswith("ForCTC"):
        if set(lm_head) != {"weight", "bias"}:
            raise SslseqError(f"{path}: a {arch} needs lm_head.weight and lm_head.bias; found {sorted(lm_head)}")
        V = int(lm_head["weight"].shape[0])
        tokens: list[str | None] = [None] * V
        if vocab is not None:
            for tok, i in vocab.items():
                if 0 <= i < V:
                    tokens[i] = tok
        blank = int(hf_cfg.pad_token_id)  # transformers' CTC loss uses the pad token as blank
        units, perm = units_from_tokens(tokens, blank)
        head = {
            "kind": "ctc", "weight": lm_head["weight"][perm], "bias": lm_head["bias"][perm],
            "cfg": {"final_dropout": float(hf_cfg.final_dropout)},
        }
    elif lm_head:
        dropped += [f"lm_head.{k}" for k in lm_head]
    model = assemble_model(enc_cfg, enc_state, head, where=f"{path} ({arch})")
    source = {"format": "hf", "path": str(path), "architecture": arch, "model": head["kind"] if head else "encoder"}
    if dropped:
        source["dropped"] = sorted({k.split(".")[0] for k in dropped})
    return model, units, source


# Wav2Vec2ForPreTraining heads → our Wav2Vec2 (fairseq names).
_W2V2_HEAD_MAP = {
    "quantizer.codevectors": "quantizer.vars",
    "quantizer.weight_proj.weight": "quantizer.weight_proj.weight",
    "quantizer.weight_proj.bias": "quantizer.weight_proj.bias",
    "project_q.weight": "project_q.weight",
    "project_q.bias": "project_q.bias",
    "project_hid.weight": "final_proj.weight",
    "project_hid.bias": "final_proj.bias",
}


def wav2vec2_from_hf(hf_model: torch.nn.Module):
    """Our ``Wav2Vec2`` with the weights of a transformers ``Wav2Vec2ForPreTraining``."""
    import dataclasses

    from sslseq.models import load_state
    from sslseq.models.wav2vec2 import Wav2Vec2, Wav2Vec2Config, Wav2Vec2EncoderConfig

    c = hf_model.config
    enc = encoder_config_from_hf(c)
    enc = Wav2Vec2EncoderConfig(**{f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)})
    enc.dropout_features = float(c.feat_quantizer_dropout)
    cfg = Wav2Vec2Config(
        encoder=enc,
        final_dim=int(c.proj_codevector_dim),
        latent_vars=int(c.num_codevectors_per_group),
        latent_groups=int(c.num_codevector_groups),
        latent_dim=int(c.codevector_dim),
        num_negatives=int(c.num_negatives),
        logit_temp=float(c.contrastive_logits_temperature),
        diversity_weight=float(c.diversity_loss_weight),
    )
    model = Wav2Vec2(cfg)
    hf_state = hf_model.state_dict()
    heads = {k: v for k, v in hf_state.items() if k in _W2V2_HEAD_MAP}
    state = {f"encoder.{k}": v for k, v in convert_hf_state_dict({k: v for k, v in hf_state.items() if k not in heads}).items()}
    state.update({_W2V2_HEAD_MAP[k]: v for k, v in heads.items()})
    state.setdefault("encoder.mask_emb", model.encoder.mask_emb.detach().clone())
    load_state(model, state, where=f"transformers {type(hf_model).__name__}")
    return model
