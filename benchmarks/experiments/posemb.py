"""Experiment 1: position embeddings, none vs learned 1-D vs learned 2-D vs sin-cos 2-D (paper Table 8).

The paper (appendix D.4) finds that any position embedding beats none by about three points on
ImageNet, and that the 1-D, 2-D and relative variants are within a few tenths of each other. Here:
the experiments' ViT on Fashion-MNIST, the same budget for each, three seeds each.

    python benchmarks/experiments/posemb.py            # 12 runs, about 20 minutes on one core
"""

from __future__ import annotations

import common

VARIANTS = {"none": "none", "learned 1-D": "learned", "learned 2-D": "learned2d", "sin-cos 2-D": "sincos2d"}


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    budget = common.budget(args, 600)
    res = common.setup(args, "posemb", {"budget": vars(budget), "vit": common.VIT_BASE, "variants": VARIANTS})
    train, test = common.data(args)
    for seed in range(args.seeds):
        for label, posemb in VARIANTS.items():
            model = common.vit(posemb=posemb, **(common.TINY_VIT if args.tiny else {}))
            res.run(
                f"{posemb}/seed{seed}",
                dict(posemb=posemb, label=label, seed=seed),
                common.fit,
                model,
                train,
                test,
                budget,
                seed,
                device=args.device,
            )
    summary = {}
    for label, posemb in VARIANTS.items():
        accs = [r["test_top1"] for r in res.runs.values() if r["posemb"] == posemb]
        summary[label] = common.mean_std(accs) + (len(accs),)
        print(f"{label:<12} {100 * summary[label][0]:6.2f} ± {100 * summary[label][1]:.2f} %  ({len(accs)} seeds)")
    fig, axes = common.figure(size=(6, 4))
    ax = axes[0, 0]
    labels = list(VARIANTS)
    ax.bar(
        labels,
        [100 * summary[k][0] for k in labels],
        yerr=[100 * summary[k][1] for k in labels],
        capsize=6,
        color=["#bbbbbb", "#4c72b0", "#55a868", "#c44e52"],
        alpha=0.8,
    )
    for i, posemb in enumerate(VARIANTS.values()):
        accs = [100 * r["test_top1"] for r in res.runs.values() if r["posemb"] == posemb]
        ax.scatter([i] * len(accs), accs, color="black", s=12, zorder=3, label="one seed" if i == 0 else None)
    lows = [100 * r["test_top1"] for r in res.runs.values()]
    ax.set_ylim(min(lows) - 1.5, max(lows) + 1.0)
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_xlabel("position embedding")
    ax.set_title(f"Position embeddings: mean ± std over seeds ({budget.steps} steps each)")
    ax.legend(loc="lower right")
    common.save_figure(fig, args.out / "posemb.png")


if __name__ == "__main__":
    main()
