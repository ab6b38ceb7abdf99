"""``vitkit convert SRC DST``: timm, Hugging Face, Google .npz or vitkit weights -> a vitkit folder.

The source format is detected (``--from`` forces it). ``--image-size`` resamples the learned
position embeddings to a new grid, as the paper does before fine-tuning at a higher resolution
(sec. 3.2); ``--num-classes`` replaces the head with a fresh zero-initialised one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..checkpoint import adapt, require_vit, save
from ..errors import ConfigError
from ..interop import FORMATS, load_any


def image_size_arg(text: str) -> int | tuple[int, int]:
    """``384`` or ``384x256`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 384 or 384x256, got {text!r}") from None
    if len(parts) == 1 and parts[0] > 0:
        return parts[0]
    if len(parts) == 2 and min(parts) > 0:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected a size like 384 or 384x256, got {text!r}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert timm / Hugging Face / Google .npz weights to a vitkit checkpoint folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="source: .npz (Google), .pth/.bin/.safetensors (timm), a Hugging Face or vitkit folder")
    p.add_argument("dst", help="output folder (config.json + model.safetensors)")
    p.add_argument("--from", dest="fmt", choices=FORMATS, help="source format (default: detected)")
    p.add_argument("--image-size", type=image_size_arg, help="new input size: resample the position embeddings")
    p.add_argument("--num-classes", type=int, help="new class count: replace the head (zero-initialised)")
    p.add_argument(
        "--source-image-size",
        type=image_size_arg,
        help="size the source was trained at, only for non-square position grids the file cannot reveal",
    )
    p.add_argument("--timm-name", help="timm architecture name (e.g. vit_base_patch16_224) if shapes are ambiguous")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if Path(args.dst).exists() and not Path(args.dst).is_dir():
        raise ConfigError(f"{args.dst} is a file; the destination is a folder (config.json + model.safetensors)")
    model, fmt = load_any(args.src, fmt=args.fmt, image_size=args.source_image_size, name=args.timm_name)
    model = require_vit(model, "convert", args.src)
    overrides: dict[str, Any] = {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.num_classes is not None:
        if args.num_classes < 0:
            raise ConfigError(f"--num-classes {args.num_classes} must be >= 0")
        overrides["num_classes"] = args.num_classes
    if overrides:
        model = adapt(model, **overrides)
    save(model, args.dst, metadata={"converted_from": fmt})
    c = model.config
    print(
        f"{args.src} ({fmt}) -> {args.dst}: {c.width} wide, {c.depth} layers, {c.num_heads} heads, "
        f"patch {c.patch_size}, {c.image_size[0]}x{c.image_size[1]} images, {c.num_classes} classes, "
        f"pool={c.pool}, {model.num_params():,} parameters"
    )
    return 0
