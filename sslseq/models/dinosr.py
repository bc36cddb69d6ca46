"""DinoSR (Liu et al., 2023): self-distillation and online clustering.

student:  frontend → mask (p=0.8, l=10) → Transformer → one linear head per codebook
teacher:  EMA copy of the student's Transformer (decay 0.999 → 0.9999 over the first 30k updates)
          reading the same frontend output unmasked, in eval mode, without gradients
targets:  the teacher's top-k (8) layer outputs, each instance-normalised over time, mapped to the
          nearest codeword of that layer's online codebook (256 codewords, ``objectives/codebook.py``)
loss:     cross-entropy of each head against its codebook's ids on masked frames, averaged over
          the k codebooks, summed over masked frames (sample_size = masked frames)

As in the reference code (fairseq ``dinosr.py``, ``ema_transformer_only`` and ``ema_layers_only``):
the conv frontend, its LayerNorm and ``post_extract_proj`` are shared by student and teacher (the
teacher reads the student's unmasked projected features); the teacher's positional conv is copied
from the student rather than averaged; a teacher layer's target is its feed-forward output before
the last residual connection (data2vec §3.3), ``target_layer_output: layer`` takes the layer
output instead. The teacher moves in ``set_num_updates`` (called once per optimizer step), so the
trainer needs nothing special; teacher weights and codebooks are in the state dict (checkpoints
and exact resume hold them). Codebooks move after every training forward with the batch
statistics summed over processes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslseq.models.base import LogValue, ModelOutput, SpeechModel, nothing_masked
from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.objectives.codebook import OnlineCodebooks, codeword_perplexity
from sslseq.objectives.quantizer import codebook_use
from sslseq.utils import SslseqError

__all__ = ["DinoSREncoderConfig", "DinoSRConfig", "DinoSR", "ema_decay_at", "instance_norm_valid"]




@dataclass
class DinoSREncoderConfig(SpeechEncoderConfig):
    """SpeechEncoderConfig with DinoSR Base's frontend and masking (reference config base.yaml):
    LayerNorm conv frontend trained at full rate, no input/feature dropout, p=0.8, >= 1 span."""

    extractor_mode: str = "layer_norm"
    feature_grad_mult: float = 1.0
    dropout_input: float = 0.0
    dropout_features: float = 0.0  # must stay 0: the teacher reads these features
    mask_prob: float = 0.8
    mask_min_masks: int = 1


@dataclass
class DinoSRConfig:
    """Defaults: DinoSR Base (Liu et al. 2023, reference config base.yaml)."""

    encoder: DinoSREncoderConfig = field(default_factory=DinoSREncoderConfig)
    top_k_layers: int = 8  # teacher layers with a codebook (reference: average_top_k_layers)
    codebook_size: int = 256  # V: codewords per codebook
    codebook_decay: float = 0.9  # τ: EMA of codeword sums and counts, per training forward
    ema_decay: float = 0.999  # teacher EMA decay at update 0 ...
    ema_end_decay: float = 0.9999  # ... rising linearly to this
    ema_anneal_end_step: int = 30000  # ... at this update, constant after
    ema_layers_only: bool = True  # positional conv copied from the student, not averaged
    target_layer_output: str = "ffn"  # "ffn": FFN output before the last residual; "layer": layer output


def ema_decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Teacher EMA decay at update ``step``: linear from ``start`` to ``end`` over ``anneal_steps``."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


def instance_norm_valid(x: torch.Tensor, valid: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, T, D) → each utterance's channels standardised over its valid frames (``valid`` (B, T));
    ``F.instance_norm`` when nothing is padded, and padding never changes an utterance's targets."""
    w = valid[..., None].to(x.dtype)
    n = w.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=1, keepdim=True) / n
    var = ((x - mean).pow(2) * w).sum(dim=1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + eps)


