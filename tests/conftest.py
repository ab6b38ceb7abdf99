"""Fixtures and helpers the test files share."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

# Debian's dataset-fashion-mnist (scripts/setup.sh installs it); tests that read it skip without.
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")

# A ViT small enough to train on the 8x8 digits in seconds: 16 tokens of width 64 (patch 2).
TINY = dict(width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=2, pool="gap")
# The same as `vitkit train` options.
TINY_ARGS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def tiny_config(out: Path | str, **kw):  # noqa: ANN201 - a TrainConfig
    """A run of the tiny ViT on scikit-learn's digits: seconds per epoch on one core."""
    from vitkit.train import TrainConfig

    base = dict(
        data="digits",
        model="vit_tiny_28",
        model_overrides=dict(TINY),
        batch_size=32,
        lr=2e-3,
        label_smoothing=0.0,
        threads=1,
        out=str(out),
    )
    return TrainConfig(**(base | kw))


def perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """``model`` (in eval mode) with every weight moved off its initial value: a zero-initialised
    head or a zero class token would hide mistakes that a trained model would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)
    return model.eval()


def sample_photo(name: str = "china.jpg") -> Path:
    """A real colour photograph (427x640 JPEG) that scikit-learn ships with itself."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / name


def write_digits(folder: Path, per_class: int, classes: int = 3, offset: int = 0, sizes: tuple = ((32, 32),)) -> Path:
    """Real images as files: ``per_class`` of each of scikit-learn's first ``classes`` digits
    (from the ``offset``-th on), 8x8 upscaled to each of ``sizes`` in turn, as
    ``folder/<digit>/<digit>_<i>.png`` (even i) or ``.jpg`` (odd i)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(classes):
        (folder / str(c)).mkdir(parents=True)
        rows = (digits.target == c).nonzero()[0][offset : offset + per_class]
        for i, row in enumerate(rows):
            pixels = (digits.images[row] * (255 / 16)).round().astype("uint8")
            img = Image.fromarray(pixels, mode="L").resize(sizes[i % len(sizes)], Image.BILINEAR)
            img.save(folder / str(c) / f"{c}_{i:02d}{'.png' if i % 2 == 0 else '.jpg'}")
    return folder


def headless_chromium(profile: Path, width: int, height: int):  # noqa: ANN201 - a selenium WebDriver
    """Debian's Chromium, headless, as scripts/docs_screenshots.py opens it (one set of flags for
    the page test and the docs' screenshots)."""
    import sys

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    sys.path.insert(0, scripts)
    try:
        import docs_screenshots
    finally:
        sys.path.remove(scripts)
    return docs_screenshots.browser(profile, width, height)


@pytest.fixture(scope="module")
def one_epoch_digits_run(tmp_path_factory) -> Path:
    """The tiny ViT trained one fp32 epoch on digits (:func:`tiny_config`), once per test module:
    a real run folder (best/, last/, train_config.json) for commands to read."""
    from vitkit.train import train

    out = tmp_path_factory.mktemp("one_epoch") / "run"
    torch.manual_seed(0)
    train(tiny_config(out, epochs=1, precision="fp32"), progress=False)
    return out


# A run that SIGKILLs itself half-way through writing the training state of epoch 2: its last/
# must stay the complete checkpoint of epoch 1 (the fine-tuning and pre-training resume tests).
KILLED_IN_EPOCH_2_CHECKPOINT = textwrap.dedent(
    """
    import json, os, signal, sys
    import vitkit.train as T
    from vitkit.train import run_folder

    cfg = T.TrainConfig(**json.loads(sys.argv[1]))
    write = run_folder._write_training_state

    def dying(path, state):
        if state.epoch == 2:  # half a file, then SIGKILL in the middle of the checkpoint
            path.write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        write(path, state)

    run_folder._write_training_state = dying
    T.train(cfg, progress=False)
    """
)


# scikit-image's sample photographs (bundled, no download): colour and grey, square and not
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "immunohistochemistry")
PHOTOS += ("hubble_deep_field", "colorwheel", "retina", "stereo_motorcycle", "clock", "brick", "gravel")


def _photo(name: str):  # noqa: ANN202 - a (H, W[, C]) uint8 array
    import skimage.data

    pixels = getattr(skimage.data, name)()
    return pixels[0] if isinstance(pixels, tuple) else pixels


def _random_crop(photo, rng) -> tuple:  # noqa: ANN001 - (a PIL image, its kind: jpg, png, L, Ljpg, RGBA)
    """One crop as someone's pictures come: a shorter side of 16-320 px, an aspect ratio from 1:3
    to 3:1, saved as JPEG or PNG, some grey (``L``), some RGBA (opaque: a transparent pixel is
    composited over white by vitkit, while ``transformers``' ``load_image`` and a timm user's
    ``convert("RGB")`` drop the alpha)."""
    import math

    from PIL import Image

    height, width = photo.shape[:2]
    short = rng.randint(16, min(height, width, 320))
    ratio = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
    h, w = (short, round(short * ratio)) if ratio >= 1 else (round(short / ratio), short)
    if rng.random() < 0.5:
        h, w = w, h
    h, w = min(h, height), min(w, width)
    y, x = rng.randint(0, height - h), rng.randint(0, width - w)
    img = Image.fromarray(photo[y : y + h, x : x + w])
    kind = rng.choice(["jpg", "jpg", "png", "L", "Ljpg", "RGBA"])
    return img.convert({"L": "L", "Ljpg": "L", "RGBA": "RGBA"}.get(kind, "RGB")), kind


def _save(img, path: Path) -> Path:  # noqa: ANN001
    img.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


def write_photo_crops(folder: Path, n: int = 300, seed: int = 0) -> list[Path]:
    """``n`` random crops of real photos (:func:`_random_crop`), cycling through :data:`PHOTOS`.
    The file name starts with the index and names the photo, e.g. ``007_coffee_L.png``."""
    import random

    rng = random.Random(seed)
    sources = {name: _photo(name) for name in PHOTOS}
    files = []
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        img, kind = _random_crop(sources[name], rng)
        files.append(_save(img, folder / f"{i:03d}_{name}_{kind}.{'jpg' if kind.endswith('jpg') else 'png'}"))
    return files


def write_photos(folder: Path, per_class: int = 12, seed: int = 0) -> Path:
    """A user's photo folder for training: ``per_class`` random crops (:func:`_random_crop`) of
    each of four photographs, one class per photograph, as ``folder/<photo>/<photo>_<i>.<ext>``:
    real pixels of mixed sizes, shapes and modes."""
    import random

    rng = random.Random(seed)
    for name in ("astronaut", "coffee", "rocket", "camera"):
        (folder / name).mkdir(parents=True)
        photo = _photo(name)
        for i in range(per_class):
            img, kind = _random_crop(photo, rng)
            _save(img, folder / name / f"{name}_{i:02d}.{'jpg' if kind.endswith('jpg') else 'png'}")
    return folder


@pytest.fixture(scope="session")
def photo_crops(tmp_path_factory) -> list[Path]:  # noqa: ANN001
    """300 crops of real photos (:func:`write_photo_crops`), written once per session."""
    return write_photo_crops(tmp_path_factory.mktemp("photo_crops"))
