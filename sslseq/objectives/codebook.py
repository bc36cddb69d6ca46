"""Online codebooks (DinoSR §2.2, Liu et al. 2023): one codebook per teacher layer, each of
``codebook_size`` codewords, kept as running sums and counts so that the codeword is their ratio.

A teacher frame is assigned to its nearest codeword (squared Euclidean distance); the codeword id
is the student's classification target. After each training forward, every codeword ``v`` that
was hit in the batch moves by an exponential moving average of the frames assigned to it:

    s_v ← τ s_v + (1 − τ) Σ_{t: id_t = v} z_t        n_v ← τ n_v + (1 − τ) |{t: id_t = v}|
    e_v = s_v / n_v

Codewords not hit keep their sums and counts. The batch statistics are summed over all processes
before the update (``torch.distributed``, world size > 1), so every process holds the same
codebooks and the result does not depend on how the batch was split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslseq.objectives.collective import sum_over_processes

__all__ = ["OnlineCodebooks", "codeword_perplexity"]


def codeword_perplexity(ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """(G, N) codeword ids → (G,) perplexity of each codebook's codeword usage over the N frames
    (``2^H`` of the empirical distribution: 1 = one codeword used, ``codebook_size`` = uniform)."""
    G, N = ids.shape
    counts = torch.zeros(G, codebook_size, dtype=torch.float32, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    p = counts / max(N, 1)
    entropy = -(p * torch.log2(p.clamp(min=1e-12))).sum(dim=1)
    return torch.exp2(entropy)


class OnlineCodebooks(nn.Module):
    """``num_codebooks`` codebooks of ``codebook_size`` codewords of dimension ``dim``.

    State (buffers, so checkpoints hold it): ``sums`` (G, V, D) and ``counts`` (G, V), float32.
    Initialisation as DinoSR: Gaussian codewords, each dimension standardised across the
    codebook (the teacher targets are instance-normalised too), counts 1.
    """

    def __init__(self, num_codebooks: int, codebook_size: int, dim: int, decay: float = 0.9):
        super().__init__()
        if num_codebooks < 1 or codebook_size < 2 or dim < 1:
            raise ValueError(
                f"codebooks need num_codebooks >= 1, codebook_size >= 2 and dim >= 1, got "
                f"{num_codebooks}, {codebook_size}, {dim}"
            )
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"codebook decay must be in [0, 1], got {decay}")
        self.num_codebooks, self.codebook_size, self.dim = num_codebooks, codebook_size, dim
        self.decay = decay
        init = F.instance_norm(torch.randn(num_codebooks, dim, codebook_size)).transpose(1, 2)
        self.register_buffer("sums", init.contiguous())
        self.register_buffer("counts", torch.ones(num_codebooks, codebook_size))

    @property
    def codewords(self) -> torch.Tensor:
        """(G, V, D) codewords: running sums / running counts."""
        return self.sums / self.counts[..., None]

    @torch.no_grad()
    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """(G, N, D) frames (frame set g for codebook g) → (G, N) ids of the nearest codewords."""
        self._check(z)
        z = z.float()
        e = self.codewords
        # ||z - e||² = ||z||² - 2 z·e + ||e||²; ||z||² is the same for every codeword of a frame.
        dist2 = (e * e).sum(-1)[:, None, :] - 2.0 * torch.bmm(z, e.transpose(1, 2))
        return dist2.argmin(dim=-1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """EMA update of the codewords hit by ``ids`` (G, N) with the frames ``z`` (G, N, D),
        the batch statistics summed over processes first. Every process must call this the same
        number of times (with N = 0 when it has no frames), as with any collective."""
        self._check(z)
        G, V, D = self.sums.shape
        onehot = F.one_hot(ids, V).to(torch.float32)  # (G, N, V)
        batch_sums = torch.bmm(onehot.transpose(1, 2), z.float())  # (G, V, D)
        batch_counts = onehot.sum(dim=1)  # (G, V)
        stats = sum_over_processes(torch.cat([batch_sums, batch_counts[..., None]], dim=-1))  # one collective
        batch_sums, batch_counts = stats[..., :D], stats[..., D]
        hit = batch_counts > 0
        tau = torch.where(hit, torch.full_like(batch_counts, self.decay), torch.ones_like(batch_counts))
        self.counts.copy_(tau * self.counts + (1.0 - tau) * batch_counts)
        self.sums.copy_(tau[..., None] * self.sums + (1.0 - tau[..., None]) * batch_sums)

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 3 or z.size(0) != self.num_codebooks or z.size(2) != self.dim:
            raise ValueError(
                f"codebook frames must be (num_codebooks={self.num_codebooks}, N, dim={self.dim}), "
                f"got {tuple(z.shape)}"
            )

    def extra_repr(self) -> str:
        return f"num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}, dim={self.dim}, decay={self.decay}"
