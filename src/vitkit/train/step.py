"""One training step, the only one: ``vitkit train``, ``vitkit bench``, the benchmarks and the
experiments all call :class:`TrainStep`, so a speed-up or a fix here reaches every one of them.

A step is: for each micro-batch, the forward pass under autocast and the cross-entropy loss,
backward (gradients accumulate; under DDP only the last micro-batch all-reduces); then, if the
loss is finite, clip the global gradient norm, take the optimiser step and update the EMA. A
non-finite loss leaves the weights as they were and says so, so the caller can stop cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import World
from ..runtime import autocast
from .optim import EMA


@dataclass(frozen=True)
class StepResult:
    """What one step did: the mean loss of its global batch (the same on every process), and this
    process's correct top-1 predictions among the images it saw (soft targets: their argmax)."""

    loss: float
    correct: int
    seen: int

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


class TrainStep:
    """Forward, loss, backward, clip, optimiser step and EMA, over one or more micro-batches.

    ``model`` is the module whose parameters are clipped and averaged; ``forward`` is what runs
    the batches (the same module, or it wrapped in DistributedDataParallel or ``torch.compile``).
    Works for any module mapping images (B, C, H, W) to logits (B, classes): timm's models and
    the experiments' ResNet run through exactly the same code as vitkit's.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        bf16: bool = False,
        label_smoothing: float = 0.0,
        clip_grad: float = 0.0,
        ema: EMA | None = None,
        forward: nn.Module | None = None,
        world: World | None = None,
    ) -> None:
        self.model, self.optimizer, self.device, self.bf16 = model, optimizer, device, bf16
        self.label_smoothing, self.clip_grad, self.ema = label_smoothing, clip_grad, ema
        self.forward = forward if forward is not None else model
        self.world = world if world is not None else World()

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one micro-batch; the loss in fp32 whatever the autocast."""
        with autocast(self.device, self.bf16):
            logits = self.forward(x)
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing), logits

    def __call__(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
        """One optimiser step over ``micro_batches`` of (images, targets): class indices, or
        (B, classes) soft targets from MixUp/CutMix."""
        n = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for m, (x, target) in enumerate(micro_batches):
            with self.world.no_sync(m < n - 1):  # accumulate locally; the last backward all-reduces
                loss, logits = self.loss(x, target)
                (loss / n).backward()
            loss_sum += loss.detach()
            hard = target if target.ndim == 1 else target.argmax(1)
            correct += (logits.detach().argmax(1) == hard).sum()
            seen += len(target)
        mean_loss = loss_sum.item() / n  # the one host sync of the step
        if self.world.active:  # the global batch's loss, so every process decides alike
            (mean_loss,) = self.world.mean_all([mean_loss])
        result = StepResult(mean_loss, int(correct.item()), seen)
        if result.finite:
            self._update()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return result

    def _update(self) -> None:
        if self.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
