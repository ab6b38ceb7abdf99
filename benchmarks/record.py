"""One record per measurement, appended, never overwritten: the harness every benchmark shares.

Each benchmark appends one JSON line per measurement to ``benchmarks/results/NAME.jsonl``::

    {"revision": "163acd8...", "dirty": false, "time": "2026-12-07T18:47:31Z",
     "cpu": "AMD EPYC 9R14", "cpu_flags": ["avx2", "avx512f", "avx512_bf16"], "cores": 2,
     "torch": "2.14.1", "load": [0.12, 0.3, 0.2], "device": "cpu",
     "command": "python benchmarks/cnn_reference.py --threads 2",
     "config": {...what was measured, and how...}, "metrics": {...what came out...}}

The environment is read here and nowhere else, in one schema, so a table can be rebuilt from
the records alone (``benchmarks/tables.py``) and a number always comes with its machine, its
revision and the command that gave it. A line is written whole (one ``write`` of one line to a
file opened for appending, then fsync), so a benchmark killed mid-way leaves the earlier lines
intact and no half line.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REQUIRED = ("revision", "time", "cpu", "command", "config", "metrics")
# The CPU features that decide which arithmetic is fast (bf16 autocast, AMX tiles, AVX-512).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu() -> tuple[str, list[str]]:
    """(the CPU's model name, the features of :data:`CPU_FLAGS` it has), from /proc/cpuinfo."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    import platform

    return name or platform.processor() or platform.machine(), [f for f in CPU_FLAGS if f in flags]


def environment(device: str = "cpu") -> dict[str, Any]:
    """Where and when a measurement is made: revision (and a dirty tree), UTC time, CPU model and
    features, the cores this process may use, torch's version, the load average at the start."""
    name, flags = cpu()
    try:
        import torch

        torch_version = torch.__version__.split("+")[0]
    except ImportError:  # a stdlib-only benchmark run before set-up
        torch_version = None
    return {
        "revision": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": name,
        "cpu_flags": flags,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch_version,
        "load": [round(v, 2) for v in os.getloadavg()],
        "device": device,
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would type it: ``python benchmarks/x.py ...``."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.is_file() and ROOT in script.parents:
        argv[0] = str(script.relative_to(ROOT))
        return shlex.join(["python", *argv])
    return shlex.join(argv)


def append(
    name: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    env: Mapping[str, Any] | None = None,
    command: str | None = None,
    results: Path = RESULTS,
    **extra: Any,
) -> dict[str, Any]:
    """Append one measurement to ``results/NAME.jsonl`` and return the record.

    ``env`` is :func:`environment` as read when the measurement *started* (its load average is
    the one that matters); read now when not given. ``extra`` keys (a ``note``, a ``baseline``)
    go beside the required ones."""
    record = dict(env if env is not None else environment())
    record |= {"command": command if command is not None else command_line()}
    record |= {"config": dict(config), "metrics": dict(metrics)} | extra
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"a record needs {', '.join(missing)}")
    line = json.dumps(record, sort_keys=False) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    fd = os.open(results / f"{name}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return record


def read(name: str, results: Path = RESULTS) -> list[dict[str, Any]]:
    """Every record of ``results/NAME.jsonl``, oldest first."""
    path = results / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
