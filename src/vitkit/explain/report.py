"""A folder of figures and their numbers for a model and some images: what ``vitkit explain`` writes.

Each PNG has a JSON file of the same name beside it holding the numbers it draws, so a figure
can be checked, re-plotted or compared between checkpoints without running the model again.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..files import atomic_write_json
from ..images import IMAGE_EXTENSIONS
from ..model import VisionTransformer
from .analysis import (
    SINK_RATIO,
    Sinks,
    concat_sinks,
    default_query,
    deletion_insertion,
    explain_batch,
    find_sinks,
    grad_rollout_map,
    grid_for,
    model_patch_filters,
    model_posemb,
    patch_filters_pca,
    posemb_similarity,
    prefix_kinds,
    rollout_map,
    sink_verdict,
    uniform_attention_distance,
)
from .figures import (
    plot_attention_maps,
    plot_class_maps,
    plot_faithfulness,
    plot_mean_attention_distance,
    plot_patch_filters,
    plot_posemb_similarity,
    plot_rollout,
    plot_sinks,
    save_figure,
)

log = logging.getLogger(__name__)


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
    return root if ext.lower() in IMAGE_EXTENSIONS else name


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "image"


def _label(model: VisionTransformer, index: int) -> str:
    """Class ``index``'s name, or the index itself for a model without class names."""
    names = model.config.class_names
    return names[index] if names else str(index)


def _prediction(model: VisionTransformer, logits: torch.Tensor) -> dict[str, Any]:
    """The top class of one image, with every logit (to check the figures against ``predict``)."""
    if logits.numel() == 0:
        return {}
    probs = logits.softmax(dim=-1)
    p, idx = probs.max(dim=-1)
    return {
        "class": int(idx),
        "label": _label(model, int(idx)),
        "probability": round(float(p), 4),
        "logits": _rounded(logits, 5),
    }


@dataclass(frozen=True)
class _Shown:
    """What is kept of one image that gets figures of its own (the first ``per_image``)."""

    index: int
    logits: torch.Tensor
    maps: torch.Tensor
    rollout: torch.Tensor
    rollout_kept: torch.Tensor


@dataclass(frozen=True)
class _Explained:
    """The numbers of one pass over all images, everything the figures need from the model's run."""

    shown: list[_Shown]
    distance: torch.Tensor  # mean attention distance over all images, [layer][head]
    grid: tuple[int, int]
    query: str


def _write(out: Path, stem: str, fig, numbers: dict[str, Any]) -> list[Path]:
    save_figure(fig, out / f"{stem}.png")
    atomic_write_json(out / f"{stem}.json", numbers)
    return [out / f"{stem}.png", out / f"{stem}.json"]


