"""Does a change cost training speed? The main job's recipe, an older revision against this tree,
alternated in one process.

    python benchmarks/ab_train_speed.py 1acd897 --rounds 3 --seconds 25

Separate processes differ by a few per cent in images/s even for the same code (where memory and
threads land), so the two versions run in one process, in alternating order: the older revision
is checked out into a temporary folder and imported under another package name. Appends a
record to ``benchmarks/results/ab_train_speed.jsonl`` (its revision is the newer code's).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]


def old_package(rev: str, folder: Path) -> str:
    """Check ``rev``'s src/vitkit out into ``folder`` as the package ``vitkit_old``."""
    tree = folder / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=ROOT, check=True)
    target = folder / "pkgs" / "vitkit_old"
    shutil.copytree(tree / "src" / "vitkit", target)
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)
    for f in target.rglob("*.py"):  # absolute imports of the package, if any, follow the new name
        f.write_text(re.sub(r"^(from|import) vitkit\b", r"\1 vitkit_old", f.read_text(), flags=re.M))
    sys.path.insert(0, str(folder / "pkgs"))
    return "vitkit_old"


def images_per_s(module, seconds: float, out: Path) -> float:  # noqa: ANN001 - a vitkit.train module
    cfg = module.TrainConfig(
        **(module.RECIPES["fmnist-10m"] | dict(time_budget=seconds, threads=2, out=str(out), eval_every=0))
    )
    summary = module.train(cfg, progress=False)
    return float(summary["images_per_s"] if isinstance(summary, dict) else summary.images_per_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", help="the older git revision")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=25.0, help="training time per run")
    args = p.parse_args(argv)
    import importlib

    env = record.environment()
    with tempfile.TemporaryDirectory() as tmp:
        old = importlib.import_module(f"{old_package(args.rev, Path(tmp))}.train")
        import vitkit.train as new

        res: dict[str, list[float]] = {"old": [], "new": []}
        for r in range(args.rounds):
            order = [("old", old), ("new", new)] if r % 2 == 0 else [("new", new), ("old", old)]
            for name, module in order:
                res[name].append(images_per_s(module, args.seconds, Path(tmp) / f"{name}-{r}"))
    config = {
        "old_rev": args.rev,
        "recipe": "fmnist-10m, 2 threads, validation off",
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
    }
    metrics = {
        "images_per_s": res,
        "mean_old": round(sum(res["old"]) / len(res["old"]), 1),
        "mean_new": round(sum(res["new"]) / len(res["new"]), 1),
    }
    record.append("ab_train_speed", config, metrics, env=env)
    print(f"{'version':<8} {'images/s (each run)':<30} mean")
    for name in ("old", "new"):
        print(f"{name:<8} {', '.join(f'{v:.0f}' for v in res[name]):<30} {metrics['mean_' + name]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
