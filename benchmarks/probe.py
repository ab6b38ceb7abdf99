"""The probe and the learning-rate grid, measured through the command line on real data.

    python benchmarks/probe.py          # after benchmarks/finetune.py, whose upstream model it reads

The upstream model is benchmarks/finetune.py's: vit_tiny_28 trained from scratch on Fashion-MNIST
classes 0-4. Three measurements, each one `vitkit` command recorded with its result in a record of
``benchmarks/results/probe.jsonl``:

1. ``vitkit probe`` of the upstream model on classes 5-9 (1, 5, 10, 25 shots; 3 seeds), and of the
   same network with random weights, the floor that pre-training must beat;
2. ``vitkit probe`` again: the features come from the cache (the seconds are recorded);
3. ``vitkit train --init --per-class 10 --lr-grid 0.0003,0.001,0.003,0.01 --steps 200`` (AdamW),
   three seeded draws: the grid chooses on one held-out image per class.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
DOWNSTREAM = "5,6,7,8,9"


def vitkit(argv: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vitkit", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vitkit {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return done.stdout, round(time.perf_counter() - start, 1)


def random_twin(upstream: Path, out: Path) -> Path:
    """The upstream network with random weights, saved as a checkpoint with the same preprocessing."""
    import torch

    import vitkit
    from vitkit.preprocess import Preprocess

    model = vitkit.load(upstream)
    torch.manual_seed(0)
    fresh = vitkit.VisionTransformer(model.config)
    vitkit.save(fresh, out)
    Preprocess.load(upstream, model.config).save(out)
    return out


def probe(checkpoint: Path, cache: Path, out: Path) -> dict:
    argv = ["probe", str(checkpoint), "--data", "fashion-mnist", "--classes", DOWNSTREAM, "--seeds", "3"]
    argv += ["--cache-dir", str(cache), "--out", str(out), "--json"]
    text, seconds = vitkit(argv)
    return {"command": ["vitkit", *argv], "seconds": seconds, "summary": json.loads(text)["summary"]}


def grid_run(upstream: Path, seed: int, out: Path) -> dict:
    argv = ["train", "--init", str(upstream), "--data", "fashion-mnist", "--classes", DOWNSTREAM]
    argv += ["--per-class", "10", "--seed", str(seed), "--optimizer", "adamw", "--weight-decay", "0.05"]
    argv += ["--lr-grid", "0.0003,0.001,0.003,0.01", "--steps", "200", "--no-progress", "--out", str(out)]
    _, seconds = vitkit(argv)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "command": ["vitkit", *argv],
        "seconds": seconds,
        "accuracy": summary["accuracy"],
        "lr_grid": summary["lr_grid"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", type=Path, default=ROOT / "runs" / "finetune" / "upstream" / "last")
    args = p.parse_args(argv)
    if not args.upstream.is_dir():
        raise SystemExit(f"{args.upstream} not found: run `python benchmarks/finetune.py` first (or pass --upstream)")
    env = record.environment()
    metrics: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "cache"
        metrics["probe_upstream"] = probe(args.upstream, cache, tmp_path / "p1")
        metrics["probe_upstream_cached"] = probe(args.upstream, cache, tmp_path / "p2")
        twin = random_twin(args.upstream, tmp_path / "random")
        metrics["probe_random_weights"] = probe(twin, cache, tmp_path / "p3")
        metrics["lr_grid_10_per_class"] = [grid_run(args.upstream, s, tmp_path / f"grid{s}") for s in range(3)]
    config = {"upstream": str(args.upstream), "downstream_classes": DOWNSTREAM, "scored_on": "test (classes 5-9)"}
    record.append("probe", config, metrics, env=env)
    for name in ("probe_upstream", "probe_random_weights"):
        print(name, f"({metrics[name]['seconds']} s)")
        for r in metrics[name]["summary"]:
            print(
                f"  {r['shots']:>2} shots: ridge {100 * r['ridge_mean']:.2f} ± {100 * r['ridge_std']:.2f} %, "
                f"20-NN {100 * r['knn_mean']:.2f} ± {100 * r['knn_std']:.2f} %"
            )
    print(f"cached probe: {metrics['probe_upstream_cached']['seconds']} s")
    for s, r in enumerate(metrics["lr_grid_10_per_class"]):
        print(f"--lr-grid seed {s}: chose {r['lr_grid']['chosen']:g}, {100 * r['accuracy']:.2f} %")
    print(f"appended to {record.RESULTS / 'probe.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