def _check_inputs(images: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
    """The model's inputs (``images`` when None), refused before anything is written if they cannot match."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"expected a non-empty image batch (B, C, H, W), got shape {tuple(images.shape)}")
    inputs = images if inputs is None else inputs
    if inputs.shape != images.shape:
        raise InputError(f"inputs {tuple(inputs.shape)} and images {tuple(images.shape)} differ in shape")
    return inputs


def _explain(
    model: VisionTransformer, inputs: torch.Tensor, keep: float, per_image: int, batch_size: int
) -> _Explained:
    """One pass over all images in batches: per-image numbers for the first few, distance for all.

    The distance is averaged per image, not per batch, so a short last batch weighs what it holds.
    """
    device = next(model.parameters()).device
    distance_sum, shown = None, []
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start : start + batch_size].to(device)
        e = explain_batch(model, batch, keep=keep)
        weighted = e.mean_attention_distance * batch.shape[0]
        distance_sum = weighted if distance_sum is None else distance_sum + weighted
        for i in range(batch.shape[0]):
            if start + i < per_image:
                shown.append(_Shown(start + i, e.logits[i], e.attention_maps[i], e.rollout[i], e.rollout_kept[i]))
    return _Explained(shown, distance_sum / inputs.shape[0], e.grid, e.query)


def _write_attention_maps(
    out: Path, model: VisionTransformer, images: torch.Tensor, names: list[str], ex: _Explained
) -> list[Path]:
    """One figure per shown image: each layer's and head's attention from the query token(s)."""
    written: list[Path] = []
    for s in ex.shown:
        name = names[s.index]
        pred = _prediction(model, s.logits)
        title = f"{name}: predicted {pred['label']} ({pred['probability']:.0%})" if pred else name
        fig = plot_attention_maps(images[s.index], s.maps, model.config.patch_size, ex.query, title)
        numbers = {
            "image": name,
            "prediction": pred,
            "query": ex.query,
            "grid": list(ex.grid),
            "maps": _rounded(s.maps),
            "layout": "maps[layer][head][row][column]",
        }
        written += _write(out, f"attention_maps_{s.index:02d}_{_slug(_stem(name))}", fig, numbers)
    return written


def _rollout_title(model: VisionTransformer, name: str, logits: torch.Tensor) -> str:
    pred = _prediction(model, logits)
    name = _short(_stem(name))
    return f"{name}\npredicted: {_short(pred['label'])}" if pred else name


def _write_rollout(
    out: Path, model: VisionTransformer, images: torch.Tensor, names: list[str], ex: _Explained, keep: float
) -> list[Path]:
    """All shown images in one figure, a row each: the rollout and its sharpened version."""
    fig = plot_rollout(
        [images[s.index] for s in ex.shown],
        torch.stack([s.rollout for s in ex.shown]),
        torch.stack([s.rollout_kept for s in ex.shown]),
        keep,
        model.config.patch_size,
        [_rollout_title(model, names[s.index], s.logits) for s in ex.shown],
    )
    numbers = {
        "method": "attention rollout (Abnar & Zuidema 2020): head mean, + identity, rows normalised, product",
        "query": ex.query,
        "keep": keep,
        "grid": list(ex.grid),
        "images": [
            {
                "image": names[s.index],
                "prediction": _prediction(model, s.logits),
                "rollout": _rounded(s.rollout),
                "rollout_kept": _rounded(s.rollout_kept),
            }
            for s in ex.shown
        ],
    }
    return _write(out, "rollout", fig, numbers)


def _write_mean_attention_distance(out: Path, ex: _Explained, patch_size: int, num_images: int) -> list[Path]:
    """Each head's mean attention distance over all images, beside that of uniform attention."""
    fig = plot_mean_attention_distance(ex.distance, ex.grid, patch_size, num_images)
    numbers = {
        "units": "pixels",
        "num_images": num_images,
        "patch_size": patch_size,
        "grid": list(ex.grid),
        "uniform_attention_distance": round(uniform_attention_distance(ex.grid, patch_size), 5),
        "distance": _rounded(ex.distance),
        "layout": "distance[layer][head]",
    }
    return _write(out, "mean_attention_distance", fig, numbers)


def _write_posemb_similarity(out: Path, model: VisionTransformer, grid: tuple[int, int]) -> list[Path]:
    """Each patch's position embedding against all others; a placeholder when there is none."""
    c = model.config
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
    return _write(out, "posemb_similarity", fig, numbers)


def _write_patch_filters(out: Path, model: VisionTransformer, num_components: int) -> list[Path]:
    """The leading principal components of the linear patch filters; a placeholder for other stems."""
    c = model.config
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
    return _write(out, "patch_filters", fig, numbers)


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
    inputs = _check_inputs(images, inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names) + [f"image{i}" for i in range(len(names), images.shape[0])]
    ex = _explain(model, inputs, keep, per_image, batch_size)
    written = _write_attention_maps(out, model, images, names, ex)
    written += _write_rollout(out, model, images, names, ex, keep)
    written += _write_mean_attention_distance(out, ex, model.config.patch_size, images.shape[0])
    written += _write_posemb_similarity(out, model, ex.grid)
    written += _write_patch_filters(out, model, num_components)
    log.info("wrote %d files to %s", len(written), out)
    return written


# ----------------------------------------------------------------------------- class-specific
def write_grad_rollout(
    model: VisionTransformer,
    images: torch.Tensor,
    out: str | os.PathLike,
    inputs: torch.Tensor | None = None,
    names: Sequence[str] = (),
    classes: torch.Tensor | None = None,
    per_image: int = 8,
) -> list[Path]:
    """``grad_rollout.png`` and ``.json``: Chefer et al.'s class-specific relevance
    (:func:`~vitkit.explain.analysis.grad_rollout_map`) for the first ``per_image`` images, each
    for its class in ``classes`` (one per image), or for its predicted class when None."""
    inputs = _check_inputs(images, inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = min(per_image, images.shape[0])
    names = list(names) + [f"image{i}" for i in range(len(names), n)]
    device = next(model.parameters()).device
    chosen = None if classes is None else classes[:n]
    maps, logits, explained = grad_rollout_map(model, inputs[:n].to(device), chosen)
    probabilities = logits.softmax(dim=1)
    titles = [
        f"{_short(_stem(names[i]))}\n{_short(_label(model, int(c)))} ({probabilities[i, c]:.0%})"
        for i, c in enumerate(explained.tolist())
    ]
    fig = plot_class_maps(list(images[:n]), maps, model.config.patch_size, titles, "grad-rollout")
    numbers = {
        "method": "grad-rollout (Chefer et al. 2021): per layer E_h[(dlogit/dA * A)+], R <- R + A R from R = I",
        "images": [
            {
                "image": names[i],
                "class": _label(model, int(c)),
                "probability": round(float(probabilities[i, c]), 5),
                "predicted": _label(model, int(logits[i].argmax())),
                "map": _rounded(maps[i]),
            }
            for i, c in enumerate(explained.tolist())
        ],
    }
    return _write(out, "grad_rollout", fig, numbers)


# ----------------------------------------------------------------------------- faithfulness
FAITHFULNESS_METHODS = ("rollout", "grad-rollout", "random")


def _rankings(model: VisionTransformer, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(each image's predicted class, (B, gh, gw) maps of every method in
    :data:`FAITHFULNESS_METHODS`): one forward with attention gives the classes and the rollout,
    one more with gradients the grad-rollout; the seeded random ranking is the baseline to beat."""
    with torch.no_grad():
        logits, attn = model(x, return_attention=True)
    classes = logits.argmax(dim=1).cpu()
    c, grid = model.config, grid_for(model, tuple(x.shape[-2:]))
    query = default_query(c.num_prefix_tokens, c.pool)
    maps = {
        "rollout": rollout_map([a.float().cpu() for a in attn], grid, c.num_prefix_tokens, query),
        "grad-rollout": grad_rollout_map(model, x, classes)[0],
        "random": torch.rand(x.shape[0], *grid, generator=torch.Generator().manual_seed(seed)),
    }
    return classes, maps


def write_faithfulness(
    model: VisionTransformer,
    inputs: torch.Tensor,
    out: str | os.PathLike,
    steps: int = 16,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[list[Path], dict[str, dict[str, float]]]:
    """``faithfulness.png`` and ``.json``: the deletion and insertion curves and their areas
    (:func:`~vitkit.explain.analysis.deletion_insertion`) of rollout, grad-rollout and a seeded
    random ranking, each image explained for its predicted class. Returns the paths and the mean
    areas per method."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list] = {m: [] for m in FAITHFULNESS_METHODS}
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start : start + batch_size].to(device)
        classes, maps = _rankings(model, x, seed + start)
        for method in FAITHFULNESS_METHODS:
            parts[method].append(deletion_insertion(model, x, maps[method].to(device), classes, steps))
    fraction = parts["rollout"][0].fraction
    summary, curves = {}, {}
    for method, fs in parts.items():
        deletion = torch.cat([f.deletion for f in fs])
        insertion = torch.cat([f.insertion for f in fs])
        curves[method] = (deletion.mean(0), insertion.mean(0))
        summary[method] = {
            "deletion_auc": round(float(torch.cat([f.deletion_auc for f in fs]).mean()), 5),
            "insertion_auc": round(float(torch.cat([f.insertion_auc for f in fs]).mean()), 5),
        }
    numbers = {
        "method": "deletion and insertion (Petsiuk et al. 2018): removed patches set to 0 after normalisation "
        "(the training mean), each image's predicted class",
        "images": int(inputs.shape[0]),
        "steps": steps,
        "fraction": _rounded(fraction),
        "summary": summary,
        "mean_curves": {m: {"deletion": _rounded(d), "insertion": _rounded(i)} for m, (d, i) in curves.items()},
    }
    fig = plot_faithfulness(fraction, curves, int(inputs.shape[0]))
    return _write(out, "faithfulness", fig, numbers), summary


# ----------------------------------------------------------------------------- attention sinks
def _sink_layers(sinks: Sinks, index: int, kinds: list[str]) -> list[dict[str, Any]]:
    """One image's numbers per layer: the norm distribution, every token over the threshold."""
    p, gw = sinks.num_prefix_tokens, sinks.grid[1]
    ratio = sinks.norm_ratio[index]  # (L, T)
    layers = []
    for layer in range(ratio.shape[0]):
        patch = ratio[layer, p:]
        over = []
        for t in (ratio[layer] > sinks.ratio).nonzero().flatten().tolist():
            entry: dict[str, Any] = {"token": t, "ratio": round(float(ratio[layer, t]), 3)}
            if t < p:
                entry["kind"] = kinds[t]
            else:
                row, col = divmod(t - p, gw)
                rank = float(sinks.variance_rank[index, t - p])
                variance = round(float(sinks.patch_variance[index, t - p]), 6)
                entry |= {"kind": "patch", "row": row, "column": col, "variance": variance}
                entry |= {"variance_rank": round(rank, 4), "low_information": rank < 0.5}
            over.append(entry)
        quantiles = torch.quantile(patch, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
        absorbed = float(sinks.absorbed[index, layer])
        layers.append(
            {
                "layer": layer + 1,
                "median_norm": round(float(sinks.median[index, layer]), 4),
                "patch_ratio_quantiles": _rounded(quantiles, 4),
                "prefix_ratios": _rounded(ratio[layer, :p], 4),
                "over_threshold": over,
                "absorbed": None if math.isnan(absorbed) else round(absorbed, 4),
                "fair_share": round(float(sinks.fair_share[index, layer]), 4),
            }
        )
    return layers


@torch.inference_mode()
def write_sinks(
    model: VisionTransformer,
    images: torch.Tensor,
    out: str | os.PathLike,
    inputs: torch.Tensor | None = None,
    names: Sequence[str] = (),
    ratio: float = SINK_RATIO,
    per_image: int = 8,
    batch_size: int = 64,
) -> tuple[list[Path], str]:
    """The attention-sink analysis (Darcet et al. 2024): a figure per shown image
    (``sinks_NN_<image>.png`` and its numbers) and ``sinks.json``, the verdict over all images.
    Returns (paths written, the one-line verdict, which says "no sinks" when there are none)."""
    inputs = _check_inputs(images, inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names) + [f"image{i}" for i in range(len(names), images.shape[0])]
    device = next(model.parameters()).device
    parts = [
        find_sinks(model, inputs[i : i + batch_size].to(device), images[i : i + batch_size], ratio)
        for i in range(0, inputs.shape[0], batch_size)
    ]
    sinks = concat_sinks(parts)
    kinds = prefix_kinds(model.config)
    verdict = sink_verdict(sinks)
    written: list[Path] = []
    shown = []
    for i in range(min(per_image, images.shape[0])):
        layers = _sink_layers(sinks, i, kinds)
        fig = plot_sinks(images[i], sinks, i, model.config.patch_size, kinds, _short(_stem(names[i]), 40))
        written += _write(out, f"sinks_{i:02d}_{_slug(_stem(names[i]))}", fig, {"image": names[i], "layers": layers})
        shown.append({"image": names[i], "layers": layers})
    is_sink = sinks.is_sink
    summary = {
        "method": (
            "token norms after each block (before the final LayerNorm); a patch token is a sink when its norm is over "
            "`ratio` times its layer's median patch-token norm (Darcet et al. 2024 find artefact tokens about an "
            "order of magnitude above the rest); `absorbed`: the share of the other tokens' attention (head mean) "
            "that the next block pays the sinks; `variance`: the patch's pixel variance; `variance_rank`: the share "
            "of the image's patches flatter than it (below 0.5: below the median, `low_information`)"
        ),
        "ratio": ratio,
        "verdict": verdict,
        "num_images": images.shape[0],
        "prefix_tokens": kinds,
        "images_with_sinks": int(is_sink.any(dim=(1, 2)).sum()),
        "sinks_per_layer": _rounded(is_sink.sum(dim=-1).float().mean(dim=0), 4),  # mean over images
        "max_patch_ratio_per_layer": _rounded(sinks.norm_ratio[..., sinks.num_prefix_tokens :].amax(dim=(0, 2)), 3),
        "images": shown,
    }
    atomic_write_json(out / "sinks.json", summary)
    written.append(out / "sinks.json")
    log.info("sinks: %s", verdict)
    return written, verdict
