"""An ordinary photo collection to measure the data paths with: 10,000 JPEGs at 224x224.

    python benchmarks/photo_folder.py /tmp/photos224 [--count 10000] [--size 224]

Fashion-MNIST's test images (real images; Debian's dataset-fashion-mnist) upscaled to ``--size``
and tinted with a seeded colour each, so that they are RGB photos of the size people fine-tune
at, saved as JPEG (quality 90) in one folder per class: 1,505 MB of decoded pixels at 224 px.
Appends a record of what it made (files, MB on disk, seconds) to
``benchmarks/results/photo_folder.jsonl``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import record
from PIL import Image

from vitkit.data import load_dataset


def make(out: Path, count: int, size: int, seed: int = 0) -> Path:
    ds = load_dataset("fashion-mnist", "test")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(ds))):
        gray = Image.fromarray(ds.images[i, 0].numpy()).resize((size, size), Image.BICUBIC)
        tint = rng.uniform(0.35, 1.0, 3)
        rgb = (np.asarray(gray, dtype=np.float32)[..., None] * tint).round().clip(0, 255).astype(np.uint8)
        folder = out / ds.class_names[int(ds.labels[i])].replace("/", "-")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{i:05d}.jpg", quality=90)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    env = record.environment()
    start = time.perf_counter()
    make(args.out, args.count, args.size)
    seconds = round(time.perf_counter() - start, 1)
    files = list(args.out.rglob("*.jpg"))
    mb = round(sum(f.stat().st_size for f in files) / 1e6, 1)
    config = {"count": args.count, "size": args.size, "seed": 0, "out": str(args.out)}
    record.append("photo_folder", config, {"files": len(files), "mb_on_disk": mb, "seconds": seconds}, env=env)
    print(f"{len(files)} JPEGs in {args.out} ({mb:.0f} MB on disk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
