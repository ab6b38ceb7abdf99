"""Training augmentation of whole batches, on the device the model runs on.

Every augmentation is a tensor operation on a whole batch (crop with padding, flip, erasing,
RandAugment/TrivialAugment and MixUp/CutMix from torchvision v2), and every random draw comes
from a generator seeded by ``(seed, epoch, batch)``, so a resumed run sees exactly the
augmentations an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..preprocess import normalize
from .dataset import Stream, derive_seed


@dataclass
class AugmentConfig:
    crop_padding: int = 4  # random crop after zero padding by this many pixels (0: off)
    hflip: bool = True  # random horizontal flip
    erase_prob: float = 0.0  # random erasing (Zhong et al. 2017), probability per image
    auto_augment: str = "none"  # "none" | "randaugment" | "trivialaugment" (torchvision v2)
    auto_augment_groups: int = 8  # one policy draw per group of a batch (v2 applies one per call)
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    crop_scale: float | None = None  # RandomResizedCrop's smallest area fraction (None: off)
    crop_size: tuple[int, int] | None = None  # its output size (None: the images' own)
    randaugment_ops: int = 2  # torchvision's RandAugment defaults
    randaugment_magnitude: int = 9

    def __post_init__(self) -> None:
        if self.auto_augment not in ("none", "randaugment", "trivialaugment"):
            raise ConfigError(f"--auto-augment {self.auto_augment}: choose none, randaugment or trivialaugment")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ConfigError(f"--erase-prob {self.erase_prob:g} must be in [0, 1]")
        for flag, value in (("--crop-padding", self.crop_padding), ("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if value < 0:
                raise ConfigError(f"{flag} {value:g} must be >= 0 (0: off)")
        if self.crop_scale is not None and not 0 < self.crop_scale <= 1:
            raise ConfigError(
                f"--crop-scale {self.crop_scale}: the smallest area fraction must be in (0, 1], e.g. 0.08"
            )
        if self.randaugment_ops < 0 or not 0 <= self.randaugment_magnitude <= 30:
            raise ConfigError(
                f"--randaugment-ops {self.randaugment_ops} --randaugment-magnitude {self.randaugment_magnitude}: "
                "give ops >= 0 and a magnitude in 0-30"
            )


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random window of the original size from each image."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_resized_boxes(
    n: int,
    height: int,
    width: int,
    g: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """``n`` crop boxes ``(top, left, height, width)`` (int64, shape (n, 4)) drawn by the rule of
    Szegedy et al. 2015 ("Inception" crops), as torchvision's ``RandomResizedCrop.get_params``:
    an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, ten tries, then the
    whole image cut to the nearest allowed ratio. All ``n`` boxes come from one generator."""
    tries = 10
    area = height * width * torch.empty(n, tries, dtype=torch.float64).uniform_(*scale, generator=g)
    log_r = torch.empty(n, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().round().long()
    h = (area / aspect).sqrt().round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    u = torch.rand(n, tries, 2, generator=g, dtype=torch.float64)
    first = ok.long().argmax(1)  # the first try that fits (0 when none does)
    pick = torch.arange(n)
    h, w = h[pick, first], w[pick, first]
    top = (u[pick, first, 0] * (height - h + 1)).floor().long()
    left = (u[pick, first, 1] * (width - w + 1)).floor().long()
    fallback = ~ok.any(1)
    if fallback.any():  # torchvision's fallback: the centre, at the nearest allowed aspect ratio
        r = width / height
        fh, fw = (height, width)
        if r < min(ratio):
            fw, fh = width, round(width / min(ratio))
        elif r > max(ratio):
            fh, fw = height, round(height * max(ratio))
        h[fallback], w[fallback] = fh, fw
        top[fallback], left[fallback] = (height - fh) // 2, (width - fw) // 2
    return torch.stack([top, left, h, w], 1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> each image's box cut out and resized (bilinear, antialiased as
    torchvision's RandomResizedCrop) to ``size``: uint8 ``(B, C, *size)``."""
    from .. import images as imgs

    out = torch.empty(images.shape[0], images.shape[1], *size, dtype=torch.uint8, device=images.device)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        out[i] = imgs.resize(images[i, :, top : top + h, left : left + w], size)
    return out


