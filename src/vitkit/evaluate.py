"""Evaluation and prediction with a trained checkpoint.

A checkpoint written by ``vitkit train`` is a ``vitkit.save`` folder plus ``preprocess.json``:
image size, channels, normalisation and class names, everything ``predict`` needs to see a new
image the way training saw its images. Accuracy, per-class accuracy and the confusion matrix come
from one pass over an in-memory dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, atomic_write, atomic_write_json, load, read_json_object
from .data import IMAGE_EXTENSIONS, ImageDataset, iterate_batches, normalize, open_image
from .model import VisionTransformer

log = logging.getLogger(__name__)

PREPROCESS_NAME = "preprocess.json"


def autocast(device: torch.device, enabled: bool):  # noqa: ANN201 - a context manager
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ============================================================================ locating checkpoints
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a run folder (its ``best``, else ``last``) or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a run folder (runs/NAME) or a checkpoint folder")
    if (path / "config.json").is_file():
        return path
    for name in ("best", "last", ".last.old", ".best.old"):
        if (path / name / "config.json").is_file():
            return path / name
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (config.json + model.safetensors) nor a run folder holding "
        "best/ or last/; train one with `vitkit train --out RUN`"
    )


def read_preprocess(checkpoint: Path, model: VisionTransformer) -> dict[str, Any]:
    """The checkpoint's ``preprocess.json``, or defaults from the config (plain /255 scaling)."""
    path = checkpoint / PREPROCESS_NAME
    c = model.config
    defaults = {
        "image_size": list(c.image_size),
        "channels": c.in_channels,
        "mean": [0.0] * c.in_channels,
        "std": [1.0] * c.in_channels,
        "class_names": c.class_names or [str(i) for i in range(c.num_classes)],
        "dataset": None,
        "pad": 0,
    }
    if not path.is_file():
        log.warning("%s has no %s; scaling pixels to [0, 1] without normalisation", checkpoint, PREPROCESS_NAME)
        return defaults
    defaults.update(read_json_object(path, "preprocessing settings"))
    if len(defaults["mean"]) != c.in_channels or len(defaults["std"]) != c.in_channels:
        raise CheckpointError(f"{path}: mean/std have {len(defaults['mean'])} entries for {c.in_channels} channel(s)")
    return defaults


def load_for_inference(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VisionTransformer, dict]:
    """(model in eval mode, preprocessing) from a run folder or a checkpoint folder."""
    checkpoint = resolve_checkpoint(path)
    model = load(checkpoint, map_location=device)
    return model, read_preprocess(checkpoint, model) | {"checkpoint": str(checkpoint)}


# ============================================================================ evaluation
@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: ImageDataset,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> dict[str, Any]:
    """Loss, top-1/top-5 accuracy, per-class accuracy and the confusion matrix on ``dataset``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    k = dataset.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    loss_sum, top5 = 0.0, 0
    for index in iterate_batches(len(dataset), batch_size):
        x = normalize(dataset.images[index].to(device, non_blocking=True), mean, std)
        y = dataset.labels[index].to(device)
        with autocast(device, bf16):
            logits = model(x)
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top5 += (topk == y[:, None]).any(1).sum().item()
    model.train(was_training)
    n = len(dataset)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp_min(1).float()).tolist()
    return {
        "images": n,
        "loss": loss_sum / max(n, 1),
        "top1": confusion.diag().sum().item() / max(n, 1),
        "top5": top5 / max(n, 1),
        "per_class": dict(zip(dataset.class_names, per_class, strict=True)),
        "confusion": confusion.tolist(),
    }


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
    atomic_write_json(out / "summary.json", result)
    png = confusion_png(result["confusion"], class_names, out / "confusion.png")
    return {"summary": out / "summary.json", "confusion": png}


# ============================================================================ prediction
def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus every image file under the folders named."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return files


@torch.no_grad()
def predict_files(
    model: VisionTransformer,
    preprocess: dict[str, Any],
    files: Sequence[Path],
    top_k: int = 5,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Top-k (class, probability) per file; each image converted as training saw it."""
    device = torch.device(device)
    pad = int(preprocess.get("pad", 0))
    size = tuple(s - 2 * pad for s in preprocess["image_size"])
    names = list(preprocess["class_names"])
    k = min(top_k, len(names))
    results = []
    model.eval()
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x = torch.stack([torch.from_numpy(open_image(f, preprocess["channels"], size)) for f in chunk]).to(device)
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        probs = model(normalize(x, preprocess["mean"], preprocess["std"])).float().softmax(1)
        p, i = probs.topk(k, dim=1)
        for f, pr, ix in zip(chunk, p.tolist(), i.tolist(), strict=True):
            results.append(
                {
                    "path": str(f),
                    "predictions": [{"class": names[j], "probability": q} for j, q in zip(ix, pr, strict=True)],
                }
            )
    return results
