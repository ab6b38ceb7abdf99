"""What keeping freed memory (``vitkit.runtime.keep_freed_memory``) does for CPU training speed.

    python benchmarks/allocator.py --rounds 3 --seconds 25

Trains the main job's recipe for ``--seconds`` in fresh processes, alternately with glibc's
default allocator settings and with vitkit's (each process can set them only once), and prints
images/s. Writes ``benchmarks/results/allocator.json``.
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

RESULTS = Path(__file__).resolve().parent / "results"
RUN = """
import json, sys
import vitkit.train.loop as L
from vitkit.train import RECIPES, TrainConfig, train
if sys.argv[1] == "default":
    L.keep_freed_memory = lambda: False
cfg = TrainConfig(**(RECIPES["fmnist-10m"] | dict(time_budget=float(sys.argv[2]), threads=2, out=sys.argv[3], eval_every=0)))
print(json.dumps(train(cfg, progress=False).images_per_s))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=25.0)
    args = p.parse_args(argv)
    load = [round(v, 2) for v in os.getloadavg()]
    res: dict[str, list[float]] = {"default": [], "kept": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in ("default", "kept") if r % 2 == 0 else ("kept", "default"):
                out = subprocess.run(
                    [sys.executable, "-c", RUN, mode, str(args.seconds), f"{tmp}/{mode}-{r}"],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                res[mode].append(round(float(out.stdout.strip().splitlines()[-1]), 1))
    mean = {k: round(sum(v) / len(v), 1) for k, v in res.items()}
    record = {
        "recipe": "fmnist-10m, 2 threads, validation off",
        "seconds_per_run": args.seconds,
        "images_per_s": res,
        "mean": mean,
        "speedup": round(mean["kept"] / mean["default"], 3),
        "load_average_at_start": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (RESULTS / "allocator.json").write_text(json.dumps(record, indent=2) + "\n")
    for k in res:
        print(f"{k:<8} {', '.join(f'{v:.0f}' for v in res[k])}  mean {mean[k]:.0f} images/s")
    print(f"kept / default: {record['speedup']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