def random_resized_crop(
    x: torch.Tensor,
    g: torch.Generator,
    scale: tuple[float, float],
    size: tuple[int, int] | None = None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop of a batch to ``size`` (default: its own): a seeded box per image."""
    boxes = random_resized_boxes(x.shape[0], x.shape[-2], x.shape[-1], g, scale, ratio)
    return resized_crops(x, boxes, size or (x.shape[-2], x.shape[-1]))


def random_hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_erase(
    x: torch.Tensor, g: torch.Generator, p: float, area: tuple[float, float] = (0.02, 1 / 3)
) -> torch.Tensor:
    """Random erasing: a rectangle of 2-33 % of the image, aspect 0.3-3.3, set to 0 (the mean
    after normalisation) in each image with probability ``p``."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    frac = torch.empty(b).uniform_(*area, generator=g)
    log_ratio = torch.empty(b).uniform_(math.log(0.3), math.log(1 / 0.3), generator=g)
    ratio = log_ratio.exp()
    eh = (frac * h * w * ratio).sqrt().round().clamp(1, h).long()
    ew = (frac * h * w / ratio).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1)).floor().long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1)).floor().long()
    on = torch.rand(b, generator=g) < p
    ys, xs = torch.arange(h), torch.arange(w)
    mask = (
        ((ys[None, :] >= y0[:, None]) & (ys[None, :] < (y0 + eh)[:, None]))[:, :, None]
        & ((xs[None, :] >= x0[:, None]) & (xs[None, :] < (x0 + ew)[:, None]))[:, None, :]
        & on[:, None, None]
    )
    return x.masked_fill(mask[:, None].to(x.device), 0.0)


class BatchAugment:
    """Training augmentation of whole batches, every random draw from a generator seeded by
    ``(seed, epoch, batch)``.

    ``__call__`` takes uint8 images on the model's device and integer labels and returns
    normalised float images and targets: class indices, or (B, classes) soft targets when
    MixUp/CutMix is on.
    """

    def __init__(
        self, config: AugmentConfig, mean: Sequence[float], std: Sequence[float], num_classes: int, seed: int
    ) -> None:
        self.config = config
        self.mean, self.std = list(mean), list(std)
        self.num_classes = num_classes
        self.seed = seed
        self._policy = None
        if config.auto_augment != "none":
            from torchvision.transforms import v2

            if config.auto_augment == "randaugment":
                self._policy = v2.RandAugment(config.randaugment_ops, config.randaugment_magnitude)
            else:
                self._policy = v2.TrivialAugmentWide()
        self._mix = None
        if config.mixup > 0 or config.cutmix > 0:
            from torchvision.transforms import v2

            mixes = []
            if config.mixup > 0:
                mixes.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
            if config.cutmix > 0:
                mixes.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
            self._mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        seed = derive_seed(self.seed, Stream.AUGMENT, epoch, batch)
        g = torch.Generator().manual_seed(seed)
        x = images
        if c.crop_scale is not None:  # first, as timm and torchvision order it: crop, flip, policy
            x = random_resized_crop(x, g, (c.crop_scale, 1.0), c.crop_size)
        if self._policy is not None:  # torchvision draws from the global RNG: fork it, seeded
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                groups = x.split(max(1, math.ceil(x.shape[0] / max(1, c.auto_augment_groups))))
                x = torch.cat([self._policy(chunk) for chunk in groups])
        x = random_crop(x, c.crop_padding, g)
        if c.hflip:
            x = random_hflip(x, g)
        x = normalize(x, self.mean, self.std)
        x = random_erase(x, g, c.erase_prob)
        y = labels
        if self._mix is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed ^ 0x5EED)
                x, y = self._mix(x, labels)
        return x, y
