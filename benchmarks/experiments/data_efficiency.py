"""Experiment 4: ViT vs a ResNet of similar compute, on 1k to 60k training images (paper Figures 3 and 4).

The paper's central claim against CNNs: with little data the CNN's built-in locality wins, and
the ViT, which must learn it, catches up and overtakes only with much more data (ImageNet-21k,
JFT-300M). Here, in miniature: the experiments' ViT and a CIFAR-style ResNet with about the same
forward FLOPs, trained through the same loop (same optimiser, schedule, augmentation, steps) on
seeded subsets of Fashion-MNIST of 1,000, 5,000, 20,000 and all 60,000 images.

Two budgets. ``--budget steps`` gives every size the same 500 steps, which says more about
steps than data: the 60k set is seen about once and the 1k set 64 times. ``--budget data`` (the
default) gives each size a budget that grows with it (:func:`common.steps_for_data`: at least
1,500 steps, 8 epochs of 60k), so each size is trained until it has fitted what it can. The
figure shows both curves.

    python benchmarks/experiments/data_efficiency.py                   # 8 runs, ~50 min on one core
    python benchmarks/experiments/data_efficiency.py --budget steps --seeds 2   # the 500-step curve
"""

from __future__ import annotations

import common

SIZES = (1000, 5000, 20000, 60000)
RESULTS = {"data": "data_efficiency_data", "steps": "data_efficiency"}  # the 500-step file keeps its name
BUDGET_RULES = {"data": "budget grows with the data", "steps": "500 steps at every size"}
MODELS = {
    "ViT": lambda tiny: common.vit(**(common.TINY_VIT if tiny else {})),
    "ResNet": lambda tiny: common.resnet(widths=(8, 16, 32) if tiny else (32, 64, 128)),
}


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--budget", choices=("data", "steps"), default="data", help="see the module docstring")
    args = p.parse_args(argv)
    budget = common.budget(args, 500)
    res = common.setup(
        args,
        RESULTS[args.budget],
        {
            "budget": vars(budget) | {"rule": BUDGET_RULES[args.budget]},
            "vit": common.VIT_BASE,
            "resnet": "widths (32, 64, 128), one basic block per stage",
        },
    )
    sizes = (64, 256) if args.tiny else SIZES
    full_train, test = common.data(args)  # read once; each (size, seed) is a seeded subset of it
    for seed in range(args.seeds):
        for size in sizes:
            train = common.subset(full_train, size, seed)
            if args.budget == "data" and not args.tiny:
                budget = common.Budget(steps=common.steps_for_data(size))
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
    plot(args.out, sizes)


def curve(runs: dict, name: str, sizes) -> list[tuple[int, float, float, int]]:  # noqa: ANN001
    """(size, mean, std, seeds) of one model's runs."""
    rows = []
    for size in sizes:
        accs = [r["test_top1"] for r in runs.values() if r["model"] == name and r["size"] == size]
        if accs:
            rows.append((size, *common.mean_std(accs), len(accs)))
    return rows


def plot(out, sizes) -> None:  # noqa: ANN001
    """Both budgets' curves in one figure: solid for the data-scaled budget, dashed for 500 steps."""
    fig, axes = common.figure(size=(7.0, 4.4))
    ax = axes[0, 0]
    for budget, style in (("data", "-"), ("steps", "--")):
        path = out / f"{RESULTS[budget]}.json"
        if not path.is_file():
            continue
        runs = common.read_json_object(path, "experiment results").get("runs", {})
        for name, color in zip(MODELS, ("#c44e52", "#4c72b0"), strict=True):
            rows = curve(runs, name, sizes)
            if not rows:
                continue
            ax.errorbar(
                [r[0] for r in rows],
                [100 * r[1] for r in rows],
                yerr=[100 * r[2] for r in rows],
                marker="o",
                linestyle=style,
                capsize=4,
                color=color,
                label=f"{name}, {BUDGET_RULES[budget]}",
            )
            for size, m, s, n in rows:
                print(f"{budget:<5} {name:<7} n={size:<6} {100 * m:6.2f} ± {100 * s:.2f} %  ({n} seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("training images (seeded subset of Fashion-MNIST)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs training-set size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    common.save_figure(fig, out / "data_efficiency.png")


if __name__ == "__main__":
    main()
