"""Gumbel-softmax product quantizer (wav2vec 2.0 §3.2; fairseq ``GumbelVectorQuantizer``).

Each frame picks one entry from each of ``groups`` codebooks of ``num_vars`` entries; the chosen
entries are concatenated into a ``vq_dim`` vector. Training samples the choice with a
straight-through hard Gumbel-softmax (temperature annealed per update), evaluation takes the
argmax. Parameter names (``weight_proj``, ``vars``) follow fairseq so checkpoints map 1:1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from sslseq.kernels import gumbel_quantize
from sslseq.kernels.rng import draw_seed
from sslseq.objectives.collective import sum_over_processes

__all__ = ["GumbelVectorQuantizer", "QuantizerOutput", "perplexity", "codebook_use"]


class QuantizerOutput(NamedTuple):
    x: torch.Tensor  # (B, T, vq_dim) quantized vectors
    code_perplexity: torch.Tensor  # scalar: sum over groups of the perplexity of the hard codes (no grad)
    prob_perplexity: torch.Tensor  # scalar: sum over groups of the perplexity of the mean softmax (has grad)
    targets: torch.Tensor | None  # (B, T, G) int64 code ids actually used for ``x``
    num_vars: int  # G * V (fairseq's ``num_vars`` in the diversity loss)
    temp: float  # current Gumbel temperature
    code_perplexity_groups: torch.Tensor  # (G,) per-group hard-code perplexity


def codebook_use(perplexities: torch.Tensor, codebook_size: int, n_frames: int) -> torch.Tensor:
    """How much of its codebooks a batch uses: the smallest perplexity over its most possible
    value, min(codebook size, frames), a detached float64 scalar (no host sync). The trainer's
    health checks warn below 0.1."""
    bound = max(min(codebook_size, n_frames), 1)
    return perplexities.detach().min().double() / bound


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """exp(entropy) along the last axis; fairseq's +1e-7 keeps log finite for unused codes."""
    return torch.exp(-torch.sum(probs * torch.log(probs + 1e-7), dim=-1))


class GumbelVectorQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        num_vars: int = 320,
        groups: int = 2,
        vq_dim: int = 256,
        temp: tuple[float, float, float] = (2.0, 0.5, 0.999995),
        weight_proj_depth: int = 1,
        weight_proj_factor: int = 1,
        combine_groups: bool = False,
    ):
        """``dim``: input size; ``vq_dim``: size of the output (each group's entry is vq_dim/groups);
        ``temp``: (start, end, decay per update); ``combine_groups``: one codebook shared by all groups."""
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by groups {groups}")
        if len(temp) != 3:
            raise ValueError(f"temp must be (start, end, decay), got {temp}")
        self.input_dim, self.num_vars, self.groups = dim, num_vars, groups
        self.vq_dim, self.combine_groups = vq_dim, combine_groups
        var_dim = vq_dim // groups
        books = 1 if combine_groups else groups
        self.vars = nn.Parameter(torch.empty(1, books * num_vars, var_dim).uniform_())
        if weight_proj_depth > 1:
            inner = dim * weight_proj_factor
            blocks = [nn.Sequential(nn.Linear(dim if i == 0 else inner, inner), nn.GELU()) for i in range(weight_proj_depth - 1)]
            self.weight_proj = nn.Sequential(*blocks, nn.Linear(inner, groups * num_vars))
        else:
            self.weight_proj = nn.Linear(dim, groups * num_vars)
            # fairseq: unit-variance logits weights give confident code choices from the start.
            nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.weight_proj.bias)
        self.max_temp, self.min_temp, self.temp_decay = (float(t) for t in temp)
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the temperature: ``max(start * decay**updates, end)`` (once per optimizer step)."""
        self.curr_temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def codebook(self) -> torch.Tensor:
        """(G, V, vq_dim/G) view of ``vars`` (the shared book repeated when ``combine_groups``)."""
        book = self.vars.view(-1, self.num_vars, self.vars.size(-1))
        return book.expand(self.groups, -1, -1) if self.combine_groups else book

    def forward(
        self, x: torch.Tensor, produce_targets: bool = True, padding_mask: torch.Tensor | None = None
    ) -> QuantizerOutput:
        """``x`` (B, T, C); ``produce_targets``: also return the code ids; ``padding_mask`` (B, T)
        bool, True on frames to leave out of the perplexities (their codes are still computed)."""
        B, T, C = x.shape
        G, V = self.groups, self.num_vars
        logits = self.weight_proj(x.reshape(-1, C)).view(-1, G, V)  # (N, G, V)
        valid = None if padding_mask is None else ~padding_mask.reshape(-1).to(logits.device)
        if valid is None:
            n_local = torch.tensor(float(B * T), device=logits.device)
        else:
            n_local = valid.sum().float()
        # Code usage is a statistic of the whole batch: summed over data-parallel processes.
        n_valid = sum_over_processes(n_local).clamp(min=1.0)

        with torch.no_grad():
            hard_idx = logits.argmax(dim=-1)  # (N, G)
            # Code histogram by scatter (no (N, G, V) one-hot): flat bin g*V + code.
            bins = (hard_idx + torch.arange(G, device=logits.device) * V).reshape(-1)
            weights = torch.ones_like(bins, dtype=torch.float32)
            if valid is not None:
                weights = weights.view(-1, G).mul(valid[:, None].float()).reshape(-1)
            counts = torch.zeros(G * V, dtype=torch.float32, device=logits.device).scatter_add_(0, bins, weights)
            code_ppl_groups = perplexity(sum_over_processes(counts).view(G, V) / n_valid)

        book = self.codebook()
        fused_mean = None
        if self.training:
            # Straight-through hard Gumbel sample + codevector gather, fused (sslseq.kernels:
            # reference / chunked / triton by device or $SSLSEQ_KERNEL_IMPL). The noise is a
            # function of a seed drawn from torch's generator, so training stays reproducible.
            q, idx, fused_mean = gumbel_quantize(
                logits.reshape(-1, G * V), book.reshape(G * V, -1), self.curr_temp, hard=True, seed=draw_seed(), groups=G
            )
            q = q.view(-1, G, book.size(-1))
        else:
            idx = hard_idx
            q = book[torch.arange(G, device=idx.device), idx]  # (N, G, d) index gather
        if fused_mean is not None and valid is None:
            sum_probs = fused_mean * n_local  # mean softmax over all rows, already computed by the kernel
        else:
            # Softmax in at least fp32 (fairseq casts half-precision logits up); padding left out.
            wide = logits if logits.dtype == torch.float64 else logits.float()
            probs = torch.softmax(wide, dim=-1)
            if valid is not None:
                probs = probs * valid[:, None, None].to(probs.dtype)
            sum_probs = probs.sum(dim=0)
        avg_probs = sum_over_processes(sum_probs, grad=True) / n_valid  # (G, V)
        prob_ppl = perplexity(avg_probs).sum()
        return QuantizerOutput(
            x=q.reshape(B, T, -1),
            code_perplexity=code_ppl_groups.sum(),
            prob_perplexity=prob_ppl,
            targets=idx.view(B, T, G).detach() if produce_targets else None,
            num_vars=G * V,
            temp=self.curr_temp,
            code_perplexity_groups=code_ppl_groups,
        )
