"""``vitkit export CHECKPOINT model.onnx``: ONNX with a dynamic batch dimension, checked with onnxruntime.

CHECKPOINT is anything ``vitkit convert`` reads (a vitkit folder, or timm / Hugging Face / Google
weights). The image size is fixed unless ``--dynamic-image-size`` is given; ``--check`` runs the
file with onnxruntime and PyTorch on the same images and prints the largest logit difference.
"""

from __future__ import annotations

import argparse

from ..export import DEFAULT_OPSET, check_onnx, export_onnx
from ..interop import FORMATS, load_any
from .convert import image_size_arg

CHECK_TOLERANCE = 1e-4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch), checked against PyTorch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="vitkit folder, or timm / Hugging Face / Google weights")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--from", dest="fmt", choices=FORMATS, help="checkpoint format (default: detected)")
    p.add_argument("--image-size", type=image_size_arg, help="export at this input size (resamples the position grid)")
    p.add_argument(
        "--dynamic-image-size",
        action="store_true",
        help="accept any image size (multiples of the patch size); the graph then resamples the position grid",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--check", action="store_true", help="compare with PyTorch via onnxruntime at batch sizes 1 and 3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, _ = load_any(args.checkpoint, fmt=args.fmt)
    if args.image_size is not None:
        from ..checkpoint import adapt

        model = adapt(model, image_size=args.image_size).eval()
    path = export_onnx(model, args.output, dynamic_image_size=args.dynamic_image_size, opset=args.opset)
    c = model.config
    hw = "height, width" if args.dynamic_image_size else f"{c.image_size[0]}, {c.image_size[1]}"
    print(f"wrote {path}: images (batch, {c.in_channels}, {hw}) -> logits (batch, {c.num_classes})")
    if args.check:
        sizes = [c.image_size]
        if args.dynamic_image_size:
            sizes.append((c.image_size[0] + 2 * c.patch_size, c.image_size[1] + c.patch_size))
        worst = max(check_onnx(model, path, batch_sizes=(1, 3), image_size=s) for s in sizes)
        status = "ok" if worst <= CHECK_TOLERANCE else f"above the {CHECK_TOLERANCE:g} tolerance"
        print(f"max |onnxruntime - pytorch| = {worst:.3g} over batch sizes 1 and 3 ({status})")
        if worst > CHECK_TOLERANCE:
            return 1
    return 0
