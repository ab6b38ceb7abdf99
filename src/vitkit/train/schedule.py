"""The learning rate over a run: linear warm-up, then cosine decay (Loshchilov & Hutter 2017).

The schedule takes plain numbers, not a run's config, so the experiments and the benchmarks use
the very schedule ``vitkit train`` uses. Parameter groups may carry an ``lr_scale`` (layer-wise
decay, a head trained faster): :func:`set_learning_rate` gives each group its scaled rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up to ``peak_lr`` over ``warmup_steps`` steps, then cosine decay to ``min_lr``
    at ``total_steps``.

    With a ``time_budget`` (seconds), the cosine's progress is the larger of the steps done and the
    time spent, so a run cut by the clock still ends cooled down. The warm-up is counted in steps
    only: a budget far shorter than the planned epochs must not shrink the warm-up to a handful of
    steps, the surest way to a diverging start.
    """

    peak_lr: float
    min_lr: float
    total_steps: int
    warmup_steps: int = 0
    time_budget: float | None = None

    def __post_init__(self) -> None:
        if self.peak_lr <= 0 or self.min_lr < 0 or self.total_steps < 1 or self.warmup_steps < 0:
            raise ConfigError(
                f"schedule: peak_lr={self.peak_lr} must be > 0, min_lr={self.min_lr} >= 0, "
                f"total_steps={self.total_steps} >= 1 and warmup_steps={self.warmup_steps} >= 0"
            )

    def __call__(self, step: int, elapsed: float = 0.0) -> float:
        """The learning rate of optimiser step ``step`` (from 0), ``elapsed`` seconds into the budget."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        progress = step / self.total_steps
        if self.time_budget:
            progress = max(progress, elapsed / self.time_budget)
        w = self.warmup_steps / self.total_steps
        t = min(1.0, max(0.0, (progress - w) / max(1.0 - w, 1e-8)))
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))


# A warm-up longer than the run is cut to this share of its steps: the finetune recipe's own
# ratio (50 of 500 steps), at the upper end of what the ViT paper and DeiT use (5 of 300 epochs;
# 500 of 10,000 fine-tuning steps), so a short run still warms up and still cools down.
SHORT_WARMUP = 0.1


def fit_warmup(warmup_steps: int, total_steps: int) -> int:
    """``warmup_steps``, or :data:`SHORT_WARMUP` of ``total_steps`` (at least 1) when the warm-up
    would not end before the run does (the rate would stop at its peak, never decayed)."""
    if warmup_steps < total_steps or total_steps < 1:
        return min(warmup_steps, max(total_steps, 0))
    return max(1, round(SHORT_WARMUP * total_steps))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group ``lr`` times its ``lr_scale`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
