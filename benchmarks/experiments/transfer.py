"""Transfer: pre-train on one half of Fashion-MNIST, transfer to the other (paper sec. 4, Figs. 3-4).

The paper's method is to pre-train on a large dataset, then fine-tune on a small one or probe
its frozen features few-shot; its central claim is that a ViT gains more from more pre-training
data than a CNN does. Here, in miniature, with the experiments' ViT and ResNet
(:mod:`common`), every run through :func:`common.fit`:

1. **Upstream size.** Pre-train each on classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat)
   with 1k, 5k and all 30k of their training images, each for a budget that grows with the
   data (:func:`common.steps_for_data`). Transfer to classes 5-9 (Sandal, Shirt, Sneaker, Bag,
   Ankle boot): the few-shot ridge probe and k-NN at 1, 5, 10 and 25 shots (3 seeds); fine-tuning
   on 10 images per class (3 seeds, 200 steps) and on all 30k (470 steps, two epochs); against
   training from scratch on the same images, with the same rate grid and steps.
2. **Domain shift.** From the 30k upstream models to scikit-learn's 8x8 digits (upscaled to
   28x28): fine-tune against scratch against the probe.
3. **Higher resolution.** The 30k ViT fine-tuned at 56x56 (position embeddings resampled, four
   times the tokens) against 28x28, as in the paper's sec. 3.2.

Every fine-tuning and scratch run chooses its learning rate from :data:`LRS` with
:mod:`vitkit.train.lr_grid`: a short trial per rate on the training images less a held-out 2 %
of each class (at least one image), the best held-out accuracy wins, then the full run. The
images are normalised everywhere by the upstream set's statistics, so a fine-tuned model and
its scratch twin differ only in their starting weights.

    python benchmarks/experiments/transfer.py --arch ViT       # about an hour on a quiet core
    python benchmarks/experiments/transfer.py --arch ResNet    # (the two side by side; less)
    python benchmarks/experiments/transfer.py --report         # tables and figures from the JSON
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch
from torch import nn

from vitkit.data import ImageDataset, Stream, hold_out, load_dataset
from vitkit.features import features as vit_representation
from vitkit.files import atomic_write
from vitkit.preprocess import Preprocess
from vitkit.probe import few_shot, summarize
from vitkit.train.lr_grid import Trial, choose

UPSTREAM = [0, 1, 2, 3, 4]
VAL_SHARE = 0.02  # held out of each downstream training set to choose the rate on, as the paper did
DOWNSTREAM = [5, 6, 7, 8, 9]
SIZES = (1000, 5000, 30000)
SHOTS = (1, 5, 10, 25)
SEEDS = 3
LRS = (3e-4, 1e-3, 3e-3)
FEW = 10  # images per class in the few-shot fine-tuning runs
STEPS = {"few": 200, "full": 470, "digits": 300}  # 200 passes over 50 images; 2 epochs of 30k; 27 of digits
TRIAL_SHARE = {"few": 0.5, "full": 0.25, "digits": 0.25}  # each rate's trial, as a share of the run's steps
ARCHS = ("ViT", "ResNet")


# ============================================================================ models
def make(arch: str, num_classes: int, tiny: bool) -> nn.Module:
    if arch == "ViT":
        return common.vit(num_classes, **(common.TINY_VIT if tiny else {}))
    return common.resnet(widths=(8, 16, 32) if tiny else (32, 64, 128), num_classes=num_classes)


def representation(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the head reads: the ViT's pooled, normalised token; the ResNet's pooled map."""
    if isinstance(model, common.ResNet):
        return model.layers(model.stem(x)).mean(dim=(2, 3))
    return vit_representation(model, x)


