"""Run the main job as a newcomer does (``bash scripts/main.sh``) and record what it did.

    python3 benchmarks/main_job.py            # on a fresh clone: set-up, 10 minutes of training, evaluation

Standard library only, so it runs before ``scripts/setup.sh`` has made the virtual environment.
Writes ``benchmarks/results/main_job-cpu.json``: the machine's load when the job started (the
1-minute load average and the share of the CPUs busy over one second), the threads the job chose
and why, its test accuracy, images/s and times, and the git commit it ran.
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
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "main_job-cpu.json")
    p.add_argument("--note", default="", help="what else was true of the machine")
    args = p.parse_args(argv)
    run = args.run or f"runs/main-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    start = {"load_average": list(os.getloadavg()), "cpu_busy_share_1s": round(busy_share(), 3)}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
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
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {
        "command": "bash scripts/main.sh",
        "commit": commit,
        "started": started,
        "wall_s_with_setup": round(wall, 1),
        "machine_at_start": start,
        "threads_chosen": int(threads.group(1)) if threads else None,
        "threads_reason": threads.group(2) if threads else None,
        "note": args.note,
        "train_summary": json.loads((ROOT / run / "summary.json").read_text()),
        "evaluate": json.loads((ROOT / run / "eval-test" / "summary.json").read_text()),
    }
    record["evaluate"].pop("confusion", None)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    s = record["train_summary"]
    print(
        f"main job: {s['accuracy']:.2%} test accuracy, {s['epochs_done']} epochs, {s['images_per_s']:.0f} img/s, "
        f"{record['threads_chosen']} thread(s); load at start {start['load_average'][0]:.2f} "
        f"(CPU busy {start['cpu_busy_share_1s']:.0%}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
