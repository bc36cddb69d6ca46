"""Typed training configuration (``sslseq train CONFIG key=value ...``).

The ``model`` section is a free-form dict handed to ``sslseq.models.build_model`` (the
model validates its own keys). ``model_config`` may name a YAML file with the model
section instead (path relative to the training YAML); keys under ``model`` override it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslseq.config import deep_merge, load_config, load_yaml, to_dict
from sslseq.train.schedule import SCHEDULES
from sslseq.utils import SslseqError, fingerprint

TASKS = ("pretrain", "ctc")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass
class DataConfig:
    train: str = ""  # Kaldi data dir
    valid: str | None = None  # Kaldi data dir for validation (None: no validation)
    labels_train: str | None = None  # <set>.km (pretraining targets)
    labels_valid: str | None = None
    units: str | None = None  # CTC units: a units file, a SentencePiece bpe.model (None: sslseq.data.text.DEFAULT_UNITS)
    max_batch_seconds: float = 80.0  # padded audio seconds per batch (B x longest)
    bucket_batches: int = 4  # length buckets of this many batches' audio (0: no bucketing, more padding)
    max_sample_seconds: float = 15.625  # pretraining: random crop; CTC: longer utterances dropped
    min_sample_seconds: float = 0.5  # shorter utterances dropped
    sample_rate: int = 16000
    num_workers: int = 0  # DataLoader worker processes
    speed_perturb: list[float] = field(default_factory=list)  # train speeds, e.g. [0.9, 1.0, 1.1] (CTC only); []: off


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 10.0  # 0: no clipping (the norm is still logged)
    schedule: str = "linear"  # linear | tri_stage | constant
    warmup_steps: int = 0  # linear / constant
    max_steps: int = 1000
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)  # tri_stage: warmup, hold, decay
    init_lr_scale: float = 0.01  # tri_stage
    final_lr_scale: float = 0.05  # tri_stage
    update_freq: int = 1  # gradient accumulation: micro-batches per optimizer step
    # 0: update_freq as given. N: the batch (data.max_batch_seconds x update_freq) is sized for N
    # processes (the published recipes: 8 or 16 GPUs), so on P processes update_freq is multiplied by
    # N / P (P must divide N) and an update holds the same audio on fewer GPUs.
    sized_for_processes: int = 0
    # Updates skipped for a non-finite gradient (a diverged run): training stops with an error
    # after this many in a row (0: never) ...
    max_skipped_in_row: int = 10
    # ... or once more than max(max_skipped_in_row, this fraction of max_steps) were skipped in all (1: never)
    max_skipped_frac: float = 0.05


@dataclass
class TrainConfig:
    task: str = "pretrain"  # pretrain | ctc
    out_dir: str = ""
    model_config: str | None = None  # YAML with the model section (relative to this file)
    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: str | None = None  # ctc: pretrained experiment dir, or "none" for random init
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (GPU: bf16 where supported, else fp16 with loss scaling; CPU: bf16 with AMX-BF16/AVX512-BF16, else fp32)
    compile: bool = False  # torch.compile the model (dynamic shapes; the first steps compile)
    # torch.compile backend: inductor (generates kernels); eager / aot_eager only trace, for
    # quick checks of what compiling touches (`sslseq bench gpu --dry-run` on a CPU)
    compile_backend: str = "inductor"
    # DDP: parameters a step may leave without gradient (CTC's frozen encoder, an unused mask
    # embedding) need find_unused_parameters; None: true for CTC, false otherwise (it costs a
    # graph traversal per step).
    find_unused_parameters: bool | None = None
    log_interval: int = 10  # steps
    valid_interval: int = 500  # steps (0: only at the end)
    save_interval: int = 500  # steps; a checkpoint is also written at the last step
    keep_last: int = 2  # checkpoints kept
    max_valid_batches: int | None = None  # cap on validation batches (None: whole valid set)


def model_config_path(config: Path, model_config: str) -> Path:
    """Where a training YAML's ``model_config`` is: relative to that YAML first, then to the cwd."""
    mpath = Path(model_config)
    if not mpath.is_absolute() and (config.parent / mpath).is_file():
        return config.parent / mpath
    return mpath


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Load and check a TrainConfig; the ``model_config`` file is merged into ``model``."""
    cfg = resolve_train_config(path, overrides)
    check_train_config(cfg, where=str(path))
    return cfg


def resolve_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig with its ``model_config`` merged into ``model``, not yet checked for what a
    run needs (out_dir, data): what a recipe asks of a config before running it."""
    path = Path(path)
    cfg = load_config(TrainConfig, path, list(overrides))
    if cfg.model_config:
        mpath = model_config_path(path, cfg.model_config)
        mdata = load_yaml(mpath)
        # A model YAML may hold the section itself or a top-level 'model' key.
        if set(mdata) == {"model"} and isinstance(mdata["model"], dict):
            mdata = mdata["model"]
        if cfg.task == "ctc":
            # CTC takes only the encoder architecture from an SSL model file (used with
            # init=none; with a pretrained init the encoder comes from the init model).
            if not isinstance(mdata.get("encoder"), dict):
                raise SslseqError(f"{mpath}: no 'encoder' section to take the CTC encoder architecture from")
            mdata = {"encoder": mdata["encoder"]}
        cfg.model = deep_merge(mdata, cfg.model)
        cfg.model_config = None  # merged: the saved config stands alone
    return cfg


