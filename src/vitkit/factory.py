"""``create_model``: one entry point for presets and saved checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import cnn
from .checkpoint import Model, ModelConfig, build, load
from .config import get_config


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of preset ``name`` with ``overrides``: a ViT's, or the CNN's for a ResNet preset
    (``resnet_fmnist``, :mod:`vitkit.cnn`)."""
    if cnn.is_preset(name):
        return cnn.get_config(name, **overrides)
    return get_config(name, **overrides)


def create_model(name: str, **overrides: Any) -> Model:
    """A model from a preset name (``"vit_b16"``, ``"ViT-B/16"``, the CNN ``"resnet_fmnist"``) or a
    checkpoint folder.

    From a preset the weights are freshly initialised and ``overrides`` set any config field
    (``create_model("vit_b16", num_classes=10, image_size=384)``). From a checkpoint folder the
    trained weights are loaded and ``image_size=...`` resamples the position embeddings, as the
    paper does when fine-tuning at a higher resolution; ``num_classes=...`` replaces the head.
    """
    if Path(name).is_dir():
        return load(name, **overrides)
    return build(preset_config(name, **overrides))
