"""CTC fine-tuning (wav2vec 2.0 §4.2 / fairseq ``Wav2VecCtc``): pretrained SpeechEncoder +
a linear layer over the output units, trained with CTC.

The encoder (including the frontend) is frozen for the first ``freeze_encoder_steps`` updates
so the randomly initialised head does not wreck it; the conv frontend stays frozen throughout
(``feature_grad_mult = 0``). Masking in fine-tuning acts as SpecAugment.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslseq.config import deep_merge, dict_diff, from_dict, to_dict
from sslseq.models.base import ModelOutput, SpeechModel
from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.utils import SslseqError, get_logger

__all__ = ["CTCConfig", "CTCModel", "ctc_loss", "without_top_level_ft"]

log = get_logger(__name__)

# SpeechEncoderConfig / TransformerEncoderConfig fields that fine-tuning may change; every other
# field is architecture and must equal the pretrained model's.
_ENCODER_FT_FIELDS = ("feature_grad_mult", "dropout_input", "dropout_features", "mask_prob", "mask_length",
                      "mask_min_masks", "require_same_masks", "mask_dropout", "mask_channel_prob",
                      "mask_channel_length")
_TRANSFORMER_FT_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "layerdrop")
# Of those, the ones CTCConfig sets at its top level (they always win over model.encoder.*).
_TOP_LEVEL_FT = {"feature_grad_mult", "mask_prob", "mask_length", "mask_channel_prob", "mask_channel_length",
                 "dropout_input", "dropout", "attention_dropout", "activation_dropout", "layerdrop"}
TOP_LEVEL_FT_FIELDS = frozenset(_TOP_LEVEL_FT)  # public name for callers filtering encoder overrides


def without_top_level_ft(encoder: dict[str, Any]) -> dict[str, Any]:
    """A ``model.encoder`` section without the fine-tuning keys CTCConfig sets at its top level
    (``TOP_LEVEL_FT_FIELDS``, at both levels): the trainer drops them from an encoder section
    written for init=none when the encoder comes from a pretrained model."""
    enc = {k: v for k, v in encoder.items() if k not in _TOP_LEVEL_FT}
    if isinstance(enc.get("encoder"), dict):
        enc["encoder"] = {k: v for k, v in enc["encoder"].items() if k not in _TOP_LEVEL_FT}
    return enc


def ctc_loss(lp: torch.Tensor, lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor,
             blank: int) -> torch.Tensor:
    """CTC loss summed over the batch (zero_infinity) of (B, T, V) log-probs ``lp`` with (B,)
    output lengths and padded (B, S) ``targets``: the training loss and the trainer's validation."""
    valid = torch.arange(targets.size(1), device=lp.device)[None, :] < target_lens[:, None]
    return F.ctc_loss(lp.transpose(0, 1), targets[valid], lens, target_lens,
                      blank=blank, reduction="sum", zero_infinity=True)


@dataclass
class CTCConfig:
    """Top-level fine-tuning fields override the encoder's (as fairseq's Wav2Vec2AsrConfig does
    for the pretrained ``w2v_args``); defaults are fairseq's Base fine-tuning settings."""

    encoder: SpeechEncoderConfig = field(default_factory=SpeechEncoderConfig)
    vocab_size: int = 0  # set by the trainer from the unit list (blank included)
    blank_id: int = 0
    final_dropout: float = 0.0
    freeze_encoder_steps: int = 10000  # fairseq freeze_finetune_updates
    feature_grad_mult: float = 0.0
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_channel_prob: float = 0.5
    mask_channel_length: int = 64
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.1
    layerdrop: float = 0.1
    dropout_input: float = 0.0
    # CTC outputs per encoder frame: the head predicts `upsample` units for each frame (the
    # frames split in time), so a 25 Hz encoder emits at 50 Hz. Characters need 0.6 frames of
    # the 1 a 25 Hz encoder has, leaving CTC little room for blanks and repeated letters.
    upsample: int = 1


def resolve_encoder_config(cfg: CTCConfig) -> SpeechEncoderConfig:
    """The encoder config with the fine-tuning fields applied."""
    enc = cfg.encoder
    tr = dataclasses.replace(
        enc.encoder,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        layerdrop=cfg.layerdrop,
    )
    return dataclasses.replace(
        enc,
        encoder=tr,
        feature_grad_mult=cfg.feature_grad_mult,
        mask_prob=cfg.mask_prob,
        mask_length=cfg.mask_length,
        mask_channel_prob=cfg.mask_channel_prob,
        mask_channel_length=cfg.mask_channel_length,
        dropout_input=cfg.dropout_input,
    )


def _architecture(enc: dict[str, Any]) -> dict[str, Any]:
    arch = {k: v for k, v in enc.items() if k not in _ENCODER_FT_FIELDS and k != "encoder"}
    for key in ("conv_layers", "fbank_conv_layers"):  # tuples from a dataclass, lists from YAML
        arch[key] = [list(layer) for layer in arch.get(key, [])]
    arch["encoder"] = {k: v for k, v in enc["encoder"].items() if k not in _TRANSFORMER_FT_FIELDS}
    return arch


