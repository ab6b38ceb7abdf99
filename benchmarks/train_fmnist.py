"""Train the Fashion-MNIST recipes and record test accuracy, wall time and images/s.

    python benchmarks/train_fmnist.py --recipe fmnist-10m  # the main job: 10 minutes on the CPU
    python benchmarks/train_fmnist.py --recipe fmnist-60m  # the 60-minute CPU recipe (target >= 93 %)
    python benchmarks/train_fmnist.py --recipe fmnist-gpu  # the longer GPU recipe (target >= 95 %)
    python benchmarks/train_fmnist.py --pipeline           # data pipeline vs model-only speed

Each run prints a table and writes ``benchmarks/results/train_<recipe>.json`` (the pipeline
check writes ``train_pipeline.json``): the recipe, the machine, and the measured figures.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitkit.checkpoint import atomic_write_json
from vitkit.data import BatchAugment, epoch_order, iterate_batches, load_dataset
from vitkit.preprocess import Preprocess, normalize
from vitkit.runtime import autocast, available_cores, resolve_device, use_bf16
from vitkit.train import RECIPES, TrainConfig, build_model, param_groups, train

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_recipe(name: str, out: Path, threads: int | None, device: str) -> dict:
    cfg = TrainConfig(**(RECIPES[name] | {"out": str(out), "threads": threads, "device": device}))
    start = time.perf_counter()
    summary = train(cfg, progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    result = {
        "recipe": name,
        "config": cfg.to_dict(),
        "test_accuracy": summary["accuracy"],
        "top5": summary["top5"],
        "epochs_done": summary["epochs_done"],
        "train_time_s": summary["train_time_s"],
        "wall_time_s": round(wall, 1),
        "images_per_s": summary["images_per_s"],
        "stopped_by_time_budget": summary["stopped_by_time_budget"],
        "params": summary["params"],
        "bf16": summary["bf16"],
        "device": summary["device"],
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    atomic_write_json(RESULTS / f"train_{name}.json", result)
    print(f"{'recipe':<8} {'test acc':>9} {'epochs':>6} {'train s':>8} {'wall s':>7} {'img/s':>7}")
    print(
        f"{name:<8} {result['test_accuracy']:>9.2%} {result['epochs_done']:>6} {result['train_time_s']:>8.0f} "
        f"{result['wall_time_s']:>7.0f} {result['images_per_s']:>7.0f}"
    )
    return result


def pipeline_check(name: str, steps: int, threads: int | None, device_name: str) -> dict:
    """Images/s of the full training step (index the in-memory uint8 set, augment, normalise,
    forward, backward, AdamW) against the same step on one pre-made float batch: the data path's
    share of the time. Measured in alternating rounds so that a busy machine affects both alike."""
    cfg = TrainConfig(**(RECIPES[name] | {"threads": threads, "device": device_name}))
    torch.set_num_threads(cfg.threads or available_cores())
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    ds = load_dataset(cfg.data, "train", cfg.data_dir, Preprocess((28, 28), 1, pad=cfg.pad))
    mean, std = ds.mean_std()
    model = build_model(cfg, ds).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=1e-4)
    aug = BatchAugment(cfg.augment_config(ds.image_size), mean, std, ds.num_classes, cfg.seed)
    order = epoch_order(len(ds), cfg.seed, 0)
    batches = list(iterate_batches(len(order), cfg.batch_size, order, drop_last=True))
    fixed_x = normalize(ds.images[batches[0]], mean, std).to(device)
    fixed_y = ds.labels[batches[0]].to(device)

    def step(x, y):
        with autocast(device, bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    def full(b):
        idx = batches[b % len(batches)]
        x, y = aug(ds.images[idx].to(device), ds.labels[idx].to(device), 0, b)
        return step(x, y)

    for b in range(3):  # warm-up
        full(b)
        step(fixed_x, fixed_y)
    t_full = t_model = 0.0
    rounds, per_round = 5, max(1, steps // 5)
    for r in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            step(fixed_x, fixed_y)
        t1 = time.perf_counter()
        for i in range(per_round):
            full(r * per_round + i)
        t2 = time.perf_counter()
        t_model += t1 - t0
        t_full += t2 - t1
    n = rounds * per_round * cfg.batch_size
    result = {
        "recipe": name,
        "augment": cfg.augment_config(ds.image_size).__dict__,
        "model_only_images_per_s": round(n / t_model, 1),
        "full_pipeline_images_per_s": round(n / t_full, 1),
        "ratio": round(t_model / t_full, 3),
        "steps": rounds * per_round,
        "batch_size": cfg.batch_size,
        "bf16": bf16,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    atomic_write_json(RESULTS / "train_pipeline.json", result)
    print(f"{'path':<14} {'images/s':>9}")
    print(f"{'model only':<14} {result['model_only_images_per_s']:>9.0f}")
    print(f"{'full pipeline':<14} {result['full_pipeline_images_per_s']:>9.0f}")
    print(f"full / model-only: {result['ratio']:.1%} (target >= 90 %)")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fmnist-10m")
    p.add_argument("--out", default=None, help="run folder (default: runs/bench-RECIPE-TIME)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--pipeline", action="store_true", help="measure data pipeline vs model-only speed instead")
    p.add_argument("--steps", type=int, default=40, help="steps per path for --pipeline")
    args = p.parse_args(argv)
    if args.pipeline:
        pipeline_check(args.recipe, args.steps, args.threads, args.device)
        return 0
    out = Path(args.out or f"runs/bench-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_recipe(args.recipe, out, args.threads, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
