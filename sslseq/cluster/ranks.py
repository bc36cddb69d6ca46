"""The processes of a data-parallel k-means fit and the few collectives it needs (sums,
broadcast, gathers over torch.distributed); one process is the identity case."""

from __future__ import annotations

import math

import torch

from sslseq.utils import SslseqError


class Ranks:
    """This process's share of a k-means fit and the collectives the fit needs.

    The fit's points are split over the processes of the torch.distributed group in rank
    order: rank r holds global rows [lo, hi). With one process (``distributed=False``, or a
    group of size 1) every collective is the identity, so the single-process fit is the same
    code with no communication.
    """

    def __init__(self, n_local: int, *, distributed: bool, device: torch.device):
        self.world, self.rank, self.comm_device = 1, 0, device
        if distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise SslseqError("distributed k-means needs an initialised torch.distributed group (run under torchrun)")
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
            nccl = "nccl" in str(dist.get_backend()).lower()
            self.comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        sizes = self.all_gather(torch.tensor([n_local], dtype=torch.int64)).tolist()
        self.n = int(sum(sizes))
        self.lo = int(sum(sizes[: self.rank]))
        self.hi = self.lo + int(n_local)

    def all_sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Element-wise sums over the processes, in one float64 all-reduce (inputs untouched)."""
        if self.world == 1:
            return list(tensors)
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).to(self.comm_device, torch.float64) for t in tensors])
        dist.all_reduce(flat)
        out, at = [], 0
        for t in tensors:
            out.append(flat[at : at + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            at += t.numel()
        return out

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every process (a collective that makes identical what must be)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        buf = t.to(self.comm_device).contiguous()
        dist.broadcast(buf, src=0)
        return buf.to(t.device)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's ``t`` (same shape on all) concatenated along dim 0 in rank order."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        buf = t.to(self.comm_device).contiguous()
        out = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(out, buf)
        return torch.cat(out).to(t.device)

    def local_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The global row indices ``idx`` that this process holds, as local indices, in the order of ``idx``."""
        if self.world == 1:
            return idx
        return idx[(idx >= self.lo) & (idx < self.hi)] - self.lo

    def gather_rows(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """Global rows ``idx`` (None: all rows) of the split matrix, on every process, in the order of ``idx``.

        Each process fills the rows it holds into a zero matrix and the matrices are summed:
        adding zeros is exact, so every process gets the very rows of one process's fit.
        """
        if self.world == 1:
            return x if idx is None else x[idx.to(x.device)]
        if idx is None:
            idx = torch.arange(self.n)
        idx = idx.cpu()
        buf = torch.zeros(len(idx), x.shape[1], dtype=torch.float32, device=x.device)
        mine = torch.nonzero((idx >= self.lo) & (idx < self.hi)).flatten()
        buf[mine.to(x.device)] = x[(idx[mine] - self.lo).to(x.device)].float()
        import torch.distributed as dist

        buf = buf.to(self.comm_device)
        dist.all_reduce(buf)
        return buf.to(x.device)

    def farthest(self, score: torch.Tensor, x: torch.Tensor, m: int) -> torch.Tensor:
        """The rows of the (up to) ``m`` points with the largest ``score`` over all processes, largest first."""
        m_local = min(m, score.shape[0])
        vals, idx = torch.topk(score, m_local)
        rows = x[idx.to(x.device)].to(score.device, torch.float32)
        if self.world == 1:
            return rows
        # Pad to m per process so the gather has one shape; padding never wins (-inf).
        pad = m - m_local
        vals = torch.cat([vals.float(), torch.full((pad,), -math.inf, device=vals.device)])
        rows = torch.cat([rows, torch.zeros(pad, x.shape[1], device=rows.device)])
        all_vals, all_rows = self.all_gather(vals), self.all_gather(rows)
        best = torch.topk(all_vals, min(m, self.n)).indices
        return all_rows[best]
