"""Evaluation and prediction with a trained checkpoint.

A checkpoint written by ``vitkit train`` is a ``vitkit.save`` folder plus ``preprocess.json``
(:class:`~vitkit.preprocess.Preprocess`): everything ``predict`` needs to see a new image the way
training saw its images. Accuracy, per-class accuracy and the confusion matrix come from one
pass over an in-memory dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Model, adapt, require_vit
from .data import DataSource, ImageDataset, ShardSet, SplitRule, iterate_batches, resolve_source, shard_tail, split
from .data.dataset import inference_batch
from .errors import CheckpointError, ConfigError, DataError
from .files import atomic_write, atomic_write_json, read_json_object
from .images import decode_image, unreadable, warn_skipped
from .interop import load_artifact
from .preprocess import PREPROCESS_NAME, Preprocess
from .runtime import autocast, resolve_device

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
RUN_CONFIG_NAME = "train_config.json"  # a run folder's record (vitkit.train.run_folder writes it)
SPLITS = ("test", "val", "train", "all")


# ============================================================================ locating checkpoints
ASSUME_PREPROCESS_FLAG = "--assume-preprocess"


@dataclass
class Classifier:
    """A checkpoint ready to classify: the model in eval mode, how to prepare its images, the
    folder it came from, and the record of the run that trained it (``train_config.json``, when
    the checkpoint sits in a run folder): which images it trained on, chose on and held out."""

    model: Model  # a ViT, or the CNN reference (vitkit.cnn.ResNet)
    preprocess: Preprocess
    checkpoint: Path
    run: dict[str, Any] | None = None


def load_for_inference(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    assume_preprocess: str | os.PathLike | None = None,
    patch_size: int | None = None,
) -> Classifier:
    """The model and its preprocessing from anything :func:`vitkit.interop.load_artifact` reads (a
    run folder, a checkpoint folder, what ``vitkit convert`` wrote).

    A model whose files record no preprocessing is refused unless ``assume_preprocess`` names a
    preprocess.json to use: guessing the normalisation gives confident wrong answers.
    ``patch_size`` runs the model at another patch size, its kernel PI-resized (FlexiViT); the
    images are prepared as before."""
    artifact = load_artifact(path)
    model, checkpoint = artifact.model, artifact.path
    if patch_size is not None and patch_size != getattr(model.config, "patch_size", None):
        model = adapt(require_vit(model, "--patch-size", checkpoint), patch_size=patch_size)
    if assume_preprocess is not None:
        preprocess = Preprocess.read(assume_preprocess, model.config)
    elif artifact.preprocess is not None:
        preprocess = artifact.preprocess
    else:
        raise CheckpointError(
            f"{checkpoint} records no preprocessing (no {PREPROCESS_NAME}, preprocessor_config.json or timm "
            f"pretrained_cfg); pass {ASSUME_PREPROCESS_FLAG} FILE naming a {PREPROCESS_NAME} to use"
        )
    record = checkpoint.parent / RUN_CONFIG_NAME
    run = read_json_object(record, "run settings") if artifact.fmt == "vitkit" and record.is_file() else None
    return Classifier(model.to(resolve_device(device)).eval(), preprocess, checkpoint, run)


# ============================================================================ which images to score
def _same_source(a: DataSource, text: str | None, data_dir: str | None) -> bool:
    if not text:
        return False
    try:
        b = resolve_source(text, data_dir)
    except DataError:  # the run's data is gone or moved: the same only if named the same
        return Path(a.location) == Path(text)
    return (a.kind, a.location) == (b.kind, b.location)


def _run_split(classifier: Classifier, source: DataSource) -> dict[str, Any] | None:
    """The split its run recorded, when the checkpoint's run trained on ``source``."""
    run = classifier.run
    if not run or "split" not in run.get("data", {}):
        return None
    cfg = run.get("train", {})
    return run["data"]["split"] if _same_source(source, cfg.get("data"), cfg.get("data_dir")) else None


