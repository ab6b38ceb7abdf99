"""Pixels: decoding image files, converting channels, resizing. One implementation of each.

Every path that turns pictures into model inputs (datasets, ``predict``, ``explain``, the web
page) goes through these functions, by way of :class:`vitkit.preprocess.Preprocess`: two resize
implementations disagree by a few grey levels wherever a resize happens, and two ways of
preparing an image are how the web page once classified differently from ``predict``.

Images are uint8 tensors ``(C, H, W)`` or batches ``(B, C, H, W)``.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}
# ITU-R 601-2 luma, the weights of PIL's convert("L"); also how a grey model is written for RGB input
LUMA = (0.299, 0.587, 0.114)
_FIRST_IMPORT = threading.Lock()


def _transforms():  # noqa: ANN202 - (InterpolationMode, torchvision.transforms.v2.functional)
    """torchvision's transforms, imported on first use (they cost a CLI start a second) and under a
    lock. torchvision's package, its ``transforms`` and ``transforms.v2`` import one another, and
    two threads importing them at once (the first requests of ``vitkit serve``) can each be handed
    the other's half-initialised module: an ImportError, a 500 for a good upload."""
    with _FIRST_IMPORT:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF
    return InterpolationMode, TF


def unreadable(message: str) -> DataError:
    """The error for an image file that does not decode, where ``--skip-bad-images`` could have
    left it out: the file's own message and the flag."""
    return DataError(f"{message} (pass --skip-bad-images to leave such files out)")


def warn_skipped(message: str) -> None:
    """With ``--skip-bad-images``: one warning per file left out (the CLI prints it as one line)."""
    warnings.warn(f"skipping {message}", stacklevel=3)


def decode_image(source: str | os.PathLike | BinaryIO, name: str | None = None) -> torch.Tensor:
    """Decode an image file (a path, or an open binary file such as an upload held in memory) to
    uint8 ``(C, H, W)`` at its own size: C is 1 for a grayscale image, else 3 (RGB).

    JPEGs go through torchvision's libjpeg-turbo decoder: the pixels Pillow gives (the same
    library with the same settings; a test checks it on a real photo) at about 1.8 times the
    speed, which is what a streamed epoch of photos waits for. Everything else, and any JPEG that
    decoder declines (CMYK, damaged), goes through Pillow. 16-bit and float grayscale is scaled
    to 8 bits; transparency is composited over white, the page colour most image viewers show it
    on. Every failure (not an image, truncated, a decompression bomb: Pillow's guard stays on) is
    a one-line :class:`DataError` that starts with ``name``.
    """
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    try:
        data = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else source.read()
    except OSError as e:
        raise DataError(f"{name}: cannot read the file ({e.strerror or e})") from None
    if data[:3] == b"\xff\xd8\xff":
        x = _decode_jpeg(data)
        if x is not None:
            return x
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = _to_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        detail = "not an image format Pillow knows" if isinstance(e, UnidentifiedImageError) else str(e)
        raise DataError(f"{name}: cannot read the image ({type(e).__name__}: {detail})") from None
    x = torch.from_numpy(arr)
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


def _decode_jpeg(data: bytes) -> torch.Tensor | None:
    """A JPEG by torchvision's decoder, or None for Pillow to decide (not 1 or 3 channels, over
    Pillow's decompression-bomb limit, damaged, or no such decoder in this torchvision).

    The size is read from the header first: the decoder allocates the whole image before it
    reads a byte of the data, so a few hundred bytes that claim 65535x65535 pixels would cost
    13 GB before any check after decoding could refuse them."""
    from PIL import Image

    try:
        with _FIRST_IMPORT:  # torchvision's first import, as in _transforms
            from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only: no pixels are decoded here
            width, height = img.size
    except Exception:  # noqa: BLE001 - a bomb, a damaged header: Pillow decodes and reports it
        return None
    if limit is not None and width * height > limit:
        return None
    try:
        with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, not installed here
            warnings.simplefilter("ignore", DeprecationWarning)
            x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None
    return x if x.shape[0] in (1, 3) else None


def _is_gray(img) -> bool:  # noqa: ANN001 - PIL types stay local
    if img.mode == "P":
        rgb = np.asarray((img.getpalette() or [])[: 3 * 256]).reshape(-1, 3)
        return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())
    return img.mode in _GRAY_MODES


def _to_array(img) -> np.ndarray:  # noqa: ANN001
    """A decoded PIL image as a writable uint8 array, (H, W) for grayscale or (H, W, 3)."""
    from PIL import Image

    gray = _is_gray(img)
    if img.mode in _HIGH_BIT_MODES:  # 16-bit / float grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent -> white
        img = Image.alpha_composite(background, rgba)
    return np.array(img.convert("L" if gray else "RGB"), dtype=np.uint8)  # a copy: torch warns on read-only


def image_is_gray(path: Path) -> bool | None:
    """Whether a file holds a grayscale image, from its header (None: unreadable, told later)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return _is_gray(img)
    except Exception:  # reported properly when decoding
        return None


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Images with 1 or 3 channels -> ``channels``: grey repeated to RGB, RGB to luma. uint8 stays
    uint8 (rounded); float pixels (a teacher's view of a batch) stay float."""
    have = images.shape[-3]
    if have == channels:
        return images
    if channels == 3 and have == 1:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    if channels == 1 and have == 3:
        w = torch.tensor(LUMA, device=images.device).view(3, 1, 1)
        luma = (images.float() * w).sum(-3, keepdim=True)
        return luma if images.is_floating_point() else luma.round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert {have}-channel images to {channels} channels; use 1 (grayscale) or 3 (RGB)")


def resize(images: torch.Tensor, size: Sequence[int], interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 images resized to ``size`` (height, width), antialiased when shrinking.

    torchvision's resize: its uint8 path is fast and its antialiasing matches Pillow's, so a
    photo shrunk here looks like the same photo shrunk by any image viewer.
    """
    InterpolationMode, TF = _transforms()
    size = [int(size[0]), int(size[1])]
    if list(images.shape[-2:]) == size:
        return images
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    mode = InterpolationMode(interpolation)
    return TF.resize(images, size, interpolation=mode, antialias=interpolation != "nearest")


def resize_shorter_and_crop(
    images: torch.Tensor, size: Sequence[int], crop_fraction: float, interpolation: str = "bilinear"
) -> torch.Tensor:
    """The ImageNet evaluation rule: scale the shorter side to ``size / crop_fraction`` (aspect
    kept), then cut the centre ``size`` out (timm's ``crop_pct``; 0.875 turns 256 into 224)."""
    _, TF = _transforms()
    h, w = images.shape[-2:]
    target = [math.floor(s / crop_fraction) for s in size]
    scale = max(target[0] / h, target[1] / w)  # the side that needs the larger factor decides
    # as torchvision's Resize(int): the short side exactly, the long side truncated
    new = (target[0], int(w * scale)) if target[0] / h >= target[1] / w else (int(h * scale), target[1])
    return TF.center_crop(resize(images, new, interpolation), [int(size[0]), int(size[1])])


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus every image file under the folders named."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return files
