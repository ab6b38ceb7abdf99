"""The data-hunger study (docs/data-hunger.md): a plain ViT on little data, alone, distilled from a
CNN, and pre-trained without labels; each row a ``vitkit`` command, run back to back on one machine.

    python benchmarks/data_hunger.py distill [--seconds 600] [--rows plain,hard,token] [--teacher RUN] [--seed 0]
    python benchmarks/data_hunger.py few [--labels 1000] [--pretrain-seconds 900] [--seconds 300] [--objective mpp|mae] [--no-baselines]
    python benchmarks/data_hunger.py step [--batch 256] [--steps 10] [--rounds 5]

``distill`` (60,000 labels, the main job's 10 minutes): the CNN teacher (``--recipe
fmnist-10m-cnn``, or ``--teacher`` a run it trained before), then the plain ViT of ``--recipe
fmnist-10m-plain`` without the teacher and with it (``--rows``). ``few`` (``--labels`` labelled images, ``--per-class`` of each class, drawn with the seed): the
plain ViT from scratch, the CNN on the same images, and the ViT fine-tuned from a ``vitkit
pretrain`` run on all the training images without their labels (their validation share held out;
the test images are never read). ``step`` times a distilled training step against the student's
step plus the teacher's forward, interleaved (records to ``data_hunger_step.jsonl``).

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

from vitkit.train import RECIPES

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
    rows = set(args.rows.split(","))
    teacher = args.teacher or out / "cnn"
    if args.teacher is None:
        t = row(
            "distill",
            "CNN teacher (resnet_fmnist)",
            ["train", "--recipe", "fmnist-10m-cnn", "--time-budget", budget, "--out", str(teacher), *common(args)],
            env,
            **base,
        )
    else:  # a teacher trained before, by this script: its own time stands beside the rows it teaches
        t = json.loads((teacher / "summary.json").read_text())
    taught = {"teacher_train_s": t["train_time_s"], "teacher": str(teacher)}
    plain = ["train", "--recipe", "fmnist-10m-plain", "--time-budget", budget, *common(args)]
    if "plain" in rows:
        row("distill", "plain ViT", [*plain, "--teacher", "none", "--out", str(out / "plain")], env, **base)
    variants = {
        "hard": ("plain ViT, hard distillation", []),
        "token": ("plain ViT, hard distillation, distillation token", ["--distill-token", "--set", "class_token=True"]),
        "soft": ("plain ViT, soft distillation", ["--distill", "soft", "--distill-tau", "3"]),
    }
    for key, (name, flags) in variants.items():
        if key in rows:
            argv = [*plain, "--teacher", str(teacher), *flags, "--out", str(out / f"plain-{key}")]
            row("distill", name, argv, env, extra=taught, **base)


def few(args: argparse.Namespace, env: dict[str, Any]) -> None:
    out, budget, per_class = args.out, f"{args.seconds:g}", args.labels // 10
    base = {"labels": args.labels, "seed": args.seed, "budget_s": args.seconds}
    labelled = ["--data", "fashion-mnist", "--per-class", str(per_class), "--time-budget", budget, *common(args)]
    if args.baselines:
        plain = ["--recipe", "fmnist-10m-plain", "--teacher", "none", "--epochs", "500"]
        row("few", "plain ViT", ["train", *plain, *labelled, "--out", str(out / "plain")], env, **base)
        cnn = ["--recipe", "fmnist-10m-cnn", "--epochs", "500"]
        row("few", "CNN (resnet_fmnist)", ["train", *cnn, *labelled, "--out", str(out / "cnn")], env, **base)
    pre = out / f"pretrain-{args.objective}"
    plain_set = RECIPES["fmnist-10m-plain"]["model_overrides"]  # its Transformer: pretrain takes no recipe
    overrides = [a for k, v in plain_set.items() for a in ("--set", f"{k}={v}")]
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


def step_cost(args: argparse.Namespace, env: dict[str, Any]) -> None:
    """What distillation costs a training step, against what it must cost: the student's step
    (forward, backward, update) plus the teacher's forward and no more. Interleaved rounds of
    ``--steps`` steps each, on one batch of real images, median of ``--rounds``."""
    import statistics

    import torch

    from vitkit import create_model
    from vitkit.data import load_dataset
    from vitkit.preprocess import Preprocess
    from vitkit.runtime import keep_freed_memory, use_bf16
    from vitkit.train.distill import Distillation, Teacher
    from vitkit.train.optim import build_optimizer, param_groups
    from vitkit.train.step import TrainStep

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    device = torch.device("cpu")
    bf16 = use_bf16("auto", device)
    images = load_dataset("fashion-mnist", "train").images[: args.batch]
    labels = torch.arange(args.batch) % 10
    plain = dict(RECIPES["fmnist-10m-plain"]["model_overrides"])
    student = create_model("vit_tiny_28", num_classes=10, **plain)
    teacher_model = create_model("resnet_fmnist", num_classes=10).eval().requires_grad_(False)
    pre = Preprocess((28, 28), 1, mean=(0.286,), std=(0.353,))
    x = pre.normalize(images)
    teacher = Teacher(teacher_model, pre, "resnet_fmnist")

    def step(objective=None) -> TrainStep:  # noqa: ANN001
        opt = build_optimizer("adamw", param_groups(student, 0.05), 1e-3, device)
        return TrainStep(student, opt, device, bf16, label_smoothing=0.1, clip_grad=1.0, objective=objective)

    alone = step()
    distilled = step(Distillation(teacher, pre, "hard", 0.5, 1.0, 0.1))

    def forward() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            teacher(x, pre)

    cases = {"student step": lambda: alone([(x, labels)]), "teacher forward": forward}
    cases["distilled step"] = lambda: distilled([(x, labels)])
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    predicted = med["student step"] + med["teacher forward"]
    metrics = {
        "student_step_s": med["student step"],
        "teacher_forward_s": med["teacher forward"],
        "distilled_step_s": med["distilled step"],
        "distilled_over_student_plus_teacher": med["distilled step"] / predicted,
        "student_images_per_s": args.batch / med["student step"],
        "distilled_images_per_s": args.batch / med["distilled step"],
        "bf16": bf16,
    }
    config = {"part": "step", "batch": args.batch, "steps": args.steps, "rounds": args.rounds, "threads": args.threads}
    config |= {"student": "fmnist-10m-plain's ViT", "teacher": "resnet_fmnist", "distill": "hard"}
    record.append(NAME + "_step", config, metrics, env=env)
    for k, v in med.items():
        print(f"{k}: {v * 1000:.1f} ms ({args.batch / v:.0f} images/s)")
    print(f"distilled step / (student step + teacher forward) = {metrics['distilled_over_student_plus_teacher']:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["distill", "few", "step"])
    p.add_argument("--batch", type=int, default=256, help="step: the batch")
    p.add_argument("--steps", type=int, default=10, help="step: steps a round")
    p.add_argument("--rounds", type=int, default=5, help="step: interleaved rounds (the median is kept)")
    p.add_argument("--seconds", type=float, default=None, help="each labelled run's budget (distill 600, few 300)")
    p.add_argument("--pretrain-seconds", type=float, default=900.0)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--objective", choices=["mpp", "mae"], default="mpp")
    p.add_argument(
        "--rows",
        default="plain,hard,token",
        help="distill: the student rows, of plain, hard, token (DeiT's distillation token), soft (tau 3)",
    )
    p.add_argument("--teacher", type=Path, default=None, help="distill: a teacher this script trained before")
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="few: only the pre-training and its fine-tuning (the plain ViT and the CNN measured before)",
    )
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    p.add_argument("--out", type=Path, default=record.ROOT / "runs" / f"data-hunger-{stamp}")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (600.0 if args.part == "distill" else 300.0)
    env = record.environment()
    print(f"load average at start {env['load']}; CPU {env['cpu']}; runs in {args.out}", flush=True)
    {"distill": distill, "few": few, "step": step_cost}[args.part](args, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
