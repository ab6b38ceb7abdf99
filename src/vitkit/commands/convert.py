"""vitkit convert SRC DST: any model vitkit reads -> a folder in vitkit's, timm's or Hugging Face's format.

SRC is a run folder (its best/, else last/), a vitkit checkpoint folder, a timm file or folder,
a Hugging Face folder or a Google .npz (the format is detected; --from forces it). DST is always
a folder, written whole, and the preprocessing the source records travels with it:

  --to vitkit  config.json + model.safetensors + preprocess.json (the default)
  --to hf      config.json + model.safetensors + preprocessor_config.json, ready for
               transformers.pipeline("image-classification", model=DST); a grayscale model is
               written for the RGB images pipeline gives it
  --to timm    timm's folder layout (config.json with model_args and pretrained_cfg, and
               model.safetensors); the command prints the timm.create_model call that loads it

A model that needs what the target format cannot express (a zero border, a convolutional stem, a
resize rule) is refused with the format that can, never written to answer differently.

--image-size resamples the learned position embeddings to a new grid, as the paper does before
fine-tuning at a higher resolution (sec. 3.2); --num-classes replaces the head with a fresh
zero-initialised one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, adapt, require_vit, save
from ..embed import POSEMB_RESAMPLE
from ..errors import ConfigError
from ..files import write_folder
from ..interop import FORMATS, PREPROCESSOR_NAME, TimmFolder, load_artifact, save_timm, to_hf
from ..interop.common import TORCH_SUFFIXES
from ..model import VisionTransformer
from ..preprocess import PREPROCESS_NAME, Preprocess

TARGETS = ("vitkit", "timm", "hf")
# Names that look like a single file; convert always writes a folder.
FILE_SUFFIXES = (".safetensors", ".npz", ".onnx", ".json", *TORCH_SUFFIXES)
# What convert writes in any format: a folder holding only these may be replaced by a new convert.
WRITTEN = {CONFIG_NAME, WEIGHTS_NAME, PREPROCESS_NAME, PREPROCESSOR_NAME}


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
        help="convert a run, checkpoint or timm / Hugging Face / Google weights to a vitkit, timm or HF folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "src",
        help="a run folder, a vitkit checkpoint folder, a Hugging Face or timm folder, "
        "a timm .pth/.bin/.safetensors file or a Google .npz",
    )
    p.add_argument("dst", help="the folder to write (a folder name, not a file name)")
    p.add_argument(
        "--to", choices=TARGETS, default="vitkit", help="the format to write: vitkit, timm or hf (default: vitkit)"
    )
    p.add_argument("--from", dest="fmt", choices=FORMATS, help="the source's format (default: detected)")
    p.add_argument("--image-size", type=image_size_arg, help="new input size: resample the position embeddings")
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        metavar="P",
        help="new patch size: the patch embedding PI-resized (FlexiViT, Beyer et al. 2023) so each token stays "
        "what it was, and the position grid resampled",
    )
    p.add_argument(
        "--posemb-resample",
        choices=POSEMB_RESAMPLE,
        default="bicubic",
        help="with --image-size: bicubic (timm's, better in practice) or bilinear (the official code's "
        "scipy.ndimage.zoom, order 1, to reproduce its numbers)",
    )
    p.add_argument("--num-classes", type=int, help="new class count: replace the head (zero-initialised)")
    p.add_argument(
        "--source-image-size",
        type=image_size_arg,
        help="size the source was trained at, only for non-square position grids the file cannot reveal",
    )
    p.add_argument("--timm-name", help="timm architecture name of the source (e.g. vit_base_patch16_224) if ambiguous")
    p.set_defaults(func=run)


def check_destination(dst: str) -> Path:
    """``dst`` as a folder path, or a one-line ConfigError for a file or a name that looks like one."""
    path = Path(dst)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{dst} is a file; the destination is a folder: give a folder name")
    if path.suffix.lower() in FILE_SUFFIXES:
        raise ConfigError(
            f"{dst} looks like a file name ({path.suffix}), but convert writes a folder: give a folder name "
            "(e.g. " + str(path.with_suffix("")) + "); for a timm state dict file use --to timm, whose folder "
            "holds model.safetensors"
        )
    if path.is_dir():
        other = sorted(p.name for p in path.iterdir() if p.name not in WRITTEN)
        if other:
            raise ConfigError(
                f"{dst} already holds files convert did not write ({', '.join(other[:3])}); convert replaces its "
                "folder whole, so give a new folder name"
            )
    return path


def adapted(
    model: VisionTransformer,
    pre: Preprocess | None,
    image_size: Any,
    num_classes: int | None,
    posemb_resample: str = "bicubic",
    patch_size: int | None = None,
) -> tuple[VisionTransformer, Preprocess | None]:
    """The model (and its Preprocess) at a new input size (position embeddings resampled by
    ``posemb_resample``) and/or with a new head."""
    overrides: dict[str, Any] = {}
    if image_size is not None:
        overrides["image_size"] = image_size
    if patch_size is not None:
        overrides["patch_size"] = patch_size
    if num_classes is not None:
        if num_classes < 0:
            raise ConfigError(f"--num-classes {num_classes} must be >= 0")
        overrides["num_classes"] = num_classes
    if not overrides:
        return model, pre
    model = adapt(model, posemb_resample=posemb_resample, **overrides)
    if pre is not None:
        pre = pre.at_input_size(model.config.image_size)
        if num_classes is not None:  # a new head: its classes are numbers until it is trained
            pre = pre.replace(class_names=Preprocess.for_model(model.config).class_names)
    return model, pre


def write(model: VisionTransformer, pre: Preprocess | None, folder: Path, target: str, fmt: str) -> TimmFolder | None:
    """Write ``model`` (and ``pre``, when the source records one) into ``folder`` as ``target``."""
    if target == "hf":
        to_hf(model, folder, pre)
    elif target == "timm":
        return save_timm(model, folder, pre)
    else:
        save(model, folder, metadata={"converted_from": fmt})
        if pre is not None:
            pre.save(folder)
    return None


def how_to_load(dst: Path, target: str, pre: Preprocess | None, timm: TimmFolder | None) -> str:
    """A line saying how to use what was written."""
    if timm is not None:
        return (
            f"load in timm with {timm.create_model_call(dst)}, or timm.create_model('local-dir:{dst}', pretrained=True)"
        )
    if pre is None:
        return "the source records no preprocessing, so none was written: inference needs --assume-preprocess FILE"
    if target == "hf":
        return f"load with transformers.pipeline('image-classification', model={str(dst)!r})"
    return f"preprocessing: {PREPROCESS_NAME} written beside the weights"


def run(args: argparse.Namespace) -> int:
    dst = check_destination(args.dst)
    artifact = load_artifact(args.src, fmt=args.fmt, image_size=args.source_image_size, name=args.timm_name)
    model = require_vit(artifact.model, "convert", args.src)
    model, pre = adapted(
        model, artifact.preprocess, args.image_size, args.num_classes, args.posemb_resample, args.patch_size
    )
    with write_folder(dst) as tmp:
        timm = write(model, pre, tmp, args.to, artifact.fmt)
    if args.image_size is not None or args.patch_size is not None:
        print(f"position embeddings resampled {args.posemb_resample} to the new grid (--posemb-resample)")
    c = model.config
    print(
        f"{artifact.path} ({artifact.fmt}) -> {dst} ({args.to}): {c.width} wide, {c.depth} layers, "
        f"{c.num_heads} heads, patch {c.patch_size}, {c.image_size[0]}x{c.image_size[1]} images, "
        f"{c.num_classes} classes, pool={c.pool}, {model.num_params():,} parameters"
    )
    print(how_to_load(dst, args.to, pre, timm))
    return 0
