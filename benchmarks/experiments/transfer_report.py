"""The figures of docs/transfer.md, and its tables printed, from the transfer-*.json files that
transfer.py writes. The tables themselves are ``benchmarks/tables.py``'s (``transfer-*``), the one
generator of every table the docs quote.

python benchmarks/experiments/transfer.py --report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common
import tables as generated

COLORS = {"ViT": "#c44e52", "ResNet": "#4c72b0"}
INIT_LABEL = {"scratch": "random init", "n1000": "1k", "n5000": "5k", "n30000": "30k"}


def load(out: Path) -> dict[str, dict[str, Any]]:
    """Every run of every transfer*.json in ``out``, by key."""
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("transfer*.json")):
        runs |= common.read_json_object(path, "transfer results").get("runs", {})
    return runs


def seeds_of(runs: dict, part: str, arch: str, init: str) -> list[float]:
    return [r["test_top1"] for r in runs.values() if r["part"] == part and r["arch"] == arch and r["init"] == init]


def inits_of(runs: dict, arch: str) -> list[str]:
    found = {r["init"] for r in runs.values() if r.get("arch") == arch and r["part"] == "probe"}
    return sorted(found, key=lambda i: -1 if i == "scratch" else int(i[1:]))


def figure_upstream(runs: dict, out: Path) -> None:
    """Three panels against upstream size: the 10-shot probe, 10-shot fine-tuning, full fine-tuning."""
    fig, axes = common.figure(1, 3, size=(14.0, 4.2))
    panels = (
        ("probe", "10-shot ridge probe (frozen features)"),
        ("few", "fine-tuned on 10 per class"),
        ("full", "fine-tuned on all 30k"),
    )
    for ax, (part, title) in zip(axes[0], panels, strict=True):
        for arch, color in COLORS.items():
            inits = [i for i in inits_of(runs, arch) if i != "scratch"]
            xs, ms, ss = [], [], []
            for init in inits:
                if part == "probe":
                    row = {r["shots"]: r for r in runs[f"probe/{arch}/{init}"]["summary"]}[10]
                    m, s = row["ridge_mean"], row["ridge_std"]
                else:
                    values = seeds_of(runs, part, arch, init)
                    if not values:
                        continue
                    m, s = common.mean_std(values)
                xs.append(int(init[1:]))
                ms.append(100 * m)
                ss.append(100 * s)
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=4, color=color, label=f"{arch}, pre-trained")
            if part == "probe":
                base = {r["shots"]: r for r in runs[f"probe/{arch}/scratch"]["summary"]}[10]["ridge_mean"]
                ax.axhline(100 * base, color=color, linestyle=":", label=f"{arch}, random-init features")
            elif seeds_of(runs, part, arch, "scratch"):
                base = common.mean_std(seeds_of(runs, part, arch, "scratch"))[0]
                ax.axhline(100 * base, color=color, linestyle="--", label=f"{arch}, from scratch")
        ax.set_xscale("log")
        ax.set_xlabel("upstream images (Fashion-MNIST classes 0-4)")
        ax.set_ylabel("test accuracy on classes 5-9 (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    common.save_figure(fig, out / "transfer_upstream.png")


def figure_shots(runs: dict, out: Path) -> None:
    """The ridge probe against shots per class, one line per upstream model."""
    fig, axes = common.figure(1, 2, size=(11.0, 4.2))
    for ax, arch in zip(axes[0], COLORS, strict=True):
        for init in inits_of(runs, arch):
            rows = runs[f"probe/{arch}/{init}"]["summary"]
            ax.errorbar(
                [r["shots"] for r in rows],
                [100 * r["ridge_mean"] for r in rows],
                yerr=[100 * r["ridge_std"] for r in rows],
                marker="o",
                capsize=3,
                linestyle=":" if init == "scratch" else "-",
                label=INIT_LABEL.get(init, init) + ("" if init == "scratch" else " upstream images"),
            )
        ax.set_xscale("log")
        ax.set_xticks([1, 5, 10, 25], ["1", "5", "10", "25"])
        ax.set_xlabel("training images per class (seeded draws)")
        ax.set_ylabel("test accuracy on classes 5-9 (%)")
        ax.set_title(f"{arch}: few-shot ridge probe of frozen features")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    common.save_figure(fig, out / "transfer_shots.png")


def main(out: Path, tiny: bool = False) -> None:
    runs = load(out)
    if not any(r.get("part") == "probe" for r in runs.values()):
        print(f"no transfer results in {out} yet")
        return
    src = generated.Sources(stores=out)
    names = ("transfer-upstream", "transfer-probe", "transfer-finetune", "transfer-digits", "transfer-resolution")
    print("\n\n".join(generated.TABLES[name](src) for name in names))
    if all(f"probe/{a}/scratch" in runs for a in COLORS):
        figure_upstream(runs, out)
        figure_shots(runs, out)
