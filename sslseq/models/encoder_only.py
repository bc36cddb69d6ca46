"""``encoder``: a pretrained SpeechEncoder without a training objective.

What an imported checkpoint becomes when sslseq has no model for its pretraining heads
(e.g. a transformers ``HubertModel``): usable to dump layer features and as ``init=`` of CTC
fine-tuning, not for further pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sslseq.models.base import SpeechModel
from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.utils import SslseqError


@dataclass
class EncoderOnlyConfig:
    encoder: SpeechEncoderConfig = field(default_factory=SpeechEncoderConfig)


class EncoderOnly(SpeechModel):
    def __init__(self, cfg: EncoderOnlyConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SpeechEncoder(cfg.encoder)

    def forward(self, batch: dict[str, Any]):
        raise SslseqError(
            "an 'encoder' model (an imported encoder without pretraining heads) has no training "
            "objective; fine-tune it with task=ctc init=<this exp dir> instead"
        )
