"""What the experiments share: the data, the models, one step-budgeted training loop, the results file.

Every run of every experiment trains through :func:`fit`: the same AdamW (no decay on norms, biases,
position embeddings, class token), linear warm-up then cosine, label smoothing, bf16 autocast and
vitkit's batched augmentation (random crop and flip, seeded by run). Runs are budgeted in
optimiser steps, not seconds, so a result does not depend on how busy the machine was; the wall
time is recorded beside it. A ViT and a ResNet go through the very same loop, so in the
data-efficiency experiment only the architecture differs.

Results are kept per experiment in ``docs/experiments/<name>.json``, one record per run, written
atomically after each run: a stopped experiment continues where it stopped when started again.
The machine is described once per file, by ``benchmarks/record.py``'s environment (the one schema
every benchmark record uses), read when the experiment starts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit import ResNet, VisionTransformer
from vitkit.checkpoint import atomic_write_json, read_json_object
from vitkit.cnn import get_config as get_resnet_config
from vitkit.config import get_config
from vitkit.data import AugmentConfig, BatchAugment, ImageDataset, Stream, derive_seed, epoch_order, load_dataset
from vitkit.evaluate import evaluate_model
from vitkit.preprocess import Preprocess
from vitkit.runtime import resolve_device, use_bf16
from vitkit.train import TrainStep, WarmupCosine, adamw, param_groups, set_learning_rate

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "experiments"
sys.path.insert(0, str(ROOT / "benchmarks"))
import record  # noqa: E402

# The experiments' ViT: patch 4 on 28x28 (a 7x7 grid, 49 tokens + class token), width 128, six
# blocks of four heads. Small enough that one run is two minutes on one CPU core.
VIT_BASE: dict[str, Any] = dict(
    width=128, depth=6, num_heads=4, mlp_dim=256, patch_size=4, fused_attention=False, pool="cls"
)


@dataclass
class Budget:
    """One run's training budget: steps of ``batch_size`` images, peak learning rate."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    label_smoothing: float = 0.1


