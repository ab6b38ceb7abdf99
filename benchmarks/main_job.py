"""Run the main job as a newcomer does (``bash scripts/main.sh``) and record what it did.

    python3 benchmarks/main_job.py            # on a fresh clone: set-up, 10 minutes of training, evaluation

Standard library only, so it runs before ``scripts/setup.sh`` has made the virtual environment.
Appends a record to ``benchmarks/results/main_job.jsonl`` (``record.py``: revision, CPU, load
average at the start): the share of the CPUs busy over one second before the job, the threads
the job chose and why, its test accuracy, images/s and times, and which split chose ``best/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]


def busy_share(seconds: float = 1.0) -> float:
    """The share of all CPUs' time that was not idle over ``seconds`` (from /proc/stat)."""

    def read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    b0, t0 = read()
    time.sleep(seconds)
    b1, t1 = read()
    return (b1 - b0) / max(t1 - t0, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="run folder (default: runs/main-DATE)")
    p.add_argument("--note", default="", help="what else was true of the machine")
    args = p.parse_args(argv)
    run = args.run or f"runs/main-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    env = record.environment()
    busy = round(busy_share(), 3)
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["bash", "scripts/main.sh"], cwd=ROOT, env=os.environ | {"RUN": run}, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    sys.stderr.write(proc.stderr[-4000:])
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        print(f"main_job: scripts/main.sh failed ({proc.returncode})", file=sys.stderr)
        return proc.returncode
    threads = re.search(r"CPU threads: (\d+) per process \((.*)\)", proc.stderr)
    train = json.loads((ROOT / run / "summary.json").read_text())
    evaluate = json.loads((ROOT / run / "eval-test" / "summary.json").read_text())
    evaluate.pop("confusion", None)
    seed = json.loads((ROOT / run / "train_config.json").read_text())["train"]["seed"]
    config = {
        "recipe": "fmnist-10m",
        "seed": seed,
        "run": run,
        "scored_on": train["eval_split"],
        "best_chosen_on": record.best_chosen_on(ROOT / run),
        "note": args.note,
    }
    metrics = {
        "train": train,
        "evaluate": evaluate,
        "wall_s_with_setup": round(wall, 1),
        "cpu_busy_share_1s": busy,
        "threads_chosen": int(threads.group(1)) if threads else None,
        "threads_reason": threads.group(2) if threads else None,
    }
    record.append("main_job", config, metrics, env=env)
    print(
        f"main job: {train['accuracy']:.2%} test accuracy, {train['epochs_done']} epochs, "
        f"{train['images_per_s']:.0f} img/s, {metrics['threads_chosen']} thread(s); load at start "
        f"{env['load'][0]:.2f} (CPU busy {busy:.0%}); appended to {record.RESULTS / 'main_job.jsonl'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
