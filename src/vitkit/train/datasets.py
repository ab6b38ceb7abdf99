"""A run's images: the train, validation and test sets, and the Preprocess that made them.

The Preprocess is fixed first from the config and the dataset's own format (its size and
channels), every split is prepared with it, and its normalisation then comes from the training
images as prepared, border included.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
from dataclasses import dataclass

import torch

from ..data import (
    ImageDataset,
    ShardSet,
    derive_seed,
    has_test_split,
    is_shard_location,
    load_dataset,
    native_format,
    shard_split,
    split_dataset,
)
from ..data.dataset import pixel_mean_std
from ..data.shards import iter_samples
from ..errors import ConfigError, DataError
from ..images import decode_image
from ..preprocess import Preprocess
from .config import TrainConfig
from .lr_grid import hold_out

log = logging.getLogger(__name__)

STATISTICS_SAMPLE = 1000  # streamed shards: the images the normalisation statistics come from


@dataclass
class StreamedSet:
    """Training images streamed from shards (:mod:`vitkit.data.stream`): what a run knows of
    them without reading them."""

    shards: ShardSet
    image_size: tuple[int, int]
    channels: int
    name: str

    def __len__(self) -> int:
        return self.shards.samples

    @property
    def class_names(self) -> list[str]:
        return list(self.shards.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.shards.class_names)


@dataclass
class RunData:
    train: ImageDataset | StreamedSet
    val: ImageDataset
    test: ImageDataset | None  # None when the dataset has no test split (val is held out)
    val_is_test: bool
    preprocess: Preprocess
    held_out: str | None = None  # with cfg.hold_out: how the validation images were chosen

    @property
    def final(self) -> ImageDataset:
        """The set the finished run is scored on: the test split, else the validation set."""
        return self.test if self.test is not None else self.val


def scratch_geometry(cfg: TrainConfig, model_image_size: tuple[int, int]) -> Preprocess:
    """How this run prepares its images, before their statistics are known: the dataset's own
    size and channels unless the config says otherwise (an image folder: the model's size)."""
    native_size, native_channels = native_format(cfg.data)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else (native_size or model_image_size)
    fit = "crop" if cfg.crop_fraction < 1 else "stretch"
    channels = cfg.channels or native_channels
    return Preprocess(size, channels, pad=cfg.pad, fit=fit, crop_fraction=cfg.crop_fraction, dataset=cfg.data)


def stored_geometry(cfg: TrainConfig, geometry: Preprocess) -> Preprocess:
    """How the training images are kept: with a random-resized crop (``--crop-scale``) and an
    evaluation that cuts the centre (``--crop-fraction`` < 1), the shorter side at
    ``image_size / crop_fraction`` and its whole centre square (ImageNet's 256 for 224 px), so
    the crops draw on more pixels than they keep; otherwise as evaluated."""
    if cfg.crop_scale is None or geometry.fit != "crop" or geometry.crop_fraction >= 1 or geometry.pad:
        return geometry
    size = tuple(math.floor(s / geometry.crop_fraction) for s in geometry.image_size)
    return geometry.replace(image_size=size, crop_fraction=1.0)


def as_evaluated(ds: ImageDataset, stored: Preprocess, geometry: Preprocess) -> ImageDataset:
    """Training images held out for validation, as evaluation prepares images (the centre cut
    from the larger square they were kept at), in memory."""
    return ds if stored == geometry else ds.prepared(geometry)


def _load(cfg: TrainConfig, split: str, geometry: Preprocess) -> ImageDataset:
    ds = load_dataset(
        cfg.data, split, cfg.data_dir, geometry, cfg.skip_bad_images, mode=cfg.data_mode, cache_dir=cfg.cache_dir
    )
    return ds.select_classes(cfg.classes) if cfg.classes else ds


def _splits(cfg: TrainConfig, geometry: Preprocess) -> tuple[ImageDataset, ImageDataset, ImageDataset | None, bool]:
    """(train, validation, test, validation is the test split)."""
    train = _load(cfg, "train", stored_geometry(cfg, geometry))
    test = None
    if has_test_split(cfg.data):
        test = _load(cfg, "test", geometry)
        if test.class_names != train.class_names:
            raise DataError(f"{cfg.data}: test classes {test.class_names} differ from train {train.class_names}")
    fraction = cfg.val_fraction if cfg.val_fraction is not None else (0.0 if test is not None else 0.1)
    if fraction > 0:
        train, val = split_dataset(train, fraction, derive_seed(cfg.seed, 0, 7))
        return train, as_evaluated(val, stored_geometry(cfg, geometry), geometry), test, False
    if test is None:
        raise DataError(f"{cfg.data} has no test split: give --val-fraction > 0")
    return train, test, test, True


def prepare_data(cfg: TrainConfig, geometry: Preprocess, own_statistics: bool = True) -> RunData:
    """Load train / validation / test as the config says (classes, split, subsets), each prepared
    by ``geometry``; normalised by ``--mean/--std`` or the training images' own statistics when
    ``own_statistics`` (from scratch), else by ``geometry``'s (a pre-trained source's)."""
    if cfg.data_mode == "stream" or is_shard_location(cfg.data):
        return _stream_data(cfg, geometry, own_statistics)
    train, val, test, val_is_test = _splits(cfg, geometry)
    if cfg.per_class:
        train = train.per_class(cfg.per_class, derive_seed(cfg.seed, 0, 10))
    if cfg.limit_train:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, 0, 8))
        train = train.subset(torch.randperm(len(train), generator=g)[: cfg.limit_train])
    if cfg.limit_val:
        val = val.subset(torch.arange(min(cfg.limit_val, len(val))))
        test = val if val_is_test else test
    held_out = None
    if cfg.hold_out:  # a learning-rate trial: validate on part of the training images, never the test
        train, held, how = hold_out(train, cfg.seed)
        val = as_evaluated(held if held is not None else train, stored_geometry(cfg, geometry), geometry)
        test, val_is_test = None, False
        held_out = how if held is not None else None
    preprocess = geometry.replace(class_names=train.class_names)
    if own_statistics:  # from scratch: --mean/--std, else the training images' own
        mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else train.mean_std()
        preprocess = preprocess.replace(mean=mean, std=std)
    return RunData(train, val, test, val_is_test, preprocess, held_out)


