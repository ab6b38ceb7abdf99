"""Search the main job's recipe and model on a short proxy budget, one run at a time, choosing on
the validation share: never on the test split.

    python benchmarks/recipe_search.py                       # every candidate, 180 s each, seed 0
    python benchmarks/recipe_search.py --only base lr3e-3 --seconds 600 --seeds 0 1

Each candidate is ``vitkit train --recipe fmnist-10m`` as it was when the search began
(:data:`SEARCHED_FROM`) with a few options changed, trained for ``--seconds`` of wall clock (the
cosine follows the clock, so a short budget is a whole, shorter schedule) as a search ``--trial``:
on the training images less a validation share (``--val-fraction``, 10 % of each class here:
6,000 images, so that candidates a few tenths apart can be told apart), scored on that share
when it ends, and never loading the test images. The chosen recipe is then scored once on the
test split by the main job (``benchmarks/main_job.py``), whatever that says.

Runs go one after another, never side by side: the budget is wall-clock time, so a parallel job
would cost a candidate epochs. Each run appends its record to
``benchmarks/results/recipe_search.jsonl`` (``benchmarks/record.py``) as it ends, so an
interrupted search keeps what it measured. The first search (before 2026-12-07) scored its
candidates on the test split; its records stay, labelled ``scored_on: test``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

# The search started from fmnist-10m as it then was (the width-192 hybrid at depth 6, one conv per
# stem stage, crop with 2 px of padding); every candidate begins with these options, so that it
# reproduces after the recipe took a winner.
SEARCHED_FROM = [
    *("--set", "width=192", "--set", "num_heads=3", "--set", "mlp_dim=384", "--set", "depth=6"),
    *("--set", "stem_convs=1", "--crop-padding", "2"),
]
_WIDTH128 = ["--set", "width=128", "--set", "num_heads=2", "--set", "mlp_dim=256"]
# name -> the `vitkit train` options that differ from SEARCHED_FROM.
CANDIDATES: dict[str, list[str]] = {
    "base": [],
    "lr3e-3": ["--lr", "3e-3"],
    "lr1e-3": ["--lr", "1e-3"],
    "lr5e-4": ["--lr", "5e-4"],
    "batch128": ["--batch-size", "128"],
    "no-smoothing": ["--label-smoothing", "0"],
    "ema": ["--ema", "0.999"],
    "depth4": ["--set", "depth=4"],
    "width128": _WIDTH128,
    "width256-depth4": ["--set", "width=256", "--set", "num_heads=4", "--set", "mlp_dim=512", "--set", "depth=4"],
    "width128-lr1e-3": [*_WIDTH128, "--lr", "1e-3"],
    "no-crop": ["--crop-padding", "0"],
    "width128-no-crop": [*_WIDTH128, "--crop-padding", "0"],
    "width128-no-crop-lr1e-3": [*_WIDTH128, "--crop-padding", "0", "--lr", "1e-3"],
    "width128-no-crop-no-smoothing": [*_WIDTH128, "--crop-padding", "0", "--label-smoothing", "0"],
    "width128-no-crop-ema": [*_WIDTH128, "--crop-padding", "0", "--ema", "0.999"],
    "width128-depth4-no-crop": [*_WIDTH128, "--set", "depth=4", "--crop-padding", "0"],
    "width96-no-crop": ["--set", "width=96", "--set", "num_heads=2", "--set", "mlp_dim=192", "--crop-padding", "0"],
    "stem64": ["--set", "stem_channels=64"],
    "width128-no-crop-compile": [*_WIDTH128, "--crop-padding", "0", "--compile"],
    # a stronger conv stem: a stride-1 3x3 conv after each stride-2 one, or wider convs
    "width128-no-crop-stem2": [*_WIDTH128, "--crop-padding", "0", "--set", "stem_convs=2"],
    "width128-no-crop-stem64": [*_WIDTH128, "--crop-padding", "0", "--set", "stem_channels=64"],
    "width128-depth4-no-crop-stem2": [*_WIDTH128, "--set", "depth=4", "--crop-padding", "0", "--set", "stem_convs=2"],
    "width128-depth4-no-crop-stem3": [*_WIDTH128, "--set", "depth=4", "--crop-padding", "0", "--set", "stem_convs=3"],
    "width128-depth2-no-crop-stem2": [*_WIDTH128, "--set", "depth=2", "--crop-padding", "0", "--set", "stem_convs=2"],
    "width128-depth4-stem2": [*_WIDTH128, "--set", "depth=4", "--set", "stem_convs=2"],
    "width96-depth4-no-crop-stem2": [
        *("--set", "width=96", "--set", "num_heads=2", "--set", "mlp_dim=192"),
        *("--set", "depth=4", "--crop-padding", "0", "--set", "stem_convs=2"),
    ],
    # an 8x8 grid of tokens (two stride-2 convs), narrower and shallower to stay affordable
    "grid8-width128-depth4": [
        *_WIDTH128,
        *("--set", "patch_size=4", "--set", "depth=4"),
    ],
}


def run_one(name: str, options: list[str], seconds: float, seed: int, threads: int, val_fraction: float) -> dict:
    """Train one candidate as a search trial in a temporary run folder; its record's config and
    metrics (the validation share's accuracy and loss, epochs, throughput)."""
    vitkit = Path(sys.executable).with_name("vitkit")
    with tempfile.TemporaryDirectory(prefix=f"search-{name}-") as out:
        command = [str(vitkit), "train", "--recipe", "fmnist-10m", *SEARCHED_FROM, *options]
        command += ["--time-budget", str(seconds), "--val-fraction", str(val_fraction), "--trial"]
        command += ["--seed", str(seed), "--threads", str(threads), "--eval-every", "0", "--no-progress"]
        started = time.perf_counter()
        proc = subprocess.run([*command, "--out", out], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"recipe_search: {name} failed:\n{proc.stderr[-2000:]}")
        summary = json.loads((Path(out) / "summary.json").read_text())
        split = json.loads((Path(out) / "train_config.json").read_text())["data"]["split"]
        last_epoch = json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[-1])
    if summary["eval_split"] != "validation":
        raise SystemExit(f"recipe_search: {name} was scored on {summary['eval_split']}, not the validation share")
    config = {"name": name, "options": options, "seed": seed, "seconds": seconds, "threads": threads}
    config |= {"val_fraction": val_fraction, "searched_from": SEARCHED_FROM, "split": split}
    config |= {"scored_on": "validation", "chosen_on": "validation"}
    metrics = {
        "val_top1": summary["accuracy"],
        "val_loss": summary["loss"],
        "val_images": summary["eval_images"],
        "train_top1_last_epoch": round(last_epoch["train_acc"], 4),  # on augmented images
        "epochs": summary["epochs_done"],
        "images_per_s": round(summary["images_per_s"], 1),
        "params": summary["params"],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    config["train_command"] = " ".join(["vitkit", *command[1:]])
    return {"config": config, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="these candidates (default: all)")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--val-fraction", type=float, default=0.1, help="the share of each class held out to choose on")
    p.add_argument("--results", type=Path, default=record.RESULTS, help="folder of the records")
    args = p.parse_args(argv)
    print(f"{'candidate':<32} {'seed':>4} {'budget':>7} {'epochs':>6} {'img/s':>7} {'val top-1':>9} {'load':>5}")
    for name in args.only or list(CANDIDATES):
        for seed in args.seeds:
            env = record.environment()  # the load before this run
            r = run_one(name, CANDIDATES[name], args.seconds, seed, args.threads, args.val_fraction)
            record.append("recipe_search", r["config"], r["metrics"], env=env, results=args.results)
            m = r["metrics"]
            print(
                f"{name:<32} {seed:>4} {args.seconds:>6.0f}s {m['epochs']:>6} {m['images_per_s']:>7.0f} "
                f"{m['val_top1']:>9.2%} {env['load'][0]:>5.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
