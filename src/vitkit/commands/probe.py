"""``vitkit probe``: the paper's few-shot linear evaluation of a checkpoint's frozen features."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..checkpoint import WEIGHTS_NAME, require_vit
from ..data import ImageDataset
from ..evaluate import Classifier, load_for_inference
from ..features import cached_representation
from ..files import atomic_write_json
from ..probe import DEFAULT_SHOTS, KNN_K, KNN_TEMPERATURE, L2_GRID, check_shots, clip_shots, few_shot, summarize
from ..runtime import resolve_device
from . import HelpFormatter, add_assume_preprocess, add_data_mode, add_device, checkpoint_images, integers, names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="few-shot linear probe (closed-form ridge) and k-NN on a checkpoint's frozen features",
        formatter_class=HelpFormatter,
        description=(
            "For each shot count and seed, draw that many training images per class, fit a ridge "
            "regression from their frozen features to {-1, 1} targets (the penalty chosen by "
            "leave-one-out on those images alone) and a k-NN, and score both on the test images (the test "
            "split, or the test share the checkpoint's run held out of a folder without one). "
            "Features are computed once per checkpoint and dataset, and cached."
        ),
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best/) or a checkpoint folder")
    add_assume_preprocess(p)
    p.add_argument("--data", default=None, help="dataset name or image folder (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--classes", type=names, default=None, help="probe on these classes only, e.g. 5,6,7,8,9")
    p.add_argument(
        "--shots",
        type=integers,
        default=None,
        help=f"training images per class, e.g. 1,5,10 (default: {','.join(map(str, DEFAULT_SHOTS))}, each at most "
        "the smallest class's count)",
    )
    p.add_argument("--seeds", type=int, default=3, help="draws per shot count (seeds 0 .. N-1)")
    add_device(p)
    p.add_argument("--cache-dir", default=None, help="feature cache (default: the vitkit cache's features/)")
    add_data_mode(p, cache_dir=False)
    p.add_argument("--out", default=None, help="folder for probe.json (default: RUN/probe-DATA, beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def splits(args: argparse.Namespace, classifier: Classifier) -> tuple[str, ImageDataset, ImageDataset, str]:
    """(the dataset's name, the images the shots are drawn from, the images they are scored on,
    which those are): for the data the checkpoint's run trained on, its training images and its
    test images (the test split, or the test share its run held out and recorded); for data it
    never saw without a test split, a seeded test share by the default rule."""
    source, train, how_train = checkpoint_images(args, classifier, "train", fresh_share=True, model_labels=False)
    _, test, how = checkpoint_images(args, classifier, "test", fresh_share=True, model_labels=False)
    if args.classes:
        train, test = train.select_classes(args.classes), test.select_classes(args.classes)
    return source.text, train, test, how


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    classifier = load_for_inference(args.checkpoint, device, args.assume_preprocess)
    require_vit(classifier.model, "probe (a ViT's pooled representation)", classifier.checkpoint)
    name, train, test, how = splits(args, classifier)
    if args.shots is None:
        args.shots, note = clip_shots(train.labels, train.num_classes, DEFAULT_SHOTS, train.class_names)
        if note:
            print(f"vitkit probe: {note}", file=sys.stderr)
    check_shots(train.labels, train.num_classes, args.shots, train.class_names)
    log = print if not args.json else (lambda *a, **k: None)
    log(f"probe: {name}, {train.num_classes} classes; scored on {how} ({len(test)} images)")
    weights = classifier.checkpoint / WEIGHTS_NAME
    x_train = cached_representation(
        classifier.model, weights, train, classifier.preprocess, device, args.cache_dir, log
    )
    x_test = cached_representation(classifier.model, weights, test, classifier.preprocess, device, args.cache_dir, log)
    runs = few_shot(
        x_train, train.labels, x_test, test.labels, train.num_classes, args.shots, range(args.seeds), train.class_names
    )
    rows = summarize(runs)
    record = {
        "checkpoint": str(classifier.checkpoint),
        "data": name,
        "classes": list(train.class_names),
        "test": how,
        "test_images": len(test),
        "features": int(x_train.shape[1]),
        "ridge": {"targets": "{-1, 1}", "standardized": True, "l2_grid_per_image": list(L2_GRID), "chosen_by": "LOO"},
        "knn": {"k": KNN_K, "distance": "cosine, centred on the training mean", "vote": f"exp(sim/{KNN_TEMPERATURE})"},
        "summary": rows,
        "runs": [asdict(r) for r in runs],
    }
    # beside the checkpoint, as evaluate's reports: a later checkpoint swaps the folder whole
    out = Path(args.out) if args.out else classifier.checkpoint.parent / f"probe-{Path(name).name}"
    atomic_write_json(out / "probe.json", record)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{'shots':>5}  {'ridge (LOO-chosen l2)':>22}  {'20-NN, cosine':>15}")
    for r in rows:
        print(
            f"{r['shots']:>5}  {100 * r['ridge_mean']:>14.2f} ± {100 * r['ridge_std']:4.2f} %"
            f"  {100 * r['knn_mean']:>7.2f} ± {100 * r['knn_std']:4.2f} %"
        )
    print(f"({args.seeds} seeds each; wrote {out / 'probe.json'})")
    return 0
