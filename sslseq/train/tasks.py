"""What pretraining and CTC fine-tuning do differently; the Trainer (``trainer.py``) keeps the
loop they share and asks its task, chosen once from ``cfg.task`` (``make_task``), for:

- ``datasets()``: the train and valid sets (k-means labels for pretraining, units for CTC);
- ``build_model()``: the model and its config dict (the label fields for pretraining; a CTC
  head over a pretrained (``init=``) or fresh encoder);
- ``validate(model, batches, acc)``: the validation metrics over (device batch, batch) pairs;
- ``best_metric(result)``: the validation key ``checkpoints/best/`` is chosen by (lower is better).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from sslseq.data.dataset import SpeechDataset
from sslseq.models.exp_dir import CONFIG, WEIGHTS
from sslseq.train.config import TrainConfig, model_section
from sslseq.utils import SslseqError, get_logger

log = get_logger("sslseq.train.trainer")  # the log lines stay the trainer's

Batches = Iterable[tuple[dict[str, torch.Tensor], dict[str, Any]]]


def _dataset_kwargs(cfg: TrainConfig, tokenizer) -> dict[str, Any]:
    d = cfg.data
    return dict(tokenizer=tokenizer, max_sample_seconds=d.max_sample_seconds, min_sample_seconds=d.min_sample_seconds,
                sample_rate=d.sample_rate, seed=cfg.seed)


def with_label_fields(model_cfg: dict[str, Any], num_classes: int, label_rate: float, source: str) -> dict[str, Any]:
    """``model_cfg`` with ``num_classes`` and ``label_rate`` as measured on the labels at
    ``source``: the labels decide (HuBERT iteration 2+ labels at another rate); a config
    that said otherwise is warned about."""
    out = dict(model_cfg)
    for key, value in (("num_classes", num_classes), ("label_rate", label_rate)):
        if key in model_cfg and model_cfg[key] != value:
            log.warning("model.%s=%s replaced by %s from the labels (%s)", key, model_cfg[key], value, source)
        out[key] = value
    return out


class PretrainTask:
    """Self-supervised pretraining: k-means labels where the model learns from them (HuBERT),
    validated and kept best by the mean loss per unit."""

    find_unused_parameters = False
    tokenizer = None

    def __init__(self, cfg: TrainConfig, given_model: torch.nn.Module | None = None):
        from sslseq.models import needs_labels

        self.cfg = cfg
        self.use_labels = needs_labels(given_model if given_model is not None else cfg.model)
        self.labels: tuple[int, float] | None = None  # (K, label rate) measured on the train labels

    def datasets(self) -> tuple[SpeechDataset, SpeechDataset | None]:
        cfg, d = self.cfg, self.cfg.data
        if not self.use_labels and (d.labels_train or d.labels_valid):
            log.info("model %s needs no labels: data.labels_train / data.labels_valid are not read", cfg.model.get("name"))
        common = _dataset_kwargs(cfg, None)
        train = SpeechDataset(d.train, labels=d.labels_train if self.use_labels else None, random_crop=True,
                              speed_factors=d.speed_perturb, **common)
        valid = None
        if d.valid:
            valid = SpeechDataset(d.valid, labels=d.labels_valid if self.use_labels else None, random_crop=False, **common)
            if self.use_labels and (valid.num_classes != train.num_classes or valid.label_rate != train.label_rate):
                raise SslseqError(
                    f"{d.labels_valid}: k={valid.num_classes} at {valid.label_rate} Hz but "
                    f"{d.labels_train}: k={train.num_classes} at {train.label_rate} Hz; "
                    "label both sets with the same k-means model"
                )
        if self.use_labels:
            self.labels = (train.num_classes, train.label_rate)
        return train, valid

    def build_model(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        from sslseq.models import build_model

        mcfg = model_section(self.cfg)
        if self.labels is not None:  # self-supervised targets (wav2vec 2.0) take nothing from labels
            mcfg = with_label_fields(mcfg, *self.labels, source=self.cfg.data.labels_train)
        return build_model(mcfg), mcfg

    def validate(self, model: torch.nn.Module, batches: Batches, acc) -> dict[str, float]:
        """Mean loss per unit."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        ss_sum = 0
        for b, _ in batches:
            with acc.autocast():
                out = model(b)
            loss_sum += out.loss.double()
            ss_sum += int(out.sample_size)
        ss = torch.tensor([float(ss_sum)], dtype=torch.float64, device=acc.device)
        totals = acc.reduce(torch.cat([loss_sum[None], ss]), "sum")
        return {"valid_loss": float(totals[0] / max(float(totals[1]), 1.0))}

    def best_metric(self, result: dict[str, float]) -> str:
        return "valid_loss"