class CTCModel(SpeechModel):
    def __init__(self, cfg: CTCConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise SslseqError(
                f"model.vocab_size must be the number of output units including blank (>= 2), got "
                f"{cfg.vocab_size}; the trainer sets it from the unit list"
            )
        if not 0 <= cfg.blank_id < cfg.vocab_size:
            raise SslseqError(f"model.blank_id {cfg.blank_id} is outside [0, {cfg.vocab_size})")
        if not 1 <= cfg.upsample <= 8:
            raise SslseqError(f"model.upsample must be 1..8 CTC outputs per encoder frame, got {cfg.upsample}")
        self.cfg = dataclasses.replace(cfg, encoder=resolve_encoder_config(cfg))
        self.encoder = SpeechEncoder(self.cfg.encoder)
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.proj = nn.Linear(self.encoder.embed_dim, cfg.vocab_size * cfg.upsample)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @classmethod
    def from_pretrained(cls, ssl_model: nn.Module, cfg_overrides: dict[str, Any]) -> "CTCModel":
        """A CTC model whose encoder is a copy of ``ssl_model.encoder`` (same architecture, same
        weights); ``cfg_overrides`` holds CTCConfig fields (vocab_size, fine-tuning settings)."""
        encoder = getattr(ssl_model, "encoder", None)
        if not isinstance(encoder, SpeechEncoder):
            raise SslseqError(
                f"cannot fine-tune a {type(ssl_model).__name__}: it has no SpeechEncoder '.encoder' "
                f"(pass a pretrained SSL model, e.g. one from sslseq.models.load(exp_dir))"
            )
        overrides = {k: v for k, v in cfg_overrides.items() if k != "name"}
        enc_over = overrides.pop("encoder", None) or {}
        shadowed = sorted(set(enc_over) & _TOP_LEVEL_FT) + sorted(
            set(enc_over.get("encoder") or {}) & _TOP_LEVEL_FT
        )
        if shadowed:
            raise SslseqError(
                f"fine-tuning settings {', '.join('model.encoder.' + k for k in shadowed)} are set by the "
                f"top-level CTC fields; use {', '.join('model.' + k for k in shadowed)} instead"
            )
        base = to_dict(encoder.cfg)
        merged = deep_merge(base, enc_over)
        if _architecture(merged) != _architecture(base):
            diff = "; ".join(f"encoder.{key}: pretrained {was!r} vs {now!r}"
                             for key, was, now in dict_diff(_architecture(base), _architecture(merged)))
            raise SslseqError(
                f"model.encoder overrides change the pretrained encoder's architecture ({diff}); only "
                f"fine-tuning fields ({', '.join(_ENCODER_FT_FIELDS + _TRANSFORMER_FT_FIELDS)}) may differ"
            )
        cfg = from_dict(CTCConfig, {**overrides, "encoder": merged}, where="model")
        model = cls(cfg)
        model.encoder.load_state_dict(encoder.state_dict())
        log.info("CTC model: encoder initialised from a pretrained %s, new %d-unit head", type(ssl_model).__name__, cfg.vocab_size)
        return model

    @property
    def frame_rate(self) -> float:
        """Of the CTC outputs: the encoder's times ``upsample``."""
        return self.encoder.frame_rate * self.cfg.upsample

    @property
    def encoder_frozen(self) -> bool:
        return self.num_updates < self.cfg.freeze_encoder_steps

    def _encode(self, wav: torch.Tensor, wav_lens: torch.Tensor, mask: bool):
        frozen = self.training and self.encoder_frozen
        with torch.no_grad() if frozen else contextlib.nullcontext():
            out = self.encoder(wav, wav_lens, mask=mask)
        logits = self.proj(self.final_dropout(out.x))
        up = self.cfg.upsample
        if up > 1:  # (B, T, up*V) -> (B, up*T, V): frame t's outputs are times up*t .. up*t+up-1
            logits = logits.reshape(logits.size(0), logits.size(1) * up, self.cfg.vocab_size)
        return F.log_softmax(logits.float(), dim=-1), out.frame_lens * up

    def log_probs(self, wav: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V) float32 log-probabilities (no masking) and (B,) output lengths, for decoding."""
        return self._encode(wav, wav_lens, mask=False)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        lp, out_lens = self._encode(batch["wav"], batch["wav_lens"], mask=self.training)
        targets = batch["targets"].to(lp.device)
        target_lens = batch["target_lens"].to(device=lp.device, dtype=torch.long)
        valid = torch.arange(targets.size(1), device=lp.device)[None, :] < target_lens[:, None]
        flat = targets[valid]
        bad = (flat < 0) | (flat >= self.cfg.vocab_size) | (flat == self.cfg.blank_id)
        if bool(bad.any()):
            raise SslseqError(
                f"CTC target id {int(flat[bad][0])} is invalid: ids must be in [0, {self.cfg.vocab_size}) "
                f"and differ from blank_id {self.cfg.blank_id}; model.vocab_size must match the unit list"
            )
        loss = ctc_loss(lp, out_lens, targets, target_lens, blank=self.cfg.blank_id)
        n_tokens = int(target_lens.sum())
        logs = {
            "loss": loss.detach().double() / max(n_tokens, 1),
            "n_tokens": float(n_tokens),
            "n_utts": float(targets.size(0)),
            "encoder_frozen": float(self.encoder_frozen),
        }
        return ModelOutput(loss, n_tokens, logs)
