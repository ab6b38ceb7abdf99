"""An image dataset held in memory as one uint8 tensor, and the seeded order it is visited in.

With two CPU cores a per-image PIL pipeline costs as much as the model itself, so a dataset is
decoded once into a ``(N, C, H, W)`` uint8 tensor, already at the model's input size (resized
and padded by the run's :class:`~vitkit.preprocess.Preprocess`). Every random choice about it
(the split, the order of an epoch) depends only on a seed and an epoch, so a resumed run visits
exactly the images an uninterrupted run would have visited.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import DataError
from ..preprocess import Preprocess


@dataclass
class ImageDataset:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64, all in memory."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (--skip-bad-images)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor | Sequence[int], name: str | None = None) -> ImageDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index], self.class_names, name or self.name)

    def select_classes(self, classes: Sequence[str]) -> ImageDataset:
        """Only the images of ``classes`` (names, or indices into :attr:`class_names`), labelled
        0..k-1 in the order given."""
        names = [self._class_name(c) for c in classes]
        if len(set(names)) != len(names):
            raise DataError(f"classes {list(classes)} name a class twice")
        old = torch.tensor([self.class_names.index(n) for n in names])
        keep = (self.labels[:, None] == old[None, :]).nonzero()  # (image, position in `names`)
        return ImageDataset(self.images[keep[:, 0]], keep[:, 1], names, self.name)

    def _class_name(self, c: str | int) -> str:
        text = str(c).strip()
        if text in self.class_names:
            return text
        if text.isdigit() and int(text) < self.num_classes:
            return self.class_names[int(text)]
        raise DataError(
            f"class {text!r} is not one of {self.name or 'the dataset'}'s: {self.class_names} (or 0-{self.num_classes - 1})"
        )

    def per_class(self, n: int, seed: int) -> ImageDataset:
        """A seeded ``n`` images of every class (few-shot sets); an error when a class has fewer."""
        k, count = smallest_class(self.labels, self.num_classes)
        if self.num_classes and count < n:
            raise DataError(
                f"{n} images per class asked for, but class {self.class_names[k]!r} has {count}; give at most {count}"
            )
        return self.subset(per_class_index(self.labels, self.num_classes, n, seed))

    def mean_std(self, chunk: int = 4096) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation in [0, 1] units (for normalisation), summed in
        float64 chunks so that no float copy of the whole set is ever made."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        for x in self.images.split(chunk):
            x = x.to(torch.float64).div_(255).transpose(0, 1).reshape(self.channels, -1)
            total += x.sum(1)
            squares += x.square().sum(1)
        n = self.images.numel() // self.channels
        mean = total / n
        std = ((squares - n * mean.square()) / max(n - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-3)
        return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]

    def prepared(self, preprocess: Preprocess, chunk: int = 4096) -> ImageDataset:
        """The images as ``preprocess`` makes them (channels, size, border), in chunks."""
        if preprocess.keeps(self.image_size, self.channels):
            return self
        images = torch.cat([preprocess.pixels(x) for x in self.images.split(chunk)])
        return ImageDataset(images, self.labels, self.class_names, self.name, self.skipped)


def per_class_index(labels: torch.Tensor, num_classes: int, n: int | Sequence[int], seed: int) -> torch.Tensor:
    """Sorted indices of a seeded ``n`` images of every class (all of a class that has fewer);
    ``n`` may give each class its own count."""
    g = torch.Generator().manual_seed(seed)
    counts = [n] * num_classes if isinstance(n, int) else list(n)
    picks = [
        index[torch.randperm(len(index), generator=g)[:k]]
        for k, index in zip(counts, ((labels == c).nonzero()[:, 0] for c in range(num_classes)), strict=True)
    ]
    return torch.cat(picks).sort().values


def smallest_class(labels: torch.Tensor, num_classes: int) -> tuple[int, int]:
    """(index, image count) of the class with the fewest images."""
    if not num_classes:
        return 0, 0
    counts = torch.bincount(labels, minlength=num_classes)
    k = int(counts.argmin())
    return k, int(counts[k])


def split_dataset(ds: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """(train, validation): a seeded random ``fraction`` of ``ds`` held out for validation."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction {fraction} must be between 0 and 1")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(ds) * fraction))
    if n_val >= len(ds):
        raise DataError(f"validation fraction {fraction} leaves no training images out of {len(ds)}")
    return ds.subset(order[n_val:], ds.name), ds.subset(order[:n_val], ds.name)


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (e.g. epoch, stream)."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    for p in parts:
        x = (x * 6364136223846793005 + 1442695040888963407 + (p & 0xFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled indices of ``epoch``: a function of (seed, epoch) only. Under torchrun every
    process walks this same order and trains on its slice of each global batch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 0)))


def iterate_batches(
    n: int, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False
) -> Iterator[torch.Tensor]:
    index = order if order is not None else torch.arange(n)
    stop = len(index) - (len(index) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield index[start : start + batch_size]
