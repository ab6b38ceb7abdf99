"""Self-supervised pre-training objectives that wrap a :class:`~vitkit.VisionTransformer`.

Two objectives, one module each, with one calling convention: ``wrapper(images)`` takes a batch
normalised as the training feed normalises it and returns :class:`PretextOutput` (loss, correct,
count), so one training step serves both.

- ``"mpp"``: :class:`MaskedPatchPrediction`, the ViT paper's masked patch prediction (sec. 4.6,
  appendix B.1.2): predict the 3-bit mean colour of corrupted patches.
- ``"mae"``: :class:`MaskedAutoencoder` (He et al. 2021): reconstruct hidden patches' pixels.

The wrapped encoder stays ``wrapper.encoder`` and keeps exactly the keys of a plain
VisionTransformer, so after pre-training :func:`encoder_to_save` gives the model to save with
``vitkit.save`` as an ordinary checkpoint. The encoder is built without a head (``num_classes=0``),
since pre-training never trains one and DDP refuses parameters without a gradient.

It is a package rather than one file because the two objectives share nothing but the pieces in
``common`` (output, pixels, patches, random draws), and each reads best next to its own paper.
All random choices come from torch's global RNG or an optional ``generator`` argument, so a loop
that seeds each step reproduces it, and a resumed run continues it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..model import VisionTransformer
from .common import PretextOutput, patchify
from .mae import MaskedAutoencoder, Masking, random_masking
from .mpp import Corruption, MaskedPatchPrediction, corruption, mpp_targets, random_sources

OBJECTIVES: dict[str, type[nn.Module]] = {"mpp": MaskedPatchPrediction, "mae": MaskedAutoencoder}


def build_pretext(
    objective: str,
    encoder: VisionTransformer,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    **options: Any,
) -> nn.Module:
    """The pretext wrapper named ``objective`` ("mpp" or "mae") around ``encoder``.

    ``mean``/``std`` are the per-channel values the feed normalised with (None: 0 and 1);
    ``options`` are the objective's own keyword arguments (``mask_ratio``, ``decoder_width``, ...).
    """
    key = objective.lower()
    if key not in OBJECTIVES:
        raise ConfigError(f"unknown pre-training objective {objective!r}; choose one of {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[key]
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "encoder", "mean", "std"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for objective {key!r}; known: {sorted(known)}")
    return cls(encoder, mean=mean, std=std, **options)


def encoder_to_save(wrapper: nn.Module) -> VisionTransformer:
    """The pre-trained encoder inside a pretext wrapper, to save as an ordinary vitkit model.

    Looks through a DDP wrapper (``.module``) and a ``torch.compile`` wrapper (``._orig_mod``).
    """
    inner = wrapper
    for attribute in ("module", "_orig_mod", "module"):
        inner = getattr(inner, attribute, inner)
    encoder = getattr(inner, "encoder", None)
    if not isinstance(encoder, VisionTransformer):
        raise ConfigError(f"{type(wrapper).__name__} is not a pretext wrapper: it has no VisionTransformer .encoder")
    return encoder


__all__ = [
    "Corruption",
    "MaskedAutoencoder",
    "MaskedPatchPrediction",
    "Masking",
    "OBJECTIVES",
    "PretextOutput",
    "build_pretext",
    "corruption",
    "encoder_to_save",
    "mpp_targets",
    "patchify",
    "random_masking",
    "random_sources",
]
