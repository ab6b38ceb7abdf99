"""Where a run's training batches come from: an array (in memory or the disk cache), or a stream.

A feed turns an epoch into its optimiser steps, each a list of ``accum_steps`` micro-batches
already augmented and cut to this process's share, and can begin an epoch part-way (a run
resumed from a mid-epoch checkpoint).

- :class:`ArrayFeed` gathers each global micro-batch by the epoch's seeded order, augments it as
  one process would and keeps this process's slice: N processes compute what one computes, and a
  resumed run sees the batches and augmentations an uninterrupted one saw, bit for bit.
- :class:`StreamFeed` reads this process's own shards (:mod:`vitkit.data.stream`), decoded and
  cropped in DataLoader workers; it gives up both properties, as every streaming loader does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from ..data import BatchAugment, ImageDataset, Stream, derive_seed, epoch_order, iterate_batches
from ..data.shards import rank_plan
from ..data.stream import StreamLoader
from ..distributed import World
from ..runtime import available_cores
from .config import TrainConfig
from .datasets import RunData, StreamedSet

Step = list[tuple[torch.Tensor, torch.Tensor]]  # (images, targets) per micro-batch


class ArrayFeed:
    """Batches of an :class:`~vitkit.data.ImageDataset` (an in-memory or a mapped array)."""

    def __init__(
        self,
        data: ImageDataset,
        batch_size: int,
        accum_steps: int,
        augment: BatchAugment,
        world: World,
        device: torch.device,
        seed: int,
    ) -> None:
        self.data, self.batch_size, self.accum_steps = data, batch_size, accum_steps
        self.augment, self.world, self.device, self.seed = augment, world, device, seed

    @property
    def steps_per_epoch(self) -> int:
        return max(1, max(1, len(self.data) // self.batch_size) // self.accum_steps)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Step]:
        """The optimiser steps of ``epoch`` from step ``start`` on."""
        order = epoch_order(len(self.data), self.seed, epoch)
        drop_last = len(order) >= self.batch_size
        batches = list(iterate_batches(len(order), self.batch_size, order, drop_last=drop_last))
        for s in range(start, self.steps_per_epoch):
            yield [self._micro_batch(batches, epoch, s * self.accum_steps + m) for m in range(self.accum_steps)]

    def _micro_batch(self, batches: list[torch.Tensor], epoch: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global micro-batch ``b`` of the epoch, augmented, then this process's slice of it."""
        index = batches[b]
        x = self.data.images[index].to(self.device, non_blocking=True)
        y = self.data.labels[index].to(self.device, non_blocking=True)
        x, target = self.augment(x, y, epoch, b)  # augmented as in one process, whatever the world size
        return self.world.shard(x), self.world.shard(target)


class StreamFeed:
    """Batches streamed from this process's shards (:class:`~vitkit.data.stream.StreamLoader`):
    decoded, cropped (RandomResizedCrop) and flipped in DataLoader workers, then augmented (the
    rest: RandAugment, MixUp/CutMix, erasing, normalisation) here, a batch at a time."""

    def __init__(
        self,
        data: StreamedSet,
        batch_size: int,
        accum_steps: int,
        augment: BatchAugment,
        world: World,
        device: torch.device,
        seed: int,
        loader: dict,
    ) -> None:
        self.data, self.per_rank, self.accum_steps = data, batch_size // world.world_size, accum_steps
        self.augment, self.world, self.device, self.seed, self.loader = augment, world, device, seed, loader

    @property
    def steps_per_epoch(self) -> int:
        """The same for every rank and epoch, by the balancing rule of :mod:`vitkit.data.shards`."""
        counts, world = self.data.shards.counts, self.world
        return max(
            1, rank_plan(counts, world.world_size, world.rank, self.per_rank, self.seed, 0).steps // self.accum_steps
        )

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Step]:
        """The optimiser steps of ``epoch`` from step ``start`` on (a resume restarts at the
        shard that holds its first sample: :class:`~vitkit.data.stream.StreamLoader`)."""
        w = self.world
        batches = iter(
            StreamLoader(
                self.data.shards, w.world_size, w.rank, self.per_rank, self.seed, epoch,
                self.data.image_size, self.data.channels, start_step=start * self.accum_steps, **self.loader,
            )
        )  # fmt: skip
        for s in range(start, self.steps_per_epoch):
            step = []
            for m in range(self.accum_steps):
                x, y = next(batches)
                step.append(self.augment(x.to(self.device), y.to(self.device), epoch, s * self.accum_steps + m))
            yield step


def make_feed(cfg: TrainConfig, data: RunData, world: World, device: torch.device) -> ArrayFeed | StreamFeed:
    """The run's feed: an array's (the augmentation as one process would draw it), or a stream's
    (crop and flip in the loader's workers, the rest here with each rank's own draws)."""
    train, pre = data.train, data.preprocess
    aug = dataclasses.replace(
        cfg.augment_config(train.image_size, data.source.mirror_symmetric), crop_size=pre.input_size
    )
    if not isinstance(train, StreamedSet):
        augment = BatchAugment(aug, pre.mean, pre.std, train.num_classes, cfg.seed)
        return ArrayFeed(train, cfg.batch_size, cfg.accum_steps, augment, world, device, cfg.seed)
    scale = cfg.crop_scale if cfg.crop_scale is not None else 0.08
    loader = dict(
        scale=(scale, 1.0),
        hflip=aug.hflip,
        workers=cfg.loader_workers if cfg.loader_workers is not None else min(8, available_cores()),
        skip_bad_images=cfg.skip_bad_images,
    )
    rest = dataclasses.replace(aug, crop_padding=0, crop_scale=None, hflip=False)  # done by the loader
    augment = BatchAugment(rest, pre.mean, pre.std, train.num_classes, derive_seed(cfg.seed, Stream.RANK, world.rank))
    return StreamFeed(train, cfg.batch_size, cfg.accum_steps, augment, world, device, cfg.seed, loader)
