"""Datasets as uint8 arrays (in memory, or mapped from a disk cache), shards that stream, and
augmentation that runs on whole batches.

- :mod:`vitkit.data.source`: :class:`DataSource`, what ``--data`` names, resolved once;
- :mod:`vitkit.data.splits`: the one hold-out rule (validation share, test share);
- :mod:`vitkit.data.dataset`: :class:`ImageDataset`, the seed streams, the seeded epoch order;
- :mod:`vitkit.data.builtin`: Fashion-MNIST, MNIST, CIFAR-10 and scikit-learn's digits;
- :mod:`vitkit.data.folders`: your own images, as class folders or a CSV of ``path,label``;
- :mod:`vitkit.data.cache`: such images decoded once into a memory-mapped file on disk;
- :mod:`vitkit.data.shards`, :mod:`vitkit.data.stream`: WebDataset shards, decoded as they stream;
- :mod:`vitkit.data.augment`: batched, seeded augmentation on the model's device.

:func:`resolve_source` is the one way in: a dataset by name or path, classified once; its
:meth:`~DataSource.load` prepares (channels, size, border) the images by the run's
:class:`~vitkit.preprocess.Preprocess` and holds them where :func:`choose_mode` says.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS
from ..preprocess import Preprocess
from .augment import AugmentConfig, BatchAugment, random_crop, random_erase, random_hflip
from .builtin import (
    BUILTIN,
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    cache_dir,
    candidate_dirs,
    download_dataset,
    find_dataset_dir,
    load_idx_dataset,
    read_idx,
)
from .dataset import ImageDataset, MappedImages, Stream, derive_seed, epoch_order, iterate_batches
from .folders import Listing, list_images, scan_image_folder
from .shards import ShardSet
from .source import DATA_MODES, DataSource, choose_mode, resolve_source
from .splits import SplitRule, Splits, hold_out, shard_tail, split


def load_dataset(
    data: str | os.PathLike | DataSource,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    skip_bad_images: bool = False,
    class_names: Sequence[str] | None = None,
    download: bool = True,
    mode: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """:meth:`DataSource.load` of what ``data`` names: one call for a script or a notebook."""
    source = resolve_source(data, data_dir)
    return source.load(split, preprocess, skip_bad_images, class_names, download, mode, cache_dir)


__all__ = [
    "BUILTIN",
    "CIFAR10_CLASSES",
    "DATA_MODES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "BatchAugment",
    "DataError",
    "DataSource",
    "ImageDataset",
    "Listing",
    "MappedImages",
    "ShardSet",
    "SplitRule",
    "Splits",
    "Stream",
    "cache_dir",
    "candidate_dirs",
    "choose_mode",
    "derive_seed",
    "download_dataset",
    "epoch_order",
    "find_dataset_dir",
    "hold_out",
    "iterate_batches",
    "list_images",
    "load_dataset",
    "load_idx_dataset",
    "random_crop",
    "random_erase",
    "random_hflip",
    "read_idx",
    "resolve_source",
    "scan_image_folder",
    "shard_tail",
    "split",
]
