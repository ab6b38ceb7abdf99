"""Train one epoch on 10,000 224-px JPEGs inside a memory cgroup, as a photo collection's user
would on a small machine, and record the peak memory of each data path.

    sudo python benchmarks/memory_limit.py [--folder /tmp/photos224] [--limit-mb 1200]

Runs ``vitkit train --data FOLDER --image-size 224 --model vit_ti16 --set depth=1 --epochs 1
--batch-size 64`` (a fresh cache each time) twice, each in its own memory cgroup (v1
``memory.limit_in_bytes`` or v2 ``memory.max``; needs root):

- ``auto`` under ``--limit-mb``: the rule sees the cgroup's limit and picks the disk cache;
- ``--data-mode memory`` without a limit, for comparison.

The cgroup's ``memory.stat`` is sampled every 0.2 s: anonymous memory (``rss`` / ``anon``: what
the kernel cannot reclaim, and kills for) and page cache (``cache`` / ``file``: the mapped cache
file, which the kernel reclaims under the limit). Appends a record to
``benchmarks/results/memory_limit.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


class Cgroup:
    """A memory cgroup of its own (v1 or v2), removed on exit."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.v1 = V1.is_dir()
        self.path = (V1 if self.v1 else V2) / name
        self.path.mkdir()
        if limit is not None:
            (self.path / ("memory.limit_in_bytes" if self.v1 else "memory.max")).write_text(str(limit))

    def add(self) -> None:  # in the child, before exec
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stat(self) -> dict[str, int]:
        fields = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        anon, file = ("rss", "cache") if self.v1 else ("anon", "file")
        return {"anon": int(fields[anon]), "file": int(fields[file])}

    def oom_kills(self) -> int:
        text = (self.path / ("memory.oom_control" if self.v1 else "memory.events")).read_text()
        counts = dict(line.split() for line in text.splitlines())
        return int(counts.get("oom_kill", 0))

    def remove(self) -> None:
        self.path.rmdir()


def run(folder: Path, mode: str, limit: int | None, tmp: Path) -> dict:
    group = Cgroup(f"vitkit-bench-{os.getpid()}-{mode}", limit)
    cmd = [sys.executable, "-m", "vitkit", "train", "--data", str(folder), "--image-size", "224"]
    cmd += ["--model", "vit_ti16", "--set", "depth=1", "--epochs", "1", "--batch-size", "64", "--json"]
    cmd += ["--out", str(tmp / f"run-{mode}"), "--no-progress", "--data-mode", mode]
    env = os.environ | {"VITKIT_CACHE": str(tmp / f"cache-{mode}")}
    peak = {"anon": 0, "file": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, preexec_fn=group.add, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            try:
                now = group.stat()
            except OSError:
                return
            peak.update({k: max(peak[k], now[k]) for k in peak})

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    result = {
        "data_mode": mode,
        "limit_mb": limit and round(limit / 2**20),
        "exit_status": proc.returncode,
        "oom_kills": group.oom_kills(),
        "peak_anon_mb": round(peak["anon"] / 2**20, 1),
        "peak_page_cache_mb": round(peak["file"] / 2**20, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "log": [line for line in err.splitlines() if "decoded" in line or "cache" in line][:4],
    }
    if proc.returncode == 0:
        summary = json.loads(out[out.index("{") :])
        result |= {k: summary[k] for k in ("accuracy", "images_per_s", "train_time_s", "eval_images", "threads")}
    group.remove()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=Path("/tmp/photos224"))
    p.add_argument("--limit-mb", type=int, default=1200)
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from photo_folder import make

        make(args.folder, 10_000, 224)
    env = record.environment()
    with tempfile.TemporaryDirectory(prefix="vitkit-memory-") as tmp:
        runs = [run(args.folder, "auto", args.limit_mb * 2**20, Path(tmp)), run(args.folder, "memory", None, Path(tmp))]
    config = {
        "train_command": "vitkit train --data FOLDER --image-size 224 --model vit_ti16 --set depth=1 --epochs 1 "
        "--batch-size 64",
        "folder": "10,000 JPEGs, 224x224 RGB (benchmarks/photo_folder.py): 1,505 MB decoded",
        "limit_mb": args.limit_mb,
    }
    record.append("memory_limit", config, {"runs": runs}, env=env)
    print(f"load average at start {env['load']}")
    print(f"{'data mode':<10}{'limit':>8}{'exit':>6}{'OOM kills':>11}{'peak anon':>11}{'page cache':>12}{'img/s':>8}")
    for r in runs:
        limit = f"{r['limit_mb']} MB" if r["limit_mb"] else "none"
        print(
            f"{r['data_mode']:<10}{limit:>8}{r['exit_status']:>6}{r['oom_kills']:>11}{r['peak_anon_mb']:>8.0f} MB"
            f"{r['peak_page_cache_mb']:>9.0f} MB{r.get('images_per_s', 0):>8.0f}"
        )
    return 0 if all(r["exit_status"] == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
