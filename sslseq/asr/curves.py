"""Learning curves of a recipe's experiments as one PNG (``RESULTS.png`` beside ``RESULTS.md``).

Four panels from each experiment's ``log/train.jsonl`` (``sslseq.models.train_log``): the pretraining
runs' train loss (dashed: dev loss) and masked-frame accuracy against steps, and each CTC
run's dev CER and WER against steps, labelled ``from <pretraining run>`` or ``scratch``.
A CTC experiment's pretraining run is the ``init:`` of its ``config.yaml``. Experiments
without a log are left out with a note, not an error: the table is the result, the plot helps
read it. Drawn with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sslseq.asr.report import init_of, resolve_recipe_path
from sslseq.models.exp_dir import CONFIG
from sslseq.models.train_log import LOG, read_train_log
from sslseq.utils import atomic_path, get_logger

__all__ = ["Experiment", "find_experiments", "plot_curves"]

log = get_logger(__name__)


@dataclass
class Experiment:
    path: Path
    task: str  # "pretrain" or "ctc"
    label: str
    records: list[dict[str, Any]] = field(default_factory=list)


def _config(exp_dir: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load((exp_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def find_experiments(exp_dirs: list[Path]) -> tuple[list[Experiment], list[str]]:
    """The experiments to draw: ``exp_dirs`` (CTC or pretraining) and the pretraining runs the
    CTC ones started from, each once, with its log; and notes on what was left out."""
    exps: dict[Path, Experiment] = {}
    notes: list[str] = []

    def add(path: Path, task: str, label: str) -> None:
        key = path.resolve()
        if key in exps:
            return
        records = read_train_log(path)
        if records is None:
            notes.append(f"{path}: no {LOG}; its curves are left out")
            exps[key] = Experiment(path, task, label)  # marks it as seen
            return
        exps[key] = Experiment(path, task, label, records)

    for d in map(Path, exp_dirs):
        cfg = _config(d)
        task = cfg.get("task") or ("ctc" if "init" in cfg else "pretrain")
        if task != "ctc":
            add(d, "pretrain", d.name)
            continue
        init = init_of(cfg)
        if init == "none":
            add(d, "ctc", f"{d.name} (scratch)")
            continue
        pre = resolve_recipe_path(init, d.resolve())
        add(d, "ctc", f"{d.name} (from {pre.name})")
        if pre.is_dir():
            add(pre, "pretrain", pre.name)
        else:
            notes.append(f"{d}: its init {init} is not a directory here; its pretraining curves are left out")
    return [e for e in exps.values() if e.records], notes


def _accuracy(rec: dict[str, Any]) -> float | None:
    """Masked-frame accuracy of a training record: HuBERT ``acc_m``, wav2vec 2.0 / w2v-BERT
    ``acc``, DinoSR the mean of its per-layer ``acc_l*``."""
    for key in ("acc_m", "acc"):
        if isinstance(rec.get(key), (int, float)):
            return float(rec[key])
    layers = [float(v) for k, v in rec.items() if k.startswith("acc_l") and isinstance(v, (int, float))]
    return sum(layers) / len(layers) if layers else None


def _series(records: list[dict[str, Any]], key, scale: float = 1.0) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for r in records:
        v = key(r) if callable(key) else r.get(key)
        if isinstance(v, (int, float)) and v == v:  # not NaN
            steps.append(float(r["step"]))
            values.append(float(v) * scale)
    return steps, values


def _is_train(r: dict[str, Any]) -> bool:
    return not any(k.startswith("valid_") for k in r)


def plot_curves(exp_dirs: list[Path], out: Path, title: str | None = None) -> tuple[Path | None, list[str]]:
    """Draw the curves of ``exp_dirs`` (and their pretraining runs) into ``out`` (PNG, written
    atomically). Returns (``out`` or None when there was nothing to draw, notes)."""
    exps, notes = find_experiments(exp_dirs)
    if not exps:
        return None, notes + ["no experiment has a training log: no curves drawn"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, notes + ["matplotlib is not installed (pip install matplotlib): no curves drawn"]

    pre = [e for e in exps if e.task == "pretrain"]
    ctc = [e for e in exps if e.task == "ctc"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 10), layout="constrained")
    (ax_loss, ax_acc), (ax_cer, ax_wer) = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    losses: list[float] = []
    for i, e in enumerate(pre):
        c = colors[i % len(colors)]
        train = [r for r in e.records if _is_train(r)]
        s, v = _series(train, "loss")
        if s:
            ax_loss.plot(s, v, color=c, label=f"{e.label} (train)")
            losses += v
        s, v = _series(e.records, "valid_loss")
        if s:
            ax_loss.plot(s, v, color=c, linestyle="--", marker="o", markersize=3, label=f"{e.label} (dev)")
            losses += v
        s, v = _series(train, _accuracy, 100.0)
        if s:
            ax_acc.plot(s, v, color=c, label=e.label)
    positive = [x for x in losses if x > 0]
    if positive and len(positive) == len(losses) and max(positive) / min(positive) > 5:
        ax_loss.set_yscale("log")
    # CTC runs: one color each, dashed from scratch; their (long) names in one legend below.
    for ax, key, name in ((ax_cer, "valid_cer", "CER"), (ax_wer, "valid_wer", "WER")):
        for i, e in enumerate(ctc):
            s, v = _series(e.records, key, 100.0)
            if s:
                style = "--" if e.label.endswith("(scratch)") else "-"
                ax.plot(s, v, color=colors[i % len(colors)], linestyle=style, marker="o", markersize=3, label=e.label)
        ax.set_title(f"CTC fine-tuning: dev {name} (greedy)")
        ax.set_ylabel(f"{name} %")
    ax_loss.set_title("Pretraining: loss per unit")
    ax_loss.set_ylabel("loss" + (" (log scale)" if ax_loss.get_yscale() == "log" else ""))
    ax_acc.set_title("Pretraining: accuracy on masked frames (train)")
    ax_acc.set_ylabel("accuracy %")
    for ax in axes.flat:
        ax.set_xlabel("update step")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            if ax in (ax_loss, ax_acc):
                ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    handles, labels = (ax_cer if ax_cer.lines else ax_wer).get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(handles)), fontsize="small")
    fig.suptitle(title or "Learning curves", fontsize="large")
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    log.info("wrote %s (%d pretraining, %d CTC experiment(s))", out, len(pre), len(ctc))
    return out, notes
