"""Training batches streamed from WebDataset shards, for data larger than memory.

:class:`StreamLoader` gives one rank its batches of one epoch: the shards (and parts of shards)
that :func:`vitkit.data.shards.rank_plan` assigns it, decoded, cropped and batched in
``torch.utils.data.DataLoader`` worker processes. Each worker reads every N-th segment of the
rank's plan (worker ``w`` of ``N`` reads segments ``w, w + N, ...``) through its own seeded
shuffle buffer of encoded samples, so a batch mixes shards; the main process cuts the workers'
output into batches of exactly ``batch_size`` and stops after ``plan.steps`` of them.

Each sample's RandomResizedCrop (and flip) comes from a generator seeded by
``(seed, epoch, 12, global position)``: the sample's place in the epoch's sequence, not in a
worker's stream, so the crops do not depend on the number of workers. The later augmentation
(RandAugment, MixUp/CutMix, normalisation) runs on whole batches in the main process.

Two documented departures from "each image exactly once":

* With ``skip_bad_images`` an undecodable sample is left out with a warning; when that leaves
  the rank short of ``steps`` batches it fills them by reading its range again from the start
  (new crops), so every rank still takes the same number of steps.
* Resuming at ``start_step`` restarts at the shard holding sample ``start_step * batch_size`` of
  the rank's sequence (whole shards before it are skipped unread), so the images of that shard
  read before the interruption are seen again; with the shuffle buffer, a few images from
  before the cut that had not yet left the buffer are not seen in that epoch.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError, DataError
from ..images import convert_channels, decode_image
from .augment import random_resized_boxes, resized_crops
from .dataset import Stream, derive_seed
from .shards import RankPlan, Segment, ShardSet, rank_plan, read_shard

# A raw sample on its way to a worker's decoder: (key, url, bytes, label, global position).
_Raw = tuple[str, str, bytes, int, int]


class StreamLoader:
    """One rank's batches of one epoch: ``len(self)`` batches ``(images, labels)``, uint8
    ``(B, C, h, w)`` and int64 ``(B,)`` (with ``with_keys``, also the samples' keys)."""

    def __init__(
        self,
        shards: ShardSet,
        world_size: int,
        rank: int,
        batch_size: int,
        seed: int,
        epoch: int,
        size: tuple[int, int],
        channels: int = 3,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: bool = True,
        workers: int = 0,
        skip_bad_images: bool = False,
        start_step: int = 0,
        buffer: int = 1000,
        with_keys: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"channels={channels}: use 1 (grayscale) or 3 (RGB)")
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"size={size}: give (height, width), both positive")
        if workers < 0 or buffer < 1:
            raise ConfigError(f"workers={workers}, buffer={buffer}: need workers >= 0 and buffer >= 1")
        self.plan: RankPlan = rank_plan(shards.counts, world_size, rank, batch_size, seed, epoch, shards.urls)
        if not 0 <= start_step <= self.plan.steps:
            raise ConfigError(f"start_step={start_step} is outside the epoch's {self.plan.steps} steps")
        self.num_classes = len(shards.class_names)
        self.rank, self.seed, self.epoch = rank, seed, epoch
        self.size, self.channels, self.scale, self.hflip = (int(size[0]), int(size[1])), channels, scale, hflip
        self.workers, self.buffer = workers, buffer
        self.skip_bad_images, self.start_step, self.with_keys = skip_bad_images, start_step, with_keys
        self.skipped: list[str] = []  # the messages of samples left out, this epoch

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Exactly ``len(self)`` batches: the rank's range from ``start_step`` on, then (only
        when bad samples were skipped) its range again from the start."""
        want, batch = len(self), self.plan.batch_size
        pending: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []
        have, done, rounds = 0, 0, 0
        while done < want:
            segments = resume_segments(self.plan, self.start_step) if rounds == 0 else self.plan.segments
            got = 0
            for images, labels, keys in self._chunks(segments, rounds):
                pending.append((images, labels, keys))
                have, got = have + len(labels), got + len(labels)
                while have >= batch and done < want:
                    out, pending = _take(pending, batch)
                    have -= batch
                    done += 1
                    yield out if self.with_keys else out[:2]
                if done == want:
                    return
            if got == 0:
                raise DataError(f"rank {self.rank}: none of its {self.plan.samples} samples could be decoded")
            rounds += 1

    def _chunks(self, segments: list[Segment], rounds: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """The workers' output for one pass over ``segments``; their errors and skipped samples
        arrive as messages and are raised or warned about here, in the main process."""
        dataset = _SegmentStream(self, segments, rounds)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.workers, collate_fn=_as_is)
        for images, labels, keys, skipped, error in loader:
            for message in skipped:
                warnings.warn(f"skipping {message}", stacklevel=3)
                self.skipped.append(message)
            if error is not None:
                raise DataError(error)
            if len(labels):
                yield images, labels, keys


def resume_segments(plan: RankPlan, start_step: int) -> list[Segment]:
    """The plan's segments from the one holding sample ``start_step * batch_size`` of the rank's
    sequence on: segments whose samples all come before it are skipped without reading."""
    cut, seen = start_step * plan.batch_size, 0
    for i, segment in enumerate(plan.segments):
        if seen + segment.count > cut:
            return plan.segments[i:]
        seen += segment.count
    return []


def _take(
    pending: list[tuple[torch.Tensor, torch.Tensor, list[str]]], n: int
) -> tuple[tuple[torch.Tensor, torch.Tensor, list[str]], list[tuple[torch.Tensor, torch.Tensor, list[str]]]]:
    """The first ``n`` samples of the pending chunks as one batch, and what is left."""
    images = torch.cat([c[0] for c in pending])
    labels = torch.cat([c[1] for c in pending])
    keys = [k for c in pending for k in c[2]]
    rest = [(images[n:], labels[n:], keys[n:])] if len(labels) > n else []
    return (images[:n], labels[:n], keys[:n]), rest


def _as_is(item: object) -> object:
    """The DataLoader's collate for items that are batches already (a function, to pickle)."""
    return item


