"""Experiment 4: ViT vs a ResNet of similar compute, on 1k to 60k training images (paper Figures 3 and 4).

The paper's central claim against CNNs: with little data the CNN's built-in locality wins, and
the ViT, which must learn it, catches up and overtakes only with much more data (ImageNet-21k,
JFT-300M). Here, in miniature: the experiments' ViT and a CIFAR-style ResNet with about the same
forward FLOPs, trained through the same loop (same optimiser, schedule, augmentation, steps) on
seeded subsets of Fashion-MNIST of 1,000, 5,000, 20,000 and all 60,000 images.

    python benchmarks/experiments/data_efficiency.py   # 16 runs, about 20 minutes on one core
"""

from __future__ import annotations

import common

SIZES = (1000, 5000, 20000, 60000)
MODELS = {
    "ViT": lambda tiny: common.vit(**(common.TINY_VIT if tiny else {})),
    "ResNet": lambda tiny: common.ResNet(widths=(8, 16, 32) if tiny else (32, 64, 128)),
}


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)
    budget = common.budget(args, 500)
    res = common.setup(
        args,
        "data_efficiency",
        {"budget": vars(budget), "vit": common.VIT_BASE, "resnet": "widths (32, 64, 128), one basic block per stage"},
    )
    sizes = (64, 256) if args.tiny else SIZES
    full_train, test = common.data(args)  # read once; each (size, seed) is a seeded subset of it
    for seed in range(args.seeds):
        for size in sizes:
            train = common.subset(full_train, size, seed)
            for name, make in MODELS.items():
                labels = dict(model=name, size=size, seed=seed)
                res.run(
                    f"{name}/n{size}/seed{seed}",
                    labels,
                    common.fit,
                    make(args.tiny),
                    train,
                    test,
                    budget,
                    seed,
                    device=args.device,
                )
    fig, axes = common.figure(size=(6.5, 4.2))
    ax = axes[0, 0]
    for name, color in zip(MODELS, ("#c44e52", "#4c72b0"), strict=True):
        rows = []
        for size in sizes:
            accs = [r["test_top1"] for r in res.runs.values() if r["model"] == name and r["size"] == size]
            if accs:
                m, s = common.mean_std(accs)
                rows.append((size, m, s, len(accs)))
        if not rows:
            continue
        any_run = next(r for r in res.runs.values() if r["model"] == name)
        label = f"{name} ({any_run['params'] / 1e6:.2f} M params, {any_run['gflops_forward']:.3f} GFLOPs/image)"
        ax.errorbar(
            [r[0] for r in rows],
            [100 * r[1] for r in rows],
            yerr=[100 * r[2] for r in rows],
            marker="o",
            capsize=4,
            color=color,
            label=label,
        )
        for size, m, s, n in rows:
            print(f"{name:<7} n={size:<6} {100 * m:6.2f} ± {100 * s:.2f} %  ({n} seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("training images (seeded subset of Fashion-MNIST)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs training-set size ({budget.steps} steps each)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    common.save_figure(fig, args.out / "data_efficiency.png")


if __name__ == "__main__":
    main()
