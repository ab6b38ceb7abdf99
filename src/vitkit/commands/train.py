"""``vitkit train``: train a ViT from scratch on real images (Fashion-MNIST by default), or fine-tune one (``--init``).

Options left out take their value from the recipe (``--recipe``; on Fashion-MNIST the default is
``fmnist-10m``, the main job), then from :class:`vitkit.train.TrainConfig`'s defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import distributed
from ..data import DataSource, resolve_source
from ..data.folders import SIZE_SAMPLE
from ..errors import ConfigError
from ..train import RECIPES, TrainConfig, load_run_config, parse_duration, train
from ..train.config import folder_defaults
from . import DEVICE_HELP, floats, names

log = logging.getLogger(__name__)
_DEFAULTS = TrainConfig()
_DEFAULT_RECIPE = "fmnist-10m"


# Python's spellings of the JSON literals, which people type as often as JSON's.
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def _value(text: str) -> Any:
    """``KEY=VALUE`` values: JSON when it parses (numbers, true, null, lists), Python's True,
    False and None, else a string."""
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. stem=conv), got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _value(value.strip())


def _recipe_text(name: str) -> str:
    r = RECIPES[name]
    overrides = ",".join(f"{k}={v}" for k, v in r.get("model_overrides", {}).items())
    rest = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("model_overrides", "data"))
    return f"{name}: {rest}" + (f" [{overrides}]" if overrides else "")


# (flag, TrainConfig field, type, help); every one defaults to "not given" so that the recipe and
# then TrainConfig fill it in, and the help shows TrainConfig's default.
_OPTIONS = {
    "data": [
        ("--data", "data", str, "fashion-mnist | mnist | cifar10 | digits | IMAGE_FOLDER | CSV"),
        (
            "--data-dir",
            "data_dir",
            str,
            "folder holding the dataset files (else $VITKIT_DATA, Debian's folder, the cache)",
        ),
        (
            "--val-fraction",
            "val_fraction",
            float,
            "hold out this share of the training images (of each class, at least one; the same images in "
            "every run) to choose best/ and --lr-grid on; the test images are scored only when the run ends "
            "(0: hold none out, keep only last/)",
        ),
        (
            "--test-fraction",
            "test_fraction",
            float,
            "a folder or CSV without train/ and test/: hold out this share of its images (of each class, at "
            "least one) as its test images, scored only when the run ends",
        ),
        (
            "--image-size",
            "image_size",
            int,
            "resize images to this size (default: the dataset's; an image folder: its median shorter side, see "
            "--fit); with --init, the fine-tuning resolution (else the source's own), position embeddings resampled",
        ),
        (
            "--fit",
            "fit",
            str,
            "stretch (to --image-size, as the built-in datasets) | crop (the shorter side to --image-size, then the "
            "centre: the aspect kept) (default: crop for an image folder sized by its median, or with --crop-fraction)",
        ),
        ("--pad", "pad", int, "zero border in pixels around every image (2 makes 28x28 into 32x32)"),
        (
            "--crop-fraction",
            "crop_fraction",
            float,
            "below 1: scale the shorter side to --image-size / this and cut the centre (0.875: 256 -> 224)",
        ),
        ("--channels", "channels", int, "convert images to 1 or 3 channels"),
        ("--classes", "classes", names, "train on these classes only: names or indices, e.g. 5,6,7,8,9"),
        ("--per-class", "per_class", int, "train on a seeded subset of this many images per class (few-shot)"),
        (
            "--mean",
            "mean",
            floats,
            "normalisation mean per channel, e.g. 0.5,0.5,0.5 (default: the data's; --init: the source's)",
        ),
        ("--std", "std", floats, "normalisation std per channel (with --mean)"),
        ("--limit-train", "limit_train", int, "train on a seeded subset of this many images"),
        ("--limit-val", "limit_val", int, "validate on the first this many images"),
        (
            "--data-mode",
            "data_mode",
            str,
            "auto | memory | cache | stream: where the pixels are held (auto: in memory while they take at most "
            "1/4 of the memory available, else a disk cache; shards stream)",
        ),
        (
            "--cache-dir",
            "cache_dir",
            str,
            "folder of the disk cache (default: images/ under $VITKIT_CACHE or ~/.cache/vitkit)",
        ),
        (
            "--loader-workers",
            "loader_workers",
            int,
            "streaming: processes that decode images (default: the cores, at most 8)",
        ),
    ],
    "model": [
        ("--model", "model", str, "preset name (see `vitkit presets`); giving one drops the recipe's --set values"),
        ("--drop-path", "drop_path", float, "stochastic depth rate of the last block (default: the preset's)"),
        (
            "--init",
            "init",
            str,
            "fine-tune these weights instead of training from scratch: a vitkit checkpoint or run folder, a Google "
            ".npz, a timm .safetensors/.pth/.bin, a Hugging Face folder, or hf-hub:ORG/NAME (recipe: finetune)",
        ),
        (
            "--posemb-resample",
            "posemb_resample",
            str,
            "--init at another --image-size: how the position embeddings are resampled, bicubic (default, timm's) "
            "or bilinear (the official code's, to reproduce its numbers)",
        ),
        (
            "--freeze",
            "freeze",
            str,
            "embed (the patch embedding), N (the embedding and the first N blocks) or backbone (all but the head)",
        ),
    ],
    "distillation": [
        (
            "--teacher",
            "teacher",
            str,
            "distil from this classifier (DeiT): a vitkit run or checkpoint (ViT or CNN), any file --init reads, or "
            "timm:MODEL_NAME=FILE; it must know the data's classes, and its forward counts against --time-budget "
            "(none: without the recipe's teacher)",
        ),
        ("--distill", "distill", str, "hard (the teacher's top class, DeiT's best) | soft (its distribution)"),
        ("--distill-alpha", "distill_alpha", float, "weight of the distillation term; the labels get 1 - alpha"),
        ("--distill-tau", "distill_tau", float, "--distill soft: the temperature"),
    ],
    "optimisation": [
        ("--epochs", "epochs", int, "epochs; giving them without --time-budget drops the recipe's budget"),
        (
            "--steps",
            "steps",
            int,
            "optimiser steps in all, instead of --epochs (--init: 0 evaluates the adapted model)",
        ),
        ("--batch-size", "batch_size", int, "images per micro-batch (shrunk to a smaller training set)"),
        ("--optimizer", "optimizer", str, "adamw | sgd (momentum 0.9)"),
        ("--lr", "lr", float, "peak learning rate"),
        (
            "--lr-grid",
            "lr_grid",
            floats,
            "choose --lr from these, e.g. 0.001,0.003,0.01,0.03: a short trial of each (a tenth of --steps or "
            "--time-budget) validated on a held-out 2 %% of each class, then the best for the rest of the budget",
        ),
        ("--min-lr", "min_lr", float, "learning rate at the end of the cosine"),
        (
            "--weight-decay",
            "weight_decay",
            float,
            "AdamW weight decay (not on norms, biases, position embeddings, class token)",
        ),
        ("--warmup-epochs", "warmup_epochs", float, "linear warm-up length"),
        ("--warmup-steps", "warmup_steps", int, "linear warm-up length in steps, instead of --warmup-epochs"),
        (
            "--layer-decay",
            "layer_decay",
            float,
            "layer-wise learning-rate decay, e.g. 0.75 (block i of L: decay^(L+1-i))",
        ),
        ("--head-lr-mult", "head_lr_mult", float, "the head's learning rate times this"),
        ("--label-smoothing", "label_smoothing", float, "label smoothing"),
        ("--clip-grad", "clip_grad", float, "max global gradient norm (0: off)"),
        ("--accum-steps", "accum_steps", int, "gradient accumulation: micro-batches per optimiser step"),
        ("--ema", "ema_decay", float, "EMA decay of the weights, e.g. 0.999 (0: off); evaluation then uses the EMA"),
    ],
    "augmentation": [
        (
            "--crop-padding",
            "crop_padding",
            int,
            "random crop after padding by this many pixels (0: off; default: 1/8 of the side)",
        ),
        (
            "--crop-scale",
            "crop_scale",
            float,
            "RandomResizedCrop instead of pad-and-crop: the smallest area fraction, e.g. 0.08 (ImageNet's)",
        ),
        ("--erase-prob", "erase_prob", float, "random erasing probability per image"),
        ("--auto-augment", "auto_augment", str, "none | randaugment | trivialaugment (torchvision v2)"),
        ("--randaugment-ops", "randaugment_ops", int, "RandAugment: operations per image"),
        ("--randaugment-magnitude", "randaugment_magnitude", int, "RandAugment: their strength (0-30)"),
        ("--mixup", "mixup", float, "MixUp alpha (0: off)"),
        ("--cutmix", "cutmix", float, "CutMix alpha (0: off)"),
    ],
    "run": [
        ("--out", "out", str, "run folder (default: runs/DATA-YYYYmmdd-HHMMSS, the UTC start; -2, -3, ... if taken)"),
        ("--seed", "seed", int, "seed of the initial weights, data order and augmentation"),
        (
            "--time-budget",
            "time_budget",
            str,
            "stop training after this long (600, 10m, 1h), then evaluate; the cosine follows the clock too",
        ),
        (
            "--budget-clock",
            "budget_clock",
            str,
            "wall | cpu: count the budget in wall time, or in process CPU "
            "time / threads (the time on cores of its own, for a machine shared with other jobs)",
        ),
        ("--device", "device", str, DEVICE_HELP),
        ("--precision", "precision", str, "auto | bf16 | fp32 (auto: bf16 autocast where the hardware has bf16 units)"),
        (
            "--threads",
            "threads",
            int,
            "CPU threads (default: every core this process may use, less those other programs keep busy "
            "in a half-second sample)",
        ),
        ("--eval-batch-size", "eval_batch_size", int, "batch size of the evaluations"),
        ("--eval-every", "eval_every", int, "validate every this many epochs (0: only after the last)"),
        (
            "--checkpoint-every",
            "checkpoint_every",
            int,
            "also write last/ every this many steps, mid-epoch, for long epochs (0: at epoch ends only)",
        ),
    ],
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    recipes = "\n  ".join(_recipe_text(n) for n in RECIPES)
    p = sub.add_parser(
        "train",
        help="train a ViT from scratch (Fashion-MNIST, MNIST, CIFAR-10, digits, your folders), or fine-tune one (--init)",
        description="Train a ViT from scratch. Checkpoints last/ and best/, metrics.jsonl, train_config.json and "
        "summary.json go to --out; continue a stopped run with --resume RUN. Options not given come from the "
        f"recipe, then from the defaults shown.\n\nrecipes:\n  {recipes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        choices=[*RECIPES, "none"],
        default=None,
        help=f"a named set of options (default: finetune with --init, {_DEFAULT_RECIPE} on Fashion-MNIST, "
        "none elsewhere)",
    )
    add_options(p)


def add_options(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """The options of ``vitkit train`` (less the groups in ``skip``), on ``p``: ``vitkit pretrain``
    takes the same, through the same run."""
    extras = {"data": _add_data_flags, "model": _add_model_flags, "augmentation": _add_augment_flags}
    extras["distillation"] = _add_distill_flags
    extras["run"] = _add_run_flags
    for group, options in _OPTIONS.items():
        if group in skip:
            continue
        g = p.add_argument_group(group)
        for flag, name, type_, text in options:
            default = getattr(_DEFAULTS, name)
            shown = "" if "default:" in text or default is None else f" (default: {default})"
            g.add_argument(flag, dest=name, type=type_, default=None, help=text + shown)
        extras.get(group, lambda _: None)(g)
    p.set_defaults(func=run)


def _add_data_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--skip-bad-images", action="store_true", help="leave unreadable image files out with a warning")


def _add_model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--keep-head",
        action="store_true",
        default=None,
        help="with --init: keep the source's head (its class names must be the data's); default: a new one",
    )
    add_set_flag(g)


def add_set_flag(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --set stem=conv --set pool=gap (repeatable)",
    )


def _add_distill_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--distill-token",
        action="store_true",
        default=None,
        help="add DeiT's distillation token and a second head that learns from the teacher; inference averages "
        "the two heads",
    )


def _add_augment_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (default: on, except for mnist and digits)",
    )


def _add_run_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--resume",
        metavar="RUN",
        help="continue this run folder with its saved options; --epochs, --steps and --time-budget extend it, and "
        "options of where and how fast it runs (--threads, --device, ...) may change; others are refused",
    )
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument(
        "--trial",
        action="store_true",
        default=None,
        help="one candidate of a search (recipes, rates): score the finished run on its validation share and "
        "never load the test images",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the final summary as JSON")
    g.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train with N processes on this machine: hands the same command over to "
        "`torchrun --standalone --nproc_per_node N` (DDP; gloo on CPU, NCCL on GPU)",
    )
    g.add_argument(
        "--dist-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="under torchrun: how long to wait for the rendezvous and for each exchange with "
        f"the other processes (default: ${distributed.TIMEOUT_ENV} or {distributed.DEFAULT_TIMEOUT_S:.0f})",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults <- the recipe <- the options given on the command line."""
    given = {
        name: getattr(args, name)
        for options in _OPTIONS.values()
        for _, name, _, _ in options
        if getattr(args, name, None) is not None
    }
    for name in ("hflip", "compile", "keep_head", "trial", "distill_token", "objective"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    if args.skip_bad_images:
        given["skip_bad_images"] = True
    if "time_budget" in given:
        given["time_budget"] = parse_duration(given["time_budget"])
    recipe = getattr(args, "recipe", None)
    if "objective" in given:
        recipe = "none"  # the recipes train classifiers
    if recipe is None and "init" in given:
        recipe = "finetune"  # the paper's fine-tuning; the from-scratch recipes do not apply
    source = resolve_source(given.get("data", _DEFAULTS.data), given.get("data_dir"))
    if recipe is None:
        main_data = resolve_source(RECIPES[_DEFAULT_RECIPE]["data"])
        recipe = _DEFAULT_RECIPE if (source.kind, source.location) == (main_data.kind, main_data.location) else "none"
    values = _DEFAULTS.to_dict()
    if recipe != "none":
        log.info("recipe %s: its values fill the options not given (--recipe none: without it)", recipe)
    if recipe == "none":
        values.update(_folder_defaults(source, given, dict(args.overrides)))
    if recipe != "none":
        values.update(RECIPES[recipe])
        if "model" in given:
            values["model_overrides"] = {}
            values.pop("drop_path", None)
        if "epochs" in given and "time_budget" not in given:
            values["time_budget"] = None
        if "epochs" in given and "steps" not in given:
            values["steps"] = None  # the recipe counts steps; epochs were asked for
    values.update(given)
    if values.get("teacher") == "none":  # a recipe's teacher, declined
        values["teacher"] = None
    values["model_overrides"] = dict(values.get("model_overrides") or {}) | dict(args.overrides)
    lonely = [f"--{n.replace('_', '-')}" for n in ("distill", "distill_alpha", "distill_tau") if n in given]
    if lonely and not values.get("teacher"):
        raise ConfigError(f"{', '.join(lonely)} only apply with --teacher: name the teacher, or drop them")
    return TrainConfig.from_dict(values)


def _folder_defaults(source: DataSource, given: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """For an image folder or CSV trained from scratch without ``--model``, ``--image-size`` or
    ``--set patch_size``: the size, resize rule and model that fit its images
    (:func:`vitkit.train.config.folder_defaults`), logged with why; else nothing."""
    chosen = ("model", "image_size", "init")
    if source.kind not in ("folder", "csv") or any(k in given for k in chosen) or "patch_size" in overrides:
        return {}
    side = source.median_side
    if side is None:  # no file could be read: loading the images says which and why
        return {}
    values = folder_defaults(side)
    if "fit" in given:  # --fit stretch: the size and model still fit the images
        values.pop("fit")
    size, patch = values["image_size"], values["model_overrides"]["patch_size"]
    rule = f"--fit {given['fit']}" if "fit" in given else "shorter side resized and the centre cut"
    log.info(
        "%s: median shorter side %d px (up to %d files' headers) -> %d px, %s; %s with %d-px patches (a %dx%d grid). "
        "--image-size, --fit and --model choose otherwise",
        source.name,
        side,
        SIZE_SAMPLE,
        size,
        rule,
        values["model"],
        patch,
        size // patch,
        size // patch,
    )
    return values


# The TrainConfig fields `--resume` may change: see resume_config.
RESUMABLE = (
    "epochs",
    "steps",
    "time_budget",
    "threads",
    "device",
    "loader_workers",
    "cache_dir",
    "eval_batch_size",
    "eval_every",
    "checkpoint_every",
    "compile",
)


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The config of the run in ``--resume RUN``: the one it was started with, and the options of
    :data:`RESUMABLE` given now, checked by ``TrainConfig`` as those of a new run.

    A resumed run must go on computing the weights it was computing, so that a run that was
    killed and resumed ends where an uninterrupted one would. What may change is how long it runs
    (``--epochs``, ``--steps``, ``--time-budget``: a budget extended; the cosine is laid over the
    new length from here on), and what decides where and how fast the same arithmetic runs,
    not which: ``--threads``, ``--device``, ``--compile`` (the last digits of a sum may differ,
    as they do between machines), ``--loader-workers`` and ``--cache-dir`` (where pixels are
    decoded and kept; streaming mixes shards per worker, and its resume is not exact anyway),
    ``--eval-batch-size``, ``--eval-every`` and ``--checkpoint-every`` (when the run stops to
    validate or to write ``last/``: the training steps are seeded per step, so they are the
    same; only which epoch ``best/`` holds can move), and options that are not part of the run
    (``--no-progress``, ``--json``, ``--nproc``, ``--dist-timeout``). Every other option (the
    data, the model, ``--set``, ``--recipe``, the optimiser, the seed, the batch, augmentation,
    precision, ``--out``) changes what is computed, and was ignored here once without a word; it
    is now refused, in one error naming each, unless it repeats the run's own value, so the
    command that started a run may be given again with ``--resume``.
    """
    values = load_run_config(args.resume).to_dict()
    changed = _changed_options(args, values)
    if changed:
        may = ", ".join("--" + name.replace("_", "-") for name in RESUMABLE)
        raise ConfigError(
            f"--resume {args.resume} continues the run with its own options; {'; '.join(changed)} would change what "
            f"it computes. Drop them, or start a new run in another --out folder (on resume only {may} may change)"
        )
    given = {name: getattr(args, name) for name in RESUMABLE if getattr(args, name) is not None}
    if "time_budget" in given:
        given["time_budget"] = parse_duration(given["time_budget"])
    return TrainConfig.from_dict(values | given | {"out": args.resume})


def _changed_options(args: argparse.Namespace, values: dict[str, Any]) -> list[str]:
    """Each option given that is not :data:`RESUMABLE` and differs from the run's ``values``."""
    given = [(name, getattr(args, name, None), flag) for options in _OPTIONS.values() for flag, name, _, _ in options]
    given = [(name, value, f"{flag} {value}") for name, value, flag in given]
    given += [
        ("hflip", args.hflip, "--hflip" if args.hflip else "--no-hflip"),
        ("keep_head", getattr(args, "keep_head", None), "--keep-head"),
        ("distill_token", getattr(args, "distill_token", None), "--distill-token"),
        ("trial", getattr(args, "trial", None), "--trial"),
        ("objective", getattr(args, "objective", None), "--objective"),
        ("skip_bad_images", args.skip_bad_images or None, "--skip-bad-images"),
    ]
    changed = []
    for name, value, shown in given:
        if value is None or name in RESUMABLE or value == values[name]:
            continue
        if name == "out" and Path(value).resolve() == Path(args.resume).resolve():
            continue
        changed.append(f"{shown} (the run's: {values[name]})")
    for key, value in args.overrides:
        if values["model_overrides"].get(key, "not set") != value:
            changed.append(f"--set {key}={value} (the run's: {values['model_overrides'].get(key, 'not set')})")
    if getattr(args, "recipe", None) is not None:
        changed.append(f"--recipe {args.recipe} (its values are in the run's train_config.json)")
    return changed


def torchrun_argv(argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command that runs ``vitkit <argv>`` (``--nproc`` removed) in ``nproc`` processes."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "--max-restarts=0", "-m", "vitkit", *rest]


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        if args.nproc < 1:
            raise ConfigError(f"--nproc {args.nproc}: give a number of processes >= 1")
        if distributed.env_world_size() > 1:
            raise ConfigError("--nproc is for a plain `vitkit train`; under torchrun the processes already exist")
        argv = torchrun_argv(sys.argv[1:], args.nproc)
        sys.stderr.flush()
        os.execv(argv[0], argv)  # torchrun takes over this process: its exit status is the job's
    rank0 = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    cfg = resume_config(args) if args.resume else config_from_args(args)
    with distributed.session(cfg.device, args.dist_timeout):
        s = train(cfg, resume=bool(args.resume), progress=not args.no_progress and sys.stderr.isatty())
    if not rank0:
        return 0
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
    elif s.objective != "classify":
        patches = f", {s.accuracy:.2%} of masked patches right" if s.objective == "mpp" else ""
        print(
            f"{s.objective} pre-training: held-out loss {s.loss:.4f}{patches} on {s.eval_images} images after "
            f"{s.epochs_done} epoch(s), {s.train_time_s:.0f}s at {s.images_per_s:.0f} images/s; best/ chosen by the "
            f"held-out loss ({s.best_val_loss:.4f}); fine-tune with `vitkit train --init {Path(s.checkpoint).parent}`"
        )
    else:
        print(
            f"{s.eval_split} accuracy {s.accuracy:.2%} (top-5 {s.top5:.2%}) on {s.eval_images} images after "
            f"{s.epochs_done} epoch(s), {s.train_time_s:.0f}s of training at {s.images_per_s:.0f} images/s; "
            f"checkpoint {s.checkpoint}"
        )
    return 0