def effective_update_freq(optim: OptimConfig, processes: int) -> int:
    """Micro-batches per update on ``processes`` processes (``optim.sized_for_processes``)."""
    n = optim.sized_for_processes
    if not n:
        return optim.update_freq
    if n % processes:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise SslseqError(f"optim.sized_for_processes={n}: the batch is sized for {n} processes, and {processes} do not "
                          f"divide it; run on {', '.join(map(str, divisors))} processes, or set optim.update_freq "
                          "yourself with optim.sized_for_processes=0")
    return optim.update_freq * (n // processes)


def pretrain_family_fact(cfg: TrainConfig, fact: str) -> Any:
    """A family fact of the registry (``models.family_fact``) for the model ``cfg`` trains
    (``model_section``: its ``name``, else the task's default)."""
    from sslseq.models import family_fact

    return family_fact(model_section(cfg) if isinstance(cfg.model, dict) else {}, fact)


def pretrain_needs_labels(cfg: TrainConfig) -> bool:
    """Whether the model pretrained by ``cfg`` needs k-means labels."""
    return bool(pretrain_family_fact(cfg, "needs_labels"))


# The model a task trains when the config's model section names none.
DEFAULT_MODEL = {"pretrain": "hubert", "ctc": "ctc"}


def model_section(cfg: TrainConfig) -> dict[str, Any]:
    """The config's ``model:`` section with its ``name`` (the task's default when not given)."""
    return {"name": DEFAULT_MODEL.get(cfg.task, "hubert"), **cfg.model}


def check_train_config(cfg: TrainConfig, where: str = "config") -> None:
    def bad(key: str, msg: str) -> SslseqError:
        return SslseqError(f"{where}: {key}: {msg}")

    if cfg.task not in TASKS:
        raise bad("task", f"'{cfg.task}' is not one of {', '.join(TASKS)}")
    if not cfg.out_dir:
        raise bad("out_dir", "not set; pass out_dir=exp/NAME")
    if not cfg.data.train:
        raise bad("data.train", "not set; pass data.train=data/SET (a Kaldi data dir)")
    labels = cfg.task == "pretrain" and pretrain_needs_labels(cfg)
    if labels and not cfg.data.labels_train:
        raise bad("data.labels_train", "pretraining needs k-means labels; pass data.labels_train=dump/labels/.../SET.km")
    if labels and cfg.data.valid and not cfg.data.labels_valid:
        raise bad("data.labels_valid", "data.valid is set but its labels are not; pass data.labels_valid=...km")
    if cfg.task == "ctc" and not cfg.init:
        raise bad("init", "CTC fine-tuning needs init=EXP_DIR (a pretrained model) or init=none (random init)")
    if cfg.optim.schedule not in SCHEDULES:
        raise bad("optim.schedule", f"'{cfg.optim.schedule}' is not one of {', '.join(SCHEDULES)}")
    if cfg.precision not in PRECISIONS:
        raise bad("precision", f"'{cfg.precision}' is not one of {', '.join(PRECISIONS)}")
    if not cfg.compile_backend:
        raise bad("compile_backend", "empty; inductor (the default), aot_eager or eager")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise bad("device", f"'{cfg.device}' is not auto, cpu or cuda")
    for key, value, lo in (
        ("optim.max_steps", cfg.optim.max_steps, 1),
        ("optim.update_freq", cfg.optim.update_freq, 1),
        ("optim.warmup_steps", cfg.optim.warmup_steps, 0),
        ("keep_last", cfg.keep_last, 1),
        ("log_interval", cfg.log_interval, 1),
        ("save_interval", cfg.save_interval, 1),
        ("valid_interval", cfg.valid_interval, 0),
        ("optim.max_skipped_in_row", cfg.optim.max_skipped_in_row, 0),
        ("optim.sized_for_processes", cfg.optim.sized_for_processes, 0),
    ):
        if value < lo:
            raise bad(key, f"must be >= {lo}, got {value}")
    o = cfg.optim
    for key, value in (("optim.lr", o.lr), ("optim.eps", o.eps), ("optim.weight_decay", o.weight_decay),
                       ("optim.clip_norm", o.clip_norm), ("optim.init_lr_scale", o.init_lr_scale),
                       ("optim.final_lr_scale", o.final_lr_scale)):
        if not (value >= 0 and math.isfinite(value)):
            raise bad(key, f"must be >= 0 and finite, got {value}")
    if not all(0.0 <= b < 1.0 for b in o.betas):
        raise bad("optim.betas", f"each must be in [0, 1) (Adam's decay rates, e.g. [0.9, 0.98]), got {list(o.betas)}")
    if not 0.0 <= cfg.optim.max_skipped_frac <= 1.0:
        raise bad("optim.max_skipped_frac", f"must be in [0, 1] (1: never stop), got {cfg.optim.max_skipped_frac}")
    if not cfg.data.max_batch_seconds > 0:
        raise bad("data.max_batch_seconds", "must be positive")
    if cfg.data.max_sample_seconds > cfg.data.max_batch_seconds:
        raise bad(
            "data.max_sample_seconds",
            f"{cfg.data.max_sample_seconds} exceeds data.max_batch_seconds {cfg.data.max_batch_seconds}: "
            "one utterance would not fit in a batch",
        )
    if not isinstance(cfg.model, dict):
        raise bad("model", "must be a mapping of model config keys")
    from sslseq.models import model_config

    model_config(model_section(cfg), where=f"{where}: model")  # typed by the registry: every key and type checked now
    if abs(sum(cfg.optim.phase_ratio) - 1.0) > 1e-6:
        raise bad("optim.phase_ratio", f"{cfg.optim.phase_ratio} must sum to 1")


# Keys that do not change the trained model: a run may resume with them changed.
_NON_SEMANTIC = {("data", "num_workers"), ("log_interval",), ("keep_last",), ("device",), ("save_interval",),
                 ("compile",), ("compile_backend",), ("find_unused_parameters",), ("optim", "max_skipped_in_row"),
                 ("optim", "max_skipped_frac")}


def semantic_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a dict without keys that cannot change the result (for resume checks)."""
    d = to_dict(cfg)
    for key in _NON_SEMANTIC:
        node = d
        for part in key[:-1]:
            node = node[part]
        node.pop(key[-1], None)
    return d


def train_fingerprint(cfg: TrainConfig) -> str:
    """16 hex digits of the config without the keys that cannot change the result: the trainer
    keeps it (train_summary.yaml, checkpoints) to know a finished or resumable run of this same
    config, and a recipe's stage marker holds it (``sslseq train --fingerprint``), so an edit of
    the training YAML, of the model_config it includes or of an override redoes the stage, and
    an edit that changes nothing (a comment) does not."""
    return fingerprint(json.dumps(semantic_dict(cfg), sort_keys=True, default=list), n=16)


# Keys that name files or dirs: two spellings of one path (./exp/x, exp/x, /abs/exp/x) are the same config.
PATH_KEYS = (("out_dir",), ("init",), ("data", "train"), ("data", "valid"), ("data", "labels_train"),
             ("data", "labels_valid"), ("data", "units"))


def resolve_path(value: Any) -> Any:
    """A path value as a resolved absolute path (relative ones against the current dir); other
    values, '' and ``init``'s ``none`` as they are."""
    if isinstance(value, str) and value and value != "none":
        return str(Path(value).expanduser().resolve())
    return value


def resolve_paths(d: dict) -> dict:
    """A copy of a config dict with the values of ``PATH_KEYS`` resolved (``resolve_path``), for
    comparing configs."""
    import copy

    d = copy.deepcopy(d)
    for key in PATH_KEYS:
        node = d
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key[-1] in node:
            node[key[-1]] = resolve_path(node[key[-1]])
    return d


__all__ = [
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "load_train_config",
    "check_train_config",
    "pretrain_family_fact",
    "pretrain_needs_labels",
    "resolve_train_config",
    "semantic_dict",
    "resolve_path",
    "resolve_paths",
]
