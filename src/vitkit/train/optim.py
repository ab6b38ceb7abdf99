"""The optimiser and what it averages: parameter groups, AdamW, and the EMA of the weights."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def param_groups(
    model: nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None
) -> list[dict[str, Any]]:
    """Parameter groups: weight decay on weight matrices and conv kernels, none on norms, biases,
    position embeddings and the class token (1-D tensors, and ``model.no_weight_decay()`` where
    the model has one, so any classifier can be given, e.g. the experiments' ResNet).

    ``lr_scale(name)`` gives a parameter's learning-rate multiplier (e.g. layer-wise decay);
    parameters are grouped by (decay, scale), decay first, and each group records its
    ``lr_scale`` for :func:`~vitkit.train.schedule.set_learning_rate`. Frozen parameters
    (``requires_grad=False``) are left out: the optimiser keeps no state for them.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim > 1 and name not in skip
        scale = lr_scale(name) if lr_scale is not None else 1.0
        groups.setdefault((decays, scale), []).append(p)
    order = sorted(groups, key=lambda k: (not k[0], -k[1]))
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_scale": k[1]} for k in order]


def adamw(groups: list[dict[str, Any]], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999); the fused kernel, one update for all parameters, where torch has
    it (CPU and CUDA): on a small CPU the per-tensor loop costs a noticeable share of a step."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=device.type in ("cpu", "cuda"))


def sgd(groups: list[dict[str, Any]], lr: float, device: torch.device, momentum: float = 0.9) -> torch.optim.SGD:
    """SGD with momentum, the optimiser of the paper's fine-tuning (fused where torch has it)."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=device.type in ("cpu", "cuda"))


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """``adamw`` or ``sgd`` over ``groups``."""
    return sgd(groups, lr, device) if name == "sgd" else adamw(groups, lr, device)


class EMA:
    """Exponential moving average of the weights (Polyak averaging), with the usual warm-up of the
    decay, min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the init."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["weights"])
