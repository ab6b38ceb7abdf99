"""One module per ``vitkit`` command, each with ``add_parser(subparsers)``; found by ``vitkit.cli``.

Here: the argument types and options the commands share.
"""

from __future__ import annotations

import argparse

from ..data import DataSource, ImageDataset, ShardSet, resolve_source
from ..errors import DataError
from ..evaluate import ASSUME_PREPROCESS_FLAG, SPLITS, Classifier, held_out_images


def names(text: str) -> list[str]:
    """``5,6,7`` or ``Sandal,Shirt`` -> a list of class names or indices."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def positive(text: str) -> int:
    """A whole number >= 1 (a batch size): 0 is a parse error naming the flag, not a crash later."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def floats(text: str) -> list[float]:
    """``0.5,0.5,0.5`` -> [0.5, 0.5, 0.5]."""
    try:
        return [float(t) for t in names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.5,0.5,0.5, got {text!r}") from None


def integers(text: str) -> list[int]:
    """``1,5,10,25`` -> [1, 5, 10, 25]."""
    try:
        return [int(t) for t in names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, e.g. 1,5,10, got {text!r}") from None


def add_assume_preprocess(p: argparse.ArgumentParser) -> None:
    """``--assume-preprocess FILE``: the preprocess.json for a model whose files record none."""
    p.add_argument(
        ASSUME_PREPROCESS_FLAG,
        dest="assume_preprocess",
        metavar="FILE",
        help="a preprocess.json saying how to prepare images, for a model whose files record none "
        "(inference refuses to guess the normalisation)",
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: X)`` after each option's help, only where it tells something: not
    for a default of None or a flag's False, and not where the help already says its default
    (``ArgumentDefaultsHelpFormatter`` alone printed ``(default: the one it was trained on)
    (default: None)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


DEVICE_HELP = "auto (CUDA when present, else the CPU) | cpu | cuda | cuda:N"


def add_device(p: argparse.ArgumentParser | argparse._ArgumentGroup, dest: str = "device") -> None:
    """``--device``, the same in every command: ``auto`` by default, resolved by
    :func:`vitkit.runtime.resolve_device` (which names the flag when the device is wrong)."""
    p.add_argument("--device", dest=dest, default="auto", help=DEVICE_HELP)


def add_patch_size(p: argparse.ArgumentParser) -> None:
    """``--patch-size P``: run the model at another patch size, its kernel PI-resized (FlexiViT)."""
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        metavar="P",
        help="run at this patch size: the patch embedding PI-resized (FlexiViT) and the position grid resampled; "
        "the input size must be a multiple of P (default: the trained one)",
    )


def add_data_mode(p: argparse.ArgumentParser, cache_dir: bool = True) -> None:
    """``--data-mode`` (and ``--cache-dir``): where a dataset's pixels are held, as in training."""
    p.add_argument(
        "--data-mode",
        choices=("auto", "memory", "cache"),
        default="auto",
        help="hold the images in memory, or decoded once in a disk cache (auto: the cache when they would take "
        "over 1/4 of the memory available); a cache built by `vitkit train` is reused",
    )
    if cache_dir:
        p.add_argument(
            "--cache-dir", default=None, help="folder of the disk cache (default: images/ in the vitkit cache)"
        )


def add_split(p: argparse.ArgumentParser, help_extra: str = "") -> None:
    """``--split``: which images of ``--data`` (the run's shares, read from its ``train_config.json``)."""
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="test: the dataset's test split, or the test share the checkpoint's run held out of a folder "
        "without one; val: the share its run chose on; train: what it trained on; all: every image of a folder "
        "without train/ and test/" + help_extra,
    )


def checkpoint_images(
    args: argparse.Namespace,
    classifier: Classifier,
    split_name: str,
    fresh_share: bool = False,
    image_cache: str | None = None,
    model_labels: bool = True,
) -> tuple[DataSource, ImageDataset, str]:
    """(the source ``--data`` names, its images of ``split_name`` as the checkpoint's run divided
    them, prepared as the checkpoint's preprocess.json says, a phrase saying which images they
    are): :func:`vitkit.evaluate.held_out_images` with the options every command shares
    (``--data``, ``--data-dir``, ``--data-mode``, ...) and the disk cache's folder ``image_cache``.

    ``model_labels`` labels the images in the model's class order, which scoring its logits needs
    (and which refuses classes the model never saw). Commands that only read features (probe,
    embed) pass False and keep the data's own classes: probing a model on classes it never saw
    is the point of a few-shot probe."""
    pre = classifier.preprocess
    name = args.data or pre.dataset
    if not name:
        raise DataError(f"{classifier.checkpoint} does not record its dataset; pass --data")
    source = resolve_source(name, args.data_dir)
    skip = getattr(args, "skip_bad_images", False)

    def load(split: str | ShardSet) -> ImageDataset:
        if isinstance(split, ShardSet):
            return source.load_shards(split, pre, skip, image_cache)
        return source.load(split, pre, skip, mode=args.data_mode, cache_dir=image_cache)

    images, how = held_out_images(classifier, source, split_name, load, fresh_share)
    if model_labels and pre.class_names:
        images = images.in_class_order(pre.class_names)
    return source, images, how