# ============================================================================ data
def fashion_mnist(
    data_dir: str | None, train_size: int | None = None, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Fashion-MNIST train (optionally a seeded random subset of ``train_size``) and the 10,000 test images."""
    train = load_dataset("fashion-mnist", "train", data_dir=data_dir)
    test = load_dataset("fashion-mnist", "test", data_dir=data_dir)
    return subset(train, train_size, seed), test


def subset(train: ImageDataset, size: int | None, seed: int) -> ImageDataset:
    """A seeded random ``size`` images of ``train`` (all of it when ``size`` is None or larger)."""
    if size is None or size >= len(train):
        return train
    g = torch.Generator().manual_seed(derive_seed(seed, Stream.LIMIT_TRAIN))
    return train.subset(torch.randperm(len(train), generator=g)[:size])


# ============================================================================ models
def vit(num_classes: int = 10, **overrides: Any) -> VisionTransformer:
    """The experiments' ViT (:data:`VIT_BASE`) on 28x28 grayscale, with ``overrides``."""
    cfg = get_config("vit_tiny_28", **(VIT_BASE | overrides | dict(num_classes=num_classes, in_channels=1)))
    return VisionTransformer(cfg)


def resnet(widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10) -> ResNet:
    """The experiments' ResNet on 28x28 grayscale: vitkit's CNN reference (:mod:`vitkit.cnn`,
    ``resnet_fmnist``), one basic block a stage, with other stage ``widths`` and classes."""
    return ResNet(get_resnet_config("resnet_fmnist", widths=widths, num_classes=num_classes))


def forward_flops(model: nn.Module, image_shape: tuple[int, int, int] = (1, 28, 28)) -> int:
    """Forward FLOPs of one image as ``torch.utils.flop_counter`` counts them (multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:  # (not under no_grad: its module hooks need autograd)
        model(torch.zeros(1, *image_shape))
    model.train(was_training)
    return int(counter.get_total_flops())


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ============================================================================ training
def fit(
    model: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    budget: Budget,
    seed: int,
    hflip: bool = True,
    device: str | torch.device = "cpu",
    stats: tuple[list[float], list[float]] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``budget.steps`` steps on ``train`` and return its test accuracy and costs.

    The step, the schedule and the optimiser's groups are ``vitkit train``'s own
    (:class:`vitkit.train.TrainStep`, :class:`vitkit.train.WarmupCosine`). The images are
    normalised by ``stats`` (mean, std), by default ``train``'s own; a pre-trained model keeps
    the statistics it was pre-trained with."""
    torch.manual_seed(derive_seed(seed, Stream.WEIGHTS))
    device = torch.device(device)
    model.to(device)
    mean, std = stats or train.mean_std()
    preprocess = Preprocess(train.image_size, train.channels, mean=mean, std=std)
    augment = BatchAugment(AugmentConfig(crop_padding=2, hflip=hflip), mean, std, train.num_classes, seed)
    optimizer = adamw(param_groups(model, budget.weight_decay), budget.lr, device)
    step = TrainStep(model, optimizer, device, use_bf16("auto", device), budget.label_smoothing, clip_grad=1.0)
    schedule = WarmupCosine(budget.lr, 0.0, budget.steps, max(1, round(budget.warmup_frac * budget.steps)))
    model.train()
    start = time.perf_counter()
    losses = _train_steps(step, schedule, augment, train, min(budget.batch_size, len(train)), seed, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - start
    result = evaluate_model(model, test, preprocess, batch_size=500, device=device, bf16=False)
    model.cpu()
    tail = losses[-max(1, len(losses) // 10) :]
    batch = min(budget.batch_size, len(train))
    return {
        "test_top1": result.top1,
        "test_loss": result.loss,
        "train_loss_end": sum(tail) / len(tail),
        "steps": len(losses),
        "epochs": len(losses) * batch / len(train),
        "images_seen": len(losses) * batch,
        "train_images": len(train),
        "train_s": round(train_s, 1),
        "images_per_s": round(len(losses) * batch / train_s, 1),
        "lr": budget.lr,
        "params": num_params(model),
        "gflops_forward": forward_flops(model, tuple(train.images.shape[1:])) / 1e9,
    }


def _train_steps(
    step: TrainStep,
    schedule: WarmupCosine,
    augment: BatchAugment,
    train: ImageDataset,
    batch: int,
    seed: int,
    device: torch.device,
) -> list[float]:
    """``schedule.total_steps`` steps over seeded epochs of ``train``; the loss of each."""
    losses: list[float] = []
    epoch = 0
    while len(losses) < schedule.total_steps:
        order = epoch_order(len(train), seed, epoch)
        for b in range(len(order) // batch):
            if len(losses) >= schedule.total_steps:
                break
            index = order[b * batch : (b + 1) * batch]
            x, y = augment(train.images[index].to(device), train.labels[index].to(device), epoch, b)
            set_learning_rate(step.optimizer, schedule(len(losses)))
            result = step([(x, y)])
            if not result.finite:
                raise FloatingPointError(
                    f"the loss became {result.loss} at step {len(losses)}; lower the learning rate"
                )
            losses.append(result.loss)
        epoch += 1
    return losses


# ============================================================================ results
class Results:
    """One experiment's runs in a JSON file: ``done(key)`` lets a restarted script skip them."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = path
        old = read_json_object(path, "experiment results") if path.is_file() else {}
        self.runs: dict[str, Any] = old.get("runs", {})
        self.meta = meta

    def done(self, key: str) -> bool:
        return key in self.runs

    def add(self, key: str, record: dict[str, Any]) -> None:
        self.runs[key] = record | {"finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        self.save()

    def run(
        self, key: str, labels: dict[str, Any], train: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """The record of run ``key``: from an earlier start of the script, or ``train(*args, **kwargs)``
        now (with ``labels`` added, the values the figures group the runs by)."""
        if key not in self.runs:
            self.add(key, train(*args, **kwargs) | labels)
            r = self.runs[key]
            log(f"{key}: {100 * r['test_top1']:.2f} %" + (f" in {r['train_s']} s" if "train_s" in r else ""))
        return self.runs[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"meta": self.meta, "runs": self.runs})


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST IDX files")
    p.add_argument("--out", type=Path, default=DOCS, help="folder for the JSON results and PNG figures")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: run two experiments side by side)")
    p.add_argument("--tiny", action="store_true", help="a few steps on a tiny model: checks the script works")
    p.add_argument("--fresh", action="store_true", help="forget earlier results of this experiment")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the larger-budget GPU version")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: the experiment's)")
    return p


def setup(args: argparse.Namespace, name: str, meta: dict[str, Any]) -> Results:
    torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    path = args.out / f"{name}.json"
    if args.fresh and path.exists():
        path.unlink()
    environment = record.environment(args.device.type)
    meta = meta | {"command": record.command_line(), "threads": args.threads, "tiny": args.tiny}
    return Results(path, meta | {"environment": environment})


def budget(args: argparse.Namespace, steps: int) -> Budget:
    """The experiment's budget: ``steps`` (or ``--steps``); with ``--tiny``, 3 steps of 16 images."""
    if args.tiny:
        return Budget(steps=3, batch_size=16)
    return Budget(steps=args.steps or steps)


def steps_for_data(train_images: int, batch_size: int = 128, min_steps: int = 1500) -> int:
    """A budget that grows with the data, for runs that should measure data rather than steps.

    Eight epochs of 60,000 images, more passes over smaller sets (epochs = 8 * sqrt(60,000 / n),
    so the images seen grow as sqrt(n)), and never fewer than ``min_steps``: 1,500 steps are
    192 epochs of 1,000 images, long enough for the ResNet and the ViT to fit them.
    """
    epochs = 8.0 * math.sqrt(60_000 / train_images)
    return max(min_steps, math.ceil(epochs * train_images / batch_size))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


TINY_VIT: dict[str, Any] = dict(width=32, depth=2, num_heads=2, mlp_dim=64)


def data(args: argparse.Namespace) -> tuple[ImageDataset, ImageDataset]:
    """Fashion-MNIST's 60,000 training and 10,000 test images; with ``--tiny``, 256 and 200."""
    train, test = fashion_mnist(args.data_dir, 256 if args.tiny else None)
    if args.tiny:
        test = test.subset(torch.arange(200))
    return train, test


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0)):  # noqa: ANN201
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, axes


def save_figure(fig, path: Path) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0
