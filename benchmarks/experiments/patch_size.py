"""Experiment 3: patch size 7 vs 4 vs 2 on 28x28 images: accuracy against compute (paper sec. 4, Table 5).

Halving the patch side quadruples the number of tokens (16, 49, 196 here), so the FLOPs of a step
grow about 4x (and attention's part 16x), for the same number of parameters. The paper's models
with smaller patches are more accurate and cost more. Here: the experiments' ViT at each patch
size for the same number of steps, and the two cheaper ones also for four times as many steps,
so that accuracy can be read against training compute, not only per step.

    python benchmarks/experiments/patch_size.py        # 5 runs, about 15 minutes on one core
"""

from __future__ import annotations

import common

RUNS = [(7, 1), (4, 1), (2, 1), (7, 4), (4, 4)]  # (patch size, budget multiple)


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    base = common.budget(args, 400)  # and 4x that for patches 7 and 4
    res = common.setup(args, "patch_size", {"budget": vars(base), "vit": common.VIT_BASE, "runs": RUNS})
    train, test = common.data(args)
    for patch, mult in RUNS:
        key = f"patch{patch}/x{mult}"
        if res.done(key):
            continue
        budget = common.Budget(**(vars(base) | {"steps": base.steps * mult}))
        model = common.vit(patch_size=patch, **(common.TINY_VIT if args.tiny else {}))
        record = common.fit(model, train, test, budget, args.seed, device=args.device)
        # training compute: forward + backward ~ 3x the forward FLOPs, per image seen
        record |= {"patch_size": patch, "tokens": model.config.num_patches, "budget_multiple": mult}
        record["train_pflops"] = 3 * record["gflops_forward"] * record["images_seen"] / 1e6
        res.add(key, record)
        common.log(f"{key}: {record['test_top1']:.4f} in {record['train_s']} s")
    fig, axes = common.figure(1, 2, size=(11, 4))
    colors = {7: "#4c72b0", 4: "#55a868", 2: "#c44e52"}
    for patch in (7, 4, 2):
        runs = sorted((r for r in res.runs.values() if r["patch_size"] == patch), key=lambda r: r["budget_multiple"])
        if not runs:
            continue
        label = f"patch {patch} ({runs[0]['tokens']} tokens, {runs[0]['gflops_forward']:.3f} GFLOPs/image)"
        for ax, x in zip(axes[0], ("train_pflops", "train_s"), strict=True):
            ax.plot(
                [r[x] for r in runs], [100 * r["test_top1"] for r in runs], marker="o", color=colors[patch], label=label
            )
            for r in runs:
                ax.annotate(
                    f"{r['steps']} steps",
                    (r[x], 100 * r["test_top1"]),
                    fontsize=7,
                    xytext=(4, -10),
                    textcoords="offset points",
                )
        for r in runs:
            print(
                f"patch {patch} x{r['budget_multiple']}: {100 * r['test_top1']:.2f} %  "
                f"{r['train_pflops']:.3f} PFLOP  {r['train_s']:.0f} s"
            )
    axes[0, 0].set_xlabel("training compute (PFLOP, 3 x forward FLOPs x images)")
    axes[0, 1].set_xlabel("training wall time on one CPU core (s)")
    from matplotlib.ticker import NullFormatter

    for ax in axes[0]:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a log axis overlap
        ax.margins(x=0.15)
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title("Accuracy vs compute")
    axes[0, 1].set_title("Accuracy vs wall time")
    common.save_figure(fig, args.out / "patch_size.png")


if __name__ == "__main__":
    main()
