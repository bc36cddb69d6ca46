"""The contract every model of the registry keeps (``models/__init__.py:MODELS``), as code.

The trainer, CTC fine-tuning, layer-feature dumping and checkpoint conversion rely on exactly
this: ``forward(batch) -> ModelOutput``, ``set_num_updates(step)`` once per optimizer step,
``extract_features(wav, wav_lens)``, ``frame_rate``, ``cfg`` and the class attribute
``needs_labels``. Each family subclasses ``SpeechModel`` and keeps only what differs.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
from torch import nn

__all__ = ["LogValue", "ModelOutput", "SpeechModel", "log_floats", "nothing_masked"]

# A log value: a detached 0-dim tensor (no host sync in forward; the trainer turns a step's
# logs into floats at once) or a Python float for what is known without the device.
LogValue = Union[torch.Tensor, float]


class ModelOutput(NamedTuple):
    loss: torch.Tensor  # scalar, SUM over the units it covers
    sample_size: int  # number of units; the trainer divides the loss by it
    logs: dict[str, LogValue]  # detached statistics, each per unit (the trainer weights them by sample_size)


def log_floats(logs: dict[str, LogValue]) -> dict[str, float]:
    """``logs`` as Python floats, all tensor values in one device-to-host copy (one sync, not one
    per value); the trainer calls it once per optimizer step."""
    tensors = [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
    if not tensors:
        return {k: float(v) for k, v in logs.items()}
    first = logs[tensors[0]]
    stacked = torch.stack([logs[k].detach().to(first.device, torch.float64).reshape(()) for k in tensors]).tolist()
    values = dict(zip(tensors, stacked))
    return {k: values[k] if k in values else float(v) for k, v in logs.items()}


def nothing_masked(model: nn.Module, logs: dict[str, LogValue]) -> ModelOutput:
    """The output of a masked-prediction forward whose batch has no frame to predict (e.g. only
    very short utterances): loss 0 over 0 units, but its backward reaches every trainable
    parameter (with zero gradients). Under DDP (``find_unused_parameters=False``) a parameter
    without a gradient on one process would leave the others waiting for it forever."""
    zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
    return ModelOutput(zero, 0, {**logs, "loss": 0.0})


class SpeechModel(nn.Module):
    """A waveform-in model around a ``SpeechEncoder`` at ``self.encoder``.

    ``forward(batch)`` returns the loss SUMMED over ``sample_size`` units (the trainer divides
    by the units summed over micro-batches and processes) and detached ``logs``;
    ``set_num_updates(step)`` is called once per optimizer step, before it (Gumbel temperature,
    CTC freezing, DinoSR's EMA teacher); ``extract_features(wav, wav_lens) -> (hidden states,
    frame lengths)`` is the same for trained and converted models.
    """

    # Whether pretraining this model reads k-means labels (``sslseq config needs-labels``, the
    # pretraining task); families with their own targets set False.
    needs_labels: bool = True
    # The CTC recipe (recipes/conf/) that fine-tunes this family by default: its from-scratch
    # encoder has the family's layout (``sslseq config default-ctc``); a conformer family sets its own.
    default_ctc_config: str = "ctc_cpu.yaml"

    cfg: Any
    encoder: nn.Module
    num_updates: int = 0

    def set_num_updates(self, step: int) -> None:
        self.num_updates = step

    @property
    def frame_rate(self) -> float:
        """Frames per second of the outputs (the encoder's; CTC: times its upsampling)."""
        return self.encoder.frame_rate

    def forward(self, batch: dict[str, Any]) -> ModelOutput:  # pragma: no cover - each family's own
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def extract_features(self, wav: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every layer's hidden states (B, T, D) and the (B,) frame lengths, without masking."""
        return self.encoder.extract_features(wav, wav_lens)