class DinoSR(SpeechModel):
    needs_labels = False  # targets come from the model's own teacher

    def __init__(self, cfg: DinoSRConfig):
        super().__init__()
        enc = cfg.encoder
        L = enc.encoder.num_layers
        if not enc.mask_prob > 0:
            raise SslseqError("model.encoder.mask_prob must be > 0: DinoSR predicts masked frames")
        if not 1 <= cfg.top_k_layers <= L:
            raise SslseqError(f"model.top_k_layers must be in [1, {L}] (the encoder's layers), got {cfg.top_k_layers}")
        if enc.dropout_features != 0:
            raise SslseqError(
                f"model.encoder.dropout_features is {enc.dropout_features} but must be 0 for DinoSR: the teacher "
                f"reads those features, and dropout there would make its targets noisy"
            )
        if cfg.target_layer_output not in ("ffn", "layer"):
            raise SslseqError(f"model.target_layer_output must be 'ffn' or 'layer', got '{cfg.target_layer_output}'")
        if not 0 <= cfg.ema_decay <= 1 or not 0 <= cfg.ema_end_decay <= 1:
            raise SslseqError(f"model.ema_decay and model.ema_end_decay must be in [0, 1], got {cfg.ema_decay}, {cfg.ema_end_decay}")
        self.cfg = cfg
        self.encoder = SpeechEncoder(enc)  # the student; CTC fine-tuning copies it
        D = self.encoder.embed_dim
        self.heads = nn.ModuleList(nn.Linear(D, cfg.codebook_size) for _ in range(cfg.top_k_layers))
        self.codebooks = OnlineCodebooks(cfg.top_k_layers, cfg.codebook_size, D, cfg.codebook_decay)
        self.teacher = copy.deepcopy(self.encoder.encoder).requires_grad_(False).eval()
        if cfg.target_layer_output == "ffn" and not all(hasattr(layer, "fc2") for layer in self.teacher.layers):
            raise SslseqError("model.target_layer_output=ffn needs Transformer layers with an 'fc2'; use target_layer_output=layer")
        # The update whose student weights the teacher last absorbed: a repeated call or a resume
        # from a checkpoint never averages the same student twice.
        self.register_buffer("teacher_step", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ teacher
    def train(self, mode: bool = True) -> "DinoSR":
        super().train(mode)
        self.teacher.eval()  # the teacher never drops out (fairseq: ema.model.eval())
        return self

    @property
    def ema_decay(self) -> float:
        c = self.cfg
        return ema_decay_at(self.num_updates, c.ema_decay, c.ema_end_decay, c.ema_anneal_end_step)

    def set_num_updates(self, step: int) -> None:
        """Called once per optimizer step, before it: the teacher absorbs the student's weights
        after ``step`` updates: θ_teacher ← d θ_teacher + (1 − d) θ_student, d = ``ema_decay_at(step)``."""
        self.num_updates = step
        if step > int(self.teacher_step):
            self._ema_step(self.ema_decay)
            self.teacher_step.fill_(step)

    @torch.no_grad()
    def _ema_step(self, decay: float) -> None:
        student = dict(self.encoder.encoder.named_parameters())
        for name, t in self.teacher.named_parameters():
            s = student[name].detach().to(t.dtype)
            if self.cfg.ema_layers_only and name.startswith("pos_conv."):
                t.copy_(s)
            else:
                t.mul_(decay).add_(s, alpha=1.0 - decay)
        student_buffers = dict(self.encoder.encoder.named_buffers())
        for name, b in self.teacher.named_buffers():
            b.copy_(student_buffers[name])

    @torch.no_grad()
    def teacher_targets(self, features: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C) unmasked frontend features → (k, B, T, D) instance-normalised outputs of the
        teacher's top-k layers (float32)."""
        x = self.encoder.post_extract_proj(features)
        attn_padding = padding_mask if bool(padding_mask.any()) else None
        k = self.cfg.top_k_layers
        if self.cfg.target_layer_output == "ffn":
            captured: list[torch.Tensor] = []
            hooks = [layer.fc2.register_forward_hook(lambda m, i, o: captured.append(o)) for layer in self.teacher.layers[-k:]]
            try:
                self.teacher(x, attn_padding)
            finally:
                for h in hooks:
                    h.remove()
            ys = captured
        else:
            _, hidden = self.teacher(x, attn_padding, output_hidden_states=True)
            ys = hidden[-k:]
        valid = ~padding_mask
        return torch.stack([instance_norm_valid(y.float(), valid) for y in ys])

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        cfg = self.cfg
        out = self.encoder(batch["wav"], batch["wav_lens"], mask=True, return_features=True)
        sel = out.mask_indices & ~out.padding_mask  # (B, T) frames to predict
        n = int(sel.sum())
        k, V = cfg.top_k_layers, cfg.codebook_size

        z = self.teacher_targets(out.features, out.padding_mask)[:, sel]  # (k, N, D)
        ids = self.codebooks.assign(z)  # (k, N) targets, from the codebooks before this batch
        if self.training:
            self.codebooks.update(z, ids)  # a collective: every process, every training forward

        logs: dict[str, LogValue] = {"n_masked": float(n), "ema_decay": self.ema_decay,
                                  "codebook_decay": cfg.codebook_decay, "chance_bits": math.log2(V)}
        if n == 0:
            return nothing_masked(self, logs)

        x = out.x[sel]
        logits = torch.stack([head(x) for head in self.heads]).float()  # (k, N, V)
        ce = F.cross_entropy(logits.reshape(k * n, V), ids.reshape(-1), reduction="none").view(k, n)
        loss = ce.sum() / k  # per frame: mean over codebooks (layers); summed over frames

        with torch.no_grad():  # detached float64 tensors: no host sync here (models/base.py)
            per = loss.detach().double() / n
            acc = (logits.argmax(-1) == ids).float().mean(dim=1)  # (k,)
            ppl = codeword_perplexity(ids, V)  # (k,)
            logs.update(loss=per, loss_bits=per / math.log(2), acc=acc.mean().double(), code_ppl=ppl.mean().double())
            first = self.encoder.cfg.encoder.num_layers - k + 1  # 1-based teacher layer of codebook 0
            for g, (acc_g, ppl_g) in enumerate(zip(acc.double().unbind(), ppl.double().unbind())):
                logs[f"acc_l{first + g}"] = acc_g
                logs[f"code_ppl_l{first + g}"] = ppl_g
            logs["codebook_use"] = codebook_use(ppl, V, n)
        return ModelOutput(loss, n, logs)
