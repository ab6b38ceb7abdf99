"""An image dataset as one uint8 array, and the seeded order it is visited in.

With two CPU cores a per-image PIL pipeline costs as much as the model itself, so a dataset is
decoded once into a ``(N, C, H, W)`` uint8 array, already at the model's input size (resized
and padded by the run's :class:`~vitkit.preprocess.Preprocess`): a tensor in memory, or, for
sets larger than memory, :class:`MappedImages`, a memory-mapped file on disk
(:mod:`vitkit.data.cache`) that is read a batch at a time. Every random choice about it (the
split, the order of an epoch) depends only on a seed and an epoch, so a resumed run visits
exactly the images an uninterrupted run would have visited.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..preprocess import Preprocess

CHUNK_ELEMENTS = 1 << 22  # pixels per chunk when a whole set is scanned: 32 MB as float64


class MappedImages:
    """``(N, C, H, W)`` uint8 images in a memory-mapped file, read a batch at a time.

    Indexing returns an ordinary tensor holding just those images, so training, evaluation and
    features read it as they read an in-memory tensor; :meth:`take` is a lazy view (a subset, a
    split, some classes) that copies nothing. The file's pages belong to the kernel's page cache,
    which it may reclaim: a set larger than memory trains in bounded memory.
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, path: str | Path, shape: tuple[int, int, int, int], key: str, rows: torch.Tensor | None = None):
        self.path, self.key = Path(path), key
        self.file_shape = tuple(int(s) for s in shape)
        self.rows = rows  # None: every image of the file, in order
        self._array: np.memmap | None = None

    @property
    def shape(self) -> torch.Size:
        n = self.file_shape[0] if self.rows is None else len(self.rows)
        return torch.Size((n, *self.file_shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return self.shape.numel()

    def _file(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.file_shape)
        return self._array

    def _file_rows(self, index: torch.Tensor | slice | int) -> np.ndarray:
        index = torch.arange(len(self))[index] if not isinstance(index, torch.Tensor) else index.long()
        rows = index if self.rows is None else self.rows[index]
        return rows.reshape(-1).numpy()

    def __getitem__(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        """The images at ``index`` (int, slice or index tensor), read into memory."""
        rows = self._file_rows(index)
        batch = torch.from_numpy(np.ascontiguousarray(self._file()[rows]))
        return batch[0] if isinstance(index, int) else batch

    def take(self, index: torch.Tensor | Sequence[int]) -> MappedImages:
        """A view of the images at ``index``, nothing read."""
        return MappedImages(
            self.path, self.file_shape, self.key, torch.as_tensor(self._file_rows(torch.as_tensor(index)))
        )

    def split(self, chunk: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), chunk):
            yield self[start : start + chunk]

    def digest(self) -> str:
        """What identifies these pixels: the cache's key and the rows viewed."""
        rows = b"" if self.rows is None else self.rows.numpy().tobytes()
        return hashlib.sha256(self.key.encode() + rows).hexdigest()

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_array": None}  # a worker process maps the file itself


def pixel_mean_std(images: torch.Tensor | MappedImages, chunk: int | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation in [0, 1] units (for normalisation), summed in
    float64 chunks of a few million pixels so that no float copy of the set is ever made."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for x in images.split(chunk or chunk_of(images)):
        x = x.to(torch.float64).div_(255).transpose(0, 1).reshape(channels, -1)
        total += x.sum(1)
        squares += x.square().sum(1)
    n = images.numel() // channels
    mean = total / n
    std = ((squares - n * mean.square()) / max(n - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-3)
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def pixel_digest(images: torch.Tensor | MappedImages) -> str:
    """A SHA-256 of the pixels (a mapped set: of its cache key and rows, without reading them)."""
    if isinstance(images, MappedImages):
        return images.digest()
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    for x in images.split(chunk_of(images)):
        h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()


def inference_batch(batch_size: int, images: torch.Tensor | MappedImages) -> int:
    """``batch_size``, lowered so that one batch holds at most 16 M pixels (64 MB as float
    input, and activations in proportion): 512 Fashion-MNIST images stay 512, at 224x224 RGB
    it is 111. The batch size changes nothing but memory in evaluation."""
    c, h, w = images.shape[1:]
    return max(1, min(batch_size, (CHUNK_ELEMENTS * 4) // (c * h * w)))


def chunk_of(images: torch.Tensor | MappedImages) -> int:
    """Images per chunk for a scan of the whole set: :data:`CHUNK_ELEMENTS` pixels, at least one."""
    c, h, w = images.shape[1:]
    return max(1, CHUNK_ELEMENTS // (c * h * w))


@dataclass
class ImageDataset:
    """Images ``(N, C, H, W)`` uint8 (in memory, or mapped from a disk cache) and labels
    ``(N,)`` int64."""

    images: torch.Tensor | MappedImages
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (--skip-bad-images)
    ids: torch.Tensor | None = None  # each image's row in the split as it was loaded (None: 0 .. N-1)

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

    @property
    def mapped(self) -> bool:
        """Whether the images are read from a disk cache rather than held in memory."""
        return isinstance(self.images, MappedImages)

    def _take(self, index: torch.Tensor) -> torch.Tensor | MappedImages:
        return self.images.take(index) if isinstance(self.images, MappedImages) else self.images[index]

    def subset(self, index: torch.Tensor | Sequence[int], name: str | None = None) -> ImageDataset:
        """The images at ``index``: a copy in memory, a view of a mapped set."""
        index = torch.as_tensor(index, dtype=torch.long)
        ids = self.row_ids()[index]
        return ImageDataset(self._take(index), self.labels[index], self.class_names, name or self.name, ids=ids)

    def row_ids(self) -> torch.Tensor:
        """Each image's row in the split as it was loaded: what names it (its file) after the
        split, the class selection and the subsets have picked rows out."""
        return self.ids if self.ids is not None else torch.arange(len(self))

    def select_classes(self, classes: Sequence[str]) -> ImageDataset:
        """Only the images of ``classes`` (names, or indices into :attr:`class_names`), labelled
        0..k-1 in the order given."""
        names = [self._class_name(c) for c in classes]
        if len(set(names)) != len(names):
            raise DataError(f"classes {list(classes)} name a class twice")
        old = torch.tensor([self.class_names.index(n) for n in names])
        keep = (self.labels[:, None] == old[None, :]).nonzero()  # (image, position in `names`)
        return ImageDataset(self._take(keep[:, 0]), keep[:, 1], names, self.name, ids=self.row_ids()[keep[:, 0]])

    def in_class_order(self, class_names: Sequence[str]) -> ImageDataset:
        """The images labelled by their class's place in ``class_names`` (a trained model's
        classes), or a one-line error naming the classes of theirs that the model does not know."""
        names = list(class_names)
        if self.class_names == names:
            return self
        present = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        unknown = [c for c, n in zip(self.class_names, present, strict=True) if n and c not in names]
        if unknown:
            raise DataError(
                f"{self.name or 'the images'}: class(es) {unknown[:5]} are not among the model's classes {names}; "
                "evaluate images of the classes it was trained on"
            )
        remap = torch.tensor([names.index(c) if c in names else -1 for c in self.class_names])
        return ImageDataset(self.images, remap[self.labels], names, self.name, self.skipped, self.ids)

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

    def mean_std(self, chunk: int | None = None) -> tuple[list[float], list[float]]:
        """:func:`pixel_mean_std` of the images."""
        return pixel_mean_std(self.images, chunk)

    def prepared(self, preprocess: Preprocess) -> ImageDataset:
        """The images as ``preprocess`` makes them (channels, size, border), in chunks."""
        if preprocess.keeps(self.image_size, self.channels):
            return self
        images = torch.cat([preprocess.pixels(x) for x in self.images.split(chunk_of(self.images))])
        return ImageDataset(images, self.labels, self.class_names, self.name, self.skipped, self.ids)


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


class Stream(enum.IntEnum):
    """The independent uses of randomness, each drawing from its own stream of seeds.

    Every seed vitkit draws is :func:`derive_seed` ``(seed, stream, *parts)``: the stream names
    the use, the parts say where in it (an epoch, a batch, a rank). Two uses with different
    streams can never be handed the same seed by construction, whatever their parts; with bare
    integers they did (augmentation at epoch 0, batches 6-10, drew the seeds of the split, the
    subsets and the initial weights)."""

    EPOCH_ORDER = 1  # the shuffled order of an epoch's images (epoch)
    AUGMENT = 2  # batched augmentation (epoch, batch)
    STEP = 3  # a training step's own randomness: stochastic depth, dropout (epoch, step[, rank])
    WEIGHTS = 4  # the initial weights
    LIMIT_TRAIN = 5  # --limit-train's subset of the training images
    PER_CLASS = 6  # --per-class's subset
    VALIDATION = 7  # the validation share held out of the training images (vitkit.data.splits)
    TEST = 8  # the test share of a dataset without a test split of its own
    RANK = 9  # a torchrun rank's own base seed (rank)
    SHARD_ORDER = 10  # the order `vitkit shards` writes the samples in
    SHARD_EPOCH = 11  # the order an epoch reads the shards in (epoch)
    LOADER_SHUFFLE = 12  # a streaming loader worker's shuffle buffer (epoch, rank, worker, round)
    LOADER_CROP = 13  # a streamed image's random crop and flip (epoch, position[, round])
    PROBE = 14  # the few-shot probe's draw of k images per class (shots)


_STREAM_TAG = 0x5EED_0000  # added to a stream's number, so a stream is never confused with a part


def derive_seed(seed: int, stream: Stream, *parts: int) -> int:
    """A 63-bit seed that depends only on ``seed``, the ``stream`` (the use) and ``parts`` (e.g.
    an epoch and a batch): the one way vitkit turns the user's ``--seed`` into seeds."""
    if not isinstance(stream, Stream):
        raise TypeError(f"derive_seed needs a Stream naming the use, got {stream!r}")
    x = seed & 0xFFFFFFFFFFFFFFFF
    for p in (_STREAM_TAG + int(stream), *parts):
        x = (x * 6364136223846793005 + 1442695040888963407 + (p & 0xFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled indices of ``epoch``: a function of (seed, epoch) only. Under torchrun every
    process walks this same order and trains on its slice of each global batch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, Stream.EPOCH_ORDER, epoch)))


def iterate_batches(
    n: int, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False
) -> Iterator[torch.Tensor]:
    index = order if order is not None else torch.arange(n)
    stop = len(index) - (len(index) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield index[start : start + batch_size]
