"""Experiment 5: where attention looks, by depth: mean attention distance per head (paper Figure 7, right).

The paper finds that some heads attend globally already in the lowest layers, while others stay
local (a small mean distance, like a CNN's first layers), and that the distance grows with
depth. It also notes (appendix D.7) that the local heads are fewer in hybrid models, and less
marked with less training data. Here: the experiments' ViT trained on all 60,000 Fashion-MNIST
images and on 1,000, and the same ViT untrained; for each head of each block, the distance in
pixels between a query patch and the patches it attends to, weighted by attention and averaged
over 500 test images (:func:`vitkit.explain.analysis.mean_attention_distance`).

    python benchmarks/experiments/attention_distance.py   # 2 runs + analysis, about 5 minutes on one core
"""

from __future__ import annotations

import common
import torch

from vitkit import load, save
from vitkit.explain.analysis import explain_batch, uniform_attention_distance
from vitkit.preprocess import normalize

MODELS = {"trained on 60,000 images": 60000, "trained on 1,000 images": 1000, "untrained": 0}


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500, help="test images the distances are averaged over")
    p.add_argument(
        "--models",
        type=common.Path,
        default=common.ROOT / "runs" / "experiments" / "attention_distance",
        help="folder the trained models are saved in (read back when the script runs again)",
    )
    args = p.parse_args(argv)
    budget = common.budget(args, 800)
    res = common.setup(args, "attention_distance", {"budget": vars(budget), "vit": common.VIT_BASE})
    full_train, test = common.data(args)
    mean, std = full_train.mean_std()  # one normalisation for every model: the full training set's
    images = normalize(test.images[: args.images], mean, std)
    for label, size in MODELS.items():
        key = f"n{size}"
        if res.done(key):
            continue
        folder = args.models / (f"tiny-{key}" if args.tiny else key)
        record: dict = {"label": label, "train_images": size}
        if (folder / "config.json").is_file():
            model = load(folder)
        else:
            torch.manual_seed(0)
            model = common.vit(**(common.TINY_VIT if args.tiny else {}))
            if size:
                train = common.subset(full_train, size, 0)
                record |= common.fit(model, train, test, budget, seed=0, device=args.device)
            save(model, folder)
        with torch.no_grad():
            exp = explain_batch(model, images)
        record["distance"] = exp.mean_attention_distance.tolist()  # (layers, heads), pixels
        record["grid"] = list(exp.grid)
        record["uniform"] = uniform_attention_distance(exp.grid, model.config.patch_size)
        res.add(key, record)
        common.log(f"{key}: per-layer mean distance {[round(sum(r) / len(r), 1) for r in record['distance']]}")
    fig, axes = common.figure(size=(6.5, 4.2))
    ax = axes[0, 0]
    colors = ("#4c72b0", "#dd8452", "#999999")
    for i, ((label, size), color) in enumerate(zip(MODELS.items(), colors, strict=True)):
        r = res.runs.get(f"n{size}")
        if r is None:
            continue
        d = torch.tensor(r["distance"])
        layers, heads = d.shape
        x = torch.arange(1, layers + 1).repeat_interleave(heads).float() + (i - 1) * 0.18
        acc = f", {100 * r['test_top1']:.1f} %" if "test_top1" in r else ""
        ax.scatter(x, d.flatten(), s=18, color=color, label=f"{label}{acc}", alpha=0.85)
        print(f"{label:<26} " + "  ".join(f"L{j + 1}: {d[j].min():.1f}-{d[j].max():.1f}" for j in range(layers)))
    any_run = next(iter(res.runs.values()))
    ax.axhline(
        any_run["uniform"], color="black", ls="--", lw=1, label=f"uniform attention ({any_run['uniform']:.1f} px)"
    )
    ax.set_xlabel("network depth (block)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title("Mean attention distance of each head (28x28 images, patch 4)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    common.save_figure(fig, args.out / "attention_distance.png")


if __name__ == "__main__":
    main()