def starting_point(arch: str, init: str, num_classes: int, args: argparse.Namespace, seed: int) -> nn.Module:
    """A fresh model (``init="scratch"``) or an upstream one with a new zero-initialised head."""
    torch.manual_seed(common.derive_seed(seed, Stream.WEIGHTS))
    model = make(arch, num_classes, args.tiny)
    if init == "scratch":
        return model
    state = torch.load(upstream_path(args, arch, init), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model


def upstream_path(args: argparse.Namespace, arch: str, init: str) -> Path:
    return args.models / f"{arch}-{init}.pt"


# ============================================================================ data
class Data:
    """Fashion-MNIST split into the upstream (classes 0-4) and downstream (5-9) tasks, plus digits."""

    def __init__(self, args: argparse.Namespace):
        full_train, full_test = common.data(args)
        self.up_train = full_train.select_classes(UPSTREAM)
        self.up_test = full_test.select_classes(UPSTREAM)
        self.down_train = full_train.select_classes(DOWNSTREAM)
        self.down_test = full_test.select_classes(DOWNSTREAM)
        self.stats = self.up_train.mean_std()  # every model sees pixels normalised the same way
        size = Preprocess(full_train.image_size, 1)
        self.digits_train = load_dataset("digits", "train", preprocess=size)
        self.digits_test = load_dataset("digits", "test", preprocess=size)
        if args.tiny:
            self.down_train = self.down_train.per_class(12, 0)
            self.digits_train = self.digits_train.per_class(12, 0)


@torch.no_grad()
def dataset_representation(model: nn.Module, ds: ImageDataset, stats: tuple[list[float], list[float]]) -> torch.Tensor:
    pre = Preprocess(ds.image_size, ds.channels, mean=stats[0], std=stats[1])
    model.eval()
    return torch.cat(
        [representation(model, pre.normalize(ds.images[i : i + 500])).float() for i in range(0, len(ds), 500)]
    )


def at_size(ds: ImageDataset, size: int) -> ImageDataset:
    return ds.prepared(Preprocess((size, size), ds.channels))


# ============================================================================ runs
def pretrain(arch: str, size: int, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train on ``size`` images of classes 0-4 and keep the weights for the transfer runs."""
    torch.manual_seed(common.derive_seed(0, Stream.WEIGHTS))
    model = make(arch, len(UPSTREAM), args.tiny)
    train = common.subset(data.up_train, size, seed=0)
    budget = common.budget(args, 0) if args.tiny else common.Budget(steps=common.steps_for_data(len(train)))
    record = common.fit(model, train, data.up_test, budget, seed=0, device=args.device, stats=data.stats)
    path = upstream_path(args, arch, f"n{size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    return record


def probe(
    arch: str, init: str, train: ImageDataset, test: ImageDataset, data: Data, args: argparse.Namespace
) -> dict[str, Any]:
    """Few-shot ridge and k-NN on the frozen representation (3 seeds per shot count)."""
    model = starting_point(arch, init, train.num_classes, args, seed=0)
    x_train = dataset_representation(model, train, data.stats)
    x_test = dataset_representation(model, test, data.stats)
    shots = [k for k in SHOTS if k <= int(torch.bincount(train.labels).min())]
    runs = few_shot(x_train, train.labels, x_test, test.labels, train.num_classes, shots, range(SEEDS))
    rows = summarize(runs)
    return {"summary": rows, "l2": [r.l2 for r in runs], "test_top1": rows[-1]["ridge_mean"]}


def tuned_fit(
    make_model: Callable[[], nn.Module],
    train: ImageDataset,
    test: ImageDataset,
    kind: str,
    seed: int,
    data: Data,
    args: argparse.Namespace,
    lr: float | None = None,
) -> dict[str, Any]:
    """Choose the rate from :data:`LRS` on a held-out part of ``train`` (unless ``lr`` is given),
    then train on all of ``train`` for the run's steps and score on ``test``. Digits are not
    mirror-symmetric, so their runs are not flipped."""
    steps = 3 if args.tiny else STEPS[kind]
    flip = kind != "digits"
    batch = min(128, len(train))
    grid: list[dict[str, Any]] = []
    how = "given"
    if lr is None:
        part, held = hold_out(train, VAL_SHARE, Stream.VALIDATION, seed)
        how = f"held-out accuracy on {len(held)} training images ({VAL_SHARE:.0%} of each class, at least one)"
        trials = []
        for rate in LRS:
            budget = common.Budget(steps=max(1, round(TRIAL_SHARE[kind] * steps)), batch_size=batch, lr=rate)
            try:
                r = common.fit(make_model(), part, held or part, budget, seed, flip, args.device, data.stats)
                trials.append(Trial(rate, budget.steps, r["train_loss_end"], r["test_top1"], r["test_loss"]))
            except FloatingPointError:
                trials.append(Trial(rate, budget.steps, math.nan))
        lr = choose(trials).lr
        grid = [t.to_dict() for t in trials]
    budget = common.Budget(steps=steps, batch_size=batch, lr=lr)
    record = common.fit(make_model(), train, test, budget, seed, flip, args.device, data.stats)
    return record | {"grid": grid, "chosen_by": how, "hflip": flip}


# ============================================================================ experiments
def upstream_size(res: common.Results, arch: str, data: Data, args: argparse.Namespace) -> None:
    sizes = (64, 256) if args.tiny else SIZES
    for size in sizes:
        key = f"upstream/{arch}/n{size}"
        if not upstream_path(args, arch, f"n{size}").is_file():
            res.runs.pop(key, None)  # the weights are gone: pre-train again
        res.run(key, dict(part="upstream", arch=arch, size=size), pretrain, arch, size, data, args)
    inits = ["scratch"] + [f"n{s}" for s in sizes]
    train, test = data.down_train, data.down_test
    for init in inits:
        labels = dict(part="probe", arch=arch, init=init)
        res.run(f"probe/{arch}/{init}", labels, probe, arch, init, train, test, data, args)
    for seed in range(SEEDS):
        few = train.per_class(FEW, seed)  # the same images for every starting point

        for init in inits:
            labels = dict(part="few", arch=arch, init=init, seed=seed)
            model = lambda init=init, seed=seed: starting_point(arch, init, 5, args, seed)  # noqa: E731
            res.run(f"few/{arch}/{init}/seed{seed}", labels, tuned_fit, model, few, test, "few", seed, data, args)
    for init in inits:
        labels = dict(part="full", arch=arch, init=init, seed=0)
        model = lambda init=init: starting_point(arch, init, 5, args, 0)  # noqa: E731
        res.run(f"full/{arch}/{init}", labels, tuned_fit, model, train, test, "full", 0, data, args)


def domain_shift(res: common.Results, arch: str, data: Data, args: argparse.Namespace) -> None:
    big = f"n{(256 if args.tiny else SIZES[-1])}"
    train, test = data.digits_train, data.digits_test
    for init in ("scratch", big):
        labels = dict(part="digits", arch=arch, init=init, seed=0)
        model = lambda init=init: starting_point(arch, init, 10, args, 0)  # noqa: E731
        res.run(f"digits/{arch}/{init}", labels, tuned_fit, model, train, test, "digits", 0, data, args)
    labels = dict(part="digits-probe", arch=arch, init=big)
    res.run(f"digits-probe/{arch}/{big}", labels, probe, arch, big, train, test, data, args)


def higher_resolution(res: common.Results, data: Data, args: argparse.Namespace) -> None:
    """The 30k ViT at 56x56, each run with the rate its 28x28 twin chose (trials at 4x the
    tokens would cost as much as the runs)."""
    big = f"n{(256 if args.tiny else SIZES[-1])}"
    train, test = at_size(data.down_train, 56), at_size(data.down_test, 56)

    def model(seed: int) -> nn.Module:
        m = starting_point("ViT", big, 5, args, seed)
        m.resample_image_size(56)
        return m

    for seed in range(SEEDS):
        twin = res.runs[f"few/ViT/{big}/seed{seed}"]
        labels = dict(part="few56", arch="ViT", init=big, seed=seed)
        few = train.per_class(FEW, seed)
        res.run(
            f"few56/ViT/{big}/seed{seed}",
            labels,
            tuned_fit,
            lambda s=seed: model(s),
            few,
            test,
            "few",
            seed,
            data,
            args,
            twin["lr"],
        )
    twin = res.runs[f"full/ViT/{big}"]
    labels = dict(part="full56", arch="ViT", init=big, seed=0)
    res.run(f"full56/ViT/{big}", labels, tuned_fit, lambda: model(0), train, test, "full", 0, data, args, twin["lr"])


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=ARCHS, action="append", help="the architecture(s) to run (default: both)")
    p.add_argument("--models", type=Path, default=Path("runs/transfer"), help="folder for the upstream weights")
    p.add_argument("--report", action="store_true", help="only print the tables and draw the figures")
    args = p.parse_args(argv)
    archs = args.arch or list(ARCHS)
    name = "transfer" if len(archs) == 2 else f"transfer-{archs[0]}"
    res = common.setup(args, name, {"lrs": LRS, "steps": STEPS, "trial_share": TRIAL_SHARE, "vit": common.VIT_BASE})
    if not args.report:
        data = Data(args)
        for arch in archs:
            upstream_size(res, arch, data, args)
            domain_shift(res, arch, data, args)
            if arch == "ViT":
                higher_resolution(res, data, args)
    report(args.out, args.tiny)


def report(out: Path, tiny: bool) -> None:
    """Print the tables of docs/transfer.md and draw its figures from every transfer*.json in ``out``."""
    import transfer_report

    transfer_report.main(out, tiny)


if __name__ == "__main__":
    main()
