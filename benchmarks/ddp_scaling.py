"""Training throughput with 1 and 2 processes (torchrun, gloo) against 1 process with 2 threads.

The fmnist-10m model on a slice of Fashion-MNIST, the same global batch in every row; prints a
table and appends a record to benchmarks/results/ddp_scaling.jsonl. On a machine shared with other
jobs the numbers say what this machine gave at that moment (the record's load average at the
start), not what the cores can do.

    python benchmarks/ddp_scaling.py [--limit-train 4096] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import record


def run(out: Path, nproc: int, threads: int, limit: int, epochs: int) -> dict:
    cmd = [sys.executable, "-m", "vitkit", "train", "--recipe", "fmnist-10m", "--epochs", str(epochs)]
    cmd += ["--limit-train", str(limit), "--limit-val", "512", "--eval-every", "0", "--precision", "fp32"]
    cmd += ["--threads", str(threads), "--no-progress", "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    summary = json.loads((out / "summary.json").read_text())
    return {"processes": nproc, "threads_per_process": threads, "images_per_s": summary["images_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-train", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    env = record.environment()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (nproc, threads) in enumerate([(1, 1), (2, 1), (1, 2)]):
            rows.append(run(Path(tmp) / str(i), nproc, threads, args.limit_train, args.epochs))
            print(f"{nproc} process(es) x {threads} thread(s): {rows[-1]['images_per_s']:.0f} images/s", flush=True)
    config = {"model": "fmnist-10m", "limit_train": args.limit_train, "epochs": args.epochs}
    record.append("ddp_scaling", config, {"rows": rows}, env=env)


if __name__ == "__main__":
    main()
