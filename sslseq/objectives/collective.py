"""Sums over the data-parallel processes (``torch.distributed``), for the statistics an
objective must see for the whole batch rather than one process's share of it: the quantizer's
code usage (diversity loss, perplexities) and DinoSR's codebook updates. With one process (or no
process group) every function returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_size", "sum_over_processes"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_processes(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """``t`` summed over all processes. ``grad``: differentiable, the gradient of the sum flows
    back to every process's contribution (each process's loss then depends on all frames, as
    with one process)."""
    if world_size() == 1:
        return t
    if grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t, op=dist.ReduceOp.SUM)
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
