"""vitkit export RUN_OR_CHECKPOINT model.onnx: ONNX with a dynamic batch dimension, checked with onnxruntime.

RUN_OR_CHECKPOINT is a run folder (its best/, else last/), a checkpoint folder, or anything
vitkit convert reads (timm / Hugging Face / Google weights). The image size is fixed unless
--dynamic-image-size is given; --check runs the file with onnxruntime and PyTorch on the same
images and prints the largest logit difference.

--int8 writes the graph with int8 weights for its MatMul/Gemm products (onnxruntime's dynamic
quantisation). Its --check compares it with fp32 PyTorch on real images (the first
--check-images test images of the checkpoint's dataset, or of --check-data): int8 moves logits by
far more than 1e-4, so it passes on top-1 agreement of at least 95 % and a largest logit
difference of at most 0.25 of the logits' standard deviation, and reports both accuracies on
those images.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from ..checkpoint import require_vit
from ..errors import ExportError
from ..export import DEFAULT_OPSET, OnnxModel, check_onnx, export_onnx, onnx_metadata
from ..interop import FORMATS, load_artifact
from ..model import VisionTransformer
from ..preprocess import Preprocess
from ..quantize import MAX_RELATIVE_LOGIT_DIFF, MIN_TOP1_AGREEMENT, agreement_on, export_onnx_int8
from .convert import image_size_arg

CHECK_TOLERANCE = 1e-4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch), checked against PyTorch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        metavar="RUN_OR_CHECKPOINT",
        help="a run folder (its best/, else last/), a checkpoint folder, or timm / Hugging Face / Google weights",
    )
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--from", dest="fmt", choices=FORMATS, help="checkpoint format (default: detected)")
    p.add_argument("--image-size", type=image_size_arg, help="export at this input size (resamples the position grid)")
    p.add_argument(
        "--dynamic-image-size",
        action="store_true",
        help="accept any image size (multiples of the patch size); the graph then resamples the position grid",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument(
        "--int8", action="store_true", help="int8 weights for MatMul/Gemm (onnxruntime dynamic quantisation)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="compare with PyTorch via onnxruntime at batch sizes 1 and 3 (with --int8: on real test images)",
    )
    p.add_argument("--check-data", help="with --int8 --check: dataset name or image folder (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, help="folder holding the --check-data files")
    p.add_argument(
        "--check-images", type=int, default=1000, help="with --int8 --check: how many test images (default: 1000)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    artifact = load_artifact(args.checkpoint, fmt=args.fmt)
    model = require_vit(artifact.model, "export (ONNX)", args.checkpoint)
    pre = artifact.preprocess
    if args.image_size is not None:
        from ..checkpoint import adapt

        model = adapt(model, image_size=args.image_size).eval()
        pre = pre.at_input_size(model.config.image_size) if pre is not None else None
    metadata = onnx_metadata(pre) if pre is not None else {}
    export = export_onnx_int8 if args.int8 else export_onnx
    path = export(model, args.output, dynamic_image_size=args.dynamic_image_size, opset=args.opset, metadata=metadata)
    c = model.config
    hw = "height, width" if args.dynamic_image_size else f"{c.image_size[0]}, {c.image_size[1]}"
    kind = "int8 " if args.int8 else ""
    print(f"wrote {kind}{path}: images (batch, {c.in_channels}, {hw}) -> logits (batch, {c.num_classes})")
    if pre is None:
        warnings.warn(  # the CLI prints it as one line, "vitkit export: warning: ..."
            f"{args.checkpoint} records no preprocessing, so {path} carries none in its metadata: a user of the "
            "file must know how the model's images were prepared",
            stacklevel=1,
        )
    else:
        print(f"{path}'s metadata: preprocess (its preprocess.json) and class_names ({len(pre.class_names)})")
    if not args.check:
        return 0
    if args.int8:
        return check_int8(model, artifact.preprocess or Preprocess.for_model(model.config), path, args)
    return check_fp32(model, path, args.dynamic_image_size)


def check_fp32(model: VisionTransformer, path: Path, dynamic_image_size: bool) -> int:
    """The fp32 graph against PyTorch on random images: the largest logit difference within 1e-4."""
    c = model.config
    sizes = [c.image_size]
    if dynamic_image_size:
        sizes.append((c.image_size[0] + 2 * c.patch_size, c.image_size[1] + c.patch_size))
    worst = max(check_onnx(model, path, batch_sizes=(1, 3), image_size=s) for s in sizes)
    status = "ok" if worst <= CHECK_TOLERANCE else f"above the {CHECK_TOLERANCE:g} tolerance"
    print(f"max |onnxruntime - pytorch| = {worst:.3g} over batch sizes 1 and 3 ({status})")
    return 0 if worst <= CHECK_TOLERANCE else 1


def check_int8(model: VisionTransformer, pre: Preprocess, path: Path, args: argparse.Namespace) -> int:
    """The int8 graph against fp32 PyTorch on real images: top-1 agreement and logit difference."""
    images, labels = check_images(model, pre, args)
    a = agreement_on(model, OnnxModel(path), images, labels)
    need = f"needs agreement >= {MIN_TOP1_AGREEMENT:.0%} and a relative difference <= {MAX_RELATIVE_LOGIT_DIFF:g}"
    status = "ok" if a.ok() else f"FAILED: {need}"
    print(
        f"int8 onnxruntime vs fp32 pytorch on {a.images} real images: top-1 agreement {a.top1_agreement:.2%}, "
        f"accuracy {a.reference_accuracy:.2%} -> {a.candidate_accuracy:.2%}, max |logit diff| {a.max_abs_diff:.3g} "
        f"({a.relative_diff:.3f} of the logits' std {a.logit_spread:.3g}), mean {a.mean_abs_diff:.3g} ({status})"
    )
    return 0 if a.ok() else 1


def check_images(
    model: VisionTransformer, pre: Preprocess, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``--check-images`` test images of ``--check-data`` (or of the dataset the checkpoint
    records), prepared as ``pre`` says (the checkpoint's, else pixels scaled to [0, 1]: int8 is
    compared with fp32 on the same pixels either way), and their labels."""
    from ..data import resolve_source

    if pre.input_size != tuple(model.config.image_size):  # --image-size: the same pixels, at the export's size
        pre = pre.replace(image_size=model.config.image_size, pad=0)
    name = args.check_data or pre.dataset
    if not name:
        raise ExportError(f"{args.checkpoint} records no dataset to check int8 on; pass --check-data NAME_OR_FOLDER")
    if args.check_images < 1:
        raise ExportError(f"--check-images {args.check_images}: give at least 1")
    source = resolve_source(name, args.data_dir)
    ds = source.load(source.examples_split, pre)
    ds = ds.in_class_order(pre.class_names) if pre.class_names else ds  # labels in the model's order
    count = min(args.check_images, len(ds))
    return pre.normalize(ds.images[:count]), ds.labels[:count]
