"""What fine-tuning changes about training: which parameters learn, and how fast.

- ``--freeze``: ``embed`` freezes the patch embedding (or conv stem): with it frozen, SGD fine-tunes
  ViTs as well as AdamW does (Kumar et al. 2022, "How to fine-tune vision models with SGD");
  ``N`` freezes the embedding and the first N blocks; ``backbone`` everything but the head, a
  linear probe trained by SGD. Frozen parameters get no gradient, no optimiser state and no DDP
  reduction, and their modules stay in eval mode, so a BatchNorm's statistics stay frozen too.
- ``--layer-decay d``: layer-wise learning-rate decay as BEiT (Bao et al. 2022) and timm define
  it: the embedding is layer 0, block i is layer i + 1, the final norm and the head are layer
  L + 1, and layer l learns at d^(L + 1 - l) times the rate: the head at the full rate, lower
  layers, which hold the most general features, ever more slowly.
- ``--head-lr-mult m``: the head (and a pre-logits layer) at m times its rate.

The CNN reference (:class:`vitkit.cnn.ResNet`) trains whole: ``--freeze`` and ``--layer-decay``
name a ViT's parts and are refused for it; ``--head-lr-mult`` applies to its head too.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..checkpoint import Model
from ..cnn import ResNet
from ..errors import ConfigError

_EMBED = ("patch_embed.", "cls_token", "dist_token", "reg_token", "pos_embed.")
_HEAD = ("head.", "head_dist.", "pre_logits.")


def freeze(model: Model, spec: str | None) -> list[nn.Module]:
    """Freeze what ``spec`` names (``requires_grad=False``); returns the frozen modules, which the
    training loop keeps in eval mode. ``embed`` is the first layer only (the patch projection or
    conv stem); ``N`` and ``backbone`` include the whole embedding of eq. 1 (position embedding,
    class, distillation and register tokens too)."""
    if spec is None:
        return []
    if isinstance(model, ResNet):
        raise ConfigError(f"--freeze {spec} names a ViT's parts (patch embedding, blocks); the ResNet trains whole")
    if spec == "backbone":
        modules = [m for name, m in model.named_children() if name not in ("head", "head_dist", "pre_logits")]
    elif spec == "embed":
        modules = [model.patch_embed]
    else:
        n = int(spec)
        if n > model.config.depth:
            raise ConfigError(f"--freeze {n}: the model has only {model.config.depth} blocks")
        modules = [model.patch_embed, model.pos_embed, *list(model.blocks)[:n]]
    for m in modules:
        m.requires_grad_(False)
    if spec != "embed":
        for token in (model.cls_token, model.dist_token, model.reg_token):
            if token is not None:
                token.requires_grad_(False)
    return modules


def layer_id(name: str, depth: int) -> int:
    """The layer of parameter ``name``: 0 for the embedding, i + 1 for block i, depth + 1 after."""
    if name.startswith(_EMBED):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def model_lr_scales(
    model: Model, layer_decay: float | None, head_lr_mult: float = 1.0
) -> Callable[[str], float] | None:
    """:func:`lr_scales` for ``model``'s depth; ``--layer-decay`` is refused for the ResNet, whose
    layers are not a ViT's numbered blocks."""
    if isinstance(model, ResNet):
        if layer_decay is not None:
            raise ConfigError(f"--layer-decay {layer_decay} decays a ViT's blocks; the ResNet has none: drop it")
        return lr_scales(0, None, head_lr_mult)
    return lr_scales(model.config.depth, layer_decay, head_lr_mult)


def lr_scales(depth: int, layer_decay: float | None, head_lr_mult: float = 1.0) -> Callable[[str], float] | None:
    """The learning-rate multiplier of each parameter name, or None when every one is 1."""
    if layer_decay is None and head_lr_mult == 1.0:
        return None

    def scale(name: str) -> float:
        s = layer_decay ** (depth + 1 - layer_id(name, depth)) if layer_decay is not None else 1.0
        return s * head_lr_mult if name.startswith(_HEAD) else s

    return scale
