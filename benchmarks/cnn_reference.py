"""The CNN the main job is measured against, trained under the same 10-minute budget.

    python benchmarks/cnn_reference.py [--seconds 600] [--threads 2]

The experiments' ResNet (``benchmarks/experiments/common.py``: a 3x3 conv, then one basic block
at each of widths 32, 64 and 128; 0.29 M parameters) on the 60,000 Fashion-MNIST training
images, with ``vitkit train``'s own step, schedule and optimiser groups (``common.fit``: AdamW at
2e-3 with weight decay 0.05, warm-up then cosine, label smoothing 0.1, clipping at 1, bf16
autocast where the CPU has it, random crop and flip), for as many steps of 256 images as fit in
``--seconds``: the step time is measured on 30 steps first. Scored on the 10,000 test images.
Run it on a quiet machine in the same session as ``bash scripts/main.sh`` (the ViT), so the two
figures compare. Appends a record to ``benchmarks/results/cnn_reference.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import record
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "experiments"))
import common  # noqa: E402

from vitkit.runtime import keep_freed_memory  # noqa: E402

BATCH = 256
SEED = 0


def seconds_per_step(train, test) -> float:  # noqa: ANN001
    """The ResNet's step time on 30 steps (after 5), with the same step code as the run."""
    budget = common.Budget(steps=35, batch_size=BATCH)
    with torch.random.fork_rng():
        t = time.perf_counter()
        common.fit(common.ResNet(), train.subset(torch.arange(5 * BATCH)), test.subset(torch.arange(10)), budget, 0)
        first = time.perf_counter() - t
        budget.steps = 5
        t = time.perf_counter()
        common.fit(common.ResNet(), train.subset(torch.arange(5 * BATCH)), test.subset(torch.arange(10)), budget, 0)
        five = time.perf_counter() - t
    return (first - five) / 30


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    env = record.environment()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as vitkit train does on a CPU
    train, test = common.fashion_mnist(args.data_dir)
    per_step = seconds_per_step(train, test)
    steps = int(args.seconds / per_step)
    result = common.fit(common.ResNet(), train, test, common.Budget(steps=steps, batch_size=BATCH), seed=SEED)
    config = {
        "model": "experiments' ResNet (widths 32/64/128, one basic block a stage)",
        "recipe": "common.fit: AdamW 2e-3, wd 0.05, warm-up 5 % then cosine, label smoothing 0.1, crop + flip",
        "budget_s": args.seconds,
        "threads": args.threads,
        "seed": SEED,
        "scored_on": "test",
        "chosen_on": None,  # a fixed recipe and step count: nothing is chosen on any split
    }
    record.append("cnn_reference", config, {"measured_s_per_step": round(per_step, 4), **result}, env=env)
    print(f"load average at start {env['load']}; {args.threads} threads")
    print(
        f"ResNet ({result['params'] / 1e6:.2f} M params): {result['steps']} steps ({result['epochs']:.1f} epochs) in "
        f"{result['train_s']:.0f} s at {result['images_per_s']:.0f} images/s: test accuracy {result['test_top1']:.2%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
