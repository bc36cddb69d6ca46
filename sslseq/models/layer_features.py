"""A trained model's hidden states as features: what ``sslseq feats dump --type layer`` writes
for HuBERT's next iteration. It lives with the models (it loads an experiment dir and runs the
encoder); feature dumping receives it from the CLI and only batches, stores and checks."""

from __future__ import annotations

from pathlib import Path

import torch

from sslseq.models import load
from sslseq.utils import SslseqError

SAMPLE_RATE = 16000


class LayerFeatures:
    """Hidden state ``layer`` (0: the encoder input, i: the output of transformer layer i) of the
    model in experiment dir ``checkpoint``, on ``device``. Called with a padded batch of waveforms
    and their lengths, it returns (batch, frames, dim) and the frame counts."""

    def __init__(self, checkpoint: str | Path, layer: int, device: torch.device):
        if not Path(checkpoint).exists():
            raise SslseqError(f"--checkpoint {checkpoint}: no such experiment dir")
        self.device = device
        self.model = load(Path(checkpoint)).eval().to(device)
        # One second of silence tells the number of hidden states and their dim before any real work.
        with torch.inference_mode():
            probe, _ = self.model.extract_features(
                torch.zeros(1, SAMPLE_RATE, device=device), torch.tensor([SAMPLE_RATE], device=device)
            )
        if not 0 <= layer < len(probe):
            raise SslseqError(
                f"--layer {layer} is out of range: the model in {checkpoint} has {len(probe)} hidden states, "
                f"--layer 0..{len(probe) - 1} (0 is the encoder input, i the output of transformer layer i)"
            )
        self.layer = layer
        self.dim = int(probe[layer].shape[-1])
        self.frame_rate = float(self.model.frame_rate)
        self.meta = {"checkpoint": str(Path(checkpoint).resolve()), "layer": int(layer)}

    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, frame_lens = self.model.extract_features(waves, lengths)
        return hidden[self.layer], frame_lens
