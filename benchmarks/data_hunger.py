"""The data-hunger study (docs/data-hunger.md): a plain ViT on little data, alone, distilled from a
CNN, and pre-trained without labels; each row a ``vitkit`` command, run back to back on one machine.

    python benchmarks/data_hunger.py distill [--seconds 600] [--threads 2] [--seed 0]
    python benchmarks/data_hunger.py few [--labels 1000] [--pretrain-seconds 900] [--seconds 300] [--objective mpp]

``distill`` (60,000 labels, the main job's 10 minutes): the CNN teacher (``--recipe
fmnist-10m-cnn``), then the plain ViT of ``--recipe fmnist-10m-plain`` without the teacher and with
it. ``few`` (``--labels`` labelled images, ``--per-class`` of each class, drawn with the seed): the
plain ViT from scratch, the CNN on the same images, and the ViT fine-tuned from a ``vitkit
pretrain`` run on all the training images without their labels (their validation share held out;
the test images are never read).

Every choice inside a run (``best/``) is made on its validation share; each run is scored once
on the test split, and ``last/`` is what the row reports, as for the main job. Each row appends a
record to ``benchmarks/results/data_hunger.jsonl`` with its exact command, the seed, and the time
its teacher or its pre-training took (so rows compare at equal total compute).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import record

NAME = "data_hunger"


def vitkit(argv: list[str]) -> dict[str, Any]:
    """Run ``vitkit ARGV`` as a user would, and return its run's summary.json."""
    cmd = [sys.executable, "-m", "vitkit", *argv]
    print("$", shlex.join(["vitkit", *argv]), flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stdout, stderr=sys.stderr, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "summary.json").read_text())


def row(
    part: str, name: str, argv: list[str], env: dict[str, Any], extra: dict[str, Any] | None = None, **config: Any
) -> dict[str, Any]:
    """One row: run it, append its record (its environment read before it started)."""
    started = record.environment()
    summary = vitkit(argv)
    metrics = {
        "test_top1": summary["accuracy"],
        "test_loss": summary["loss"],
        "eval_split": summary["eval_split"],
        "train_s": summary["train_time_s"],
        "images_per_s": summary["images_per_s"],
        "epochs": summary["epochs_done"],
        "steps": summary["steps"],
        "params": summary["params"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "best_val_loss": summary.get("best_val_loss"),
        "objective": summary.get("objective", "classify"),
        **(extra or {}),
    }
    config = {"part": part, "row": name, **config, "scored_on": summary["eval_split"], "chosen_on": "validation"}
    record.append(NAME, config, metrics, env=started, command=shlex.join(["vitkit", *argv]), session=env["time"])
    print(f"{name}: {summary['eval_split']} {summary['accuracy']:.2%} in {summary['train_time_s']:.0f} s", flush=True)
    return summary


def common(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads), "--seed", str(args.seed), "--no-progress"]


def distill(args: argparse.Namespace, env: dict[str, Any]) -> None:
    out, budget = args.out, f"{args.seconds:g}"
    base = {"labels": 60000, "seed": args.seed, "budget_s": args.seconds}
    teacher = out / "cnn"
    t = row(
        "distill",
        "CNN teacher (resnet_fmnist)",
        ["train", "--recipe", "fmnist-10m-cnn", "--time-budget", budget, "--out", str(teacher), *common(args)],
        env,
        **base,
    )
    taught = {"teacher_train_s": t["train_time_s"], "teacher": str(teacher)}
    plain = ["train", "--recipe", "fmnist-10m-plain", "--time-budget", budget, *common(args)]
    row("distill", "plain ViT", [*plain, "--teacher", "none", "--out", str(out / "plain")], env, **base)
    row(
        "distill",
        "plain ViT, hard distillation",
        [*plain, "--teacher", str(teacher), "--out", str(out / "plain-hard")],
        env,
        extra=taught,
        **base,
    )
    if args.token:
        row(
            "distill",
            "plain ViT, hard distillation, distillation token",
            [*plain, "--teacher", str(teacher), "--distill-token", "--out", str(out / "plain-hard-token")],
            env,
            extra=taught,
            **base,
        )


def few(args: argparse.Namespace, env: dict[str, Any]) -> None:
    out, budget, per_class = args.out, f"{args.seconds:g}", args.labels // 10
    base = {"labels": args.labels, "seed": args.seed, "budget_s": args.seconds}
    labelled = ["--data", "fashion-mnist", "--per-class", str(per_class), "--time-budget", budget, *common(args)]
    plain = ["--recipe", "fmnist-10m-plain", "--teacher", "none", "--epochs", "500"]
    row("few", "plain ViT", ["train", *plain, *labelled, "--out", str(out / "plain")], env, **base)
    cnn = ["--recipe", "fmnist-10m-cnn", "--epochs", "500"]
    row("few", "CNN (resnet_fmnist)", ["train", *cnn, *labelled, "--out", str(out / "cnn")], env, **base)
    pre = out / f"pretrain-{args.objective}"
    overrides = [a for k, v in PLAIN_SET.items() for a in ("--set", f"{k}={v}")]
    p = row(
        "few",
        f"{args.objective} pre-training (no labels)",
        [
            "pretrain",
            "--objective",
            args.objective,
            "--data",
            "fashion-mnist",
            "--model",
            "vit_tiny_28",
            *overrides,
            "--batch-size",
            "256",
            "--lr",
            "1.5e-3",
            "--epochs",
            "500",
            "--warmup-epochs",
            "1",
            "--crop-padding",
            "0",
            "--time-budget",
            f"{args.pretrain_seconds:g}",
            "--out",
            str(pre),
            *common(args),
        ],
        env,
        labels=0,
        seed=args.seed,
        budget_s=args.pretrain_seconds,
    )
    finetune = ["--lr", "1e-3", "--optimizer", "adamw", "--weight-decay", "0.05", "--label-smoothing", "0.1"]
    finetune += ["--batch-size", "128", "--steps", "100000", "--warmup-steps", "100", "--eval-every", "5"]
    row(
        "few",
        f"plain ViT, {args.objective} pre-trained",
        ["train", "--init", str(pre), "--recipe", "none", *finetune, *labelled, "--out", str(out / "finetuned")],
        env,
        extra={"pretrain_train_s": p["train_time_s"], "pretrain": str(pre)},
        **base,
    )


# The Transformer of --recipe fmnist-10m-plain, for `vitkit pretrain` (which takes no recipe).
PLAIN_SET = dict(
    stem="patch",
    patch_size=4,
    width=128,
    depth=4,
    num_heads=2,
    mlp_dim=256,
    pool="gap",
    class_token=False,
    fused_attention=False,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["distill", "few"])
    p.add_argument("--seconds", type=float, default=None, help="each labelled run's budget (distill 600, few 300)")
    p.add_argument("--pretrain-seconds", type=float, default=900.0)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--objective", choices=["mpp", "mae"], default="mpp")
    p.add_argument("--token", action="store_true", help="distill: also the row with DeiT's distillation token")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    p.add_argument("--out", type=Path, default=record.ROOT / "runs" / f"data-hunger-{stamp}")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (600.0 if args.part == "distill" else 300.0)
    env = record.environment()
    print(f"load average at start {env['load']}; CPU {env['cpu']}; runs in {args.out}", flush=True)
    (distill if args.part == "distill" else few)(args, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
