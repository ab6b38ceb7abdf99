"""Preprocess: how training saw an image, saved beside every checkpoint as ``preprocess.json``.

A model is only as good as the agreement between the pixels it was trained on and the pixels it
is shown later. Everything that decides those pixels lives in one frozen dataclass, and one
method, :meth:`Preprocess.__call__`, turns a decoded image of any size, mode or channel count
into the model's input. Training prepares its datasets with it, and ``evaluate``, ``predict``,
``explain`` and ``serve`` read it back from the checkpoint, so they all see what training saw.

The steps, in order: convert the channels, resize (stretch to ``image_size``, or scale the
shorter side and cut the centre), add a zero border of ``pad`` pixels, scale to [0, 1] and
normalise by the training set's per-channel mean and standard deviation.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import ViTConfig
from .errors import CheckpointError, ConfigError
from .files import atomic_write_json, read_json_object
from .images import INTERPOLATIONS, convert_channels, decode_image, resize, resize_shorter_and_crop

PREPROCESS_NAME = "preprocess.json"
FITS = ("stretch", "crop")
_VERSION = 2  # version 1 (no "version" key) stored the padded size as image_size


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, (x/255 - mean) / std per channel."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(-1, 1, 1)
    return (x.float() / 255.0 - m) / s


@dataclass(frozen=True)
class Preprocess:
    """The pixels a model expects, and how to make them from any image.

    ``image_size`` is the size images are resized to, before the ``pad``-pixel zero border that
    turns e.g. 28x28 Fashion-MNIST into the 32x32 a conv stem of stride 8 divides; the model's
    input is :attr:`input_size`. ``fit`` is the resize rule: ``"stretch"`` to ``image_size``
    (Hugging Face's ViT processor, and vitkit's datasets), or ``"crop"``: the shorter side to
    ``image_size / crop_fraction``, then the centre (timm's evaluation transform).
    """

    image_size: tuple[int, int]
    channels: int
    pad: int = 0
    interpolation: str = "bilinear"
    fit: str = "stretch"
    crop_fraction: float = 1.0
    mean: tuple[float, ...] = ()  # empty: 0 per channel (plain /255 scaling)
    std: tuple[float, ...] = ()  # empty: 1 per channel
    class_names: tuple[str, ...] = ()
    dataset: str | None = None

    def __post_init__(self) -> None:
        size = self.image_size
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "image_size", (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size))
        set_(self, "mean", tuple(float(v) for v in self.mean) or (0.0,) * self.channels)
        set_(self, "std", tuple(float(v) for v in self.std) or (1.0,) * self.channels)
        set_(self, "class_names", tuple(str(c) for c in self.class_names))
        self._validate()

    def _validate(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels}: vitkit prepares 1 (grayscale) or 3 (RGB) channels")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"image_size={self.image_size} must be a positive (height, width)")
        if self.pad < 0:
            raise ConfigError(f"pad={self.pad} must be >= 0")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation={self.interpolation!r} is not one of {INTERPOLATIONS}")
        if self.fit not in FITS:
            raise ConfigError(f"fit={self.fit!r} is not one of {FITS}")
        if not 0 < self.crop_fraction <= 1:
            raise ConfigError(f"crop_fraction={self.crop_fraction} must be in (0, 1]")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"mean/std have {len(self.mean)}/{len(self.std)} entries for {self.channels} channel(s)")
        if min(self.std) <= 0:
            raise ConfigError(f"std={list(self.std)} must be > 0")

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input size: ``image_size`` plus the border."""
        return (self.image_size[0] + 2 * self.pad, self.image_size[1] + 2 * self.pad)

    # ------------------------------------------------------------------ the images
    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 image(s) ``(C, H, W)`` or ``(B, C, H, W)``, any size, 1 or 3 channels -> uint8 at
        :attr:`input_size` with :attr:`channels`: what the figures draw and augmentation crops."""
        x = convert_channels(images, self.channels)
        if self.fit == "crop":
            x = resize_shorter_and_crop(x, self.image_size, self.crop_fraction, self.interpolation)
        else:
            x = resize(x, self.image_size, self.interpolation)
        return F.pad(x, (self.pad,) * 4) if self.pad else x

    def describe(self) -> str:
        """The rule :meth:`pixels` applies, in words, for a training log: ``32x32 px, 3 channel(s):
        shorter side to 32 px, centre 32x32 cut (aspect kept)``."""
        (h, w), (ih, iw) = self.image_size, self.input_size
        if self.fit == "crop":
            shorter = math.floor(min(h, w) / self.crop_fraction)
            rule = f"shorter side to {shorter} px, centre {h}x{w} cut (aspect kept)"
        else:
            rule = f"stretched to {h}x{w}"
        border = f", {self.pad} px zero border" if self.pad else ""
        return f"{ih}x{iw} px, {self.channels} channel(s): {rule}{border}"

    def keeps(self, size: Sequence[int], channels: int) -> bool:
        """Whether :meth:`pixels` leaves images of this size and channel count as they are."""
        same_size = tuple(size) == self.image_size and (self.fit == "stretch" or self.crop_fraction == 1)
        return same_size and channels == self.channels and self.pad == 0

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels at :attr:`input_size` -> the float tensor the model takes."""
        return normalize(pixels, self.mean, self.std)

    def from_batch(self, x: torch.Tensor, source: Preprocess) -> torch.Tensor:
        """A batch that ``source`` prepared (normalised, at its input size, augmented perhaps) ->
        this preprocessing's input for the same pixels.

        A teacher sees the student's augmented batch its own way: ``source``'s normalisation and
        border undone, the channels converted, the pixels stretched to :attr:`image_size` (the
        batch is already cut as training cut it; a centre crop would hide part of what the
        student sees), this border added and this normalisation applied. Float all the way: no
        rounding to 8 bits between the two models.
        """
        same = ("image_size", "pad", "channels", "mean", "std")
        if all(getattr(self, k) == getattr(source, k) for k in same):
            return x
        mean = torch.tensor(source.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(source.std, device=x.device).view(-1, 1, 1)
        pixels = x.float() * std + mean  # [0, 1]
        if source.pad:
            pixels = pixels[..., source.pad : -source.pad, source.pad : -source.pad]
        pixels = convert_channels(pixels, self.channels)
        if tuple(pixels.shape[-2:]) != self.image_size:
            shrink = pixels.shape[-2] > self.image_size[0] or pixels.shape[-1] > self.image_size[1]
            mode = self.interpolation if self.interpolation != "nearest" else "nearest-exact"
            antialias = shrink and mode in ("bilinear", "bicubic")
            pixels = F.interpolate(pixels, size=self.image_size, mode=mode, antialias=antialias)
        if self.pad:
            pixels = F.pad(pixels, (self.pad,) * 4)
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return (pixels - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """A decoded image (or a batch of same-size ones) -> the model's input tensor."""
        return self.normalize(self.pixels(images))

    def files(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Image files decoded and made into one normalised batch (B, C, H, W), as :meth:`__call__`
        makes each."""
        return torch.stack([self(decode_image(p)) for p in paths])

    # ------------------------------------------------------------------ files
    def replace(self, **changes: Any) -> Preprocess:
        return dataclasses.replace(self, **changes)

    def at_input_size(self, size: Sequence[int]) -> Preprocess:
        """The same preparation for a model resized to input ``size`` (height, width): the zero
        border kept in proportion (28 + 2 + 2 at 32 becomes 56 + 4 + 4 at 64)."""
        size = (int(size[0]), int(size[1]))
        if size == self.input_size:
            return self
        pad = round(self.pad * size[0] / self.input_size[0])
        return self.replace(image_size=(size[0] - 2 * pad, size[1] - 2 * pad), pad=pad)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(image_size=list(self.image_size), mean=list(self.mean), std=list(self.std))
        return {"version": _VERSION, **d, "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """From :meth:`to_dict`'s JSON, or the first format (no ``version``: its ``image_size``
        was the padded size and ``resize`` named the interpolation)."""
        d = dict(d)
        version = d.pop("version", 1)
        if version == 1:
            pad = int(d.get("pad", 0))
            d["image_size"] = [int(s) - 2 * pad for s in d["image_size"]]
            d["interpolation"] = d.pop("resize", "bilinear")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / PREPROCESS_NAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def for_model(cls, config: ViTConfig) -> Preprocess:
        """What a bare checkpoint implies: the model's size and channels, pixels scaled to [0, 1]."""
        names = config.class_names or [str(i) for i in range(config.num_classes)]
        return cls(image_size=config.image_size, channels=config.in_channels, class_names=names)

    @classmethod
    def load(cls, folder: str | os.PathLike, config: ViTConfig) -> Preprocess:
        """The checkpoint's ``preprocess.json``, checked against its model's ``config``. A folder
        without one is a CheckpointError: a guess at the normalisation would answer differently."""
        path = Path(folder) / PREPROCESS_NAME
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {PREPROCESS_NAME}: it does not say how its images were prepared")
        return cls.read(path, config)

    @classmethod
    def read(cls, path: str | os.PathLike, config: ViTConfig) -> Preprocess:
        """A ``preprocess.json`` file (any name: ``--assume-preprocess`` names one), checked
        against the model's ``config``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; it should be a {PREPROCESS_NAME} file")
        data = read_json_object(path, "preprocessing settings")
        if "version" not in data:  # the first format: what a file left out came from the model
            model = cls.for_model(config)
            data = {"image_size": list(model.input_size), "channels": model.channels, "class_names": model.class_names}
            data |= read_json_object(path, "preprocessing settings")
        try:
            pre = cls.from_dict(data)
        except (ConfigError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: {e}") from None
        if pre.channels != config.in_channels:
            raise CheckpointError(f"{path}: {pre.channels} channel(s), but the model takes {config.in_channels}")
        if pre.input_size != tuple(config.image_size) and not config.dynamic_image_size:
            raise CheckpointError(f"{path}: makes {pre.input_size} images, but the model takes {config.image_size}")
        return pre