def _stream_data(cfg: TrainConfig, geometry: Preprocess, own_statistics: bool) -> RunData:
    """Training shards to stream, and the test shards (decoded once into the disk cache) to
    validate and score on."""
    if not is_shard_location(cfg.data):
        raise DataError("--data-mode stream reads shards: write them with `vitkit shards FOLDER OUT`, then --data OUT")
    given = {
        "--classes": cfg.classes,
        "--per-class": cfg.per_class,
        "--limit-train": cfg.limit_train,
        "--val-fraction": cfg.val_fraction,
        "--lr-grid": cfg.hold_out or cfg.lr_grid,
    }
    unsupported = [flag for flag, value in given.items() if value]
    if unsupported:
        raise ConfigError(
            f"{', '.join(unsupported)}: streamed shards are read in order, not picked from; use the images "
            "as a folder (memory or the disk cache), or write shards of the subset you want"
        )
    shards = ShardSet.open(shard_split(cfg.data, "train"))
    if not has_test_split(cfg.data):
        raise DataError(
            f"{cfg.data}: streaming trains on shards and validates on test shards; write both with "
            "`vitkit shards FOLDER OUT` from a folder holding train/ and test/"
        )
    test = _load(cfg, "test", geometry)
    if test.class_names != list(shards.class_names):
        raise DataError(f"{cfg.data}: test classes {test.class_names} differ from train {shards.class_names}")
    if cfg.limit_val:
        test = test.subset(torch.arange(min(cfg.limit_val, len(test))))
    preprocess = geometry.replace(class_names=shards.class_names)
    if own_statistics:
        mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else _stream_statistics(shards, geometry)
        preprocess = preprocess.replace(mean=mean, std=std)
    train = StreamedSet(shards, geometry.input_size, geometry.channels, cfg.data)
    log.info("%s: %d training images streamed from %d shard(s)", cfg.data, len(train), len(shards.urls))
    return RunData(train, test, test, True, preprocess)


def _stream_statistics(shards: ShardSet, geometry: Preprocess) -> tuple[list[float], list[float]]:
    """The normalisation of the first :data:`STATISTICS_SAMPLE` images of the shards (written in
    a shuffled order, so a sample of every class), prepared as for evaluation."""
    samples = itertools.islice(iter_samples(shards.urls), STATISTICS_SAMPLE)
    images = [geometry.pixels(decode_image(io.BytesIO(s.data), name=s.key)) for s in samples]
    return pixel_mean_std(torch.stack(images))
