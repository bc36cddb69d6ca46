"""Model registry: build a model from its config dict, save/load weights as safetensors.

Every model implements ``forward(batch) -> ModelOutput``, ``set_num_updates(step)``,
``extract_features(wav, wav_lens) -> (hidden_states, frame_lens)`` and has ``frame_rate``
and ``cfg`` attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from sslseq.utils import SslseqError


class ModelOutput(NamedTuple):
    loss: torch.Tensor  # scalar, SUM over the units it covers
    sample_size: int  # number of units; the trainer divides the loss by it
    logs: dict[str, float]  # detached statistics


# Imported after ModelOutput: the model modules import it from here.
from sslseq.models.ctc import CTCConfig, CTCModel  # noqa: E402
from sslseq.models.hubert import HubertConfig, HuBERT  # noqa: E402
from sslseq.models.wav2vec2 import Wav2Vec2, Wav2Vec2Config  # noqa: E402
from sslseq.models.w2vbert import W2VBert, W2VBertConfig  # noqa: E402
from sslseq.models.encoder_only import EncoderOnly, EncoderOnlyConfig  # noqa: E402
from sslseq.models.dinosr import DinoSR, DinoSRConfig  # noqa: E402

MODELS: dict[str, tuple[type, type]] = {
    "hubert": (HubertConfig, HuBERT),
    "ctc": (CTCConfig, CTCModel),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2),
    "w2vbert": (W2VBertConfig, W2VBert),
    "encoder": (EncoderOnlyConfig, EncoderOnly),
    "dinosr": (DinoSRConfig, DinoSR),
}

__all__ = [
    "ModelOutput", "MODELS", "build_model", "load", "model_config_dict", "model_state_dict",
    "save_weights", "load_weights", "HubertConfig", "HuBERT", "CTCConfig", "CTCModel",
    "Wav2Vec2Config", "Wav2Vec2", "W2VBertConfig", "W2VBert", "needs_labels",
    "DinoSRConfig", "DinoSR",
]


def needs_labels(model: dict[str, Any] | nn.Module, default_name: str = "hubert") -> bool:
    """Whether pretraining ``model`` (a built model, or a model config dict whose ``name``
    defaults to ``default_name``) needs k-means labels: its class attribute ``needs_labels``
    (True when absent, as for HuBERT)."""
    if isinstance(model, nn.Module):
        return bool(getattr(model, "needs_labels", True))
    name = model.get("name", default_name) if isinstance(model, dict) else default_name
    entry = MODELS.get(name)
    return True if entry is None else bool(getattr(entry[1], "needs_labels", True))


def build_model(model_cfg: dict[str, Any], where: str = "model") -> nn.Module:
    """``{"name": <registered name>, <config fields, nested as dicts>}`` → a freshly initialised model."""
    from sslseq.config import from_dict

    if not isinstance(model_cfg, dict) or "name" not in model_cfg:
        raise SslseqError(f"{where}: a model config needs a 'name' key, one of: {', '.join(MODELS)}")
    name = model_cfg["name"]
    if name not in MODELS:
        raise SslseqError(f"{where}: unknown model name '{name}'; known models: {', '.join(MODELS)}")
    cfg_cls, model_cls = MODELS[name]
    cfg = from_dict(cfg_cls, {k: v for k, v in model_cfg.items() if k != "name"}, where=where)
    return model_cls(cfg)


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    """The dict that ``build_model`` turns back into this model's architecture (write it as
    ``model:`` in ``exp_dir/config.yaml``). For CTC models it holds the resolved encoder config."""
    from sslseq.config import to_dict

    for name, (_, model_cls) in MODELS.items():
        if type(model) is model_cls:
            return {"name": name, **to_dict(model.cfg)}
    raise SslseqError(f"{type(model).__name__} is not a registered model ({', '.join(MODELS)})")


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, storage-independent tensors: what ``safetensors.torch.save_file`` accepts."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model.safetensors`` atomically."""
    from safetensors.torch import save_file

    from sslseq.utils import atomic_path

    with atomic_path(path) as tmp:
        save_file(model_state_dict(model), str(tmp))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` with user-facing errors for missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:

        def short(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing parameters: {short(missing)}")
        if unexpected:
            parts.append(f"unexpected parameters: {short(unexpected)}")
        raise SslseqError(
            f"{where}: the weights do not fit the model built from the config ({'; '.join(parts)}); "
            f"were config and weights written by the same run?"
        )
    bad = [
        f"'{k}' has shape {tuple(state[k].shape)} in the weights but {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise SslseqError(
            f"{where}: the config does not match the weights: parameter {'; '.join(bad[:5])}{more}"
        )
    model.load_state_dict(state, strict=True)


def load(exp_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of ``exp_dir`` (``config.yaml`` key ``model`` + ``model.safetensors``), in eval mode."""
    from safetensors.torch import load_file

    from sslseq.config import load_yaml

    exp_dir = Path(exp_dir)
    cfg_path = exp_dir / "config.yaml"
    data = load_yaml(cfg_path)
    if not isinstance(data.get("model"), dict):
        raise SslseqError(f"{cfg_path}: no 'model' section; is {exp_dir} a training experiment directory?")
    model = build_model(data["model"], where=f"{cfg_path}: model")
    weights = exp_dir / "model.safetensors"
    if not weights.is_file():
        raise SslseqError(f"{weights}: not found; has training in {exp_dir} saved a model yet?")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise SslseqError(f"{weights}: cannot read safetensors file ({e}); re-copy or re-train it") from None
    load_weights(model, state, where=str(weights))
    return model.to(device).eval()