def held_out_images(
    classifier: Classifier,
    source: DataSource,
    split_name: str,
    load: Callable[[str | ShardSet], ImageDataset],
    fresh_share: bool = False,
) -> tuple[ImageDataset, str]:
    """The images of ``split_name`` (``test``, ``val``, ``train`` or ``all``) of ``source`` as the
    checkpoint's run divided them, and a phrase that says which they are.

    ``load(split)`` loads one of the source's own splits (``train``, ``test``), or some of its
    shards (a :class:`~vitkit.data.ShardSet`). ``test`` is the source's test split, or
    the test share the run held out of a folder without one (drawn again by the rule its
    ``train_config.json`` records, and checked against its count); ``val`` the share the run chose
    on; ``train`` what it trained on. A folder without a test split and without a run record
    saying what was held out is refused (its images may include the training images), unless
    ``all`` asks for every image or, for data the model never trained on, ``fresh_share`` draws a
    test share by the default rule (the probe needs a training part and a test part)."""
    if split_name not in SPLITS:
        raise ConfigError(f"--split {split_name!r}: choose one of {', '.join(SPLITS)}")
    record = _run_split(classifier, source)
    if split_name == "all":
        if source.has_test:
            raise ConfigError(f"--split all is for a folder or CSV without train/ and test/; {source.text} has both")
        return load("train"), f"every image of {source.name}"
    if split_name == "test" and source.has_test:
        ds = load("test")
        classes = record["classes"] if record else None
        return (ds.select_classes(classes) if classes else ds), "its test split"
    if record is not None:
        return _from_record(record, source, split_name, load)
    if split_name == "train" and source.has_test:
        return load("train"), "its training split"
    trained_on_it = _same_source(source, classifier.preprocess.dataset, None)
    if fresh_share and not trained_on_it and split_name in ("train", "test"):
        parts = split(load("train"), None, SplitRule(), own_test=False)
        share = f"a seeded {SplitRule().test_fraction:.0%} test share of {source.name}"
        return (parts.test, share) if split_name == "test" else (parts.train, f"the rest of it ({share} held out)")
    where = "the run folder it belongs to records no" if classifier.run else "it is not in a run folder that records"
    raise DataError(
        f"{source.text} has no test split of its own, and {classifier.checkpoint} cannot say which of its images "
        f"were held out ({where} split of {source.text}): score a run folder trained on it, a folder with "
        "train/ and test/, or every image with --split all (only if the model never trained on them)"
    )


def _from_record(
    record: dict[str, Any], source: DataSource, split_name: str, load: Callable[[str | ShardSet], ImageDataset]
) -> tuple[ImageDataset, str]:
    """A share of ``source`` drawn again as the run's record says, checked against its counts."""
    rule = SplitRule.from_dict(record["rule"])
    if source.kind == "shards":  # the validation share is the tail of the training shards
        rest, tail = shard_tail(source.shard_set("train"), rule.val_fraction)
        chosen = load(tail) if split_name == "val" and tail is not None else None
        chosen = load(rest) if split_name == "train" else chosen
    else:
        parts = split(load("train"), None, rule, source.has_test, record.get("classes"))
        chosen = {"test": parts.test, "val": parts.val, "train": parts.train}[split_name]
    if chosen is None:
        raise DataError(f"--split {split_name}: the run held no validation share out (--val-fraction 0)")
    expected = record["counts"].get(split_name)
    if split_name == "test" and expected is not None and expected != len(chosen):
        raise DataError(
            f"{source.text} now gives a test share of {len(chosen)} images, but its run held out {expected}: the "
            "images changed since it was trained, so its test images cannot be told from its training images"
        )
    how = {
        "test": f"the {rule.test_fraction:.0%} test share its run held out of {source.name}",
        "val": f"the {rule.val_fraction:.0%} validation share its run chose on",
        "train": "the images its run trained on (before --per-class or --limit-train subsets)",
    }[split_name]
    return chosen, how


