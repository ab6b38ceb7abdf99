"""One training step, the only one: ``vitkit train``, ``vitkit bench``, the benchmarks and the
experiments all call :class:`TrainStep`, so a speed-up or a fix here reaches every one of them.

A step is: for each micro-batch, the forward pass under autocast and the loss of the run's
:class:`Objective`, backward (gradients accumulate; under DDP only the last micro-batch
all-reduces); then, if the loss is finite, clip the global gradient norm, take the optimiser
step and update the EMA. A non-finite loss leaves the weights as they were and says so, so the
caller can stop cleanly.

The objective is what differs between runs, and only that: :class:`Classification` (cross-entropy
on the labels), distillation from a teacher (:mod:`vitkit.train.distill`), and the
self-supervised pretext tasks (:class:`Pretext`: the module computes its own loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import World
from ..runtime import autocast
from .optim import EMA


@dataclass(frozen=True)
class StepResult:
    """What one step did: the mean loss of its global batch (the same on every process), and this
    process's correct predictions among what it saw (:class:`Outcome`)."""

    loss: float
    correct: int
    seen: int

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


class Outcome(NamedTuple):
    """One micro-batch's loss (fp32, a scalar that backward starts from) and its score: the
    correct predictions among ``seen`` (images; masked patches for a pretext task)."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int


class Objective(Protocol):
    """What a run minimises: ``forward`` (the model, perhaps wrapped) applied to a micro-batch of
    images ``x`` with its ``target``, and the loss. Called under the step's autocast."""

    def __call__(self, forward: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Outcome: ...


def hits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Correct top-1 predictions; soft targets (MixUp/CutMix) count their argmax."""
    hard = target if target.ndim == 1 else target.argmax(1)
    return (logits.detach().argmax(1) == hard).sum()


class Classification:
    """Cross-entropy on the labels (class indices, or soft targets from MixUp/CutMix), with label
    smoothing, computed in fp32 whatever the autocast."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)

    def __call__(self, forward: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Outcome:
        logits = forward(x)
        return Outcome(self.cross_entropy(logits, target), hits(logits, target), len(target))


class Pretext:
    """A self-supervised task (:mod:`vitkit.pretext`): the module itself masks the images, predicts
    and returns its loss; the labels are never read. Its score counts masked patches."""

    def __call__(self, forward: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Outcome:
        out = forward(x)
        return Outcome(out.loss, out.correct, int(out.count))


class TrainStep:
    """Forward, loss, backward, clip, optimiser step and EMA, over one or more micro-batches.

    ``model`` is the module whose parameters are clipped and averaged; ``forward`` is what runs
    the batches (the same module, or it wrapped in DistributedDataParallel or ``torch.compile``).
    Works for any module mapping images (B, C, H, W) to logits (B, classes): timm's models and
    the CNN run through exactly the same code as vitkit's. ``objective`` (default:
    :class:`Classification` with ``label_smoothing``) turns a micro-batch into its loss.
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
        objective: Objective | None = None,
    ) -> None:
        self.model, self.optimizer, self.device, self.bf16 = model, optimizer, device, bf16
        self.clip_grad, self.ema = clip_grad, ema
        self.forward = forward if forward is not None else model
        self.world = world if world is not None else World()
        self.objective = objective if objective is not None else Classification(label_smoothing)

    def outcome(self, x: torch.Tensor, target: torch.Tensor) -> Outcome:
        """The objective on one micro-batch, under the run's autocast."""
        with autocast(self.device, self.bf16):
            return self.objective(self.forward, x, target)

    def __call__(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
        """One optimiser step over ``micro_batches`` of (images, targets): class indices, or
        (B, classes) soft targets from MixUp/CutMix."""
        n = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for m, (x, target) in enumerate(micro_batches):
            with self.world.no_sync(m < n - 1):  # accumulate locally; the last backward all-reduces
                out = self.outcome(x, target)
                (out.loss / n).backward()
            loss_sum += out.loss.detach()
            correct += out.correct
            seen += out.seen
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
