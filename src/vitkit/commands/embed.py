"""``vitkit embed``: write a checkpoint's features of images or a dataset to one file."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import require_vit
from ..errors import InputError
from ..evaluate import Classifier, load_for_inference
from ..features import POOLS, Embeddings, check_pool, dataset_features, features
from ..images import collect_images
from ..runtime import resolve_device
from . import (
    HelpFormatter,
    add_assume_preprocess,
    add_data_mode,
    add_device,
    add_split,
    checkpoint_images,
    names,
    positive,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="features of images or a dataset (the representation, or any block's tokens) to .safetensors/.npz",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best/) or a checkpoint folder")
    add_assume_preprocess(p)
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_FOLDER", help="image files or folders (or give --data)")
    p.add_argument("--data", default=None, help="a dataset name or image folder instead of IMAGES")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    add_split(p, " (with --data)")
    p.add_argument("--classes", type=names, default=None, help="with --data: these classes only")
    add_data_mode(p)
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="the token states after this block (0-based; -1 is the last). Default: the representation the head reads",
    )
    p.add_argument("--pool", choices=POOLS, default=None, help="with --layer: default, the model's own pooling")
    p.add_argument("--batch-size", type=positive, default=256, help="images per forward pass")
    add_device(p)
    p.add_argument(
        "--out",
        default=None,
        help="FILE.safetensors or FILE.npz (default: embed-DATA-SPLIT.safetensors, or embed-images.safetensors, "
        "beside the checkpoint, as probe and evaluate write)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out is not None and Path(args.out).suffix not in (".safetensors", ".npz"):
        raise InputError(f"--out {args.out}: write .safetensors or .npz (give the file one of those endings)")
    if bool(args.images) == bool(args.data):
        raise InputError("give image files or folders, or --data NAME, but not both")
    device = resolve_device(args.device)
    classifier = load_for_inference(args.checkpoint, device, args.assume_preprocess)
    what = f"{Path(args.data).name}-{args.split}" if args.data else "images"
    out = Path(args.out) if args.out else classifier.checkpoint.parent / f"embed-{what}.safetensors"
    require_vit(classifier.model, "embed (a ViT's token features)", classifier.checkpoint)
    model = classifier.model
    if args.pool is not None and args.layer is not None:
        check_pool(model, args.pool)
    if args.data:
        embeddings = _of_dataset(args, classifier, device)
    else:
        embeddings = _of_files(args, classifier, device)
    embeddings.info = {
        "checkpoint": str(classifier.checkpoint),
        "layer": "representation" if args.layer is None else str(args.layer),
        "pool": args.pool or model.config.pool,
        # with --pool tokens, how many leading tokens are class, distillation and register tokens
        "prefix_tokens": str(model.config.num_prefix_tokens),
    }
    embeddings.save(out)
    shape = "x".join(str(d) for d in embeddings.features.shape)
    print(f"wrote {out}: features {shape}, {len(embeddings.names)} names, labels")
    return 0


def _of_dataset(args: argparse.Namespace, classifier: Classifier, device: torch.device) -> Embeddings:
    """Every image of the split (as the checkpoint's run divided the data: :func:`checkpoint_images`),
    named by its file, or for a built-in dataset by the split it was loaded from and its index."""
    source, ds, _ = checkpoint_images(args, classifier, args.split, image_cache=args.cache_dir, model_labels=False)
    if args.classes:
        ds = ds.select_classes(args.classes)
    loaded = "test" if args.split == "test" and source.has_test else "train"  # the split the rows index
    files = source.files(loaded)
    rows = ds.row_ids().tolist()
    names = [str(files[i]) for i in rows] if files else [f"{source.name}/{loaded}/{i:06d}" for i in rows]
    x = dataset_features(classifier.model, ds, classifier.preprocess, args.layer, args.pool, args.batch_size, device)
    return Embeddings(x, ds.labels.clone(), names, list(ds.class_names))


@torch.no_grad()
def _of_files(args: argparse.Namespace, classifier: Classifier, device: torch.device) -> Embeddings:
    files = collect_images(args.images)
    model, pre = classifier.model, classifier.preprocess
    model.eval()
    out = []
    for start in range(0, len(files), args.batch_size):
        x = pre.files(files[start : start + args.batch_size]).to(device)
        out.append(features(model, x, args.layer, args.pool).float().cpu())
    labels = torch.full((len(files),), -1, dtype=torch.int64)  # loose files carry no label
    return Embeddings(torch.cat(out), labels, [str(f) for f in files], list(pre.class_names))
