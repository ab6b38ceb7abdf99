"""The built-in datasets: Fashion-MNIST and MNIST (IDX files), CIFAR-10 (python pickles) and
scikit-learn's bundled 8x8 digits.

Fashion-MNIST's IDX files are read directly; vitkit looks in ``--data-dir``, ``$VITKIT_DATA``,
Debian's folder (``apt-get install dataset-fashion-mnist``) and its cache, and only then
downloads with torchvision. CIFAR-10 is read by an unpickler that admits numpy arrays only.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import ImageDataset

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
# Each one's native (height, width) and channels: what a run prepares unless told otherwise.
NATIVE_FORMAT = {
    "fashion-mnist": ((28, 28), 1),
    "mnist": ((28, 28), 1),
    "cifar10": ((32, 32), 3),
    "digits": ((8, 8), 1),
}


def canonical_dataset(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


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


def load_builtin(
    key: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> ImageDataset:
    """A built-in dataset (``key`` from :func:`canonical_dataset`) at its native size."""
    if key in ("fashion-mnist", "mnist"):
        return load_idx_dataset(key, split, find_dataset_dir(key, data_dir, download))
    if key == "cifar10":
        return load_cifar10(split, find_dataset_dir(key, data_dir, download))
    return load_digits_dataset(split)
