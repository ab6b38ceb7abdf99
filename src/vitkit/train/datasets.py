"""A run's images: train, validation and test, and the Preprocess that made them.

The Preprocess is fixed first from the config and the dataset's own format (its size and
channels), every split is prepared with it, and its normalisation then comes from the training
images as prepared, border included. Which images train, choose and are scored is the one rule
of :mod:`vitkit.data.splits`: the run's choices (``best/``, ``--lr-grid``) see only the
validation share, and the test images are scored once, when the run ends.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..data import DataSource, ImageDataset, ShardSet, Stream, derive_seed, shard_tail, split
from ..data.dataset import pixel_mean_std
from ..data.shards import Sample, read_shard
from ..errors import ConfigError, DataError
from ..images import decode_image
from ..preprocess import Preprocess
from .config import TrainConfig

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
    """What a run trains on, chooses on and is scored on, and how its images were prepared."""

    source: DataSource
    train: ImageDataset | StreamedSet
    val: ImageDataset | None  # chooses best/ (and an --lr-grid rate); None with --val-fraction 0
    test: ImageDataset | None  # scored once, when the run ends; None in an --lr-grid trial (never read)
    preprocess: Preprocess
    split: dict[str, Any]  # the rule and what it gave, for train_config.json

    @property
    def final(self) -> ImageDataset:
        """The set the finished run is scored on: the test images, or in an --lr-grid trial the
        validation share."""
        final = self.test if self.test is not None else self.val
        if final is None:
            raise ConfigError(
                "a --trial is scored on the validation share, and none was held out (--val-fraction 0, or no class "
                "has two training images): give --val-fraction > 0, and at least two images of a class"
            )
        return final

    @property
    def final_split(self) -> str:
        """What :attr:`final` is: ``test`` (the dataset's own split), ``test share`` (held out of a
        folder without one) or ``validation`` (an --lr-grid trial)."""
        if self.test is None:
            return "validation"
        return "test" if self.split["test_from"] == "the test split" else "test share"


def scratch_geometry(cfg: TrainConfig, source: DataSource, model_image_size: tuple[int, int]) -> Preprocess:
    """How this run prepares its images, before their statistics are known: the dataset's own
    size and channels unless the config says otherwise (an image folder: the model's size)."""
    native_size, native_channels = source.native_format
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else (native_size or model_image_size)
    fit = cfg.fit or ("crop" if cfg.crop_fraction < 1 else "stretch")
    channels = cfg.channels or native_channels
    return Preprocess(size, channels, pad=cfg.pad, fit=fit, crop_fraction=cfg.crop_fraction, dataset=source.text)


def stored_geometry(cfg: TrainConfig, geometry: Preprocess) -> Preprocess:
    """How the training images are kept: with a random-resized crop (``--crop-scale``) and an
    evaluation that cuts the centre (``--crop-fraction`` < 1), the shorter side at
    ``image_size / crop_fraction`` and its whole centre square (ImageNet's 256 for 224 px), so
    the crops draw on more pixels than they keep; otherwise as evaluated."""
    if cfg.crop_scale is None or geometry.fit != "crop" or geometry.crop_fraction >= 1 or geometry.pad:
        return geometry
    size = tuple(math.floor(s / geometry.crop_fraction) for s in geometry.image_size)
    return geometry.replace(image_size=size, crop_fraction=1.0)


def as_evaluated(ds: ImageDataset | None, stored: Preprocess, geometry: Preprocess) -> ImageDataset | None:
    """Training images held out for validation or testing, as evaluation prepares images (the
    centre cut from the larger square they were kept at), in memory."""
    return ds if ds is None or stored == geometry else ds.prepared(geometry)


def _load(cfg: TrainConfig, source: DataSource, split_name: str, geometry: Preprocess) -> ImageDataset:
    return source.load(split_name, geometry, cfg.skip_bad_images, mode=cfg.data_mode, cache_dir=cfg.cache_dir)


def _counts(*sets: ImageDataset | StreamedSet | None) -> dict[str, int]:
    return {name: len(ds) if ds is not None else 0 for name, ds in zip(("train", "val", "test"), sets, strict=True)}


def split_record(cfg: TrainConfig, test_from: str, counts: dict[str, int]) -> dict[str, Any]:
    """What ``train_config.json`` keeps of the split, so that ``evaluate``, ``probe`` and
    ``embed`` draw the very same images again."""
    return {"rule": cfg.split_rule().to_dict(), "test_from": test_from, "classes": cfg.classes, "counts": counts}


def prepare_data(cfg: TrainConfig, source: DataSource, geometry: Preprocess, own_statistics: bool = True) -> RunData:
    """Train / validation / test as the config says (the split rule, classes, subsets), each
    prepared by ``geometry``; normalised by ``--mean/--std`` or the training images' own
    statistics when ``own_statistics`` (from scratch), else by ``geometry``'s (a pre-trained
    source's). The test split is loaded now (a missing one fails before training, not after),
    and read only when the run ends."""
    if cfg.data_mode == "stream" or source.kind == "shards":
        return _stream_data(cfg, source, geometry, own_statistics)
    stored = stored_geometry(cfg, geometry)
    images = _load(cfg, source, "train", stored)
    test = _load(cfg, source, "test", geometry) if source.has_test and cfg.reads_test else None
    parts = split(images, test, cfg.split_rule(), source.has_test, cfg.classes)
    train, val = parts.train, as_evaluated(parts.val, stored, geometry)
    test = as_evaluated(parts.test, stored, geometry) if cfg.reads_test else None
    if cfg.per_class:
        train = train.per_class(cfg.per_class, derive_seed(cfg.seed, Stream.PER_CLASS))
    if cfg.limit_train:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.LIMIT_TRAIN))
        train = train.subset(torch.randperm(len(train), generator=g)[: cfg.limit_train])
    if cfg.limit_val and val is not None:
        val = val.subset(torch.arange(min(cfg.limit_val, len(val))))
    preprocess = geometry.replace(class_names=train.class_names)
    if own_statistics:  # from scratch: --mean/--std, else the training images' own
        mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else train.mean_std()
        preprocess = preprocess.replace(mean=mean, std=std)
    record = split_record(cfg, parts.test_from, _counts(train, val, test))
    return RunData(source, train, val, test, preprocess, record)


