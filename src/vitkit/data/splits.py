"""The one hold-out rule: which images train, which choose, which are scored once at the end.

The paper chose every setting (learning rates, when to stop) on a "minival" of 2 % held out of
the training split, and scored the test split once. vitkit does the same for every run:

- **validation share**: a seeded ``val_fraction`` (2 % by default) of the training images, at
  least one image of every class that has two or more; ``best/``, ``--lr-grid`` and every
  recipe search choose on it. ``val_fraction=0`` holds nothing out (and keeps no ``best/``).
- **test**: the dataset's own test split; for a folder or CSV without one, a seeded
  ``test_fraction`` share of its images (drawn first, and at least one of every class), scored
  only when the run ends and by ``evaluate``, ``probe`` and ``embed --split test``.

Both shares are drawn per class, from their own seed streams, with the fixed seed
:data:`SPLIT_SEED` rather than the run's ``--seed``: every run on a dataset holds out the same
images (as the paper's ``train[98%:]`` did), so runs with different seeds are validated and
scored on the same images, and a later command can draw the same shares again from what
``train_config.json`` records (:class:`SplitRule`).

Shards are written in a seeded shuffled order (``vitkit shards``), so their validation share is
the *last* ``val_fraction`` of the training samples in that order: the paper's ``train[98%:]``
exactly, read from the last shard(s) alone, where a share scattered over every shard would make
validation read the whole training set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .dataset import ImageDataset, Stream, derive_seed, per_class_index
from .shards import ShardSet

SPLIT_SEED = 0
VAL_FRACTION = 0.02  # the paper's minival: 2 % of the training split
TEST_FRACTION = 0.2  # a folder or CSV without test/: the share scored at the end


@dataclass(frozen=True)
class SplitRule:
    """How a run's images are divided (the module docstring), as ``train_config.json`` keeps it."""

    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION  # used only when the dataset has no test split of its own
    seed: int = SPLIT_SEED

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction {self.val_fraction} must be in [0, 1), e.g. 0.02 (0: hold none out)")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction {self.test_fraction} must be in (0, 1), e.g. 0.2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitRule:
        return cls(**{k: d[k] for k in ("val_fraction", "test_fraction", "seed") if k in d})


def share_counts(labels: torch.Tensor, num_classes: int, fraction: float) -> list[int]:
    """Images to hold out of each class: ``floor(fraction * n)``, at least one of a class with two
    or more (so no class goes unscored), none of a class with one (it must still be trained on)."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    if fraction <= 0:
        return [0] * num_classes
    return [max(1, math.floor(fraction * n)) if n >= 2 else 0 for n in counts]


def hold_out(
    dataset: ImageDataset, fraction: float, stream: Stream, seed: int = SPLIT_SEED
) -> tuple[ImageDataset, ImageDataset]:
    """(the rest, the held-out share): ``fraction`` of every class, drawn from ``stream``."""
    take = share_counts(dataset.labels, dataset.num_classes, fraction)
    held = per_class_index(dataset.labels, dataset.num_classes, take, derive_seed(seed, stream))
    keep = torch.ones(len(dataset), dtype=torch.bool)
    keep[held] = False
    return dataset.subset(keep.nonzero()[:, 0]), dataset.subset(held)


@dataclass
class Splits:
    """A run's images: what it trains on, what chooses (None with ``val_fraction=0``), and what it
    is scored on at the end (None when the dataset's own test split was not asked for)."""

    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset | None
    test_from: str  # "the test split" (the dataset's own) or "a held-out share"

    def counts(self) -> dict[str, int]:
        return {name: len(ds) if ds is not None else 0 for name, ds in vars(self).items() if name != "test_from"}


def split(
    images: ImageDataset,
    test: ImageDataset | None,
    rule: SplitRule,
    own_test: bool,
    classes: Sequence[str] | None = None,
) -> Splits:
    """The rule applied to a dataset's training split ``images``. With ``own_test`` the dataset
    has a test split of its own, passed as ``test`` (None: not loaded, as in an ``--lr-grid``
    trial, which never reads it); without, a test share of ``images`` is held out first.
    ``classes`` (``--classes``) keeps those classes of every part, after the shares are drawn
    from all of them, so a class's held-out images are the same whichever classes a run keeps."""
    if not own_test:
        images, test = hold_out(images, rule.test_fraction, Stream.TEST, rule.seed)
        if len(test) == 0:
            raise DataError(
                f"{images.name}: no class has two images, so none can be held out for testing; add images, "
                "or give a folder with train/ and test/"
            )
    elif test is not None and test.class_names != images.class_names:
        raise DataError(f"{images.name}: test classes {test.class_names} differ from train {images.class_names}")
    val = None
    if rule.val_fraction > 0:
        images, val = hold_out(images, rule.val_fraction, Stream.VALIDATION, rule.seed)
        val = val if len(val) else None
    if len(images) == 0:
        raise DataError(f"{images.name}: no image is left to train on after holding out validation and test images")
    if classes:
        images, val, test = (ds.select_classes(classes) if ds is not None else None for ds in (images, val, test))
    return Splits(images, val, test, "the test split" if own_test else "a held-out share")


def shard_tail(shards: ShardSet, fraction: float) -> tuple[ShardSet, ShardSet | None]:
    """(the shards to train on, the validation share): the last ``fraction`` of the samples in
    writing order (at least one when ``fraction`` > 0), cut from the last shard(s); None when
    ``fraction`` is 0."""
    if fraction <= 0:
        return shards, None
    total = shards.samples
    held = max(1, math.floor(fraction * total))
    if held >= total:
        raise DataError(f"--val-fraction {fraction} holds out all {total} training samples; give a smaller fraction")
    keep_counts, tail = list(shards.counts), []
    for i in range(len(shards.urls) - 1, -1, -1):
        if held == 0:
            break
        take = min(held, keep_counts[i])
        keep_counts[i] -= take
        held -= take
        tail.insert(0, (shards.urls[i], take, keep_counts[i], shards.counts[i]))
    kept = [(u, n, total) for u, n, total in zip(shards.urls, keep_counts, shards.counts, strict=True) if n > 0]
    names = list(shards.class_names)
    train = ShardSet([k[0] for k in kept], [k[1] for k in kept], names, totals=[k[2] for k in kept])
    urls, counts, firsts, totals = (list(column) for column in zip(*tail, strict=True))
    return train, ShardSet(urls, counts, names, firsts, totals)
