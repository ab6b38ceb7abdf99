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
intact and no half line. Nothing rewrites a line: a new measurement is a new line.

Beside those keys a record may carry ``gpu`` (a GPU's name), ``load_end`` (the load average when
the measurement ended), a ``note``; and a line migrated from the former ``results/*.json`` files
carries ``migrated_from`` (``FILE@REVISION``) and ``environment_recorded`` (what that file said of
its machine that the schema has no key for). A key the old file did not record is null, and a CPU
it did not name is ``"unrecorded"``.

A command that is not a Python benchmark (``vitkit bench --json``, a test run) is recorded by
running it through this file, the environment read before it starts::

    python benchmarks/record.py run bench --json b16.json --config-keys model,mode,dtype -- vitkit bench ...

On a lent machine (``benchmarks/gpu_checks.sh``) the records go to ``$VITKIT_RESULTS`` instead
of ``benchmarks/results``, and the revision, when the copy has no ``.git``, comes from
``$VITKIT_REVISION``; ``python benchmarks/record.py merge FOLDER`` then appends them here.
"""

from __future__ import annotations

import argparse
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
RESULTS = Path(os.environ.get("VITKIT_RESULTS") or ROOT / "benchmarks" / "results")
REQUIRED = ("revision", "time", "cpu", "command", "config", "metrics")
# The CPU features that decide which arithmetic is fast (bf16 autocast, AMX tiles, AVX-512).
CPU_FLAGS = (
    *("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni"),
    *("amx_bf16", "amx_tile", "amx_int8"),
)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _dirty() -> bool:
    """Whether tracked files differ from the revision, other than the records themselves (a
    benchmark that appended a record would otherwise mark every later one dirty)."""
    return bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"))


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
    features, the cores this process may use, torch's version, the load average at the start;
    on a GPU (``device="cuda"``) the GPU's name too."""
    name, flags = cpu()
    try:
        import torch

        torch_version = torch.__version__.split("+")[0]
    except ImportError:  # a stdlib-only benchmark run before set-up
        torch = None
        torch_version = None
    revision = _git("rev-parse", "HEAD")
    env = {
        # a copy of the tree without .git (a lent machine) says its revision in $VITKIT_REVISION
        "revision": revision or os.environ.get("VITKIT_REVISION", ""),
        "dirty": _dirty() if revision else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": name,
        "cpu_flags": flags,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch_version,
        "load": [round(v, 2) for v in os.getloadavg()],
        "device": device,
    }
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def best_chosen_on(run: Path) -> str | None:
    """Which split chose a ``vitkit train`` run's ``best/`` checkpoint (and scored its epochs).
    A run that records its split (``data.split`` in ``train_config.json``) chose on the validation
    share it held out of the training images, or kept no ``best/`` (``--val-fraction 0``). Older
    runs chose on the validation images they held out when given ``--val-fraction``, else on
    the split their summary names (``test`` for a dataset with a test split: then validation *was*
    the test split). None when the run folder does not say."""
    try:
        record = json.loads((run / "train_config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    split = record.get("data", {}).get("split")
    if split is not None:
        return "validation" if split["rule"]["val_fraction"] > 0 else "none (no best/)"
    train = record.get("train", {})
    return "validation" if train.get("val_fraction") else summary.get("eval_split")


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


def run_command(
    name: str,
    command: list[str],
    config: Mapping[str, Any],
    *,
    json_file: Path | None = None,
    config_keys: tuple[str, ...] = (),
    log: Path | None = None,
    device: str = "cpu",
    results: Path = RESULTS,
) -> dict[str, Any]:
    """Run ``command`` and record it as one measurement of ``name``: the environment read before
    it starts, its exit status and seconds, the JSON object it wrote to ``json_file`` (its
    ``config_keys`` moved into the configuration), and the last line of its output when that goes
    to ``log``."""
    env = environment(device)
    start = time.perf_counter()
    if log is None:
        status = subprocess.run(command).returncode
    else:
        with open(log, "w") as out:
            status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    metrics: dict[str, Any] = {"exit_status": status, "seconds": round(time.perf_counter() - start, 1)}
    config = dict(config)
    if json_file is not None and json_file.is_file():
        written = json.loads(json_file.read_text())
        config |= {k: written.pop(k) for k in config_keys if k in written}
        metrics |= written
    if log is not None:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        metrics["last_line"] = lines[-1] if lines else ""
    return append(name, config, metrics, env=env, command=shlex.join(command), results=results)


def merge(folder: Path, results: Path = RESULTS) -> dict[str, int]:
    """Append every record of ``folder/*.jsonl`` (a lent machine's) to ``results``; per file, the
    lines appended. A line already in ``results`` is not appended twice."""
    counts = {}
    for path in sorted(folder.glob("*.jsonl")):
        have = {json.dumps(r, sort_keys=True) for r in read(path.stem, results)}
        new = [r for r in read(path.stem, folder) if json.dumps(r, sort_keys=True) not in have]
        for r in new:
            append(path.stem, r["config"], r["metrics"], env=r, command=r["command"], results=results)
        counts[path.stem] = len(new)
    return counts


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--config {text!r}: give KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run the command after -- and append it as one record of NAME")
    r.add_argument("name")
    r.add_argument("--json", type=Path, help="the JSON object the command writes: its figures")
    r.add_argument("--config", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--config-keys", default="", help="keys of --json that describe the measurement")
    r.add_argument("--log", type=Path, help="send the command's output here; its last line is recorded")
    r.add_argument("--device", default="cpu")
    m = sub.add_parser("merge", help="append the records of FOLDER/*.jsonl to benchmarks/results")
    m.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    if args.what == "merge":
        for name, n in merge(args.folder).items():
            print(f"{name}: {n} record(s) appended")
        return 0
    if not command:
        p.error("run: give the command after --")
    keys = tuple(k for k in args.config_keys.split(",") if k)
    rec = run_command(
        args.name, command, dict(args.config), json_file=args.json, config_keys=keys, log=args.log, device=args.device
    )
    return 0 if rec["metrics"]["exit_status"] == 0 else int(rec["metrics"]["exit_status"])


if __name__ == "__main__":
    sys.exit(main())
