"""Experiment 2: class token vs global average pooling, each at its own best learning rate (paper Figure 9).

The paper shows that a ViT pooled by averaging the patch tokens (GAP) does badly at the learning
rate tuned for the class token, and as well as the class token at its own learning rate. Here: the
experiments' ViT with a class token (``pool="cls"``) and without one (``pool="gap"``,
``class_token=False``), each trained at four learning rates.

    python benchmarks/experiments/pooling.py           # 8 runs, about 13 minutes on one core
"""

from __future__ import annotations

import common

POOLS = {"class token": dict(pool="cls", class_token=True), "average pooling": dict(pool="gap", class_token=False)}
LRS = (5e-4, 1e-3, 2e-3, 4e-3)


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    base = common.budget(args, 600)
    res = common.setup(args, "pooling", {"budget": vars(base), "vit": common.VIT_BASE, "lrs": LRS})
    train, test = common.data(args)
    for label, pool in POOLS.items():
        for lr in LRS:
            budget = common.Budget(**(vars(base) | {"lr": lr}))
            model = common.vit(**pool, **(common.TINY_VIT if args.tiny else {}))
            res.run(
                f"{pool['pool']}/lr{lr:g}",
                dict(pool=pool["pool"], label=label, lr=lr),
                common.fit,
                model,
                train,
                test,
                budget,
                args.seed,
                device=args.device,
            )
    fig, axes = common.figure(size=(6, 4))
    ax = axes[0, 0]
    for (label, pool), marker in zip(POOLS.items(), "os", strict=True):
        runs = sorted((r for r in res.runs.values() if r["pool"] == pool["pool"]), key=lambda r: r["lr"])
        ax.plot([r["lr"] for r in runs], [100 * r["test_top1"] for r in runs], marker=marker, label=label)
        best = max(runs, key=lambda r: r["test_top1"])
        print(
            f"{label:<16} best {100 * best['test_top1']:.2f} % at lr {best['lr']:g}; "
            + ", ".join(f"{r['lr']:g}: {100 * r['test_top1']:.2f}" for r in runs)
        )
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (AdamW)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title(f"Class token vs average pooling ({base.steps} steps each)")
    ax.legend()
    ax.grid(alpha=0.3)
    common.save_figure(fig, args.out / "pooling.png")


if __name__ == "__main__":
    main()
