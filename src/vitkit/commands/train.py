"""``vitkit train``: train a ViT from scratch on real images (Fashion-MNIST by default)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..train import TrainConfig, load_run_config, parse_duration, train

_DEFAULTS = TrainConfig()


def _value(text: str) -> Any:
    """``KEY=VALUE`` values: JSON when it parses (numbers, true, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. stem=conv), got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _value(value.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    p = sub.add_parser(
        "train",
        help="train a ViT from scratch (Fashion-MNIST, MNIST, CIFAR-10, digits, your image folders)",
        description="Train a ViT from scratch; checkpoints last/ and best/, metrics.jsonl and summary.json "
        "go to --out. Continue a stopped run with --resume RUN.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="fashion-mnist | mnist | cifar10 | digits | IMAGE_FOLDER | CSV")
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the dataset files (else $VITKIT_DATA, the Debian package folder, the cache)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="hold out this seeded fraction of the training images for validation (default: validate on the test split when there is one, else 0.1)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize images to this size (default: the dataset's; image folders: the model's)",
    )
    g.add_argument("--channels", type=int, choices=(1, 3), default=None, help="convert images to 1 or 3 channels")
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable image files out with a warning instead of stopping",
    )
    g.add_argument("--limit-train", type=int, default=None, help="train on a seeded subset of this many images")
    g.add_argument("--limit-val", type=int, default=None, help="validate on the first this many images")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="preset name (see `vitkit presets`)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --set stem=conv --set pool=gap (repeatable)",
    )
    g.add_argument(
        "--drop-path", type=float, default=None, help="stochastic depth rate of the last block (default: the preset's)"
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="AdamW weight decay (not on norms, biases, position embeddings, class token)",
    )
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up length")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--clip-grad", type=float, default=d.clip_grad, help="max gradient norm (0: off)")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="micro-batches per optimiser step")
    g.add_argument(
        "--ema", type=float, default=d.ema_decay, dest="ema_decay", help="EMA decay of the weights (0: off), e.g. 0.999"
    )
    g = p.add_argument_group("augmentation")
    g.add_argument(
        "--crop-padding",
        type=int,
        default=d.crop_padding,
        help="random crop after padding by this many pixels (0: off; default: 1/8 of the image side)",
    )
    g.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (default: on, except for mnist and digits)",
    )
    g.add_argument("--erase-prob", type=float, default=d.erase_prob, help="random erasing probability")
    g.add_argument("--auto-augment", choices=("none", "randaugment", "trivialaugment"), default=d.auto_augment)
    g.add_argument("--mixup", type=float, default=d.mixup, help="MixUp alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix alpha (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=d.out, help="run folder")
    g.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue the run in this folder (its saved options are used; --epochs and --time-budget may be raised)",
    )
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument(
        "--time-budget", default=None, help="stop training after this long (600, 10m, 1h) and still evaluate"
    )
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    g.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default=d.precision,
        help="auto: bf16 autocast where the hardware has bf16 units",
    )
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores available)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        data_dir=args.data_dir,
        val_fraction=args.val_fraction,
        image_size=args.image_size,
        channels=args.channels,
        skip_bad_images=args.skip_bad_images,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
        model=args.model,
        model_overrides=dict(args.overrides),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad,
        accum_steps=args.accum_steps,
        drop_path=args.drop_path,
        ema_decay=args.ema_decay,
        precision=args.precision,
        device=args.device,
        seed=args.seed,
        time_budget=parse_duration(args.time_budget) if args.time_budget else None,
        crop_padding=args.crop_padding,
        hflip=args.hflip,
        erase_prob=args.erase_prob,
        auto_augment=args.auto_augment,
        mixup=args.mixup,
        cutmix=args.cutmix,
        eval_batch_size=args.eval_batch_size,
        threads=args.threads,
        compile=args.compile,
        out=args.out,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.resume:
        cfg = load_run_config(args.resume)
        cfg.out = args.resume
        if args.epochs != _DEFAULTS.epochs:
            cfg.epochs = args.epochs
        if args.time_budget:
            cfg.time_budget = parse_duration(args.time_budget)
        if args.threads:
            cfg.threads = args.threads
    else:
        cfg = config_from_args(args)
    summary = train(cfg, resume=bool(args.resume), progress=not args.no_progress and sys.stderr.isatty())
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['eval_split']} accuracy {summary['accuracy']:.2%} (top-5 {summary['top5']:.2%}) on "
            f"{summary['eval_images']} images after {summary['epochs_done']} epoch(s), "
            f"{summary['train_time_s']:.0f}s of training at {summary['images_per_s']:.0f} images/s; "
            f"checkpoint {summary['checkpoint']}"
        )
    return 0
