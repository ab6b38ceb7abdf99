"""``vitkit evaluate``: accuracy, per-class accuracy and a confusion matrix for a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data import load_dataset
from ..errors import DataError
from ..evaluate import evaluate_model, load_for_inference, write_report
from ..runtime import resolve_device, use_bf16
from . import add_data_mode


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy, per-class accuracy and a confusion matrix of a trained checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best/) or a checkpoint folder")
    p.add_argument("--data", default=None, help="dataset name or image folder (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first this many images")
    p.add_argument("--skip-bad-images", action="store_true", help="leave unreadable image files out with a warning")
    add_data_mode(p)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="fp32")
    p.add_argument("--out", default=None, help="folder for summary.json and confusion.png (default: RUN/eval-SPLIT)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    classifier = load_for_inference(args.checkpoint, device)
    pre = classifier.preprocess
    name = args.data or pre.dataset
    if not name:
        raise DataError(f"{classifier.checkpoint} does not record its dataset; pass --data")
    ds = load_dataset(
        name,
        args.split,
        args.data_dir,
        pre,
        args.skip_bad_images,
        pre.class_names,
        mode=args.data_mode,
        cache_dir=args.cache_dir,
    )
    if tuple(ds.class_names) != pre.class_names:
        raise DataError(f"{name} has classes {ds.class_names[:5]}..., the model {list(pre.class_names[:5])}...")
    if args.limit:
        ds = ds.subset(torch.arange(min(args.limit, len(ds))))
    bf16 = use_bf16(args.precision, device)
    result = evaluate_model(classifier.model, ds, pre, args.batch_size, device, bf16).to_dict()
    result = {"checkpoint": str(classifier.checkpoint), "data": name, "split": args.split} | result
    out = Path(args.out) if args.out else classifier.checkpoint.parent / f"eval-{args.split}"
    paths = write_report(result, ds.class_names, out)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
        return 0
    print(
        f"{name} {args.split}: {result['images']} images, top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%}, "
        f"loss {result['loss']:.4f}"
    )
    width = max(len(c) for c in ds.class_names)
    for c, acc in result["per_class"].items():
        print(f"  {c:<{width}}  {acc:7.2%}")
    print(f"wrote {paths['summary']} and {paths['confusion']}")
    return 0
