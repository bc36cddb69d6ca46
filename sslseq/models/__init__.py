"""Model registry: build a model from its config dict (the experiment dir: ``models/exp_dir.py``).

Every registered model is a ``models/base.py:SpeechModel`` (the contract: ``forward(batch) ->
ModelOutput``, ``set_num_updates``, ``extract_features``, ``frame_rate``, ``needs_labels``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

# The experiment dir (config.yaml, model.safetensors, units.txt) has its one reader and writer there.
from sslseq.models.exp_dir import (
    load, load_state, load_weights, model_config_dict, model_state_dict, read_weights, save_weights, write_exp_dir,
)
from sslseq.models.base import ModelOutput, SpeechModel
from sslseq.models.ctc import CTCConfig, CTCModel
from sslseq.models.dinosr import DinoSR, DinoSRConfig
from sslseq.models.encoder_only import EncoderOnly, EncoderOnlyConfig
from sslseq.models.hubert import HubertConfig, HuBERT
from sslseq.models.w2vbert import W2VBert, W2VBertConfig
from sslseq.models.wav2vec2 import Wav2Vec2, Wav2Vec2Config
from sslseq.utils import SslseqError

MODELS: dict[str, tuple[type, type]] = {
    "hubert": (HubertConfig, HuBERT),
    "ctc": (CTCConfig, CTCModel),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2),
    "w2vbert": (W2VBertConfig, W2VBert),
    "encoder": (EncoderOnlyConfig, EncoderOnly),
    "dinosr": (DinoSRConfig, DinoSR),
}

__all__ = [
    "ModelOutput", "SpeechModel", "MODELS", "build_model", "model_config", "load", "model_config_dict", "model_state_dict",
    "save_weights", "load_weights", "load_state", "read_weights", "write_exp_dir",
    "HubertConfig", "HuBERT", "CTCConfig", "CTCModel",
    "Wav2Vec2Config", "Wav2Vec2", "W2VBertConfig", "W2VBert", "needs_labels",
    "DinoSRConfig", "DinoSR",
]


def family_fact(model: dict[str, Any] | nn.Module, fact: str, default_name: str = "hubert") -> Any:
    """A class attribute of ``SpeechModel`` (``needs_labels``, ``default_ctc_config``) for a built
    model, or for a model config dict whose ``name`` defaults to ``default_name``; SpeechModel's own
    value for a module that is not a SpeechModel and for an unknown name."""
    if isinstance(model, nn.Module):
        return getattr(model, fact, getattr(SpeechModel, fact))
    name = model.get("name", default_name) if isinstance(model, dict) else default_name
    entry = MODELS.get(name)
    return getattr(SpeechModel if entry is None else entry[1], fact)


def needs_labels(model: dict[str, Any] | nn.Module, default_name: str = "hubert") -> bool:
    """Whether pretraining ``model`` needs k-means labels (``SpeechModel.needs_labels``)."""
    return bool(family_fact(model, "needs_labels", default_name))


def model_config(model_cfg: dict[str, Any], where: str = "model") -> Any:
    """The typed config of a model section ``{"name": <registered name>, <fields, nested as
    dicts>}``: the registry's dataclass for that name, every key and type checked (an unknown
    key is an error naming the nearest known one and ``where``)."""
    from sslseq.config import from_dict

    if not isinstance(model_cfg, dict) or "name" not in model_cfg:
        raise SslseqError(f"{where}: a model config needs a 'name' key, one of: {', '.join(MODELS)}")
    name = model_cfg["name"]
    if name not in MODELS:
        raise SslseqError(f"{where}: unknown model name '{name}'; known models: {', '.join(MODELS)}")
    return from_dict(MODELS[name][0], {k: v for k, v in model_cfg.items() if k != "name"}, where=where)


def build_model(model_cfg: dict[str, Any], where: str = "model") -> nn.Module:
    """A freshly initialised model of a model section (``model_config``)."""
    cfg = model_config(model_cfg, where)
    return MODELS[model_cfg["name"]][1](cfg)
