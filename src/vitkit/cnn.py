"""The CNN that vitkit's ViTs are measured against, and that a ViT student can learn from.

The paper compares ViT with Big Transfer's ResNets (BiT, Kolesnikov et al. 2020; sec. 4.1), and
DeiT (Touvron et al. 2021, sec. 5) distils a ViT from a CNN teacher, because a CNN's inductive
biases (locality, translation equivariance) are what a ViT lacks when data is small. This is the
small-image version both roles need here: a CIFAR-style ResNet (He et al. 2016, sec. 4.2), a 3x3
conv, then stages of basic blocks at full, 1/2 and 1/4 resolution, global average pooling and a
linear head. ``resnet_fmnist`` (widths 32, 64, 128, one block a stage; 0.31 M parameters on
28x28 grayscale) is the ResNet the benchmarks measured (``benchmarks/cnn_reference.py``, the
data-efficiency and transfer experiments), unchanged, so their records stay comparable.

The model saves, loads, trains and evaluates like a ViT (a checkpoint folder whose config.json
says ``"architecture": "resnet"``), but it has no tokens, attention or position embeddings: the
commands that look at those refuse it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from .config import _pair, from_known_fields
from .errors import ConfigError

ARCHITECTURE = "resnet"  # the marker in config.json that tells a ResNet checkpoint from a ViT's


@dataclass
class ResNetConfig:
    """Everything that defines the ResNet: stage ``widths`` (output channels) and ``blocks`` (basic
    blocks per stage); ``image_size`` is the size it is trained at (global pooling takes any size,
    but its checkpoint's preprocessing makes this one)."""

    image_size: tuple[int, int] | int = 28
    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1)
    class_names: list[str] | None = field(default=None)  # label names, kept with the checkpoint

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size)
        if not isinstance(self.widths, (list, tuple)) or not isinstance(self.blocks, (list, tuple)):
            raise ConfigError(f"widths={self.widths!r} and blocks={self.blocks!r} must be lists of integers")
        self.widths, self.blocks = tuple(self.widths), tuple(self.blocks)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field and how to fix it."""
        for name in ("in_channels", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if not self.widths or len(self.widths) != len(self.blocks):
            raise ConfigError(
                f"widths={list(self.widths)} and blocks={list(self.blocks)}: give one width and one block count a stage"
            )
        for name in ("widths", "blocks"):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in getattr(self, name)):
                raise ConfigError(f"{name}={list(getattr(self, name))} must be positive integers")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(f"{len(self.class_names)} class_names given for num_classes={self.num_classes}")

    @property
    def dynamic_image_size(self) -> bool:
        """False: images are prepared at ``image_size``, as for a ViT without dynamic size."""
        return False

    def flops(self) -> int:
        """Forward FLOPs of one image at ``image_size`` (2 per multiply-add): convolutions and the
        head, as ``torch.utils.flop_counter`` counts them; norms, ReLUs and pooling left out."""
        h, w = self.image_size
        c = self.widths[0]
        total = 2 * h * w * self.in_channels * c * 9  # stem
        for stage, (width, n) in enumerate(zip(self.widths, self.blocks, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                h, w = -(-h // stride), -(-w // stride)
                total += 2 * h * w * (c * width + width * width) * 9  # two 3x3 convs
                total += 2 * h * w * c * width if stride != 1 or c != width else 0  # 1x1 shortcut
                c = width
        return total + 2 * c * self.num_classes

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(image_size=list(self.image_size), widths=list(self.widths), blocks=list(self.blocks))
        return {"architecture": ARCHITECTURE} | d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResNetConfig:
        d = dict(d)
        marker = d.pop("architecture", ARCHITECTURE)
        if marker != ARCHITECTURE:
            raise ConfigError(f"architecture={marker!r} is not a ResNet config ({ARCHITECTURE!r})")
        return from_known_fields(cls, d)

    def replace(self, **overrides: Any) -> ResNetConfig:
        """A copy with some fields changed; an unknown field is a ConfigError naming it."""
        d = self.to_dict()
        unknown = sorted(set(overrides) - set(d) - {"architecture"})
        if unknown:
            known = sorted(f.name for f in dataclasses.fields(self))
            raise ConfigError(f"unknown ResNetConfig field(s) {unknown}; known fields: {known}")
        return ResNetConfig.from_dict(d | overrides)


def is_resnet_config(d: dict[str, Any]) -> bool:
    """Whether a config.json's fields describe a ResNet (its marker); a ViT's have none."""
    return d.get("architecture") == ARCHITECTURE


# --------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    # The benchmarks' CNN reference: 28x28 grayscale, 10 classes (Fashion-MNIST, MNIST).
    "resnet_fmnist": dict(image_size=28, in_channels=1, num_classes=10, widths=(32, 64, 128), blocks=(1, 1, 1)),
}
DESCRIPTIONS = {"resnet_fmnist": "CNN: the benchmarks' ResNet (widths 32/64/128, a block a stage)"}


def is_preset(name: str) -> bool:
    return name.strip().lower() in PRESETS


def get_config(name: str, **overrides: Any) -> ResNetConfig:
    """The preset's config with ``overrides`` applied (an unknown field is a ConfigError)."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown ResNet preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ResNetConfig(**PRESETS[key]).replace(**overrides)


# --------------------------------------------------------------------------- the model
class ResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, sec. 4.2) built from torchvision's ``BasicBlock``:
    local 3x3 receptive fields that grow with depth, the inductive bias a ViT lacks.

    The layers, their names and PyTorch's default initialisation are those of the benchmarks'
    original ``ResNet`` (``benchmarks/experiments/common.py`` before it moved here), so a seeded
    construction gives the very same weights, and their records stay comparable.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        for stage, (w, n) in enumerate(zip(config.widths, config.blocks, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1  # each later stage halves the resolution
                down = None
                if stride != 1 or c != w:
                    down = nn.Sequential(nn.Conv2d(c, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                layers.append(BasicBlock(c, w, stride, down))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c, config.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the last stage's feature map (B, widths[-1], H/4, W/4)."""
        return self.layers(self.stem(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (B, classes), or the pooled representation (B, widths[-1])."""
        pooled = features.mean(dim=(2, 3))  # global average pooling
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes)."""
        return self.forward_head(self.forward_features(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def count_params(config: ResNetConfig) -> int:
    """The parameter count of the ResNet ``config`` describes, built on the meta device."""
    with torch.device("meta"):
        return ResNet(config).num_params()
