"""sslseq experiments → transformers directories (``config.json`` + ``model.safetensors``).

HuBERT and encoder-only experiments become ``HubertModel`` (HuBERT's prediction head,
``final_proj`` + ``label_embs_concat``, has no transformers counterpart and is left out);
CTC experiments become ``HubertForCTC`` (``proj`` → ``lm_head``, blank = ``pad_token_id``,
``units.txt`` → ``vocab.json`` with ``<blank>`` named ``<pad>``). Written without importing
transformers; ``HubertForCTC.from_pretrained(out_dir)`` loads the result.

transformers' GroupNorm frontend normalises over padding too, so for group-norm models run it
one utterance at a time (as the written ``preprocessor_config.json`` says: no attention mask).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from sslseq.convert import _check_out_dir
from sslseq.convert.hf import HF_NAME_PAIRS, name_map
from sslseq.nn.encoder import SpeechEncoder
from sslseq.utils import SslseqError, atomic_write_text, get_logger

__all__ = ["export_hf", "hf_config_from_encoder", "encoder_state_to_hf"]

log = get_logger(__name__)

# Our SpeechEncoder name → transformers HubertModel name (first match wins).
_TO_HF = name_map(HF_NAME_PAIRS, reverse=True)


def hf_config_from_encoder(enc: SpeechEncoder) -> dict[str, Any]:
    """transformers ``HubertConfig`` fields equivalent to our encoder."""
    c, t = enc.cfg, enc.cfg.encoder
    return {
        "model_type": "hubert",
        "hidden_size": t.embed_dim,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "intermediate_size": t.ffn_dim,
        "hidden_act": "gelu",
        "hidden_dropout": t.dropout,
        "activation_dropout": t.activation_dropout,
        "attention_dropout": t.attention_dropout,
        "layerdrop": t.layerdrop,
        "layer_norm_eps": 1e-5,
        "do_stable_layer_norm": t.layer_norm_first,
        "num_conv_pos_embeddings": t.conv_pos,
        "num_conv_pos_embedding_groups": t.conv_pos_groups,
        "conv_pos_batch_norm": False,
        "feat_extract_norm": {"group_norm": "group", "layer_norm": "layer"}[c.extractor_mode],
        "feat_extract_activation": "gelu",
        "conv_dim": [d for d, _, _ in c.conv_layers],
        "conv_kernel": [k for _, k, _ in c.conv_layers],
        "conv_stride": [s for _, _, s in c.conv_layers],
        "num_feat_extract_layers": len(c.conv_layers),
        "conv_bias": c.conv_bias,
        "feat_proj_layer_norm": True,
        "feat_proj_dropout": c.dropout_input,
        "apply_spec_augment": True,
        "mask_time_prob": c.mask_prob,
        "mask_time_length": c.mask_length,
        "mask_time_min_masks": c.mask_min_masks,
        "mask_feature_prob": c.mask_channel_prob,
        "mask_feature_length": c.mask_channel_length,
        "mask_feature_min_masks": 0,
        "initializer_range": 0.02,
        "use_weighted_layer_sum": False,
    }


def encoder_state_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename a SpeechEncoder state dict to transformers HubertModel keys (unknown keys are errors)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _TO_HF:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[prefix + new] = value.detach().cpu().contiguous().clone()
                break
        else:
            raise SslseqError(f"encoder parameter '{key}' has no transformers counterpart")
    return out


def export_hf(exp_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a transformers dir for the model of ``exp_dir`` (HuBERT, CTC or encoder-only)."""
    from safetensors.torch import save_file

    from sslseq.models import CTCModel, HuBERT, load
    from sslseq.models.exp_dir import UNITS
    from sslseq.utils import atomic_path

    exp_dir, out = Path(exp_dir), Path(out_dir)
    model = load(exp_dir)
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, SpeechEncoder):
        raise SslseqError(f"{exp_dir}: a {type(model).__name__} has no SpeechEncoder to export")
    if enc.cfg.frontend != "conv" or enc.cfg.encoder.layer_type != "transformer":
        raise SslseqError(
            f"{exp_dir}: export to transformers supports conv-frontend Transformer encoders (HuBERT layout); "
            f"this encoder has a {enc.cfg.frontend} frontend and {enc.cfg.encoder.layer_type} layers"
        )
    cfg = hf_config_from_encoder(enc)
    # transformers creates masked_spec_embed only when some masking is configured.
    keep_mask_emb = cfg["mask_time_prob"] > 0 or cfg["mask_feature_prob"] > 0
    enc_state = {k: v for k, v in enc.state_dict().items() if keep_mask_emb or k != "mask_emb"}
    vocab = None
    if isinstance(model, CTCModel):
        if model.cfg.upsample != 1:
            raise SslseqError(f"{exp_dir}: HubertForCTC has one output per frame; this CTC model has upsample={model.cfg.upsample}")
        cfg["architectures"] = ["HubertForCTC"]
        state = encoder_state_to_hf(enc_state, prefix="hubert.")
        state["lm_head.weight"] = model.proj.weight.detach().contiguous().clone()
        state["lm_head.bias"] = model.proj.bias.detach().contiguous().clone()
        V = model.cfg.vocab_size
        cfg.update(
            vocab_size=V, pad_token_id=model.cfg.blank_id, bos_token_id=None, eos_token_id=None,
            final_dropout=model.cfg.final_dropout, ctc_loss_reduction="sum", ctc_zero_infinity=True,
        )
        units_path = exp_dir / UNITS
        if units_path.is_file():
            from sslseq.data.text import BLANK, read_units

            units = read_units(units_path)  # characters or BPE pieces, '|' between words either way
            if len(units) != V:
                raise SslseqError(f"{units_path}: {len(units)} units but the model outputs {V}")
            vocab = {("<pad>" if u == BLANK else u): i for i, u in enumerate(units)}
        else:
            log.warning("%s: no units.txt; writing no vocab.json", exp_dir)
    else:
        cfg["architectures"] = ["HubertModel"]
        state = encoder_state_to_hf(enc_state)
        if isinstance(model, HuBERT):
            log.info("HuBERT's prediction head (final_proj, label_embs_concat) has no transformers counterpart; left out")
    cfg["torch_dtype"] = "float32"

    names = ("config.json", "model.safetensors") + (("vocab.json",) if vocab else ())
    _check_out_dir(out, overwrite, names)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    if vocab is not None:
        atomic_write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=1))
    pre = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "sampling_rate": enc.cfg.sample_rate, "padding_value": 0.0, "padding_side": "right",
        "do_normalize": False,  # sslseq feeds raw waveforms
        "return_attention_mask": enc.cfg.extractor_mode == "layer_norm",
    }
    atomic_write_text(out / "preprocessor_config.json", json.dumps(pre, indent=1))
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=1, sort_keys=True))
    log.info("wrote %s (%s)", out, cfg["architectures"][0])
    return out
