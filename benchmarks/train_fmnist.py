"""Train the Fashion-MNIST recipes and record test accuracy, wall time and images/s.

    python benchmarks/train_fmnist.py --recipe fmnist-10m  # the main job: 10 minutes on the CPU
    python benchmarks/train_fmnist.py --recipe fmnist-60m  # the 60-minute CPU recipe (target >= 94 %)
    python benchmarks/train_fmnist.py --recipe fmnist-60m --seed 1  # another seed than the recipe's
    python benchmarks/train_fmnist.py --recipe fmnist-gpu  # the longer GPU recipe (target >= 95 %)
    python benchmarks/train_fmnist.py --pipeline           # data pipeline vs model-only speed

Each run prints a table and appends a record to ``benchmarks/results/train_fmnist.jsonl`` (the
pipeline check to ``train_pipeline.jsonl``): the recipe, its seed, the split that scored it and the
split that chose its ``best/`` checkpoint, and the measured figures; the machine is the record's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import record
import torch

from vitkit.data import BatchAugment, epoch_order, iterate_batches, resolve_source
from vitkit.runtime import resolve_device, set_threads, use_bf16
from vitkit.train import RECIPES, TrainConfig, TrainStep, adamw, build_model, param_groups, train
from vitkit.train.datasets import prepare_data, scratch_geometry


def run_recipe(name: str, out: Path, threads: int | None, device: str, seed: int | None = None) -> dict:
    """Train recipe ``name`` (with another seed if given) and append its figures to
    ``train_fmnist.jsonl``."""
    overrides = {"out": str(out), "threads": threads, "device": device} | ({} if seed is None else {"seed": seed})
    cfg = TrainConfig(**(RECIPES[name] | overrides))
    env = record.environment(resolve_device(cfg.device).type)
    start = time.perf_counter()
    summary = train(cfg, progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    config = {
        "recipe": name,
        "seed": cfg.seed,
        "scored_on": summary.eval_split,
        "best_chosen_on": record.best_chosen_on(out),
        "train_config": cfg.to_dict(),
    }
    result = {
        "test_accuracy": summary.accuracy,
        "top5": summary.top5,
        "epochs_done": summary.epochs_done,
        "train_time_s": summary.train_time_s,
        "wall_time_s": round(wall, 1),
        "images_per_s": summary.images_per_s,
        "stopped_by_time_budget": summary.stopped_by_time_budget,
        "params": summary.params,
        "bf16": summary.bf16,
        "threads": summary.threads,
        "device": summary.device,
    }
    record.append("train_fmnist", config, result, env=env)
    print(f"{'recipe':<8} {'test acc':>9} {'epochs':>6} {'train s':>8} {'wall s':>7} {'img/s':>7}")
    print(
        f"{name:<8} {result['test_accuracy']:>9.2%} {result['epochs_done']:>6} {result['train_time_s']:>8.0f} "
        f"{result['wall_time_s']:>7.0f} {result['images_per_s']:>7.0f}"
    )
    return result


def _pipeline_steps(name: str, threads: int | None, device_name: str):  # noqa: ANN202
    """(config, model-only step, full step) for the recipe: both through vitkit's TrainStep; the full
    one first indexes the in-memory uint8 set and augments and normalises the batch."""
    cfg = TrainConfig(**(RECIPES[name] | {"threads": threads, "device": device_name}))
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    source = resolve_source(cfg.data, cfg.data_dir)
    data = prepare_data(cfg, source, scratch_geometry(cfg, source, (28, 28)))
    model = build_model(cfg, data).to(device).train()
    step = TrainStep(
        model, adamw(param_groups(model, cfg.weight_decay), 1e-4, device), device,
        use_bf16(cfg.precision, device), cfg.label_smoothing, cfg.clip_grad,
    )  # fmt: skip
    ds, pre = data.train, data.preprocess
    aug = BatchAugment(
        cfg.augment_config(ds.image_size, source.mirror_symmetric), pre.mean, pre.std, ds.num_classes, cfg.seed
    )
    order = epoch_order(len(ds), cfg.seed, 0)
    batches = list(iterate_batches(len(order), cfg.batch_size, order, drop_last=True))
    fixed = (pre.normalize(ds.images[batches[0]]).to(device), ds.labels[batches[0]].to(device))

    def model_only(b: int) -> None:
        step([fixed])

    def full(b: int) -> None:
        idx = batches[b % len(batches)]
        step([aug(ds.images[idx].to(device), ds.labels[idx].to(device), 0, b)])

    return cfg, model_only, full


def pipeline_check(name: str, steps: int, threads: int | None, device_name: str) -> dict:
    """Images/s of the full training step against the same step on one pre-made float batch: the
    data path's share of the time. Measured in alternating rounds so that a busy machine affects
    both alike."""
    env = record.environment(resolve_device(device_name).type)
    cfg, model_only, full = _pipeline_steps(name, threads, device_name)
    for b in range(3):  # warm-up
        full(b)
        model_only(b)
    t_full = t_model = 0.0
    rounds, per_round = 5, max(1, steps // 5)
    for r in range(rounds):
        t0 = time.perf_counter()
        for i in range(per_round):
            model_only(i)
        t1 = time.perf_counter()
        for i in range(per_round):
            full(r * per_round + i)
        t_model, t_full = t_model + t1 - t0, t_full + time.perf_counter() - t1
    n = rounds * per_round * cfg.batch_size
    config = {
        "recipe": name,
        "augment": cfg.augment_config((32, 32)).__dict__,
        "steps": rounds * per_round,
        "batch_size": cfg.batch_size,
        "threads": torch.get_num_threads(),
    }
    result = {
        "model_only_images_per_s": round(n / t_model, 1),
        "full_pipeline_images_per_s": round(n / t_full, 1),
        "ratio": round(t_model / t_full, 3),
    }
    record.append("train_pipeline", config, result, env=env)
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
    p.add_argument("--seed", type=int, default=None, help="another seed than the recipe's")
    p.add_argument("--pipeline", action="store_true", help="measure data pipeline vs model-only speed instead")
    p.add_argument("--steps", type=int, default=40, help="steps per path for --pipeline")
    args = p.parse_args(argv)
    if args.pipeline:
        pipeline_check(args.recipe, args.steps, args.threads, args.device)
        return 0
    out = Path(args.out or f"runs/bench-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_recipe(args.recipe, out, args.threads, args.device, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
