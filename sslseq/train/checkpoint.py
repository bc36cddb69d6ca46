"""Checkpoints that load without executing code, written atomically.

``checkpoints/step_<N>/`` holds ``model.safetensors`` (weights, written and read as in the
experiment dir: ``sslseq.models.exp_dir``) and ``trainer_state.pt`` (optimizer state, step,
data position, RNG states: only tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it). A checkpoint is written into a
temporary dir and renamed into place, so a ``step_<N>`` dir is always complete.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The weights are an experiment dir's model.safetensors: one writer and reader (models/exp_dir.py).
from sslseq.models.exp_dir import WEIGHTS, load_weights, save_weights
from sslseq.utils import SslseqError, get_logger

log = get_logger(__name__)

STATE = "trainer_state.pt"
BEST = "best"  # the model of the best validation so far
_STEP_DIR = re.compile(r"^step_(\d+)$")


# ---------------------------------------------------------------- weights
def load_checkpoint_weights(model: torch.nn.Module, ckpt_dir: str | os.PathLike) -> None:
    """The weights of checkpoint ``ckpt_dir`` into ``model`` (the experiment dir's own loader)."""
    load_weights(model, Path(ckpt_dir) / WEIGHTS, fix=f"delete {ckpt_dir} to resume from an older checkpoint")


# ---------------------------------------------------------------- RNG states
def get_rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as tensors and lists (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "state": list(pystate), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- checkpoint dirs
def step_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoint dirs under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / WEIGHTS).is_file() and (p / STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    dirs = step_dirs(root)
    return dirs[-1][1] if dirs else None


def remove_partial(root: str | os.PathLike) -> None:
    """Delete temp dirs a killed save left behind (a kill between the two renames of
    ``save_best`` leaves the previous best as ``.old_best_*``: it is put back)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".old_best_") and not (root / BEST).exists():
                os.replace(p, root / BEST)
            elif p.name.startswith((".tmp_step_", ".tmp_best_", ".old_best_")):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    root: str | os.PathLike, step: int, model: torch.nn.Module, state: dict[str, Any], keep_last: int = 2
) -> Path:
    """Write ``root/step_<step>`` (complete or absent), then keep only the newest ``keep_last``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step}_", dir=root))
    try:
        save_weights(model, tmp / WEIGHTS)
        torch.save(state, tmp / STATE)
        if final.exists():  # a rerun that reached the same step again: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in step_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(root: str | os.PathLike, model: torch.nn.Module, info: dict[str, Any]) -> Path:
    """Replace ``root/best`` with the model's weights and ``best.yaml`` (metric, value, step), atomically."""
    import yaml

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / BEST
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_best_", dir=root))
    try:
        save_weights(model, tmp / WEIGHTS)
        (tmp / "best.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
        old = root / f".old_best_{os.getpid()}"
        if final.exists():
            os.replace(final, old)  # a directory cannot replace a non-empty one in one rename
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_trainer_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SslseqError(f"{path}: cannot read trainer state ({e}); delete {ckpt_dir} to resume from an older checkpoint") from None
