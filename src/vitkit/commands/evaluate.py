"""``vitkit evaluate``: accuracy, per-class accuracy and a confusion matrix for a checkpoint.

How the model computes is chosen by three switches (:mod:`vitkit.quantize` does the work):
``--precision`` bf16 autocasts fp32 weights at every forward, ``bf16-weights`` casts them to bf16
once; ``--int8`` quantises the Linear layers (torchao in PyTorch, onnxruntime with ``--onnx``);
``--onnx`` runs the exported graph with onnxruntime. The report names which, and lands in its own
folder (``eval-test-int8``, ``eval-test-onnx-int8``, ...) beside the fp32 one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..checkpoint import require_vit
from ..errors import ConfigError
from ..evaluate import evaluate_model, load_for_inference, write_report
from ..quantize import inference_model
from ..runtime import resolve_device, use_bf16
from . import (
    HelpFormatter,
    add_assume_preprocess,
    add_data_mode,
    add_device,
    add_patch_size,
    add_split,
    checkpoint_images,
    positive,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy, per-class accuracy and a confusion matrix of a trained checkpoint",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best/) or a checkpoint folder")
    add_assume_preprocess(p)
    p.add_argument("--data", default=None, help="dataset name or image folder (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    add_split(p)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first this many images")
    p.add_argument("--skip-bad-images", action="store_true", help="leave unreadable image files out with a warning")
    add_data_mode(p)
    p.add_argument("--batch-size", type=positive, default=512, help="images per forward pass")
    add_device(p)
    add_patch_size(p)
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "bf16-weights", "fp32"),
        default="fp32",
        help="bf16: autocast (fp32 weights cast at every forward); bf16-weights: weights cast to bf16 once",
    )
    p.add_argument("--int8", action="store_true", help="int8 Linear layers: torchao, or onnxruntime with --onnx")
    p.add_argument("--onnx", action="store_true", help="run the exported ONNX graph with onnxruntime (CPU)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model first (with --int8 on a CPU it fuses the quantisation steps: 1.6x fp32 "
        "instead of 0.7x on the main job's model, benchmarks/results/int8.jsonl)",
    )
    p.add_argument("--out", default=None, help="folder for summary.json and confusion.png (default: RUN/eval-SPLIT)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device("cpu" if args.onnx and args.device == "auto" else args.device)  # onnxruntime: CPU
    weights, runtime, bf16 = choose_arithmetic(args, device)
    classifier = load_for_inference(args.checkpoint, device, args.assume_preprocess, args.patch_size)
    if args.int8 or args.onnx:  # int8 Linear layers and the ONNX export are a ViT's
        flags = " ".join(["--int8"] * args.int8 + ["--onnx"] * args.onnx)
        require_vit(classifier.model, f"evaluate {flags}", classifier.checkpoint)
    pre = classifier.preprocess
    source, ds, images_from = checkpoint_images(args, classifier, args.split, image_cache=args.cache_dir)
    if args.limit:
        ds = ds.subset(torch.arange(min(args.limit, len(ds))))
    model = inference_model(classifier.model, weights, runtime)
    model = torch.compile(model) if args.compile else model
    result = evaluate_model(model, ds, pre, args.batch_size, device, bf16).to_dict()
    how = f"{runtime}, {weights} weights" + (", bf16 autocast" if bf16 else "") + (", compiled" if args.compile else "")
    where = {"data": source.text, "split": args.split, "images_from": images_from}
    result = {"checkpoint": str(classifier.checkpoint)} | where | {"inference": how} | result
    folder = report_folder(args.split, weights, runtime) + (f"-p{args.patch_size}" if args.patch_size else "")
    out = Path(args.out) if args.out else classifier.checkpoint.parent / folder
    paths = write_report(result, ds.class_names, out)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
        return 0
    print(
        f"{source.name}, {images_from}: {result['images']} images, top-1 {result['top1']:.2%}, "
        f"top-5 {result['top5']:.2%}, loss {result['loss']:.4f}"
    )
    width = max(len(c) for c in ds.class_names)
    for c, acc in result["per_class"].items():
        print(f"  {c:<{width}}  {acc:7.2%}")
    print(f"wrote {paths['summary']} and {paths['confusion']}")
    return 0


def choose_arithmetic(args: argparse.Namespace, device: torch.device) -> tuple[str, str, bool]:
    """(weights, runtime, bf16 autocast) from ``--precision``, ``--int8`` and ``--onnx``."""
    if (args.int8 or args.onnx) and args.precision not in ("fp32", "auto"):
        raise ConfigError(f"--precision {args.precision} does not combine with --int8 or --onnx; drop one of them")
    if args.onnx and args.compile:
        raise ConfigError("--compile is for PyTorch; onnxruntime optimises the graph itself: drop one of them")
    if args.onnx and device.type != "cpu":
        raise ConfigError(f"--onnx runs on the CPU (onnxruntime); drop --device {args.device} or pass --device cpu")
    runtime = "onnxruntime" if args.onnx else "pytorch"
    if args.int8:
        return "int8", runtime, False
    if args.precision == "bf16-weights":
        return "bf16", runtime, False
    return "fp32", runtime, not args.onnx and use_bf16(args.precision, device)


def report_folder(split: str, weights: str, runtime: str) -> str:
    """``eval-SPLIT`` for fp32 PyTorch (and autocast, as before), with ``-onnx`` / ``-int8`` /
    ``-bf16-weights`` added for the other variants, so that no variant overwrites another's report."""
    parts = [f"eval-{split}"] + (["onnx"] if runtime == "onnxruntime" else [])
    parts += {"int8": ["int8"], "bf16": ["bf16-weights"]}.get(weights, [])
    return "-".join(parts)
