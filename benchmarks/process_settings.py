"""What a process-wide setting does for CPU training speed: the allocator, or thread affinity.

    python benchmarks/process_settings.py allocator --rounds 3 --seconds 25
    python benchmarks/process_settings.py affinity --rounds 3 --seconds 25

Trains the main job's recipe for ``--seconds`` in fresh processes (each process can set these
only once, before its first allocation or its first parallel region), alternating the two
variants of the setting and swapping their order every round, and prints images/s:

- ``allocator``: glibc's default settings against vitkit's (``vitkit.runtime.keep_freed_memory``);
- ``affinity``: OpenMP threads left to the kernel's scheduler against threads pinned one to a core
  (``OMP_PROC_BIND=close OMP_PLACES=cores``, which torch's GNU OpenMP reads at start-up).

Appends a record to ``benchmarks/results/process_settings.jsonl``. Run it alone: the images/s
are the measurement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import record

RUN = """
import json, sys
import vitkit.train.loop as L
from vitkit.train import RECIPES, TrainConfig, train
if sys.argv[1] == "default":
    L.keep_freed_memory = lambda: False
cfg = TrainConfig(**(RECIPES["fmnist-10m"] | dict(time_budget=float(sys.argv[2]), threads=2, out=sys.argv[3], eval_every=0)))
print(json.dumps(train(cfg, progress=False).images_per_s))
"""
_AFFINITY = {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}
# setting -> its two variants, the baseline first: name -> (extra environment, vitkit's allocator
# setting on)
SETTINGS: dict[str, dict[str, tuple[dict[str, str], bool]]] = {
    "allocator": {"default": ({}, False), "kept": ({}, True)},
    "affinity": {"unbound": ({}, True), "bound": (_AFFINITY, True)},
}


def run_variant(setting: str, variant: str, seconds: float, out: str) -> float:
    """Train in a fresh process with ``variant`` of ``setting``; its images/s."""
    env, keep_freed = SETTINGS[setting][variant]
    environ = {k: v for k, v in os.environ.items() if k not in _AFFINITY} | env  # a clean baseline
    mode = "vitkit" if keep_freed else "default"
    done = subprocess.run(
        [sys.executable, "-c", RUN, mode, str(seconds), out], capture_output=True, text=True, check=True, env=environ
    )
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=tuple(SETTINGS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=25.0)
    args = p.parse_args(argv)
    base, changed = SETTINGS[args.setting]
    changed_environment = SETTINGS[args.setting][changed][0]
    env = record.environment()
    res: dict[str, list[float]] = {base: [], changed: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in (base, changed) if r % 2 == 0 else (changed, base):
                res[variant].append(run_variant(args.setting, variant, args.seconds, f"{tmp}/{variant}-{r}"))
    mean = {k: round(sum(v) / len(v), 1) for k, v in res.items()}
    config = {
        "setting": args.setting,
        "changed_environment": changed_environment,
        "recipe": "fmnist-10m, 2 threads, validation off",
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
    }
    metrics = {"images_per_s": res, "mean": mean, "speedup": round(mean[changed] / mean[base], 3)}
    record.append("process_settings", config, metrics, env=env)
    for k in res:
        print(f"{k:<8} {', '.join(f'{v:.0f}' for v in res[k])}  mean {mean[k]:.0f} images/s")
    print(f"{changed} / {base}: {metrics['speedup']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
