"""Your own images: one sub-folder per class (or ``train/`` and ``test/`` holding those), or a
CSV of ``path,label``, in any size and mode, decoded once and prepared as the run's
:class:`~vitkit.preprocess.Preprocess` says.
"""

from __future__ import annotations

import csv
import logging
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS, decode_image, image_is_gray, unreadable, warn_skipped
from ..preprocess import Preprocess
from .dataset import ImageDataset

log = logging.getLogger(__name__)

SIZE_SAMPLE = 300  # the files whose headers say a folder's typical size: enough for a median, a second to read


@dataclass(frozen=True)
class Listing:
    """The images of a folder or CSV: files, label indices and class names, in reading order."""

    source: Path
    files: list[Path]
    labels: list[int]
    class_names: list[str]


def scan_image_folder(path: Path) -> tuple[list[Path], list[str], list[str]]:
    """(files, label names, class names) from a folder with one sub-folder per class, or a CSV."""
    if path.is_file():
        files, labels = [], []
        with path.open(newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or row[0].startswith("#"):
                    continue
                if i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                    continue
                if len(row) < 2:
                    raise DataError(f"{path}, line {i + 1}: expected 'path,label', got {row!r}")
                p = Path(row[0].strip())
                files.append(p if p.is_absolute() else path.parent / p)
                labels.append(row[1].strip())
        classes = sorted(set(labels))
        return files, labels, classes
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{path} has no class sub-folders; expected {path}/CLASS_NAME/image.png, or a CSV path,label")
    files, labels = [], []
    for c in classes:
        for f in sorted((path / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(c)
    return files, labels, classes


def folder_channels(path: str | os.PathLike) -> int:
    """1 when every image of the folder (or CSV) is grayscale, else 3."""
    files, _, _ = scan_image_folder(Path(path))
    return 1 if all(image_is_gray(f) in (True, None) for f in files) else 3


def median_shorter_side(files: Sequence[Path], sample: int = SIZE_SAMPLE) -> int | None:
    """The median shorter side in pixels of up to ``sample`` of ``files``, evenly spaced through
    the list (so every class of a sorted listing is seen, and the answer is the same every time),
    read from their headers: Pillow's ``open`` decodes no pixels. None when none can be read."""
    from PIL import Image

    step = max(1, len(files) // sample)
    sides = []
    for f in list(files)[::step][:sample]:
        try:
            with Image.open(f) as img:
                sides.append(min(img.size))
        except Exception:  # noqa: BLE001 - an unreadable file is reported when the images are decoded
            continue
    return int(statistics.median_low(sides)) if sides else None


def list_images(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> Listing:
    """The files of a class-folder tree (or a ``path,label`` CSV) with their label indices.

    ``class_names`` fixes the label order (to evaluate a folder with a trained model's classes)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image folder or CSV {path} does not exist")
    files, labels, classes = scan_image_folder(path)
    if class_names is not None:
        unknown = sorted(set(labels) - set(class_names))
        if unknown:
            raise DataError(f"{path}: label(s) {unknown[:5]} are not among the model's classes {list(class_names)}")
        classes = list(class_names)
    if not files:
        raise DataError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    index = {c: i for i, c in enumerate(classes)}
    return Listing(path, files, [index[label] for label in labels], classes)


def load_image_folder(listing: Listing, preprocess: Preprocess, skip_bad_images: bool = False) -> ImageDataset:
    """Decode every image of ``listing`` into memory, each prepared by ``preprocess`` (channels,
    size, border) as soon as it is decoded, into one preallocated tensor.

    A corrupt or unreadable file raises :class:`DataError` naming it, or with
    ``skip_bad_images`` is left out with a warning and counted in ``skipped``.
    """
    images = torch.empty(len(listing.files), preprocess.channels, *preprocess.input_size, dtype=torch.uint8)
    ys, skipped = [], []
    for f, label in zip(listing.files, listing.labels, strict=True):
        try:
            images[len(ys)] = preprocess.pixels(decode_image(f))
        except (DataError, FileNotFoundError) as e:
            if not skip_bad_images:
                raise unreadable(str(e)) from None
            warn_skipped(str(e))
            skipped.append(str(f))
            continue
        ys.append(label)
    path = listing.source
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d in %s", len(skipped), len(listing.files), path)
    if not ys:
        raise DataError(f"{path}: none of the {len(listing.files)} images could be read")
    return ImageDataset(images[: len(ys)], torch.tensor(ys), listing.class_names, path.name, skipped=skipped)
