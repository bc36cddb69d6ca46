"""The experiment dir: what a trained (or converted) model is on disk, read and written here only.

``config.yaml`` (its ``model:`` key is the config ``build_model`` rebuilds the model from; its
``files:`` key the size and SHA-256 of the files written before it), ``model.safetensors`` (the
weights), ``units.txt`` (CTC output units, one a line, blank first), ``bpe.model`` (the
SentencePiece model of BPE units; ``units_file`` says which of the two is the tokenizer)
and ``log/train.jsonl`` (``sslseq.models.train_log``). The trainer adds ``train_summary.yaml``
and ``checkpoints/`` (``sslseq.train``), whose ``step_N/`` dirs hold weights in the same
safetensors form.

Weights are safetensors only, so loading them never executes code. It lives in ``models/``,
below the trainer, the converters and the decoders that all read or write it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslseq.utils import SslseqError, atomic_path, atomic_write_text, check_file_record, file_record

__all__ = [
    "CONFIG", "WEIGHTS", "UNITS", "model_state_dict", "save_weights", "read_weights", "load_state", "load_weights",
    "model_config_dict", "write_exp_dir", "check_exp_dir", "units_file", "load",
]

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
UNITS = "units.txt"
BPE_MODEL = "bpe.model"  # sslseq.data.text.BPE_MODEL
FILES = "files"  # the key of config.yaml that records the files written with it


# ---------------------------------------------------------------- weights
def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as CPU, contiguous tensors of which no two share storage: what
    ``safetensors.torch.save_file`` accepts."""
    # safetensors refuses tensors that share storage; clone only those (rare: tied weights),
    # so saving a large model does not copy all of it.
    seen: set[int] = set()
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        tensors[name] = t
    return tensors


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write the model's weights as safetensors, atomically (a killed save leaves no file)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(model_state_dict(model), str(tmp), metadata=metadata)


def read_weights(path: str | os.PathLike, fix: str = "copy it again or train again") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU; ``fix`` says what to do when it is unreadable."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: not found; has training in {path.parent} saved a model yet?")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise SslseqError(f"{path}: cannot read weights ({e}); the file is damaged: {fix}") from None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` with one-line errors that name ``where`` and the missing, unexpected
    or mis-shaped parameters (converters call this with the tensors they renamed)."""
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


def load_weights(model: nn.Module, path: str | os.PathLike, fix: str = "copy it again or train again") -> None:
    """Load a safetensors file into ``model`` (``read_weights`` + ``load_state``)."""
    load_state(model, read_weights(path, fix), where=str(path))


# ---------------------------------------------------------------- config.yaml
def model_config_dict(model: nn.Module, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict that ``build_model`` turns back into this model's architecture (``model:`` of
    ``config.yaml``), in plain YAML types. For CTC models it holds the resolved encoder config.

    A model that is not registered (a test's toy model) is described by its ``cfg`` (a
    dataclass or dict) or else by ``fallback`` (the config it was built from), when given."""
    import dataclasses

    from sslseq.config import to_dict
    from sslseq.models import MODELS

    def plain(d: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(d, default=list))  # tuples -> lists

    for name, (_, model_cls) in MODELS.items():
        if type(model) is model_cls:
            return plain({"name": name, **to_dict(model.cfg)})
    if fallback is None:
        raise SslseqError(f"{type(model).__name__} is not a registered model ({', '.join(MODELS)})")
    cfg = getattr(model, "cfg", None)
    if dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    elif isinstance(cfg, dict):
        d = dict(cfg)
    else:
        d = dict(fallback)
    if "name" not in d and "name" in fallback:
        d = {"name": fallback["name"], **d}
    return plain(d)


def write_exp_dir(
    out_dir: str | os.PathLike,
    model: nn.Module,
    config: dict[str, Any] | None = None,
    units: list[str] | None = None,
    model_fallback: dict[str, Any] | None = None,
    bpe_model: str | os.PathLike | None = None,
) -> Path:
    """Write ``model.safetensors``, ``units.txt`` (when ``units`` are given), then ``config.yaml``:
    ``config`` with its ``model:`` key set to ``model_config_dict(model, model_fallback)`` (first
    when ``config`` has none) and ``files:`` the size and SHA-256 of the others (``check_exp_dir``
    verifies them). ``bpe_model``: the SentencePiece model of BPE ``units``, copied in as
    ``bpe.model``. Each file is written atomically."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS)
    if units is not None:
        atomic_write_text(out / UNITS, "".join(f"{u}\n" for u in units))
    if bpe_model is not None and Path(bpe_model).resolve() != (out / BPE_MODEL).resolve():
        import shutil

        with atomic_path(out / BPE_MODEL) as tmp:
            shutil.copyfile(bpe_model, tmp)
    config = dict(config or {})
    data = config if "model" in config else {"model": None, **config}
    data["model"] = model_config_dict(model, model_fallback)
    data[FILES] = {name: file_record(out / name) for name in (WEIGHTS, UNITS, BPE_MODEL)
                   if (out / name).is_file()}
    text = yaml.safe_dump(json.loads(json.dumps(data, default=list)), sort_keys=False)
    atomic_write_text(out / CONFIG, text)  # after the weights: a config.yaml names a complete model
    return out


def check_exp_dir(exp_dir: str | os.PathLike, data: dict[str, Any] | None = None, *, checksum: bool = True) -> None:
    """SslseqError naming the file unless the weights (and units) of ``exp_dir`` have the size (and,
    with ``checksum``, the SHA-256) that ``config.yaml`` (``data``, when already read) recorded when
    they were written. A dir written before the record existed checks nothing."""
    from sslseq.config import load_yaml

    exp_dir = Path(exp_dir)
    data = load_yaml(exp_dir / CONFIG) if data is None else data
    files = data.get(FILES)
    if not isinstance(files, dict):
        return
    for name, record in files.items():
        if name in (WEIGHTS, UNITS, BPE_MODEL):
            check_file_record(exp_dir / name, record, f"the model in {exp_dir} is damaged: train (or convert) it again",
                              checksum=checksum)


def units_file(exp_dir: str | os.PathLike) -> Path:
    """The tokenizer file of a CTC experiment dir (``sslseq.data.text.load_tokenizer`` reads it):
    ``bpe.model`` for BPE units, else ``units.txt``."""
    exp_dir = Path(exp_dir)
    if (exp_dir / BPE_MODEL).is_file():
        return exp_dir / BPE_MODEL
    if not (exp_dir / UNITS).is_file():
        raise SslseqError(f"{exp_dir / UNITS}: not found; {exp_dir} must be a fine-tuned CTC experiment dir (sslseq train)")
    return exp_dir / UNITS


def load(exp_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The model of ``exp_dir`` (``config.yaml`` key ``model`` + ``model.safetensors``, checked
    against its record), in eval mode."""
    from sslseq.config import load_yaml
    from sslseq.models import build_model

    exp_dir = Path(exp_dir)
    cfg_path = exp_dir / CONFIG
    data = load_yaml(cfg_path)
    if not isinstance(data.get("model"), dict):
        raise SslseqError(f"{cfg_path}: no 'model' section; is {exp_dir} a training experiment directory?")
    # Reading the weights costs about what hashing them does: check the checksum too.
    check_exp_dir(exp_dir, data)
    model = build_model(data["model"], where=f"{cfg_path}: model")
    load_weights(model, exp_dir / WEIGHTS)
    return model.to(device).eval()
