"""One module per ``vitkit`` command, each with ``add_parser(subparsers)``; found by ``vitkit.cli``.

Here: the argument types and options the commands share.
"""

from __future__ import annotations

import argparse


def names(text: str) -> list[str]:
    """``5,6,7`` or ``Sandal,Shirt`` -> a list of class names or indices."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


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
