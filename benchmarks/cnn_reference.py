"""The CNN the main job is measured against, trained under the same 10-minute budget.

    python benchmarks/cnn_reference.py [--seconds 600] [--threads 2] [--out RUN]

vitkit's CNN reference (``--model resnet_fmnist``, :mod:`vitkit.cnn`: a 3x3 conv, then one basic
block at each of widths 32, 64 and 128; 0.31 M parameters) on the 60,000 Fashion-MNIST training
images, trained by ``vitkit train`` itself (:func:`vitkit.train.train`): AdamW at 2e-3 with weight
decay 0.05, 5 % warm-up then cosine to 0, label smoothing 0.1, clipping at 1, bf16 autocast where
the CPU has it, random 2-pixel crop and flip, nothing held out; for as many steps of 256 images as
fit in ``--seconds``: the step time is measured on 30 steps first (a short run of the same
recipe). Scored on the 10,000 test images. The run folder it leaves (``--out``) is a vitkit run:
``vitkit evaluate RUN`` reads it, and a ViT can be distilled from it.

Run it on a quiet machine in the same session as ``bash scripts/main.sh`` (the ViT), so the two
figures compare. Appends a record to ``benchmarks/results/cnn_reference.jsonl``; ``--steps N``
trains a fixed N steps instead and records nothing (a check that the script works).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import record

sys.path.insert(0, str(Path(__file__).resolve().parent / "experiments"))
import common  # noqa: E402

from vitkit import load  # noqa: E402
from vitkit.train import Summary, TrainConfig, read_metrics, train  # noqa: E402

BATCH = 256
SEED = 0
LR = 2e-3
WARMUP = 0.05  # of the steps


def recipe(out: str | Path, steps: int, threads: int, data_dir: str | None, **kw: object) -> TrainConfig:
    """The CNN reference's recipe (that of ``common.fit``) as a ``vitkit train`` run."""
    return TrainConfig(
        data="fashion-mnist",
        data_dir=data_dir,
        model="resnet_fmnist",
        val_fraction=0.0,  # nothing is chosen: a fixed recipe and step count
        steps=steps,
        batch_size=BATCH,
        lr=LR,
        min_lr=0.0,
        weight_decay=0.05,
        warmup_steps=max(1, round(WARMUP * steps)),
        label_smoothing=0.1,
        clip_grad=1.0,
        crop_padding=2,
        hflip=True,
        precision="auto",
        seed=SEED,
        threads=threads,
        eval_batch_size=500,
        out=str(out),
        **kw,
    )


def seconds_per_step(threads: int, data_dir: str | None) -> float:
    """The step time on 30 steps (after 5) of the recipe, on 5 batches of images, from the run's
    own clock (``train_time`` in metrics.jsonl: the steps alone)."""
    with tempfile.TemporaryDirectory(prefix="cnn-reference-timing-") as tmp:
        train(recipe(tmp, 35, threads, data_dir, limit_train=5 * BATCH), progress=False)
        metrics = read_metrics(tmp)
    first, last = metrics[0], metrics[-1]  # an epoch is 5 steps: the first is the warm-up
    return (last["train_time"] - first["train_time"]) / (last["step"] - first["step"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--data-dir", default=None)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    p.add_argument("--out", type=Path, default=record.ROOT / "runs" / f"cnn-reference-{stamp}", help="run folder")
    p.add_argument("--steps", type=int, default=None, help="train this many steps, unmeasured and unrecorded")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    env = record.environment()
    per_step = None
    steps = args.steps
    if steps is None:
        per_step = seconds_per_step(args.threads, args.data_dir)
        steps = int(args.seconds / per_step)
    summary = train(recipe(args.out, steps, args.threads, args.data_dir), progress=False)
    result = _result(args.out, summary)
    print(f"load average at start {env['load']}; {summary.threads} threads; run folder {args.out}")
    print(
        f"ResNet ({result['params'] / 1e6:.2f} M params): {result['steps']} steps ({result['epochs']:.1f} epochs) in "
        f"{result['train_s']:.0f} s at {result['images_per_s']:.0f} images/s: test accuracy {result['test_top1']:.2%}"
    )
    if per_step is None:
        return 0
    config = {
        "model": "resnet_fmnist (vitkit.cnn: widths 32/64/128, one basic block a stage)",
        "recipe": "vitkit train: AdamW 2e-3, wd 0.05, warm-up 5 % then cosine, label smoothing 0.1, crop + flip",
        "budget_s": args.seconds,
        "threads": args.threads,
        "seed": SEED,
        "run": str(args.out),
        "train_loss_end": "the last epoch's mean training loss",
        "scored_on": "test",
        "chosen_on": None,  # a fixed recipe and step count: nothing is chosen on any split
    }
    record.append("cnn_reference", config, {"measured_s_per_step": round(per_step, 4), **result}, env=env)
    return 0


def _result(run: Path, summary: Summary) -> dict:
    """The record's metrics, in the keys the earlier records (``common.fit``'s) use."""
    metrics = read_metrics(run)
    train_images = json.loads((run / "train_config.json").read_text())["data"]["split"]["counts"]["train"]
    return {
        "test_top1": summary.accuracy,
        "test_loss": summary.loss,
        "train_loss_end": metrics[-1]["train_loss"],
        "steps": summary.steps,
        "epochs": summary.steps * BATCH / train_images,
        "images_seen": summary.steps * BATCH,
        "train_images": train_images,
        "train_s": summary.train_time_s,
        "images_per_s": summary.images_per_s,
        "lr": LR,
        "params": summary.params,
        "gflops_forward": common.forward_flops(load(Path(summary.checkpoint))) / 1e9,
    }


if __name__ == "__main__":
    raise SystemExit(main())