def _stream_data(cfg: TrainConfig, source: DataSource, geometry: Preprocess, own_statistics: bool) -> RunData:
    """Training shards to stream, less their validation share (their last samples, decoded once
    into the disk cache), and the test shards (likewise) to score at the end."""
    if source.kind != "shards":
        raise DataError("--data-mode stream reads shards: write them with `vitkit shards FOLDER OUT`, then --data OUT")
    given = {"--classes": cfg.classes, "--per-class": cfg.per_class, "--limit-train": cfg.limit_train}
    unsupported = [flag for flag, value in given.items() if value]
    if unsupported:
        raise ConfigError(
            f"{', '.join(unsupported)}: streamed shards are read in order, not picked from; use the images "
            "as a folder (memory or the disk cache), or write shards of the subset you want"
        )
    if not source.has_test:
        raise DataError(
            f"{source.text}: streaming trains on shards and scores the test shards at the end; write both with "
            "`vitkit shards FOLDER OUT` from a folder holding train/ and test/"
        )
    shards, val_shards = shard_tail(source.shard_set("train"), cfg.val_fraction)
    val = source.load_shards(val_shards, geometry, cfg.skip_bad_images, cfg.cache_dir) if val_shards else None
    test = _load(cfg, source, "test", geometry) if cfg.reads_test else None
    for ds in (val, test):
        if ds is not None and ds.class_names != list(shards.class_names):
            raise DataError(f"{source.text}: classes {ds.class_names} differ from the training shards'")
    if cfg.limit_val and val is not None:
        val = val.subset(torch.arange(min(cfg.limit_val, len(val))))
    preprocess = geometry.replace(class_names=shards.class_names)
    if own_statistics:
        mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else _stream_statistics(shards, geometry)
        preprocess = preprocess.replace(mean=mean, std=std)
    train = StreamedSet(shards, geometry.input_size, geometry.channels, source.text)
    log.info("%s: %d training images streamed from %d shard(s)", source.text, len(train), len(shards.urls))
    return RunData(source, train, val, test, preprocess, split_record(cfg, "the test split", _counts(train, val, test)))


def _training_samples(shards: ShardSet) -> Iterator[Sample]:
    """The samples of ``shards``, each shard's first ``count`` only (not its validation tail)."""
    for url, count in zip(shards.urls, shards.counts, strict=True):
        yield from itertools.islice(read_shard(url), count)


def _stream_statistics(shards: ShardSet, geometry: Preprocess) -> tuple[list[float], list[float]]:
    """The normalisation of the first :data:`STATISTICS_SAMPLE` training images of the shards
    (written in a shuffled order, so a sample of every class), prepared as for evaluation."""
    samples = itertools.islice(_training_samples(shards), STATISTICS_SAMPLE)
    images = [geometry.pixels(decode_image(io.BytesIO(s.data), name=s.key)) for s in samples]
    return pixel_mean_std(torch.stack(images))