class _SegmentStream(IterableDataset):
    """What one DataLoader worker does: read its share of the segments through a seeded shuffle
    buffer, decode and crop each sample, and hand over chunks of up to a batch. It yields
    ``(images, labels, keys, skipped messages, error message or None)``; an error ends it."""

    def __init__(self, loader: StreamLoader, segments: list[Segment], rounds: int) -> None:
        super().__init__()
        self.segments, self.rounds = segments, rounds
        self.rank, self.seed, self.epoch, self.num_classes = loader.rank, loader.seed, loader.epoch, loader.num_classes
        self.size, self.channels, self.scale, self.hflip = loader.size, loader.channels, loader.scale, loader.hflip
        self.buffer, self.skip_bad_images, self.chunk = loader.buffer, loader.skip_bad_images, loader.plan.batch_size

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        g = torch.Generator().manual_seed(
            derive_seed(self.seed, Stream.LOADER_SHUFFLE, self.epoch, self.rank, worker, self.rounds)
        )
        images, labels, keys, skipped = [], [], [], []
        try:
            for key, url, data, label, position in shuffled(_read(self.segments[worker::workers]), self.buffer, g):
                try:
                    images.append(self._prepare(key, url, data, label, position))
                except DataError as e:
                    if not self.skip_bad_images:
                        raise DataError(f"{e} (pass --skip-bad-images to leave such samples out)") from None
                    skipped.append(str(e))
                    continue
                labels.append(label)
                keys.append(key)
                if len(labels) == self.chunk:
                    yield torch.stack(images), torch.tensor(labels), keys, skipped, None
                    images, labels, keys, skipped = [], [], [], []
        except DataError as e:
            yield _empty(), torch.empty(0, dtype=torch.int64), [], skipped, str(e)
            return
        if labels or skipped:
            stacked = torch.stack(images) if images else _empty()
            yield stacked, torch.tensor(labels, dtype=torch.int64), keys, skipped, None

    def _prepare(self, key: str, url: str, data: bytes, label: int, position: int) -> torch.Tensor:
        """Decode one sample and cut its crop: uint8 ``(C, h, w)``."""
        if not 0 <= label < self.num_classes:
            raise DataError(f"sample {key} in {url}: label {label} is not one of the {self.num_classes} classes")
        x = decode_bytes(data, self.channels, f"sample {key} in {url}")  # (C, H, W)
        parts = (self.epoch, position) + ((self.rounds,) if self.rounds else ())
        g = torch.Generator().manual_seed(derive_seed(self.seed, Stream.LOADER_CROP, *parts))
        box = random_resized_boxes(1, x.shape[-2], x.shape[-1], g, self.scale)
        x = resized_crops(x[None], box, self.size)[0]  # (C, h, w)
        if self.hflip and torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(-1)
        return x


def _empty() -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8)


def _read(segments: Sequence[Segment]) -> Iterator[_Raw]:
    """The samples of ``segments``, still encoded, with their global positions. A shard that
    ends before its segment does means ``shards.json`` does not describe it."""
    for segment in segments:
        stop, n = segment.first + segment.count, 0
        for i, sample in enumerate(read_shard(segment.url)):
            if i >= stop:
                break
            if i >= segment.first:
                n += 1
                yield sample.key, segment.url, sample.data, sample.label, segment.position + i - segment.first
        if n < segment.count:
            raise DataError(
                f"shard {segment.url} ends before sample {stop} that shards.json promises; write the shards again"
            )


def shuffled(items: Iterator[_Raw], size: int, g: torch.Generator) -> Iterator[_Raw]:
    """A shuffle buffer of ``size`` items (WebDataset's and tf.data's): fill it, then give out a
    random one for each new one that comes in; at the end, the rest in random order."""
    buffer: list[_Raw] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(torch.randint(size, (1,), generator=g))
        buffer[j], item = item, buffer[j]
        yield item
    for j in torch.randperm(len(buffer), generator=g).tolist():
        yield buffer[j]


def decode_bytes(data: bytes, channels: int, name: str) -> torch.Tensor:
    """An encoded image -> uint8 ``(channels, H, W)``, by the one decoder every path uses
    (:func:`vitkit.images.decode_image`: libjpeg-turbo for JPEGs)."""
    return convert_channels(decode_image(io.BytesIO(data), name=name), channels)
