"""What ``--data`` names, resolved once: a :class:`DataSource`.

The user types a name (``fashion-mnist``), a folder, a CSV or a shard location. It is classified
here, once, into a kind, a location, whether it has a test split of its own and its native
format; every command then asks the source, not the string. The pixels come from
:meth:`DataSource.load`, prepared by the run's :class:`~vitkit.preprocess.Preprocess` and held
in memory or in the disk cache as :func:`choose_mode` says.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..preprocess import Preprocess
from ..runtime import available_memory
from .builtin import BUILTIN, NATIVE_FORMAT, canonical_dataset, load_builtin
from .cache import CacheSource, cached_image_folder, cached_images
from .dataset import ImageDataset
from .folders import folder_channels, list_images, load_image_folder, median_shorter_side, scan_image_folder
from .shards import ShardSet, is_shard_location, shard_split

log = logging.getLogger(__name__)

DATA_MODES = ("auto", "memory", "cache", "stream")
MEMORY_SHARE = 4  # auto: in memory while the decoded pixels take at most 1/4 of available memory
KINDS = ("builtin", "folder", "csv", "shards")
_NOT_MIRRORED = ("mnist", "digits")  # digits read wrongly when flipped


@dataclass(frozen=True)
class DataSource:
    """A dataset as resolved from what the user typed.

    ``kind`` is ``builtin`` (``location`` is its name), ``folder`` (one sub-folder per class, or
    ``train/`` and ``test/`` holding those), ``csv`` (``path,label`` rows) or ``shards``
    (WebDataset shards with their ``shards.json``; ``location`` as given)."""

    text: str  # as the user typed it: what run records and preprocess.json keep
    kind: str
    location: str
    has_test: bool
    data_dir: str | None = None  # where a built-in dataset's files are (--data-dir)

    @property
    def name(self) -> str:
        """A short name for logs and reports: the built-in name, or the folder's or file's."""
        return self.location if self.kind == "builtin" else Path(self.location).name or self.location

    @property
    def examples_split(self) -> str:
        """The split to show examples from (figures, the web page, an export's agreement check):
        the test split, else every image. Nothing is chosen on what these show."""
        return "test" if self.has_test else "train"

    @property
    def mirror_symmetric(self) -> bool:
        """Whether a flipped image is still an image of its class (not for digits)."""
        return not (self.kind == "builtin" and self.location in _NOT_MIRRORED)

    @functools.cached_property
    def native_format(self) -> tuple[tuple[int, int] | None, int]:
        """(size, channels) as stored: a built-in dataset's own; for images of many sizes, no
        size, and 1 channel when every image is grayscale, else 3 (shards: photos, 3)."""
        if self.kind == "builtin":
            return NATIVE_FORMAT[self.location]
        if self.kind == "shards":
            return None, 3
        return None, folder_channels(self._images_path("train"))

    @functools.cached_property
    def median_side(self) -> int | None:
        """The typical shorter side of the training images in pixels: a built-in dataset's own;
        a folder's or CSV's median (:func:`~vitkit.data.folders.median_shorter_side`); shards: None."""
        size, _ = self.native_format
        if size is not None:
            return min(size)
        if self.kind == "shards":
            return None
        return median_shorter_side(self.files("train"))

    def _images_path(self, split: str) -> Path:
        path = Path(self.location)
        return path / split if self.has_test and self.kind == "folder" else path

    def _check_split(self, split: str) -> None:
        if split not in ("train", "test"):
            raise DataError(f"split={split!r} must be 'train' or 'test'")
        if split == "test" and not self.has_test:
            raise DataError(
                f"{self.text} has no test split of its own (a folder needs train/ and test/ sub-folders); "
                "a run holds a test share out of its images and records it: evaluate the run folder"
            )

    def shard_set(self, split: str) -> ShardSet:
        """The shards of ``split`` (``kind`` shards)."""
        self._check_split(split)
        return ShardSet.open(shard_split(self.location, split))

    def files(self, split: str = "train") -> list[Path] | None:
        """The image files of ``split`` in the order :meth:`load` reads them; None for a built-in
        dataset or shards (their images have no files of their own)."""
        self._check_split(split)
        if self.kind in ("builtin", "shards"):
            return None
        return scan_image_folder(self._images_path(split))[0]

    def load(
        self,
        split: str = "train",
        preprocess: Preprocess | None = None,
        skip_bad_images: bool = False,
        class_names: Sequence[str] | None = None,
        download: bool = True,
        mode: str = "auto",
        cache_dir: str | os.PathLike | None = None,
    ) -> ImageDataset:
        """The images of ``split`` (``train``, or ``test`` when it has one; a folder without
        ``train/`` and ``test/`` has all its images in ``train``), prepared by ``preprocess``.
        Without ``preprocess`` a built-in dataset comes at its native size; a folder needs one
        (its images differ in size). ``mode`` says where the pixels are held: ``memory``, a
        ``cache`` on disk (``cache_dir``), or ``auto``: :func:`choose_mode`'s rule, logged with
        its reason. ``class_names`` fixes a folder's label order (a trained model's classes)."""
        self._check_split(split)
        if mode not in DATA_MODES:
            raise DataError(f"--data-mode {mode!r}: choose one of {', '.join(DATA_MODES)}")
        if self.kind == "shards":
            return self._shard_images(self.shard_set(split), preprocess, skip_bad_images, cache_dir)
        if self.kind == "builtin":
            if mode in ("cache", "stream"):
                raise DataError(
                    f"--data-mode {mode}: {self.location} is held in memory (it is small); give an image folder or CSV"
                )
            ds = load_builtin(self.location, split, self.data_dir, download)
            return ds.prepared(preprocess) if preprocess is not None else ds
        if preprocess is None:
            raise DataError(f"{self.text}: an image folder needs a size to prepare its images at (--image-size)")
        path = self._images_path(split)
        listing = list_images(path, class_names)
        chosen, why = choose_mode(mode, len(listing.files) * preprocess.channels * math.prod(preprocess.input_size))
        log.info("%s (%s): %s", path, split, why)
        if chosen == "cache":
            return cached_image_folder(listing, preprocess, skip_bad_images, cache_dir)
        return load_image_folder(listing, preprocess, skip_bad_images)

    def _shard_images(
        self, shards: ShardSet, preprocess: Preprocess | None, skip: bool, cache_dir: str | os.PathLike | None
    ) -> ImageDataset:
        """A shard set decoded once into the disk cache: how evaluation, probes and features read
        shards (training streams them instead, :mod:`vitkit.data.stream`)."""
        if preprocess is None:
            raise DataError(f"{self.text}: shards need a size to prepare their images at (--image-size)")
        log.info("%s: %d shard(s), decoded once into the disk cache", self.text, len(shards.urls))
        return cached_images(CacheSource.shards(shards), preprocess, skip, cache_dir)

    def load_shards(
        self, shards: ShardSet, preprocess: Preprocess, skip_bad_images: bool = False, cache_dir: str | None = None
    ) -> ImageDataset:
        """Some of this source's shards (a validation share cut from the training shards),
        decoded once into the disk cache."""
        return self._shard_images(shards, preprocess, skip_bad_images, cache_dir)


def _resolve(text: str, data_dir: str | None) -> DataSource:
    key = canonical_dataset(text)
    if key in BUILTIN:
        return DataSource(text, "builtin", key, True, data_dir)
    if is_shard_location(text):
        return DataSource(text, "shards", text, shard_split(text, "test") is not None, data_dir)
    path = Path(text).expanduser()
    if path.is_file():
        return DataSource(text, "csv", str(path), False, data_dir)
    if path.is_dir():
        has_test = (path / "train").is_dir() and (path / "test").is_dir()
        return DataSource(text, "folder", str(path), has_test, data_dir)
    raise DataError(
        f"unknown dataset {text!r}: choose one of {', '.join(BUILTIN)}, or give an image folder "
        "(one sub-folder per class, or train/ and test/ holding those), a CSV of path,label, or shards"
    )


def resolve_source(data: str | os.PathLike | DataSource, data_dir: str | os.PathLike | None = None) -> DataSource:
    """The :class:`DataSource` that ``data`` names (``--data``); ``data_dir``: where a built-in
    dataset's files are (``--data-dir``). A DataSource is returned as it is."""
    if isinstance(data, DataSource):
        return data
    return _resolve(str(data), str(data_dir) if data_dir else None)


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
