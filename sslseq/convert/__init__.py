"""Checkpoint interop: transformers / fairseq / fairseq2 checkpoints → sslseq experiment dirs,
and sslseq HuBERT / CTC experiments → transformers ``HubertModel`` / ``HubertForCTC`` dirs.

Every importer reduces its source to our ``SpeechEncoder`` key layout plus an optional head
(CTC projection or HuBERT prediction head), builds the registered model and writes an
experiment dir that ``sslseq.models.load`` reads (``config.yaml`` with a ``model:`` section,
``model.safetensors``, ``units.txt`` for CTC models). Pretrained encoders without a matching
sslseq model become an ``encoder`` model (``sslseq.models.encoder_only``): usable for feature dumping
and as ``init=`` of CTC fine-tuning, not for further pretraining. wav2vec 2.0 pretraining
checkpoints (quantizer + projections) become our ``wav2vec2`` model.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslseq.nn.encoder import SpeechEncoderConfig
from sslseq.utils import SslseqError, get_logger

__all__ = [
    "convert", "export", "write_exp",
    "assemble_model", "units_from_tokens", "finish_encoder_state", "wav2vec2_head", "FORMATS",
]

log = get_logger(__name__)

FORMATS = ("hf", "fairseq", "fairseq2")

# Our names of the positional conv's weight-norm parts (magnitude g, direction v).
POS_G = "encoder.pos_conv.conv.parametrizations.weight.original0"
POS_V = "encoder.pos_conv.conv.parametrizations.weight.original1"


# ------------------------------------------------------------------ shared helpers


def finish_encoder_state(state: dict[str, torch.Tensor], cfg: SpeechEncoderConfig) -> dict[str, torch.Tensor]:
    """Fill in what some layouts leave out, so the state fits ``SpeechEncoder(cfg)``:

    a plain (weight-norm-removed) positional conv weight is split into g/v; a missing
    ``post_extract_proj`` (fairseq omits it when conv dim == model dim) becomes the identity;
    a missing ``mask_emb`` (transformers omits it with masking off) gets a fresh init.
    """
    state = dict(state)
    plain = "encoder.pos_conv.conv.weight"
    if plain in state:
        w = state.pop(plain)
        # weight_norm(dim=2): one magnitude per kernel tap, norm over the other two axes.
        state[POS_G] = w.norm(dim=(0, 1), keepdim=True)
        state[POS_V] = w
    C, D = cfg.conv_layers[-1][0], cfg.encoder.embed_dim
    if "post_extract_proj.weight" not in state and C == D:
        state["post_extract_proj.weight"] = torch.eye(D)
        state["post_extract_proj.bias"] = torch.zeros(D)
    if "mask_emb" not in state:
        state["mask_emb"] = torch.empty(D).uniform_()
    return state


def units_from_tokens(tokens: list[str | None], blank: int) -> tuple[list[str], list[int]]:
    """CTC output symbols (index = id) → (``units.txt`` lines, row order).

    Our unit lists start with ``<blank>``; when the source's blank is not id 0 the head's rows
    are reordered by the returned permutation (blank first, the rest in id order). Tokens that
    cannot be units (missing, empty, containing whitespace, repeated) become ``<unitN>``; a
    space token becomes the word boundary ``|`` when the vocabulary has none.
    """
    from sslseq.data.text import BLANK, WORD_SEP

    V = len(tokens)
    if not 0 <= blank < V:
        raise SslseqError(f"blank id {blank} is outside the {V}-symbol output vocabulary")
    perm = [blank] + [i for i in range(V) if i != blank]
    has_sep = WORD_SEP in tokens
    units, seen = [BLANK], {BLANK}
    for i in perm[1:]:
        t = tokens[i]
        if t == " " and not has_sep:
            t = WORD_SEP
        if not t or any(c.isspace() for c in t) or t in seen:
            t = f"<unit{i}>"
        units.append(t)
        seen.add(t)
    if WORD_SEP not in seen:
        log.warning("the output vocabulary has no word boundary unit '%s'; edit units.txt before decoding", WORD_SEP)
    return units, perm


def assemble_model(
    enc_cfg: SpeechEncoderConfig,
    enc_state: dict[str, torch.Tensor],
    head: dict[str, Any] | None,
    where: str,
) -> nn.Module:
    """Build the sslseq model for an encoder (+ head) and load the weights.

    ``head``: None (encoder only), ``{"kind": "ctc", "weight", "bias", "cfg": CTCConfig fields}``
    or ``{"kind": "hubert", "final_proj.weight", "final_proj.bias", "label_embs_concat",
    "cfg": HubertConfig fields}``.
    """
    from sslseq.config import to_dict
    from sslseq.models import build_model, load_state

    enc_state = finish_encoder_state(enc_state, enc_cfg)
    enc_dict = to_dict(enc_cfg)
    if head is None:
        model = build_model({"name": "encoder", "encoder": enc_dict}, where=where)
        load_state(model, {f"encoder.{k}": v for k, v in enc_state.items()}, where=where)
        return model.eval()
    state = {f"encoder.{k}": v for k, v in enc_state.items()}
    if head["kind"] == "ctc":
        V = int(head["weight"].shape[0])
        # CTC's top-level fine-tuning fields override the encoder's: start from the encoder's own.
        tr = enc_cfg.encoder
        ft = {
            "mask_prob": enc_cfg.mask_prob, "mask_length": enc_cfg.mask_length,
            "mask_channel_prob": enc_cfg.mask_channel_prob, "mask_channel_length": enc_cfg.mask_channel_length,
            "dropout_input": enc_cfg.dropout_input, "dropout": tr.dropout, "attention_dropout": tr.attention_dropout,
            "activation_dropout": tr.activation_dropout, "layerdrop": tr.layerdrop,
        }
        model_cfg = {"name": "ctc", "encoder": enc_dict, "vocab_size": V, "blank_id": 0, **ft, **head.get("cfg", {})}
        state["proj.weight"], state["proj.bias"] = head["weight"], head["bias"]
    elif head["kind"] == "wav2vec2":
        model_cfg = {"name": "wav2vec2", "encoder": enc_dict, **head.get("cfg", {})}
        state.update(head["state"])
    elif head["kind"] == "hubert":
        K, final_dim = (int(n) for n in head["label_embs_concat"].shape)
        model_cfg = {"name": "hubert", "encoder": enc_dict, "num_classes": K, "final_dim": final_dim, **head.get("cfg", {})}
        for k in ("final_proj.weight", "final_proj.bias", "label_embs_concat"):
            state[k] = head[k]
    else:
        raise ValueError(f"unknown head kind {head['kind']!r}")
    model = build_model(model_cfg, where=where)
    load_state(model, state, where=where)
    return model.eval()


W2V2_HEAD_KEYS = ("quantizer.vars", "quantizer.weight_proj.weight", "quantizer.weight_proj.bias",
                  "project_q.weight", "project_q.bias", "final_proj.weight", "final_proj.bias")


def wav2vec2_head(heads: dict[str, torch.Tensor], cfg: dict[str, Any], enc_cfg: SpeechEncoderConfig) -> dict[str, Any] | None:
    """A ``wav2vec2`` head from fairseq-named tensors (``W2V2_HEAD_KEYS``), or None when they
    are not exactly our model's (e.g. a target GLU, a deeper quantizer projection).

    Codebook shape from the tensors: ``vars`` is (1, G·V, vq_dim/G), ``project_q`` (final_dim, vq_dim).
    """
    from sslseq.models import MODELS

    if "wav2vec2" not in MODELS or set(heads) != set(W2V2_HEAD_KEYS) or not enc_cfg.mask_prob > 0:
        return None
    gv, var_dim = int(heads["quantizer.vars"].shape[1]), int(heads["quantizer.vars"].shape[2])
    final_dim, vq_dim = (int(n) for n in heads["project_q.weight"].shape)
    if vq_dim % var_dim or gv % (vq_dim // var_dim):
        return None
    groups = vq_dim // var_dim
    shape_cfg = {"final_dim": final_dim, "latent_vars": gv // groups, "latent_groups": groups, "latent_dim": vq_dim,
                 "quantize_targets": True, "quantizer_depth": 1}
    return {"kind": "wav2vec2", "state": dict(heads), "cfg": {**cfg, **shape_cfg}}


def _check_out_dir(out_dir: Path, overwrite: bool, names: tuple[str, ...]) -> None:
    clash = [n for n in names if (out_dir / n).exists()]
    if clash and not overwrite:
        raise SslseqError(f"{out_dir} already holds {', '.join(clash)}; choose another output dir or pass --overwrite")


def write_exp(
    model: nn.Module,
    out_dir: str | os.PathLike,
    units: list[str] | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an experiment dir: ``config.yaml`` (``model:`` + ``converted_from:``),
    ``model.safetensors`` and, for CTC models, ``units.txt``."""
    from sslseq.models.exp_dir import CONFIG, WEIGHTS, write_exp_dir

    out = Path(out_dir)
    _check_out_dir(out, overwrite, (CONFIG, WEIGHTS))
    write_exp_dir(out, model, {"converted_from": source} if source else None, units=units)
    return out


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load`` without executing pickled code (``weights_only=True``).

    ``argparse.Namespace`` (old fairseq ``args``) is allowed: it only sets attributes.
    Anything else non-tensor (omegaconf ``cfg`` objects) is refused with instructions.
    """
    import argparse
    import pickle

    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise SslseqError(f"{path}: the file is empty or cut short ({path.stat().st_size} bytes), not a checkpoint; "
                          "copy or download it again") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        msg = str(e)
        if "weights_only" in msg.lower() or "unsupported global" in msg.lower():
            found = re.search(r"(?:Unsupported global|GLOBAL)\s*:?\s*(?:GLOBAL\s+)?([\w.]+)", msg)
            what = f" (it holds a pickled {found.group(1)})" if found else ""
            raise SslseqError(
                f"{path}: this checkpoint stores Python objects that cannot be loaded safely{what}; "
                "fairseq checkpoints keep their config as omegaconf objects. sslseq never unpickles "
                "code. In a trusted environment with fairseq installed, re-save it with plain dicts:\n"
                "  from fairseq import checkpoint_utils; from omegaconf import OmegaConf\n"
                "  ckpt = checkpoint_utils.load_checkpoint_to_cpu(path)\n"
                "  torch.save({'model': ckpt['model'], 'cfg': OmegaConf.to_container(ckpt['cfg'], resolve=True)}, new_path)\n"
                "(or save ckpt['model'] alone: the architecture is then inferred from the weights)"
            ) from None
        raise _unreadable_checkpoint(path, e) from None
    except Exception as e:  # e.g. torch 2.13 reading a damaged .safetensors raises safetensors' own error
        raise _unreadable_checkpoint(path, e) from None


def _unreadable_checkpoint(path: Path, e: Exception) -> SslseqError:
    msg = str(e)
    hint = "; it is a safetensors file: convert its transformers directory with --from hf" \
        if path.suffix == ".safetensors" else ""
    return SslseqError(f"{path}: cannot read the checkpoint ({msg.splitlines()[0] if msg else type(e).__name__}){hint}")


# ------------------------------------------------------------------ entry points


def convert(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    source_format: str,
    fairseq_dict: str | os.PathLike | None = None,
    num_heads: int | None = None,
    layer_norm_first: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """``sslseq convert --from FORMAT SRC OUT_DIR``: an sslseq experiment dir from a checkpoint.

    ``fairseq_dict`` (fairseq CTC checkpoints): the ``dict.ltr.txt`` the model was fine-tuned
    with, for ``units.txt``. ``num_heads`` / ``layer_norm_first`` override what would otherwise
    be inferred for checkpoints without a readable config (fairseq state dicts, fairseq2).
    """
    if source_format == "hf":
        from sslseq.convert.hf import convert_hf_dir

        model, units, source = convert_hf_dir(src)
    elif source_format in ("fairseq", "fairseq2"):
        from sslseq.convert.fairseq import convert_fairseq_checkpoint

        model, units, source = convert_fairseq_checkpoint(
            src, source_format, fairseq_dict=fairseq_dict, num_heads=num_heads, layer_norm_first=layer_norm_first
        )
    else:
        raise SslseqError(f"unknown source format '{source_format}'; one of: {', '.join(FORMATS)}")
    out = write_exp(model, out_dir, units=units, source=source, overwrite=overwrite)
    log.info("wrote %s (%s model from %s)", out, source.get("model", "?"), src)
    return out


def export(exp_dir: str | os.PathLike, out_dir: str | os.PathLike, target: str = "hf", overwrite: bool = False) -> Path:
    """``sslseq convert --to hf EXP OUT_DIR``."""
    if target != "hf":
        raise SslseqError(f"unknown export format '{target}'; supported: hf")
    from sslseq.convert.export import export_hf

    return export_hf(exp_dir, out_dir, overwrite=overwrite)


# The submodule sslseq/convert/export.py shares its name with export() above, and Python binds a
# package attribute to a submodule when that is first imported: after one export() call,
# `from sslseq.convert import export` gave the module. Import it now and rebind the function.
_export_entry = export
importlib.import_module("sslseq.convert.export")
export = _export_entry  # noqa: F811
