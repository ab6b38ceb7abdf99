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


def write_photos(folder: Path, per_class: int = 12, seed: int = 0) -> Path:
    """A user's photo folder: ``per_class`` random crops (96-260 px, aspect 3:4 to 4:3) of each of
    four of scikit-image's sample photographs, one class per photograph, saved as JPEG or PNG in
    the modes a phone, a scanner or a web page gives (RGB, L, RGBA, P): real pixels of mixed
    sizes and modes, as ``folder/<photo>/<photo>_<i>.{jpg,png}``."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("astronaut", "coffee", "rocket", "camera"):
        pixels = getattr(skimage.data, name)()
        (folder / name).mkdir(parents=True)
        h, w = pixels.shape[:2]
        for i in range(per_class):
            side = int(rng.integers(96, 260))
            ch, cw = side, int(side * rng.uniform(0.75, 1.33))
            y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
            img = Image.fromarray(pixels[y : y + ch, x : x + cw])
            mode = ("RGB", "L", "RGBA", "P")[i % 4] if img.mode != "L" else ("L", "RGB")[i % 2]
            img = img.convert(mode)
            ext = ".jpg" if mode in ("RGB", "L") and i % 3 == 0 else ".png"
            img.save(folder / name / f"{name}_{i:02d}{ext}")
    return folder


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