class CtcTask:
    """CTC fine-tuning: transcripts as units, a CTC head over a pretrained or fresh encoder,
    validated by loss, greedy CER/WER and how blank the output is; kept best by dev WER."""

    # The encoder is frozen for the first steps: its parameters then get no gradients.
    find_unused_parameters = True

    def __init__(self, cfg: TrainConfig, given_model: torch.nn.Module | None = None):
        self.cfg = cfg
        self.tokenizer = None  # read with the data: a finished run returns before reading anything

    def datasets(self) -> tuple[SpeechDataset, SpeechDataset | None]:
        from sslseq.data.text import load_tokenizer

        d = self.cfg.data
        self.tokenizer = load_tokenizer(d.units)
        common = _dataset_kwargs(self.cfg, self.tokenizer)
        train = SpeechDataset(d.train, labels=None, random_crop=True, speed_factors=d.speed_perturb, **common)
        valid = SpeechDataset(d.valid, labels=None, random_crop=False, **common) if d.valid else None
        return train, valid

    def build_model(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        from sslseq.models import build_model

        cfg = self.cfg
        mcfg = model_section(cfg)
        mcfg["vocab_size"] = len(self.tokenizer)
        if str(cfg.init).lower() == "none":
            return build_model(mcfg), mcfg
        init = Path(cfg.init)
        if not (init / WEIGHTS).is_file() or not (init / CONFIG).is_file():
            raise SslseqError(
                f"init={cfg.init}: no trained model there ({WEIGHTS} and {CONFIG} are needed); "
                "run pretraining (recipe stage 4) first, or pass init=none to train from random initialization"
            )
        from sslseq.models import load
        from sslseq.models.ctc import CTCModel, without_top_level_ft

        log.info("initializing the encoder from %s", init)
        ssl_model = load(init)
        overrides = {k: v for k, v in mcfg.items() if k != "name"}
        if isinstance(overrides.get("encoder"), dict):
            # The encoder comes from `init`; its config section (needed for init=none) may only
            # add fine-tuning fields, and those the CTC model sets at its top level are dropped.
            overrides["encoder"] = without_top_level_ft(overrides["encoder"])
        return CTCModel.from_pretrained(ssl_model, overrides), mcfg

    def validate(self, model: torch.nn.Module, batches: Batches, acc) -> dict[str, float]:
        """Mean CTC loss per unit (as the model's eval forward computes it: unmasked, summed,
        zero_infinity), greedy CER/WER and how blank the output is: ``valid_blank_frac`` (blank
        argmax over valid frames), ``valid_empty_frac`` (empty hypotheses) and
        ``valid_short_frac`` (utterances with fewer frames than their transcript needs: units
        plus one blank between repeated units)."""
        import jiwer
        from accelerate.utils import gather_object

        from sslseq.asr.ctc_decode import greedy_decode
        from sslseq.models.ctc import ctc_loss

        blank_id = self.tokenizer.blank_id
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        ss_sum = 0
        # blank frames, valid frames, empty hypotheses, utterances, utterances too short for CTC
        blank_stats = torch.zeros(5, dtype=torch.float64, device=acc.device)
        hyps: list[str] = []
        refs: list[str] = []
        for b, batch in batches:
            # One pass gives both the loss and the greedy hypotheses.
            with acc.autocast():
                lp, lens = model.log_probs(b["wav"], b["wav_lens"])
            lp = lp.float()
            loss_sum += ctc_loss(lp, lens, b["targets"], b["target_lens"], blank=blank_id).double()
            ss_sum += int(b["target_lens"].sum())
            blank_stats += self._blank_stats(lp, lens, b["targets"], b["target_lens"])
            for ids in greedy_decode(lp, lens, blank=blank_id):
                hyps.append(self.tokenizer.decode(ids))
                blank_stats[2] += len(ids) == 0
            refs += batch["texts"]
        ss = torch.tensor([float(ss_sum)], dtype=torch.float64, device=acc.device)
        totals = acc.reduce(torch.cat([loss_sum[None], ss, blank_stats]), "sum")
        result = {"valid_loss": float(totals[0] / max(float(totals[1]), 1.0))}
        blank, frames, empty, utts, short = (float(v) for v in totals[2:])
        if utts:
            result["valid_blank_frac"] = blank / max(frames, 1.0)
            result["valid_empty_frac"] = empty / utts
            result["valid_short_frac"] = short / utts
        pairs = [(r, h) for r, h in zip(gather_object(refs), gather_object(hyps)) if r.strip()]
        if pairs:
            r, h = [p[0] for p in pairs], [p[1] for p in pairs]
            result["valid_cer"] = float(jiwer.cer(r, h))
            result["valid_wer"] = float(jiwer.wer(r, h))
        return result

    def _blank_stats(self, lp: torch.Tensor, lens: torch.Tensor, targets: torch.Tensor,
                     target_lens: torch.Tensor) -> torch.Tensor:
        """[blank argmax frames, valid frames, 0 (empty hypotheses: counted by the caller),
        utterances, utterances with fewer frames than CTC needs] of one batch."""
        valid = torch.arange(targets.size(1), device=lp.device)[None, :] < target_lens[:, None]
        frames = torch.arange(lp.size(1), device=lp.device)[None, :] < lens[:, None]
        blank = (lp.argmax(-1) == self.tokenizer.blank_id) & frames
        repeats = ((targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]).sum(1)
        short = lens < valid.sum(1) + repeats
        return torch.tensor([float(blank.sum()), float(frames.sum()), 0.0, float(lens.numel()), float(short.sum())],
                            dtype=torch.float64, device=lp.device)

    def best_metric(self, result: dict[str, float]) -> str:
        # Dev WER when there were references to score, the loss otherwise.
        return "valid_wer" if "valid_wer" in result else "valid_loss"


def make_task(cfg: TrainConfig, given_model: torch.nn.Module | None = None) -> PretrainTask | CtcTask:
    """The task of ``cfg.task`` (checked by ``check_train_config``)."""
    return {"pretrain": PretrainTask, "ctc": CtcTask}[cfg.task](cfg, given_model)
