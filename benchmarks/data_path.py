"""How fast the data paths feed training at 224 px: the disk cache and streamed shards, each
against the model step alone, in one process.

    python benchmarks/data_path.py [--folder /tmp/photos224] [--repeats 6]

On the 10,000-JPEG folder of ``benchmarks/photo_folder.py`` (made if missing), it measures:

- decoding: the disk cache built with one worker (images/s per core) and with every core;
- the cache path: full-depth ViT-Ti/16 in bf16 autocast at batch 64, each step's batch gathered
  from the memory-mapped cache and augmented (RandomResizedCrop 8-100 %, flip), timed step by
  step against the same TrainStep on a batch already in memory (``bench.time_interleaved``);
  "later epochs" read the cache from the page cache; "first epoch" adds the decode that builds it;
- streaming: ``vitkit shards`` of the folder, then the same model fed by ``StreamLoader`` (JPEG
  decode, crop and flip in DataLoader workers), against the model alone, and the loader alone;
- peak memory (VmHWM) of this process.

Appends a record to ``benchmarks/results/data_path.jsonl``. Run it alone: it measures the machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import record
import torch

from vitkit import create_model
from vitkit.bench import speedup, time_interleaved
from vitkit.data import AugmentConfig, BatchAugment, ShardSet, list_images
from vitkit.data import cache as C
from vitkit.data.shards import write_shards
from vitkit.data.stream import StreamLoader
from vitkit.distributed import World
from vitkit.preprocess import Preprocess
from vitkit.runtime import keep_freed_memory
from vitkit.train.datasets import StreamedSet
from vitkit.train.feed import ArrayFeed, StreamFeed
from vitkit.train.optim import build_optimizer, param_groups
from vitkit.train.step import TrainStep

SIZE, BATCH = 224, 64


def decode_rates(folder: Path, root: Path) -> dict:
    """Images/s of decoding and preparing one image at a time on one thread (after a warm-up),
    and of building the whole cache with a worker per core."""
    from vitkit.images import decode_image

    listing = list_images(folder)
    geometry = Preprocess((SIZE, SIZE), 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    files = listing.files[:1050]
    for f in files[:50]:
        geometry.pixels(decode_image(f))
    t = time.perf_counter()
    for f in files[50:]:
        geometry.pixels(decode_image(f))
    one = 1000 / (time.perf_counter() - t)
    torch.set_num_threads(threads)
    cores = len(os.sched_getaffinity(0))
    t = time.perf_counter()
    ds = C.cached_image_folder(listing, geometry, cache_dir=root / "all", workers=cores)
    seconds = time.perf_counter() - t
    return {
        "images": len(ds),
        "decoded_mb": round(len(ds) * 3 * SIZE * SIZE / 1e6, 1),
        "one_core_images_per_s": round(one, 1),
        "workers": cores,
        "all_workers_images_per_s": round(len(ds) / seconds, 1),
        "build_seconds": round(seconds, 1),
        "dataset": ds,
    }


def model_and_step(device: torch.device) -> tuple[TrainStep, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = create_model("vit_ti16", num_classes=10).to(device)
    optimizer = build_optimizer("adamw", param_groups(model, 0.05), 1e-4, device)
    step = TrainStep(model, optimizer, device, bf16=True, label_smoothing=0.1, clip_grad=1.0)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
    return step, batch


def forever(feed: ArrayFeed | StreamFeed):  # noqa: ANN201 - an iterator of steps
    return itertools.chain.from_iterable(feed.epoch(e) for e in itertools.count())


def compare(step: TrainStep, batch: tuple, feed_steps, repeats: int) -> dict:  # noqa: ANN001
    timings = time_interleaved(
        {"model": lambda: step([batch]), "fed": lambda: step(next(feed_steps))}, torch.device("cpu"), 2, repeats
    )
    model, fed = timings["model"], timings["fed"]
    return {
        "model_only_images_per_s": round(BATCH / model.median, 1),
        "fed_images_per_s": round(BATCH / fed.median, 1),
        "ratio": round(speedup(model, fed), 3),  # fed / model rate, per round
        "spread": {"model": round(model.spread, 3), "fed": round(fed.spread, 3)},
    }


def loader_rate(shards: ShardSet, workers: int, batches: int = 8) -> float:
    loader = StreamLoader(shards, 1, 0, BATCH, 0, 0, (SIZE, SIZE), 3, (0.08, 1.0), True, workers)
    it = iter(loader)
    next(it)  # workers started
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return BATCH * batches / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=Path("/tmp/photos224"))
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args(argv)
    env = record.environment()
    if not args.folder.is_dir():
        from photo_folder import make

        make(args.folder, 10_000, SIZE)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    device, world = torch.device("cpu"), World()
    tmp = Path(tempfile.mkdtemp(prefix="vitkit-data-path-"))
    try:
        decode = decode_rates(args.folder, tmp)
        ds = decode.pop("dataset")
        step, batch = model_and_step(device)
        aug = AugmentConfig(crop_padding=0, hflip=True, crop_scale=0.08)
        augment = BatchAugment(aug, [0.5] * 3, [0.5] * 3, 10, 0)
        cache = compare(step, batch, forever(ArrayFeed(ds, BATCH, 1, augment, world, device, 0)), args.repeats)
        cache["first_epoch_images_per_s"] = round(
            len(ds) / (decode["build_seconds"] + len(ds) / cache["fed_images_per_s"]), 1
        )
        shards_dir = tmp / "shards"
        write_shards(args.folder, shards_dir, 8 * 10**6)
        shards = ShardSet.open(shards_dir)
        stream = {"shards": len(shards.urls)}
        for workers in (1, 2):
            stream[f"loader_alone_{workers}_workers_images_per_s"] = round(loader_rate(shards, workers), 1)
        rest = AugmentConfig(crop_padding=0, hflip=False)
        for workers in (1, 2):
            loader = dict(scale=(0.08, 1.0), hflip=True, workers=workers, skip_bad_images=False)
            data = StreamedSet(shards, (SIZE, SIZE), 3, str(shards_dir))
            feed = StreamFeed(data, BATCH, 1, BatchAugment(rest, [0.5] * 3, [0.5] * 3, 10, 0), world, device, 0, loader)
            stream[f"{workers}_workers"] = compare(step, batch, forever(feed), args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    config = {
        "what": "full-depth ViT-Ti/16, 224 px, batch 64, bf16 autocast, AdamW; RandomResizedCrop 8-100 % + flip",
        "threads": args.threads,
        "repeats": args.repeats,
    }
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    metrics = {"decode": decode, "cache": cache, "stream": stream, "peak_rss_mb": peak_rss_mb}
    record.append("data_path", config, metrics, env=env)
    print(f"load average at start {env['load']}; {args.threads} threads")
    print(f"decode: {decode['one_core_images_per_s']:.0f} img/s on one core, {decode['all_workers_images_per_s']:.0f}")
    print(
        f"  with {decode['workers']} workers; the 10,000-image cache ({decode['decoded_mb']:.0f} MB) in {decode['build_seconds']:.0f} s"
    )
    print(f"{'path':<26}{'model alone':>12}{'fed':>8}{'ratio':>8}")
    rows = [("cache (later epochs)", cache)] + [(f"stream, {w} worker(s)", stream[f"{w}_workers"]) for w in (1, 2)]
    for name, r in rows:
        print(f"{name:<26}{r['model_only_images_per_s']:>12.1f}{r['fed_images_per_s']:>8.1f}{r['ratio']:>8.3f}")
    print(f"cache, first epoch (decode + train): {cache['first_epoch_images_per_s']:.1f} img/s")
    for w in (1, 2):
        print(f"stream loader alone, {w} worker(s): {stream[f'loader_alone_{w}_workers_images_per_s']:.0f} img/s")
    print(f"peak RSS {peak_rss_mb:.0f} MB; appended to {record.RESULTS / 'data_path.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
