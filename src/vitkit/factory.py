"""``create_model``: one entry point for presets and saved checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load
from .config import get_config
from .model import VisionTransformer


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """A ViT from a preset name (``"vit_b16"``, ``"ViT-B/16"``) or a checkpoint folder.

    From a preset the weights are freshly initialised and ``overrides`` set any config field
    (``create_model("vit_b16", num_classes=10, image_size=384)``). From a checkpoint folder the
    trained weights are loaded and ``image_size=...`` resamples the position embeddings, as the
    paper does when fine-tuning at a higher resolution; ``num_classes=...`` replaces the head.
    """
    if Path(name).is_dir():
        return load(name, **overrides)
    return VisionTransformer(get_config(name, **overrides))
