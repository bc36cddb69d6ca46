"""Learning-rate schedules as pure functions of the optimizer step.

A schedule has no state besides the step, so resuming from a checkpoint only needs the
step count, and the learning rate of step ``s`` is the same in a resumed and an
uninterrupted run.
"""

from __future__ import annotations

import math

from sslseq.utils import SslseqError

SCHEDULES = ("linear", "tri_stage", "constant")


def linear_lr(step: int, *, lr: float, warmup_steps: int, max_steps: int, end_lr: float = 0.0) -> float:
    """Linear warmup to ``lr``, then linear decay to ``end_lr`` at ``max_steps``.

    fairseq ``polynomial_decay`` with power 1. ``step`` counts updates already done, so
    the first update (step 0) uses ``lr / warmup_steps``, not 0.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return end_lr
    span = max(1, max_steps - warmup_steps)
    frac = (max_steps - step) / span
    return end_lr + (lr - end_lr) * frac


def tri_stage_lr(
    step: int,
    *,
    lr: float,
    max_steps: int,
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> float:
    """fairseq ``tri_stage``: linear warmup from ``init_lr_scale*lr``, hold, exponential decay.

    The decay reaches ``final_lr_scale*lr`` at the end of its phase and stays there.
    """
    warmup = int(max_steps * phase_ratio[0])
    hold = int(max_steps * phase_ratio[1])
    decay = max(1, max_steps - warmup - hold) if phase_ratio[2] > 0 else 0
    init_lr, final_lr = lr * init_lr_scale, lr * final_lr_scale
    if step < warmup:
        return init_lr + (lr - init_lr) * (step + 1) / warmup
    step -= warmup
    if step < hold:
        return lr
    step -= hold
    if decay == 0:
        return lr
    if step >= decay:
        return final_lr
    factor = -math.log(final_lr_scale) / decay
    return lr * math.exp(-factor * step)


def lr_at(step: int, optim) -> float:
    """Learning rate of optimizer step ``step`` (0-based) for an ``OptimConfig``."""
    if optim.schedule == "linear":
        return linear_lr(step, lr=optim.lr, warmup_steps=optim.warmup_steps, max_steps=optim.max_steps)
    if optim.schedule == "tri_stage":
        return tri_stage_lr(
            step,
            lr=optim.lr,
            max_steps=optim.max_steps,
            phase_ratio=tuple(optim.phase_ratio),
            init_lr_scale=optim.init_lr_scale,
            final_lr_scale=optim.final_lr_scale,
        )
    if optim.schedule == "constant":
        return linear_lr(step, lr=optim.lr, warmup_steps=optim.warmup_steps, max_steps=10**18, end_lr=optim.lr)
    raise SslseqError(f"optim.schedule '{optim.schedule}' is unknown; use one of: {', '.join(SCHEDULES)}")


def warmup_steps(optim) -> int:
    """Steps of the learning-rate warmup of an ``OptimConfig`` (the tri-stage's first phase)."""
    if optim.schedule == "tri_stage":
        return int(optim.max_steps * optim.phase_ratio[0])
    return int(optim.warmup_steps)
