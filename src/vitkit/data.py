"""Datasets held in memory as uint8 tensors, and augmentation that runs on whole batches.

With two CPU cores a per-image PIL pipeline costs as much as the model itself, so every
dataset here is decoded once into a ``(N, C, H, W)`` uint8 tensor and every augmentation is a
tensor operation on a whole batch (crop with padding, flip, erasing, MixUp/CutMix), on the
device the model runs on. Randomness comes from explicit generators seeded by
``(seed, epoch, batch)``, so a run resumed at an epoch boundary sees exactly the data order
and augmentations an uninterrupted run would have seen.

Sources: the IDX files of Fashion-MNIST and MNIST (read directly, gzipped or not), CIFAR-10's
python-pickle folder, scikit-learn's bundled 8x8 digits, and your own images (one sub-folder
per class, or a CSV of ``path,label``).
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Where Debian's packages put the files (apt-get install dataset-fashion-mnist).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
    "cifar10": ("/usr/share/datasets/cifar10", "/usr/share/datasets/cifar-10"),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Sub-folders tried inside each candidate folder: the folder itself, a folder named after the
# dataset, and torchvision's layout (so a torchvision download is found next time).
_SUBDIRS = {
    "fashion-mnist": (".", "fashion-mnist", "FashionMNIST/raw"),
    "mnist": (".", "mnist", "MNIST/raw"),
    "cifar10": ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "."),
}
BUILTIN = ("fashion-mnist", "mnist", "cifar10", "digits")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar_10": "cifar10"}


class DataError(ValueError):
    """A dataset that cannot be found or read; the message says which file and how to fix it."""


@dataclass
class ImageDataset:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64, all in memory."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (--skip-bad-images)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")
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

    def subset(self, index: torch.Tensor | Sequence[int], name: str | None = None) -> ImageDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index], self.class_names, name or self.name)

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation in [0, 1] units (for normalisation)."""
        x = self.images.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
        std = x.std(dim=1).clamp_min(1e-3)
        return [round(v, 6) for v in x.mean(dim=1).tolist()], [round(v, 6) for v in std.tolist()]

    def padded(self, pad: int) -> ImageDataset:
        """The same images with a zero border of ``pad`` pixels (28x28 + 2 -> 32x32)."""
        if pad <= 0:
            return self
        return ImageDataset(F.pad(self.images, (pad, pad, pad, pad)), self.labels, self.class_names, self.name)

    def resized(self, size: tuple[int, int]) -> ImageDataset:
        """The same images resized (bilinear, antialiased) to ``size``."""
        if tuple(size) == self.image_size:
            return self
        chunks = []
        for x in self.images.split(4096):
            y = F.interpolate(x.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
            chunks.append(y.round_().clamp_(0, 255).to(torch.uint8))
        return ImageDataset(torch.cat(chunks), self.labels, self.class_names, self.name)


# ============================================================================ finding files
def cache_dir() -> Path:
    """``$VITKIT_CACHE``, else ``$XDG_CACHE_HOME/vitkit``, else ``~/.cache/vitkit``."""
    if os.environ.get("VITKIT_CACHE"):
        return Path(os.environ["VITKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitkit"


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a built-in dataset, in order: ``--data-dir``, ``$VITKIT_DATA``,
    the Debian package's folder, the cache."""
    roots: list[Path] = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("VITKIT_DATA"):
        roots.append(Path(os.environ["VITKIT_DATA"]).expanduser())
    roots += [Path(d) for d in SYSTEM_DIRS.get(name, ())]
    roots.append(cache_dir())
    return roots


def _has_files(folder: Path, name: str) -> bool:
    if name == "cifar10":
        return (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file()
    return all(_idx_path(folder, f) is not None for pair in _IDX_FILES.values() for f in pair)


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def find_dataset_dir(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The folder holding ``name``'s files; downloads into the cache (torchvision) as a last resort."""
    searched = []
    for root in candidate_dirs(name, data_dir):
        for sub in _SUBDIRS[name]:
            folder = (root / sub).resolve() if sub != "." else root
            searched.append(folder)
            if folder.is_dir() and _has_files(folder, name):
                return folder
        if data_dir and root == Path(data_dir).expanduser():
            log.warning("--data-dir %s does not hold the %s files; looking elsewhere", root, name)
    hint = {
        "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir FOLDER "
        "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz",
        "mnist": "pass --data-dir FOLDER holding MNIST's train-/t10k- images/labels IDX files (.gz or not)",
        "cifar10": "pass --data-dir FOLDER holding cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta)",
    }[name]
    where = ", ".join(str(s) for s in dict.fromkeys(searched))
    if not download:
        raise DataError(f"{name} not found (looked in {where}); {hint}")
    try:
        return download_dataset(name, cache_dir())
    except Exception as e:  # no network, a proxy, a checksum mismatch: all end the same way
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name} not found (looked in {where}) and the download failed ({reason}); {hint}") from None


def download_dataset(name: str, root: str | os.PathLike) -> Path:
    """Download ``name`` with torchvision into ``root`` and return the folder holding its files.

    torchvision skips files it already finds, so a ``root`` that holds them needs no network.
    """
    import torchvision.datasets as tvd

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s (torchvision)", name, root)
    if name == "fashion-mnist":
        tvd.FashionMNIST(str(root), train=True, download=True)
        tvd.FashionMNIST(str(root), train=False, download=False)
        return root / "FashionMNIST" / "raw"
    if name == "mnist":
        tvd.MNIST(str(root), train=True, download=True)
        return root / "MNIST" / "raw"
    if name == "cifar10":
        tvd.CIFAR10(str(root), train=True, download=True)
        return root / "cifar-10-batches-py"
    raise DataError(f"no download for dataset {name!r}")


# ============================================================================ readers
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format, gzipped or not) into a uint8 array."""
    path = Path(path)
    try:
        with path.open("rb") as raw:
            magic = raw.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read the IDX file ({e}); it may be truncated, download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = math.prod(shape)
    if len(data) - offset != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes) but holds {len(data) - offset}; "
            "the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load_idx_dataset(name: str, split: str, folder: Path) -> ImageDataset:
    images_stem, labels_stem = _IDX_FILES[split]
    images = read_idx(_idx_path(folder, images_stem) or folder / images_stem)
    labels = read_idx(_idx_path(folder, labels_stem) or folder / labels_stem)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {images.shape} images do not match {labels.shape} labels")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return ImageDataset(
        torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), classes, name
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles; allow only what they contain (numpy arrays, builtins), so a
    hostile file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "bytes"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 batch file ({e}); download it again") from None


def load_cifar10(split: str, folder: Path) -> ImageDataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        batch = _read_cifar_batch(folder / n)
        try:
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (KeyError, ValueError) as e:
            raise DataError(f"{folder / n}: unexpected CIFAR-10 batch layout ({e})") from None
    classes = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        meta = _read_cifar_batch(folder / "batches.meta")
        if b"label_names" in meta:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
    return ImageDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), classes, "cifar10")


def load_digits_dataset(split: str, test_fraction: float = 0.2) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), scaled from 0-16 to 0-255.

    The train/test split is fixed (seed 0), so every run and every ``evaluate`` sees the same one.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = round(len(labels) * test_fraction)
    index = order[:n_test] if split == "test" else order[n_test:]
    return ImageDataset(images[index], labels[index], [str(i) for i in range(10)], "digits")


# ---------------------------------------------------------------------------- image files
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;gray"}


def open_image(path: str | os.PathLike, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image file to (C, H, W) uint8: ``channels`` 1 (grayscale) or 3 (RGB), resized
    to ``size`` (bilinear). The way training saw the images, and the way ``predict`` sees them.

    Pillow's decompression-bomb guard stays on: a huge image is an error like any bad file.
    """
    return decode_image(Path(path), channels, size, name=str(path))


def decode_image(
    source: Path | BinaryIO, channels: int, size: tuple[int, int] | None, name: str | None = None
) -> np.ndarray:
    """:func:`open_image` for a path or an open binary file (an upload held in memory).

    Every failure (not an image, truncated, a decompression bomb) is a one-line DataError that
    starts with ``name``.
    """
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    try:
        with Image.open(source) as img:
            img.load()
            img = _to_mode(img, channels)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.array(img, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{name}: cannot read the image ({type(e).__name__}: {e})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _to_mode(img, channels: int):  # noqa: ANN001, ANN202 - PIL types stay local
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        from PIL import Image

        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        from PIL import Image

        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent -> white
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def _image_mode(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode == "P":
                palette = img.getpalette() or []
                rgb = np.asarray(palette[: 3 * 256]).reshape(-1, 3)
                return "L" if (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all() else "RGB"
            return img.mode
    except Exception:  # reported properly when decoding
        return None


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


def load_image_folder(
    path: str | os.PathLike,
    image_size: tuple[int, int],
    channels: int | None = None,
    skip_bad_images: bool = False,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """Decode every image of a class-folder tree (or a ``path,label`` CSV) into memory.

    ``channels=None`` picks 1 when every image is grayscale, else 3. ``class_names`` fixes the
    label order (to evaluate a folder with a trained model's classes). A corrupt or unreadable
    file raises :class:`DataError` naming it, or with ``skip_bad_images`` is left out with a
    warning and counted in ``skipped``.
    """
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
    if channels is None:
        modes = {_image_mode(f) for f in files}
        channels = 1 if modes <= (_GRAY_MODES | {None}) else 3
    index = {c: i for i, c in enumerate(classes)}
    arrays, ys, skipped = [], [], []
    for f, label in zip(files, labels, strict=True):
        try:
            arrays.append(open_image(f, channels, image_size))
        except (DataError, FileNotFoundError) as e:
            if not skip_bad_images:
                raise DataError(f"{e} (pass --skip-bad-images to leave such files out)") from None
            warnings.warn(f"skipping {e}", stacklevel=2)
            skipped.append(str(f))
            continue
        ys.append(index[label])
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d in %s", len(skipped), len(files), path)
    if not arrays:
        raise DataError(f"{path}: none of the {len(files)} images could be read")
    images = torch.from_numpy(np.stack(arrays))
    return ImageDataset(images, torch.tensor(ys), classes, path.name, skipped=skipped)


# ============================================================================ one entry point
def canonical_dataset(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
    class_names: Sequence[str] | None = None,
    download: bool = True,
) -> ImageDataset:
    """A dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``, ``digits``) or by path (an
    image folder or CSV). ``split`` is ``train`` or ``test``; an image folder with ``train/`` and
    ``test/`` sub-folders gives each, any other folder gives all its images for either split."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    key = canonical_dataset(name)
    if key in ("fashion-mnist", "mnist"):
        ds = load_idx_dataset(key, split, find_dataset_dir(key, data_dir, download))
    elif key == "cifar10":
        ds = load_cifar10(split, find_dataset_dir(key, data_dir, download))
    elif key == "digits":
        ds = load_digits_dataset(split)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(
                f"unknown dataset {name!r}: choose one of {', '.join(BUILTIN)}, or give an image folder "
                "(one sub-folder per class) or a CSV of path,label"
            )
        if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
            path = path / split
        if image_size is None:
            raise ValueError("an image folder needs an image size (--image-size, or the model's)")
        return load_image_folder(path, image_size, channels, skip_bad_images, class_names)
    if image_size is not None:
        ds = ds.resized(image_size)
    if channels is not None and channels != ds.channels:
        ds = ImageDataset(_convert_channels(ds.images, channels), ds.labels, ds.class_names, ds.name)
    return ds


def has_test_split(name: str) -> bool:
    key = canonical_dataset(name)
    if key in BUILTIN:
        return True
    path = Path(name).expanduser()
    return path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir()


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and images.shape[1] == 3:  # ITU-R 601-2 luma, as PIL's convert("L")
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")


def split_dataset(ds: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """(train, validation): a seeded random ``fraction`` of ``ds`` held out for validation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} must be between 0 and 1")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(ds) * fraction))
    if n_val >= len(ds):
        raise ValueError(f"validation fraction {fraction} leaves no training images out of {len(ds)}")
    return ds.subset(order[n_val:], ds.name), ds.subset(order[:n_val], ds.name)


# ============================================================================ order and batches
def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (e.g. epoch, stream)."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    for p in parts:
        x = (x * 6364136223846793005 + 1442695040888963407 + (p & 0xFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The shuffled indices one process visits in ``epoch``: a function of (seed, epoch) only.

    With ``world_size`` processes each takes every ``world_size``-th index from ``rank`` (the
    DistributedSampler split), after the order is padded to a multiple of ``world_size``.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 0)))
    if world_size > 1:
        pad = (-n) % world_size
        order = torch.cat([order, order[:pad]])[rank::world_size]
    return order


def iterate_batches(
    n: int, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False
) -> Iterator[torch.Tensor]:
    index = order if order is not None else torch.arange(n)
    stop = len(index) - (len(index) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield index[start : start + batch_size]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, (x/255 - mean) / std per channel."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


# ============================================================================ augmentation
@dataclass
class AugmentConfig:
    crop_padding: int = 4  # random crop after zero padding by this many pixels (0: off)
    hflip: bool = True  # random horizontal flip
    erase_prob: float = 0.0  # random erasing (Zhong et al. 2017), probability per image
    auto_augment: str = "none"  # "none" | "randaugment" | "trivialaugment" (torchvision v2)
    auto_augment_groups: int = 8  # one policy draw per group of a batch (v2 applies one per call)
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)

    def __post_init__(self) -> None:
        if self.auto_augment not in ("none", "randaugment", "trivialaugment"):
            raise ValueError(f"auto_augment={self.auto_augment!r}: choose none, randaugment or trivialaugment")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"erase_prob={self.erase_prob} must be in [0, 1]")
        if self.crop_padding < 0 or self.mixup < 0 or self.cutmix < 0:
            raise ValueError("crop_padding, mixup and cutmix must be >= 0")


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random window of the original size from each image."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_erase(
    x: torch.Tensor, g: torch.Generator, p: float, area: tuple[float, float] = (0.02, 1 / 3)
) -> torch.Tensor:
    """Random erasing: a rectangle of 2-33 % of the image, aspect 0.3-3.3, set to 0 (the mean
    after normalisation) in each image with probability ``p``."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    frac = torch.empty(b).uniform_(*area, generator=g)
    log_ratio = torch.empty(b).uniform_(math.log(0.3), math.log(1 / 0.3), generator=g)
    ratio = log_ratio.exp()
    eh = (frac * h * w * ratio).sqrt().round().clamp(1, h).long()
    ew = (frac * h * w / ratio).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1)).floor().long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1)).floor().long()
    on = torch.rand(b, generator=g) < p
    ys, xs = torch.arange(h), torch.arange(w)
    mask = (
        ((ys[None, :] >= y0[:, None]) & (ys[None, :] < (y0 + eh)[:, None]))[:, :, None]
        & ((xs[None, :] >= x0[:, None]) & (xs[None, :] < (x0 + ew)[:, None]))[:, None, :]
        & on[:, None, None]
    )
    return x.masked_fill(mask[:, None].to(x.device), 0.0)


class BatchAugment:
    """Training augmentation of whole batches, every random draw from a generator seeded by
    ``(seed, epoch, batch)``.

    ``__call__`` takes uint8 images on the model's device and integer labels and returns
    normalised float images and targets: class indices, or (B, classes) soft targets when
    MixUp/CutMix is on.
    """

    def __init__(
        self, config: AugmentConfig, mean: Sequence[float], std: Sequence[float], num_classes: int, seed: int
    ) -> None:
        self.config = config
        self.mean, self.std = list(mean), list(std)
        self.num_classes = num_classes
        self.seed = seed
        self._policy = None
        if config.auto_augment != "none":
            from torchvision.transforms import v2

            self._policy = v2.RandAugment() if config.auto_augment == "randaugment" else v2.TrivialAugmentWide()
        self._mix = None
        if config.mixup > 0 or config.cutmix > 0:
            from torchvision.transforms import v2

            mixes = []
            if config.mixup > 0:
                mixes.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
            if config.cutmix > 0:
                mixes.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
            self._mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        seed = derive_seed(self.seed, epoch, batch + 1)
        g = torch.Generator().manual_seed(seed)
        x = images
        if self._policy is not None:  # torchvision draws from the global RNG: fork it, seeded
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                groups = x.split(max(1, math.ceil(x.shape[0] / max(1, c.auto_augment_groups))))
                x = torch.cat([self._policy(chunk) for chunk in groups])
        x = random_crop(x, c.crop_padding, g)
        if c.hflip:
            x = random_hflip(x, g)
        x = normalize(x, self.mean, self.std)
        x = random_erase(x, g, c.erase_prob)
        y = labels
        if self._mix is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed ^ 0x5EED)
                x, y = self._mix(x, labels)
        return x, y
