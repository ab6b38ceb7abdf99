"""Datasets held in memory as uint8 tensors, and augmentation that runs on whole batches.

- :mod:`vitkit.data.dataset`: :class:`ImageDataset`, the split, the seeded epoch order;
- :mod:`vitkit.data.builtin`: Fashion-MNIST, MNIST, CIFAR-10 and scikit-learn's digits;
- :mod:`vitkit.data.folders`: your own images, as class folders or a CSV of ``path,label``;
- :mod:`vitkit.data.augment`: batched, seeded augmentation on the model's device.

:func:`load_dataset` is the one entry point: a dataset by name or path, prepared (channels, size,
border) by the run's :class:`~vitkit.preprocess.Preprocess`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS
from ..preprocess import Preprocess
from .augment import AugmentConfig, BatchAugment, random_crop, random_erase, random_hflip
from .builtin import (
    BUILTIN,
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    NATIVE_FORMAT,
    cache_dir,
    candidate_dirs,
    canonical_dataset,
    download_dataset,
    find_dataset_dir,
    load_builtin,
    load_idx_dataset,
    read_idx,
)
from .dataset import ImageDataset, derive_seed, epoch_order, iterate_batches, split_dataset
from .folders import folder_channels, load_image_folder, scan_image_folder


def _folder(name: str, split: str) -> Path:
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown dataset {name!r}: choose one of {', '.join(BUILTIN)}, or give an image folder "
            "(one sub-folder per class) or a CSV of path,label"
        )
    if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        return path / split
    return path


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    skip_bad_images: bool = False,
    class_names: Sequence[str] | None = None,
    download: bool = True,
) -> ImageDataset:
    """A dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``, ``digits``) or by path (an
    image folder or CSV), its images prepared by ``preprocess``. ``split`` is ``train`` or
    ``test``; an image folder with ``train/`` and ``test/`` sub-folders gives each, any other
    folder gives all its images for either split. Without ``preprocess`` a built-in dataset
    comes at its native size; an image folder needs one (its images differ in size)."""
    if split not in ("train", "test"):
        raise DataError(f"split={split!r} must be 'train' or 'test'")
    key = canonical_dataset(name)
    if key in BUILTIN:
        ds = load_builtin(key, split, data_dir, download)
        return ds.prepared(preprocess) if preprocess is not None else ds
    path = _folder(name, split)
    if preprocess is None:
        raise DataError(f"{name}: an image folder needs a size to prepare its images at (--image-size)")
    return load_image_folder(path, preprocess, skip_bad_images, class_names)


def image_files(name: str, split: str = "train") -> list[Path] | None:
    """The files of an image folder or CSV split, in the order :func:`load_dataset` reads them;
    None for a built-in dataset (its images have no files)."""
    if canonical_dataset(name) in BUILTIN:
        return None
    return scan_image_folder(_folder(name, split))[0]


def native_format(name: str) -> tuple[tuple[int, int] | None, int]:
    """(size, channels) of a dataset as stored: a built-in one's own, or for an image folder no
    size (its images differ) and 1 channel when every image is grayscale, else 3."""
    key = canonical_dataset(name)
    if key in NATIVE_FORMAT:
        return NATIVE_FORMAT[key]
    return None, folder_channels(_folder(name, "train"))


def has_test_split(name: str) -> bool:
    key = canonical_dataset(name)
    if key in BUILTIN:
        return True
    path = Path(name).expanduser()
    return path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir()


__all__ = [
    "BUILTIN",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "BatchAugment",
    "DataError",
    "ImageDataset",
    "cache_dir",
    "candidate_dirs",
    "canonical_dataset",
    "derive_seed",
    "download_dataset",
    "epoch_order",
    "find_dataset_dir",
    "has_test_split",
    "iterate_batches",
    "image_files",
    "load_dataset",
    "load_idx_dataset",
    "native_format",
    "random_crop",
    "random_erase",
    "random_hflip",
    "read_idx",
    "scan_image_folder",
    "split_dataset",
]
