"""Fine-tuning measured: pre-train on Fashion-MNIST classes 0-4, fine-tune on classes 5-9.

    python benchmarks/finetune.py                 # about 25 minutes on the 2-core CPU
    python benchmarks/finetune.py --tiny          # a few steps of each: checks that it runs

Upstream: a plain ViT (vit_tiny_28: 4x4 patches, 7x7 grid, class token, width 192, depth 6)
trained from scratch on the 30,000 training images of T-shirt, Trouser, Pullover, Dress, Coat.
Downstream: Sandal, Shirt, Sneaker, Bag, Ankle boot, with all 30,000 training images and with 10
per class (three seeded draws), scored on their 5,000 test images. Every run is one
``vitkit train`` command, recorded with its result in a record of ``benchmarks/results/finetune.jsonl``:

- the ``finetune`` recipe (SGD, momentum 0.9, no weight decay, clipping at 1, warm-up + cosine)
  against AdamW at a tenth of the from-scratch rate;
- freezing the patch embedding against training everything (SGD);
- layer-wise learning-rate decay 0.75 against none (AdamW);
- fine-tuning at 56 px (position embeddings resampled from 7x7 to 14x14) against 28 px (SGD);
- and, for reference, the same network trained from random weights with the same steps.

The step counts are CPU-sized (the paper's recipe: 500 steps of 512 images). As in the paper, each
run's learning rate is chosen from a small grid on a held-out tenth of the downstream training
images (never on the test images); the 10-per-class runs, too small to hold anything out, use the
rate chosen on all the images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM, DOWNSTREAM = "0,1,2,3,4", "5,6,7,8,9"
COMMON = ["--data", "fashion-mnist", "--no-progress", "--json"]


SGD_GRID, ADAMW_GRID = (0.003, 0.01, 0.03, 0.1), (1e-4, 3e-4, 1e-3, 3e-3)


def variants(upstream: Path) -> dict[str, tuple[list[str], tuple[float, ...]]]:
    """The runs compared: `vitkit train` options (besides data, length and learning rate), and the
    learning rates tried for each."""
    init = ["--init", str(upstream), "--recipe", "finetune"]
    adamw = [*init, "--optimizer", "adamw", "--weight-decay", "0.05"]
    scratch = ["--recipe", "none", "--model", "vit_tiny_28", "--set", "fused_attention=false", "--min-lr", "0"]
    scratch += ["--label-smoothing", "0", "--eval-every", "0"]
    return {
        "sgd (finetune recipe)": (init, SGD_GRID),
        "adamw": (adamw, ADAMW_GRID),
        "sgd, patch embedding frozen": ([*init, "--freeze", "embed"], SGD_GRID),
        "adamw, layer decay 0.75": ([*adamw, "--layer-decay", "0.75"], ADAMW_GRID),
        "sgd at 56 px": ([*init, "--image-size", "56"], SGD_GRID[1:]),
        "from scratch (adamw)": (scratch, ADAMW_GRID),
    }


def vitkit_train(argv: list[str], out: Path) -> dict:
    """Run ``vitkit train ARGV --out OUT`` (or reuse its summary from an earlier start)."""
    summary = out / "summary.json"
    if not summary.is_file():
        cmd = [sys.executable, "-m", "vitkit", "train", *argv, "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    s = json.loads(summary.read_text())
    keys = ("accuracy", "steps", "train_time_s", "images_per_s", "epochs_done")
    return {k: s[k] for k in keys} | {"val_accuracy": s["best_val_accuracy"]}


def _slug(text: str) -> str:
    return text.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")


def _grid_text(tried: list[dict]) -> str:
    return ", ".join(f"{r['lr']:g}: val {r['val_accuracy']:.1%}" for r in tried)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "finetune", help="folder for the run folders")
    p.add_argument("--upstream-epochs", type=int, default=8)
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps on all the downstream images")
    p.add_argument("--shot-steps", type=int, default=100, help="fine-tuning steps on 10 images per class")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, default=3, help="draws of the 10-per-class sets")
    p.add_argument("--tiny", action="store_true", help="a few steps each, on 500 upstream images")
    args = p.parse_args(argv)
    if args.tiny:
        args.upstream_epochs, args.steps, args.shot_steps, args.seeds = 1, 3, 3, 1
    env = record.environment()
    started = time.time()
    upstream = args.runs / ("upstream-tiny" if args.tiny else "upstream")
    up_argv = ["--classes", UPSTREAM, "--recipe", "none", "--model", "vit_tiny_28", "--set", "fused_attention=false"]
    up_argv += ["--epochs", str(args.upstream_epochs), "--batch-size", "256", "--lr", "2e-3", "--warmup-epochs", "0.5"]
    up_argv += ["--crop-padding", "2", "--eval-every", "0", *COMMON]
    up_argv += ["--limit-train", "500"] if args.tiny else []
    records = [{"name": "upstream (classes 0-4, from scratch)", "command": up_argv, **vitkit_train(up_argv, upstream)}]
    print(f"upstream: {records[0]['accuracy']:.2%} on classes 0-4", flush=True)
    length = ["--batch-size", str(args.batch_size), "--classes", DOWNSTREAM, *COMMON]
    tag = "tiny-" if args.tiny else ""
    for name, (options, grid) in variants(upstream / "last").items():
        warm = ["--warmup-steps", str(max(1, args.steps // 10))]
        full = [*options, *length, "--steps", str(args.steps), *warm, "--val-fraction", "0.1"]
        tried = []
        for lr in grid[:1] if args.tiny else grid:  # chosen on the held-out tenth, scored on the test images
            folder = args.runs / _slug(f"{tag}{name}-all-lr{lr}")
            tried.append(
                {"lr": lr, "command": [*full, "--lr", str(lr)], **vitkit_train([*full, "--lr", str(lr)], folder)}
            )
        best = max(tried, key=lambda r: r["val_accuracy"])
        records.append({"name": name, "data": "all", "lr": best["lr"], "grid": tried, **best})
        print(f"{name:<30} all: lr {best['lr']:g}, test {best['accuracy']:.2%} (grid {_grid_text(tried)})", flush=True)
        for seed in range(args.seeds):  # 10 per class: too few to hold any out, so the rate chosen above
            argv = [*options, *length, "--steps", str(args.shot_steps), "--lr", str(best["lr"])]
            argv += ["--warmup-steps", str(max(1, args.shot_steps // 10)), "--per-class", "10", "--seed", str(seed)]
            r = {"name": name, "data": "10 per class", "seed": seed, "lr": best["lr"], "command": argv}
            records.append(r | vitkit_train(argv, args.runs / _slug(f"{tag}{name}-10pc-seed{seed}")))
            print(f"{name:<30} 10 per class, seed {seed}: {records[-1]['accuracy']:.2%}", flush=True)
    config = {
        "upstream_epochs": args.upstream_epochs,
        "steps": args.steps,
        "shot_steps": args.shot_steps,
        "batch_size": args.batch_size,
        "seeds": args.seeds,
        "lr_chosen_on": "a held-out tenth of the downstream training images (--val-fraction 0.1)",
        "scored_on": "test (classes 5-9)",
    }
    if not args.tiny:
        record.append("finetune", config, {"minutes": round((time.time() - started) / 60, 1), "runs": records}, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
