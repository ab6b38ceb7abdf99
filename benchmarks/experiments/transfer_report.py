"""The tables and figures of docs/transfer.md, from the transfer-*.json files that transfer.py writes.

python benchmarks/experiments/transfer.py --report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common

COLORS = {"ViT": "#c44e52", "ResNet": "#4c72b0"}
INIT_LABEL = {"scratch": "random init", "n1000": "1k", "n5000": "5k", "n30000": "30k"}


def load(out: Path) -> dict[str, dict[str, Any]]:
    """Every run of every transfer*.json in ``out``, by key."""
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("transfer*.json")):
        runs |= common.read_json_object(path, "transfer results").get("runs", {})
    return runs


def pct(m: float, s: float | None = None) -> str:
    return f"{100 * m:.2f}" + (f" ± {100 * s:.2f}" if s is not None else "")


def seeds_of(runs: dict, part: str, arch: str, init: str) -> list[float]:
    return [r["test_top1"] for r in runs.values() if r["part"] == part and r["arch"] == arch and r["init"] == init]


def inits_of(runs: dict, arch: str) -> list[str]:
    found = {r["init"] for r in runs.values() if r.get("arch") == arch and r["part"] == "probe"}
    return sorted(found, key=lambda i: -1 if i == "scratch" else int(i[1:]))


def tables(runs: dict) -> str:
    """Markdown tables: upstream accuracy, probe by shots, fine-tuning against scratch."""
    lines = [
        "| model | upstream images | steps | epochs | upstream test accuracy (classes 0-4) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs.values():
        if r["part"] == "upstream":
            lines.append(
                f"| {r['arch']} | {r['size']:,} | {r['steps']:,} | {r['epochs']:.0f} | {pct(r['test_top1'])} % |"
            )
    lines += [
        "",
        "| model | pre-trained on | "
        + " | ".join(f"{k}-shot ridge (%)" for k in (1, 5, 10, 25))
        + " | 10-shot 20-NN (%) |",
    ]
    lines.append("|---|---|" + "---:|" * 5)
    for arch in COLORS:
        for init in inits_of(runs, arch):
            rows = {row["shots"]: row for row in runs[f"probe/{arch}/{init}"]["summary"]}
            cells = [pct(rows[k]["ridge_mean"], rows[k]["ridge_std"]) if k in rows else "" for k in (1, 5, 10, 25)]
            knn = pct(rows[10]["knn_mean"], rows[10]["knn_std"]) if 10 in rows else ""
            lines.append(f"| {arch} | {INIT_LABEL.get(init, init)} | " + " | ".join(cells) + f" | {knn} |")
    lines += ["", "| model | start | 10 images per class (3 seeds) | gain over scratch | all 30k (1 seed) | gain |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for arch in COLORS:
        few0 = seeds_of(runs, "few", arch, "scratch")
        full0 = seeds_of(runs, "full", arch, "scratch")
        for init in inits_of(runs, arch):
            few, full = seeds_of(runs, "few", arch, init), seeds_of(runs, "full", arch, init)
            if not few or not full:
                continue
            m, s = common.mean_std(few)
            gain = "" if init == "scratch" else f"{100 * (m - common.mean_std(few0)[0]):+.1f}"
            gain_full = "" if init == "scratch" else f"{100 * (full[0] - full0[0]):+.1f}"
            label = "scratch" if init == "scratch" else f"pre-trained on {INIT_LABEL.get(init, init)}"
            lines.append(f"| {arch} | {label} | {pct(m, s)} % | {gain} | {pct(full[0])} % | {gain_full} |")
    return "\n".join(lines)


def other_tables(runs: dict) -> str:
    lines = [
        "| model | digits: scratch | fine-tuned from 30k | 10-shot ridge probe | 25-shot ridge probe |",
        "|---|---:|---:|---:|---:|",
    ]
    for arch in COLORS:
        scratch = [r for r in runs.values() if r["part"] == "digits" and r["arch"] == arch and r["init"] == "scratch"]
        tuned = [r for r in runs.values() if r["part"] == "digits" and r["arch"] == arch and r["init"] != "scratch"]
        probes = [r for r in runs.values() if r["part"] == "digits-probe" and r["arch"] == arch]
        if not (scratch and tuned and probes):
            continue
        rows = {row["shots"]: row for row in probes[0]["summary"]}
        probe_cells = [pct(rows[k]["ridge_mean"], rows[k]["ridge_std"]) + " %" if k in rows else "" for k in (10, 25)]
        lines.append(
            f"| {arch} | {pct(scratch[0]['test_top1'])} % | {pct(tuned[0]['test_top1'])} % | "
            + " | ".join(probe_cells)
            + " |"
        )
    lines += ["", "| ViT pre-trained on 30k | 28x28 (49 tokens) | 56x56 (196 tokens) |", "|---|---:|---:|"]
    for part, label in (("few", "10 images per class (3 seeds)"), ("full", "all 30k (1 seed)")):
        high_runs = [r for r in runs.values() if r["part"] == f"{part}56"]
        start = high_runs[0]["init"] if high_runs else None
        low = [r["test_top1"] for r in runs.values() if r["part"] == part and r["arch"] == "ViT" and r["init"] == start]
        high = [r["test_top1"] for r in high_runs]
        if low and high:
            (ml, sl), (mh, sh) = common.mean_std(low), common.mean_std(high)
            lines.append(
                f"| {label} | {pct(ml, sl if len(low) > 1 else None)} % | {pct(mh, sh if len(high) > 1 else None)} % |"
            )
    return "\n".join(lines)


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
    print(tables(runs))
    print()
    print(other_tables(runs))
    if all(f"probe/{a}/scratch" in runs for a in COLORS):
        figure_upstream(runs, out)
        figure_shots(runs, out)
