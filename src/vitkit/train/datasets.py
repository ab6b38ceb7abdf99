"""A run's images: the train, validation and test sets, and the Preprocess that made them.

The Preprocess is fixed first from the config and the dataset's own format (its size and
channels), every split is prepared with it, and its normalisation then comes from the training
images as prepared, border included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import ImageDataset, derive_seed, has_test_split, load_dataset, native_format, split_dataset
from ..errors import DataError
from ..preprocess import Preprocess
from .config import TrainConfig
from .lr_grid import hold_out


@dataclass
class RunData:
    train: ImageDataset
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
    return Preprocess(size, cfg.channels or native_channels, pad=cfg.pad, dataset=cfg.data)


def _load(cfg: TrainConfig, split: str, geometry: Preprocess) -> ImageDataset:
    ds = load_dataset(cfg.data, split, cfg.data_dir, geometry, cfg.skip_bad_images)
    return ds.select_classes(cfg.classes) if cfg.classes else ds


def _splits(cfg: TrainConfig, geometry: Preprocess) -> tuple[ImageDataset, ImageDataset, ImageDataset | None, bool]:
    """(train, validation, test, validation is the test split)."""
    train = _load(cfg, "train", geometry)
    test = None
    if has_test_split(cfg.data):
        test = _load(cfg, "test", geometry)
        if test.class_names != train.class_names:
            raise DataError(f"{cfg.data}: test classes {test.class_names} differ from train {train.class_names}")
    fraction = cfg.val_fraction if cfg.val_fraction is not None else (0.0 if test is not None else 0.1)
    if fraction > 0:
        train, val = split_dataset(train, fraction, derive_seed(cfg.seed, 0, 7))
        return train, val, test, False
    if test is None:
        raise DataError(f"{cfg.data} has no test split: give --val-fraction > 0")
    return train, test, test, True


def prepare_data(cfg: TrainConfig, geometry: Preprocess, own_statistics: bool = True) -> RunData:
    """Load train / validation / test as the config says (classes, split, subsets), each prepared
    by ``geometry``; normalised by ``--mean/--std`` or the training images' own statistics when
    ``own_statistics`` (from scratch), else by ``geometry``'s (a pre-trained source's)."""
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
        val, test, val_is_test = (held if held is not None else train), None, False
        held_out = how if held is not None else None
    preprocess = geometry.replace(class_names=train.class_names)
    if own_statistics:  # from scratch: --mean/--std, else the training images' own
        mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else train.mean_std()
        preprocess = preprocess.replace(mean=mean, std=std)
    return RunData(train, val, test, val_is_test, preprocess, held_out)
