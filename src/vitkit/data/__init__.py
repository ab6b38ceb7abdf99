"""Datasets as uint8 arrays (in memory, or mapped from a disk cache), shards that stream, and
augmentation that runs on whole batches.

- :mod:`vitkit.data.dataset`: :class:`ImageDataset`, the split, the seeded epoch order;
- :mod:`vitkit.data.builtin`: Fashion-MNIST, MNIST, CIFAR-10 and scikit-learn's digits;
- :mod:`vitkit.data.folders`: your own images, as class folders or a CSV of ``path,label``;
- :mod:`vitkit.data.cache`: such images decoded once into a memory-mapped file on disk;
- :mod:`vitkit.data.shards`, :mod:`vitkit.data.stream`: WebDataset shards, decoded as they stream;
- :mod:`vitkit.data.augment`: batched, seeded augmentation on the model's device.

:func:`load_dataset` is the one entry point: a dataset by name or path, prepared (channels, size,
border) by the run's :class:`~vitkit.preprocess.Preprocess`, held where :func:`choose_mode` says.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS
from ..preprocess import Preprocess
from ..runtime import available_memory
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
from .cache import CacheSource, cached_image_folder, cached_images
from .dataset import ImageDataset, MappedImages, derive_seed, epoch_order, iterate_batches, split_dataset
from .folders import Listing, folder_channels, list_images, load_image_folder, scan_image_folder
from .shards import ShardSet, is_shard_location, shard_split

log = logging.getLogger(__name__)

DATA_MODES = ("auto", "memory", "cache", "stream")
MEMORY_SHARE = 4  # auto: in memory while the decoded pixels take at most 1/4 of available memory


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
    mode: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """A dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``, ``digits``) or by path (an
    image folder or CSV), its images prepared by ``preprocess``. ``split`` is ``train`` or
    ``test``; an image folder with ``train/`` and ``test/`` sub-folders gives each, any other
    folder gives all its images for either split. Without ``preprocess`` a built-in dataset
    comes at its native size; an image folder needs one (its images differ in size).

    ``mode`` says where the pixels are held: ``memory``, a ``cache`` on disk (``cache_dir``), or
    ``auto``: :func:`choose_mode`'s rule, logged with its reason."""
    if split not in ("train", "test"):
        raise DataError(f"split={split!r} must be 'train' or 'test'")
    if mode not in DATA_MODES:
        raise DataError(f"--data-mode {mode!r}: choose one of {', '.join(DATA_MODES)}")
    key = canonical_dataset(name)
    if is_shard_location(name):
        return _shard_images(name, split, preprocess, skip_bad_images, cache_dir)
    if key in BUILTIN:
        if mode in ("cache", "stream"):
            raise DataError(f"--data-mode {mode}: {key} is held in memory (it is small); give an image folder or CSV")
        ds = load_builtin(key, split, data_dir, download)
        return ds.prepared(preprocess) if preprocess is not None else ds
    path = _folder(name, split)
    if preprocess is None:
        raise DataError(f"{name}: an image folder needs a size to prepare its images at (--image-size)")
    listing = list_images(path, class_names)
    chosen, why = choose_mode(mode, len(listing.files) * preprocess.channels * math.prod(preprocess.input_size))
    log.info("%s (%s): %s", path, split, why)
    if chosen == "cache":
        return cached_image_folder(listing, preprocess, skip_bad_images, cache_dir)
    return load_image_folder(listing, preprocess, skip_bad_images)


def _shard_images(
    location: str, split: str, preprocess: Preprocess | None, skip: bool, cache_dir: str | os.PathLike | None
) -> ImageDataset:
    """A shard set decoded once into the disk cache: how evaluation, probes and features read
    shards (training streams them instead, :mod:`vitkit.data.stream`)."""
    where = shard_split(location, split)
    if where is None:
        raise DataError(f"{location} has no {split} shards; write them from a folder with train/ and test/")
    shards = ShardSet.open(where)
    if preprocess is None:
        raise DataError(f"{location}: shards need a size to prepare their images at (--image-size)")
    log.info("%s (%s): shards, decoded once into the disk cache", where, split)
    return cached_images(CacheSource.shards(shards), preprocess, skip, cache_dir)


def choose_mode(requested: str, decoded_bytes: int, available: int | None = None) -> tuple[str, str]:
    """(mode, reason) for an image folder or CSV whose prepared pixels take ``decoded_bytes``.

    The rule: in memory while they take at most a quarter of the memory available (the kernel's
    estimate, or the memory cgroup's limit when lower: training needs the rest), else the disk
    cache. ``--data-mode`` overrides it; streaming is for shards (``vitkit shards``)."""
    size = f"{decoded_bytes / 1e6:,.1f} MB decoded"
    if requested == "stream":
        raise DataError("--data-mode stream reads shards: write them with `vitkit shards FOLDER OUT`, then --data OUT")
    if requested != "auto":
        return requested, f"{size}, held {'in memory' if requested == 'memory' else 'in the disk cache'} (--data-mode)"
    available = available if available is not None else available_memory()
    if decoded_bytes * MEMORY_SHARE <= available:
        return "memory", f"{size}, at most 1/{MEMORY_SHARE} of the {available / 1e6:,.0f} MB available: in memory"
    return "cache", f"{size}, over 1/{MEMORY_SHARE} of the {available / 1e6:,.0f} MB available: the disk cache"


def image_files(name: str, split: str = "train") -> list[Path] | None:
    """The files of an image folder or CSV split, in the order :func:`load_dataset` reads them;
    None for a built-in dataset or shards (their images have no files of their own)."""
    if canonical_dataset(name) in BUILTIN or is_shard_location(name):
        return None
    return scan_image_folder(_folder(name, split))[0]


def native_format(name: str) -> tuple[tuple[int, int] | None, int]:
    """(size, channels) of a dataset as stored: a built-in one's own, or for an image folder no
    size (its images differ) and 1 channel when every image is grayscale, else 3."""
    key = canonical_dataset(name)
    if key in NATIVE_FORMAT:
        return NATIVE_FORMAT[key]
    if is_shard_location(name):
        return None, 3  # photos; --channels 1 makes them gray
    return None, folder_channels(_folder(name, "train"))


def has_test_split(name: str) -> bool:
    key = canonical_dataset(name)
    if key in BUILTIN:
        return True
    if is_shard_location(name):
        return shard_split(name, "test") is not None
    path = Path(name).expanduser()
    return path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir()


__all__ = [
    "BUILTIN",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "BatchAugment",
    "DATA_MODES",
    "DataError",
    "ImageDataset",
    "ShardSet",
    "Listing",
    "MappedImages",
    "cache_dir",
    "candidate_dirs",
    "canonical_dataset",
    "choose_mode",
    "derive_seed",
    "download_dataset",
    "epoch_order",
    "find_dataset_dir",
    "has_test_split",
    "is_shard_location",
    "iterate_batches",
    "list_images",
    "image_files",
    "load_dataset",
    "load_idx_dataset",
    "native_format",
    "random_crop",
    "random_erase",
    "random_hflip",
    "read_idx",
    "scan_image_folder",
    "shard_split",
    "split_dataset",
]
