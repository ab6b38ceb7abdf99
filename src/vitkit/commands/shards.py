"""``vitkit shards``: write an image folder or CSV as WebDataset tar shards, for streaming."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..data.shards import ShardIndex, has_splits, write_shards, write_split_shards
from ..errors import ConfigError
from . import HelpFormatter

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shards",
        help="write an image folder or CSV as WebDataset tar shards (train on data larger than memory)",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="FOLDER_OR_CSV",
        help="one sub-folder per class (or train/ and test/ holding those), or a CSV of path,label",
    )
    p.add_argument("out", metavar="OUT", help="a new folder for the shards and their shards.json")
    p.add_argument("--shard-size", default="1GB", help="bytes per shard: 1GB, 500MB, 64MiB, or a byte count")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out files that do not decode, with a warning")
    p.add_argument("--seed", type=int, default=0, help="the seed of the shuffled order the samples are written in")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    shard_size = parse_size(args.shard_size)
    source, out = Path(args.source), Path(args.out)
    if source.is_dir() and has_splits(source):
        indexes = write_split_shards(source, out, shard_size, args.skip_bad_images, args.seed)
    else:
        indexes = {"": write_shards(source, out, shard_size, args.skip_bad_images, args.seed)}
    for index in indexes.values():
        print(_summary(index))
    return 0


def parse_size(text: str) -> int:
    """``1GB`` (10^9), ``500MB``, ``64MiB`` (2^26), ``20KB`` or ``123456`` -> a byte count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text)
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None or float(m.group(1)) * unit < 1:
        raise ConfigError(f"--shard-size {text!r}: give a size such as 1GB, 500MB, 64MiB or a byte count")
    return int(float(m.group(1)) * unit)


def _summary(index: ShardIndex) -> str:
    size = sum((index.folder / name).stat().st_size for name in index.names)
    skipped = f", {len(index.skipped)} unreadable file(s) left out" if index.skipped else ""
    return f"wrote {len(index.names)} shard(s) of {index.samples} samples ({_human(size)}) to {index.folder}{skipped}"


def _human(size: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"
