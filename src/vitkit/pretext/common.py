"""What the pretext objectives share: their output, pixels from normalised images, patches as
vectors, random draws that a seed reproduces, and the encoder run on a token sequence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..model import VisionTransformer


class PretextOutput(NamedTuple):
    """What one training step needs from a pretext objective."""

    loss: torch.Tensor  # scalar, float32 even under bf16/fp16 autocast
    correct: torch.Tensor  # scalar long: MPP's correctly predicted corrupted patches; MAE: 0
    count: torch.Tensor  # scalar long: the patches the loss is averaged over (corrupted / masked)


class Pixels(nn.Module):
    """Undo the feed's normalisation: (x - mean) / std -> pixels in [0, 1], per channel.

    The targets (MPP's mean colours, MAE's pixels) are defined on the image itself, not on the
    normalised tensor the encoder reads. ``mean``/``std`` of ``None`` mean 0 and 1 per channel, as
    an empty mean/std does in :class:`vitkit.preprocess.Preprocess` (plain /255 scaling). The
    tensors are non-persistent buffers: they follow ``.to(device)`` and stay out of checkpoints.
    """

    def __init__(self, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        mean = tuple(float(v) for v in mean) if mean else (0.0,) * channels
        std = tuple(float(v) for v in std) if std else (1.0,) * channels
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(
                f"mean/std have {len(mean)}/{len(std)} entries for an encoder of {channels} channel(s); "
                "pass the dataset's per-channel mean and std that the feed normalised with"
            )
        if min(std) <= 0:
            raise ConfigError(f"std={list(std)} must be > 0")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised -> float32 pixels clamped to [0, 1] (resizing can overshoot)."""
        return (images.float() * self.std + self.mean).clamp(0.0, 1.0)


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C): each patch as one vector, patches in row-major order (the
    order of ``PatchEmbed``'s tokens), each vector laid out (pixel row, pixel column, channel)."""
    b, c, h, w = pixels.shape
    p = patch_size
    if h % p or w % p:
        raise InputError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = pixels.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, H/P, W/P, P, P, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | None) -> torch.Tensor:
    """U[0, 1) draws from ``generator`` (on its own device, then moved) or torch's global RNG,
    so that ``torch.manual_seed`` before a step reproduces every mask of that step."""
    if generator is not None:
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    return torch.rand(shape, device=device)


def check_encoder(encoder: VisionTransformer) -> None:
    """Refuse an encoder with parameters that pre-training would leave without a gradient.

    The wrapper reads token states, never the pooled output, so a classifier head or the
    pre-logits layer would get no gradient, and DDP stops on such parameters. Building the
    encoder without them (``num_classes=0``: ``head`` is then an ``Identity``) also means the
    pre-trained encoder is saved as an ordinary headless checkpoint, to fine-tune with a new head.
    """
    if not isinstance(encoder, VisionTransformer):
        raise ConfigError(f"the encoder must be a vitkit VisionTransformer, got {type(encoder).__name__}")
    c = encoder.config
    if c.num_classes or c.representation_size:
        raise ConfigError(
            f"the encoder has a classifier head (num_classes={c.num_classes}, representation_size="
            f"{c.representation_size}) that pre-training would not train; build it with num_classes=0 "
            "and representation_size=None, e.g. create_model(name, num_classes=0)"
        )


def check_image(images: torch.Tensor, patch_size: int) -> None:
    """Targets are defined per whole patch: refuse sizes the encoder would pad."""
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise InputError(
            f"image size {h}x{w} is not divisible by patch size {patch_size}; pre-training needs whole "
            "patches: resize or crop the images to a multiple of the patch size"
        )


def encode(encoder: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """z_0 (B, T, D) -> the encoder's final token states (B, T, D): blocks, then its final
    LayerNorm. With ``fc_norm=True`` that LayerNorm is ``fc_norm`` (meant for after pooling);
    it is applied per token here, so that it too is trained and no parameter sits unused."""
    for block in encoder.blocks:
        tokens, _ = block(tokens)
    norm = encoder.fc_norm if encoder.config.fc_norm else encoder.norm
    return norm(tokens)


def scalar(value: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A long scalar on ``device``."""
    return torch.as_tensor(value, dtype=torch.long, device=device).reshape(())


def no_weight_decay(wrapper: nn.Module) -> set[str]:
    """A pretext wrapper's parameters that weight decay skips: the encoder's own (class token,
    position tables) under ``encoder.``, and the [mask] embedding, a token like the class token."""
    return {f"encoder.{n}" for n in wrapper.encoder.no_weight_decay()} | {"mask_token"}