# ============================================================================ evaluation
@dataclass
class Evaluation:
    """Loss, top-1/top-5 accuracy, per-class accuracy and the confusion matrix of one pass."""

    images: int
    loss: float
    top1: float
    top5: float
    per_class: dict[str, float]
    confusion: list[list[int]]

    @classmethod
    def from_counts(
        cls, confusion: torch.Tensor, loss_sum: float, top5_hits: float, names: Sequence[str]
    ) -> Evaluation:
        n = int(confusion.sum())
        per_class = (confusion.diag().float() / confusion.sum(1).clamp_min(1).float()).tolist()
        return cls(
            images=n,
            loss=loss_sum / max(n, 1),
            top1=confusion.diag().sum().item() / max(n, 1),
            top5=round(top5_hits) / max(n, 1),
            per_class=dict(zip(names, per_class, strict=True)),
            confusion=confusion.tolist(),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batches(
    dataset: ImageDataset, preprocess: Preprocess, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised images, their indices) of ``dataset``, batch by batch, on ``device``."""
    for index in iterate_batches(len(dataset), inference_batch(batch_size, dataset.images)):
        yield preprocess.normalize(dataset.images[index].to(device, non_blocking=True)), index


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: ImageDataset,
    preprocess: Preprocess,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``dataset`` (pixels as ``preprocess`` prepared them).

    ``reduce`` sums the counts over processes (``World.sum_all``) when each evaluated its part of
    a dataset, so that the result is the whole set's.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    k = dataset.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    loss_sum, top5 = 0.0, 0
    for x, index in _batches(dataset, preprocess, batch_size, device):
        y = dataset.labels[index].to(device)
        with autocast(device, bf16):
            logits = model(x)
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        confusion += torch.bincount((y * k + logits.argmax(1)).cpu(), minlength=k * k).view(k, k)
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top5 += (topk == y[:, None]).any(1).sum().item()
    model.train(was_training)
    if reduce is not None:
        total = reduce([loss_sum, top5, *confusion.flatten().tolist()])
        loss_sum, top5 = total[0], total[1]
        confusion = torch.tensor(total[2:]).round().long().view(k, k)
    return Evaluation.from_counts(confusion, loss_sum, top5, dataset.class_names)


PRETEXT_SEED = 0  # the masks of a pretext evaluation: the same every time, so epochs compare


@torch.no_grad()
def evaluate_pretext(
    wrapper: torch.nn.Module,
    dataset: ImageDataset,
    preprocess: Preprocess,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> Evaluation:
    """A self-supervised task's loss on ``dataset`` (its labels unread), with the same masks at
    every call: the global RNG is seeded inside, and the caller's restored. ``top1`` is the share
    of masked patches predicted right (masked patch prediction; 0 for MAE, which regresses)."""
    device = torch.device(device)
    was_training = wrapper.training
    wrapper.eval()
    loss_sum, correct, count, n = 0.0, 0, 0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(PRETEXT_SEED)
        for x, _ in _batches(dataset, preprocess, batch_size, device):
            with autocast(device, bf16):
                out = wrapper(x)
            loss_sum += out.loss.item() * len(x)
            correct, count, n = correct + int(out.correct), count + int(out.count), n + len(x)
    wrapper.train(was_training)
    if reduce is not None:
        loss_sum, correct, count, n = reduce([loss_sum, correct, count, n])
    return Evaluation(round(n), loss_sum / max(n, 1), correct / max(count, 1), 0.0, {}, [])


def confusion_png(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Save the confusion matrix (rows: true class, columns: predicted) as a PNG, atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = torch.tensor(confusion, dtype=torch.float)
    rates = m / m.sum(1, keepdim=True).clamp_min(1)
    k = len(class_names)
    size = max(4.0, 0.5 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        for i in range(k):
            for j in range(k):
                if m[i, j] > 0:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {m.diag().sum().item() / max(m.sum().item(), 1):.2%}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def write_report(result: dict[str, Any], class_names: Sequence[str], out: str | os.PathLike) -> dict[str, Path]:
    """``summary.json`` and ``confusion.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SUMMARY_NAME, result)
    png = confusion_png(result["confusion"], class_names, out / "confusion.png")
    return {"summary": out / SUMMARY_NAME, "confusion": png}


# ============================================================================ prediction
@torch.no_grad()
def predict_files(
    classifier: Classifier,
    files: Sequence[Path],
    top_k: int = 5,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    skip_bad_images: bool = False,
) -> list[dict[str, Any]]:
    """Top-k (class, probability) per file; each image prepared as training saw it. A file that
    does not decode is a :class:`DataError` naming it, or with ``skip_bad_images`` a warning and
    no result: one bad file in a folder need not cost the answers for the others."""
    model, preprocess = classifier.model, classifier.preprocess
    device = torch.device(device)
    names = list(preprocess.class_names)
    k = min(top_k, len(names))
    results = []
    model.eval()
    for start in range(0, len(files), batch_size):
        chunk, inputs = [], []
        for f in files[start : start + batch_size]:
            try:
                inputs.append(preprocess(decode_image(f)))
            except DataError as e:
                if not skip_bad_images:
                    raise unreadable(str(e)) from None
                warn_skipped(str(e))
                continue
            chunk.append(f)
        if not chunk:
            continue
        p, i = model(torch.stack(inputs).to(device)).float().softmax(1).topk(k, dim=1)
        for f, pr, ix in zip(chunk, p.tolist(), i.tolist(), strict=True):
            predictions = [{"class": names[j], "probability": q} for j, q in zip(ix, pr, strict=True)]
            results.append({"path": str(f), "predictions": predictions})
    if files and not results:
        raise DataError(f"none of the {len(files)} image(s) could be read")
    return results
