"""``vitkit explain CHECKPOINT IMAGE... --out DIR``: attention maps, rollout and the paper's
Figure 7 analyses for a trained model, as PNG figures with the numbers beside them as JSON."""

from __future__ import annotations

import argparse
import sys

import torch

from ..checkpoint import require_vit
from ..config import ViTConfig
from ..data import resolve_source
from ..errors import ConfigError
from ..evaluate import load_for_inference
from ..images import collect_images, decode_image
from ..runtime import resolve_device
from . import HelpFormatter, add_assume_preprocess, add_device, positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        formatter_class=HelpFormatter,
        help="draw attention maps, rollout, attention distance, position-embedding and filter figures",
        description=(
            "Look inside a trained ViT (paper sec. 4.5). Writes to --out: attention_maps_NN_<image>.png "
            "(every layer and head), rollout.png (Figure 6), mean_attention_distance.png (Figure 7 right), "
            "posemb_similarity.png (Figure 7 centre), patch_filters.png (Figure 7 left), each with a .json "
            "of its numbers."
        ),
    )
    p.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors) or a training run folder")
    add_assume_preprocess(p)
    p.add_argument(
        "images", nargs="*", help="image files or folders of images; converted to the model's channels and size"
    )
    p.add_argument(
        "--data",
        help="also take images from this dataset's test split (fashion-mnist, mnist, cifar10, digits, a folder)",
    )
    p.add_argument("--data-dir", help="folder holding the dataset files (as for `vitkit train`)")
    p.add_argument("--num-images", type=int, default=256, help="how many --data images, the first of the split")
    p.add_argument(
        "--out",
        default=None,
        help="folder to write the figures and JSON into (default: explain/ beside the checkpoint)",
    )
    p.add_argument(
        "--keep", type=float, default=0.1, help="fraction of each layer's attention the sharpened rollout keeps"
    )
    p.add_argument(
        "--per-image",
        type=int,
        default=8,
        help="draw attention maps and rollout for this many images (all count towards attention distance)",
    )
    p.add_argument("--components", type=int, default=28, help="principal components of the patch filters to draw")
    p.add_argument("--batch-size", type=positive, default=64, help="images per forward pass")
    add_device(p)
    p.add_argument(
        "--method",
        choices=("rollout", "grad-rollout"),
        default="rollout",
        help="rollout: where the model looks, for every class at once (the paper's Figure 6); grad-rollout: also "
        "the evidence for one class (Chefer et al. 2021), in grad_rollout.png",
    )
    p.add_argument(
        "--class",
        dest="explain_class",
        default="pred",
        metavar="C|pred",
        help="with --method grad-rollout: the class to explain, by name or index, or pred for each image's prediction",
    )
    p.add_argument(
        "--faithfulness",
        action="store_true",
        help="also score rollout, grad-rollout and a random ranking by their deletion and insertion curves "
        "(Petsiuk et al. 2018) on all the images: faithfulness.png and .json",
    )
    p.add_argument("--steps", type=positive, default=16, help="with --faithfulness: steps from no patch to all")
    p.add_argument(
        "--sinks",
        action="store_true",
        help="also find attention sinks (Darcet et al. 2024): token norms per layer, sinks_NN_<image>.png, "
        "sinks.json, and a verdict line that says 'no sinks' when there are none",
    )
    p.add_argument(
        "--sink-ratio",
        type=float,
        default=None,
        help="with --sinks: a patch token is a sink when its norm is over this many times its layer's median "
        "(default 10: Darcet et al. find artefact tokens about an order of magnitude above the rest)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import (  # matplotlib only when this command runs
        SINK_RATIO,
        write_faithfulness,
        write_grad_rollout,
        write_report,
        write_sinks,
    )

    if not 0.0 < args.keep <= 1.0:
        raise ConfigError(f"--keep {args.keep} must be a fraction in (0, 1]")
    if args.per_image < 1:
        raise ConfigError(f"--per-image {args.per_image} must be at least 1")
    if not args.images and not args.data:
        raise ConfigError("give image files or folders, or --data DATASET, to explain")
    if args.components < 1:
        raise ConfigError(f"--components {args.components} must be at least 1")
    if args.num_images < 1:
        raise ConfigError(f"--num-images {args.num_images} must be at least 1")
    sink_ratio = SINK_RATIO if args.sink_ratio is None else args.sink_ratio
    if not sink_ratio > 1.0:
        raise ConfigError(f"--sink-ratio {args.sink_ratio} must be above 1 (a multiple of the median token norm)")
    # The same checkpoint lookup and image preparation as `vitkit predict`: run folder -> best/
    # (else last/), and the checkpoint's Preprocess (channels, size, border, normalisation).
    classifier = load_for_inference(args.checkpoint, resolve_device(args.device), args.assume_preprocess)
    model = require_vit(classifier.model, "explain (attention maps, position embeddings)", classifier.checkpoint)
    pre = classifier.preprocess
    out = args.out or str(classifier.checkpoint.parent / "explain")
    files = collect_images(args.images) if args.images else []
    pixels = [pre.pixels(decode_image(f)) for f in files]  # uint8, as the model sees them
    names = [f.name for f in files]
    if args.data:
        source = resolve_source(args.data, args.data_dir)
        ds = source.load(source.examples_split, pre, download=False)
        n = min(args.num_images, len(ds))
        pixels += list(ds.images[:n])
        names += [f"test{i:05d}_{ds.class_names[int(ds.labels[i])]}" for i in range(n)]  # index, true class
    pixels = torch.stack(pixels)
    classes = _explained_classes(args.explain_class, model.config, len(names))  # before anything is written
    images = pixels.float() / 255.0  # (B, C, H, W) in [0, 1]: what the figures draw
    inputs = pre.normalize(pixels)  # what the model sees
    written = write_report(
        model,
        images,
        out,
        inputs=inputs,
        names=names,
        keep=args.keep,
        per_image=args.per_image,
        batch_size=args.batch_size,
        num_components=args.components,
    )
    if args.method == "grad-rollout":
        written += write_grad_rollout(model, images, out, inputs, names, classes, args.per_image)
    if args.faithfulness:
        more, summary = write_faithfulness(model, inputs, out, args.steps, args.batch_size)
        written += more
        print(f"faithfulness on {len(names)} image(s), each for its predicted class:")
        print(f"  {'method':<13} {'deletion AUC (lower is better)':>31} {'insertion AUC (higher is better)':>33}")
        for method, s in summary.items():
            print(f"  {method:<13} {s['deletion_auc']:>31.4f} {s['insertion_auc']:>33.4f}")
    if args.sinks:
        more, verdict = write_sinks(model, images, out, inputs, names, sink_ratio, args.per_image, args.batch_size)
        written += more
        print(f"sinks: {verdict}")
    print(f"{classifier.checkpoint}: {len(names)} image(s); wrote {len(written)} files to {out}", file=sys.stderr)
    return 0


def _explained_classes(text: str, config: ViTConfig, count: int) -> torch.Tensor | None:
    """``--class``: None for each image's prediction, else the one class for every image."""
    if text == "pred":
        return None
    names = list(config.class_names or [])
    if text in names:
        index = names.index(text)
    elif text.isdigit() and int(text) < config.num_classes:
        index = int(text)
    else:
        known = ", ".join(names[:10]) if names else f"0-{config.num_classes - 1}"
        raise ConfigError(f"--class {text!r} is not one of the model's classes ({known}), an index or pred")
    return torch.full((count,), index, dtype=torch.long)
