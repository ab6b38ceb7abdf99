"""``vitkit predict``: classify image files with a trained checkpoint."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..evaluate import load_for_inference, predict_files
from ..images import collect_images
from ..runtime import resolve_device
from . import HelpFormatter, add_assume_preprocess, add_device, add_patch_size, positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images: top-k class names with probabilities",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best/) or a checkpoint folder")
    add_assume_preprocess(p)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched for images")
    p.add_argument("--top-k", type=int, default=3, help="show this many most probable classes per image")
    p.add_argument("--batch-size", type=positive, default=64, help="images per forward pass")
    p.add_argument(
        "--skip-bad-images", action="store_true", help="leave unreadable image files out with a warning, as evaluate"
    )
    add_device(p)
    add_patch_size(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k} must be >= 1")
    device = resolve_device(args.device)
    classifier = load_for_inference(args.checkpoint, device, args.assume_preprocess, args.patch_size)
    files = collect_images(args.images)
    results = predict_files(classifier, files, args.top_k, args.batch_size, device, args.skip_bad_images)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    width = max(len(r["path"]) for r in results)
    for r in results:
        preds = "  ".join(f"{p['class']} {p['probability']:.1%}" for p in r["predictions"])
        print(f"{r['path']:<{width}}  {preds}")
    return 0
