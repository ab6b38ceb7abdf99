"""A folder of figures and their numbers for a model and some images: what ``vitkit explain`` writes.

Each PNG has a JSON file of the same name beside it holding the numbers it draws, so a figure
can be checked, re-plotted or compared between checkpoints without running the model again.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_json
from ..model import VisionTransformer
from .analysis import (
    explain_batch,
    model_patch_filters,
    model_posemb,
    patch_filters_pca,
    posemb_similarity,
    uniform_attention_distance,
)
from .figures import (
    plot_attention_maps,
    plot_mean_attention_distance,
    plot_patch_filters,
    plot_posemb_similarity,
    plot_rollout,
    save_figure,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _rounded(x: Any, digits: int = 5) -> Any:
    """Tensors and floats as JSON-friendly nested lists, rounded so the files stay readable."""
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, (list, tuple)):
        return [_rounded(v, digits) for v in x]
    return x


def _stem(name: str) -> str:
    """An image's name without its file extension ("T-shirt/top" stays whole)."""
    root, ext = os.path.splitext(name)
    return root if ext.lower() in IMAGE_SUFFIXES else name


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "image"


def _prediction(model: VisionTransformer, logits: torch.Tensor) -> dict[str, Any]:
    if logits.numel() == 0:
        return {}
    probs = logits.softmax(dim=-1)
    p, idx = probs.max(dim=-1)
    names = model.config.class_names
    label = names[int(idx)] if names else str(int(idx))
    return {"class": int(idx), "label": label, "probability": round(float(p), 4)}


def _write(out: Path, stem: str, fig, numbers: dict[str, Any], written: list[Path]) -> None:
    save_figure(fig, out / f"{stem}.png")
    atomic_write_json(out / f"{stem}.json", numbers)
    written += [out / f"{stem}.png", out / f"{stem}.json"]


@torch.inference_mode()
def write_report(
    model: VisionTransformer,
    images: torch.Tensor,
    out: str | os.PathLike,
    inputs: torch.Tensor | None = None,
    names: Sequence[str] = (),
    keep: float = 0.1,
    per_image: int = 8,
    batch_size: int = 64,
    num_components: int = 28,
) -> list[Path]:
    """Write every figure and its JSON to ``out``; returns the paths written.

    ``images``: (B, C, H, W) in [0, 1], what is drawn; ``inputs``: the same images normalised
    as the model expects (default: ``images`` themselves). Attention-map and rollout figures are
    drawn for the first ``per_image`` images; all of them count towards the mean attention
    distance. ``keep`` is the fraction kept by the sharpened rollout.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty image batch (B, C, H, W), got shape {tuple(images.shape)}")
    inputs = images if inputs is None else inputs
    if inputs.shape != images.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} and images {tuple(images.shape)} differ in shape")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    names = list(names) + [f"image{i}" for i in range(len(names), images.shape[0])]
    device = next(model.parameters()).device
    written: list[Path] = []

    # One pass over all images: per-image numbers for the first few, distance for all.
    distance_sum, shown = None, []
    for start in range(0, images.shape[0], batch_size):
        batch = inputs[start : start + batch_size].to(device)
        e = explain_batch(model, batch, keep=keep)
        weighted = e.mean_attention_distance * batch.shape[0]
        distance_sum = weighted if distance_sum is None else distance_sum + weighted
        for i in range(batch.shape[0]):
            if start + i < per_image:
                shown.append((start + i, e.logits[i], e.attention_maps[i], e.rollout[i], e.rollout_kept[i]))
    grid, query = e.grid, e.query

    # Attention maps: one figure per image.
    for idx, logits, maps, _, _ in shown:
        pred = _prediction(model, logits)
        title = f"{names[idx]}: predicted {pred['label']} ({pred['probability']:.0%})" if pred else names[idx]
        fig = plot_attention_maps(images[idx], maps, c.patch_size, query, title)
        numbers = {
            "image": names[idx],
            "prediction": pred,
            "query": query,
            "grid": list(grid),
            "maps": _rounded(maps),
            "layout": "maps[layer][head][row][column]",
        }
        _write(out, f"attention_maps_{idx:02d}_{_slug(_stem(names[idx]))}", fig, numbers, written)

    # Rollout: all shown images in one figure, a row each.
    titles = []
    for idx, logits, *_ in shown:
        pred = _prediction(model, logits)
        name = _short(_stem(names[idx]))
        titles.append(f"{name}\npredicted: {_short(pred['label'])}" if pred else name)
    fig = plot_rollout(
        [images[s[0]] for s in shown],
        torch.stack([s[3] for s in shown]),
        torch.stack([s[4] for s in shown]),
        keep,
        c.patch_size,
        titles,
    )
    numbers = {
        "method": "attention rollout (Abnar & Zuidema 2020): head mean, + identity, rows normalised, product",
        "query": query,
        "keep": keep,
        "grid": list(grid),
        "images": [
            {
                "image": names[idx],
                "prediction": _prediction(model, logits),
                "rollout": _rounded(r),
                "rollout_kept": _rounded(k),
            }
            for idx, logits, _, r, k in shown
        ],
    }
    _write(out, "rollout", fig, numbers, written)

    # Mean attention distance over all images.
    distance = distance_sum / images.shape[0]
    fig = plot_mean_attention_distance(distance, grid, c.patch_size, images.shape[0])
    numbers = {
        "units": "pixels",
        "num_images": images.shape[0],
        "patch_size": c.patch_size,
        "grid": list(grid),
        "uniform_attention_distance": round(uniform_attention_distance(grid, c.patch_size), 5),
        "distance": _rounded(distance),
        "layout": "distance[layer][head]",
    }
    _write(out, "mean_attention_distance", fig, numbers, written)

    # Position-embedding similarity.
    posemb = model_posemb(model, grid)
    if posemb is None:
        reason = "posemb='none': the model has no position embedding, it sees a bag of patches"
        fig, numbers = plot_posemb_similarity(None, reason), {"posemb": c.posemb, "not_applicable": reason}
    else:
        sim = posemb_similarity(posemb.cpu(), grid)
        fig = plot_posemb_similarity(sim, title=f"Position embedding similarity (posemb={c.posemb!r})")
        numbers = {
            "posemb": c.posemb,
            "grid": list(grid),
            "similarity": _rounded(sim),
            "layout": "similarity[row][column] is that patch's map [row][column]",
        }
    _write(out, "posemb_similarity", fig, numbers, written)

    # Patch-embedding filters.
    try:
        weight = model_patch_filters(model)
    except ValueError as err:
        reason = str(err)
        fig, numbers = plot_patch_filters(None, reason), {"stem": c.stem, "not_applicable": reason}
    else:
        pca = patch_filters_pca(weight.cpu(), num_components)
        fig = plot_patch_filters(pca)
        numbers = {
            "stem": c.stem,
            "explained_variance_ratio": _rounded(pca.explained_variance_ratio),
            "components": _rounded(pca.components),
            "layout": "components[k][channel][row][column]",
        }
    _write(out, "patch_filters", fig, numbers, written)
    log.info("wrote %d files to %s", len(written), out)
    return written
