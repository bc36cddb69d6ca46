"""Training health: warnings when a run degenerates, for every model family and CTC in one place.

Models only log statistics; this reads each logging interval's means and judges them:
- ``codebook_use`` (smallest code perplexity of any codebook / the most it could be in that
  batch, in [0, 1]): below ``min_codebook_use`` the targets are collapsing onto a few codes;
- ``loss_bits`` against ``chance_bits`` (the loss of guessing, e.g. log2(K+1) for a contrastive
  task over K distractors): still at chance for ``patience`` intervals after warmup means the
  model is not learning;
- CTC fine-tuning's dev output (``valid_blank_frac``: blank argmax frames, ``valid_empty_frac``:
  empty hypotheses, ``Trainer.validate``): still all blank (either at least ``max_blank``)
  after warmup and the frozen-encoder steps means fine-tuning has not left the blank stage.
Each warning repeats at most once per ``warn_every`` updates.
"""

from __future__ import annotations

from typing import Any

from sslseq.utils import get_logger

__all__ = ["HealthMonitor"]

log = get_logger(__name__)

COLLAPSE_CAUSES = (
    "likely causes: a learning rate too high (optim.lr), too little diversity pressure "
    "(model.diversity_weight), a Gumbel temperature annealed too fast (model.latent_temp), or "
    "an EMA teacher or codebook that moves too fast (model.ema_decay, model.codebook_decay); "
    "per-codebook perplexities are logged as code_perplexity_g* / code_ppl_l*"
)
CHANCE_CAUSES = (
    "likely causes: a learning rate too high or too low (optim.lr, optim.warmup_steps), "
    "uninformative targets (k-means labels that are nearly all one cluster), or too few masked "
    "frames (n_masked, model.encoder.mask_prob)"
)
BLANK_CAUSES = (
    "likely causes: too few steps (CTC emits only blanks for the first thousands of updates; "
    "optim.max_steps), a learning rate too low or too high (optim.lr), an encoder frozen too long "
    "(model.freeze_encoder_steps), masking too strong for fine-tuning (model.mask_prob, "
    "model.mask_channel_prob), or a frame rate too low for the transcripts (CTC needs at least one "
    "frame per unit, plus one between repeated units; valid_short_frac is the share of dev "
    "utterances with fewer)"
)


class HealthMonitor:
    def __init__(
        self,
        warmup_steps: int = 0,
        freeze_steps: int = 0,
        max_blank: float = 0.99,
        min_codebook_use: float = 0.1,
        chance_margin_bits: float = 0.02,
        patience: int = 5,
        warn_every: int = 1000,
    ):
        self.warmup_steps = warmup_steps
        self.freeze_steps = freeze_steps
        self.max_blank = max_blank
        self.min_codebook_use = min_codebook_use
        self.chance_margin_bits = chance_margin_bits
        self.patience = patience
        self.warn_every = warn_every
        self.at_chance = 0  # consecutive intervals at chance after warmup
        self.last_warned: dict[str, int] = {}

    def _warn(self, kind: str, step: int, message: str) -> str | None:
        last = self.last_warned.get(kind)
        if last is not None and step - last < self.warn_every:
            return None
        self.last_warned[kind] = step
        log.warning("%s", message)
        return message

    def check(self, step: int, record: dict[str, Any]) -> list[str]:
        """Judge one logging interval's record (means of the model's logs); returns the warnings given."""
        out = []
        use = record.get("codebook_use")
        if use is not None and use < self.min_codebook_use:
            msg = self._warn(
                "codebook", step,
                f"step {step}: code usage is {100 * use:.1f}% of the codebook (perplexity over its "
                f"maximum); the codebook is collapsing onto a few entries; {COLLAPSE_CAUSES}",
            )
            out += [msg] if msg else []
        bits, chance = record.get("loss_bits"), record.get("chance_bits")
        if bits is None or chance is None or step <= self.warmup_steps:
            return out
        self.at_chance = self.at_chance + 1 if bits >= chance - self.chance_margin_bits else 0
        if self.at_chance >= self.patience:
            msg = self._warn(
                "chance", step,
                f"step {step}: the loss ({bits:.3f} bits) has stayed at the chance level ({chance:.3f} "
                f"bits) for {self.at_chance} logging intervals after warmup; {CHANCE_CAUSES}",
            )
            out += [msg] if msg else []
        return out

    def check_valid(self, step: int, result: dict[str, Any]) -> list[str]:
        """Judge one validation of CTC fine-tuning; returns the warnings given."""
        blank, empty = result.get("valid_blank_frac"), result.get("valid_empty_frac")
        if blank is None or empty is None or step <= max(self.warmup_steps, self.freeze_steps):
            return []
        if blank < self.max_blank and empty < self.max_blank:
            return []
        short = result.get("valid_short_frac") or 0.0
        too_short = (
            f" {100 * short:.1f}% of dev utterances have fewer output frames than their transcript needs;"
            if short > 0 else ""
        )
        msg = self._warn(
            "blank", step,
            f"step {step}: the dev output is still blank ({100 * blank:.1f}% blank frames, "
            f"{100 * empty:.1f}% empty hypotheses) after warmup ({self.warmup_steps} steps) and the frozen "
            f"encoder ({self.freeze_steps} steps);{too_short} {BLANK_CAUSES}",
        )
        return [msg] if msg else []
