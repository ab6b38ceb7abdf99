"""Pictures of the numbers in :mod:`vitkit.explain.analysis`, drawn with matplotlib.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot, so no
backend is chosen, no window opens and no global figure list grows: the functions are safe in
a server and in a notebook alike. Sizes are fixed by the layout (``PANEL`` inches per panel at
``DPI``), so a figure's pixel size is known before it is drawn.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import matplotlib
import matplotlib.patches
import numpy as np
import torch
from matplotlib.figure import Figure

from ..files import atomic_write_bytes
from .analysis import PatchFilters, Sinks, layer_ranges, patch_distances, upsample_map

DPI = 100
PANEL = 1.5  # inches per image panel in the grid figures
TITLE = 0.5  # inches of title band above the grid figures
HEATMAP = "inferno"
SIMILARITY = "viridis"


def _display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow wants: (H, W) for gray, (H, W, 3) for colour."""
    x = image.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        return x[0].numpy()
    return x[:3].permute(1, 2, 0).numpy()


def _luminance(image: torch.Tensor) -> np.ndarray:
    x = image.detach().float().clamp(0, 1).cpu()
    if x.shape[0] >= 3:
        x = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    else:
        x = x[0]
    return x.numpy()


def _scaled(m: torch.Tensor) -> np.ndarray:
    """A map scaled to [0, 1] by its own maximum (a constant map shows as uniform)."""
    m = m.float()
    top = m.max()
    return (m / top).numpy() if top > 0 else np.ones(tuple(m.shape), dtype=np.float32)


def _overlay(ax, image: torch.Tensor, grid_map: torch.Tensor, patch_size: int, alpha: float = 0.6):
    """Draw the image in gray with the (bilinearly upsampled) map over it; returns the heatmap."""
    h, w = image.shape[-2:]
    up = upsample_map(grid_map, (h, w), patch_size)
    ax.imshow(_luminance(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    art = ax.imshow(_scaled(up), cmap=HEATMAP, vmin=0, vmax=1, alpha=alpha, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return art


def _not_applicable(title: str, reason: str, figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, "not applicable:\n" + reason, ha="center", va="center", wrap=True, fontsize=11)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write a figure as PNG atomically, at the figure's own size (no tight cropping)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- attention maps
def plot_attention_maps(
    image: torch.Tensor, maps: torch.Tensor, patch_size: int, query: str = "cls", title: str = ""
) -> Figure:
    """One image's attention, a grid of layers (rows) x [mean of heads, head 1, ...] (columns).

    image: (C, H, W) in [0, 1]; maps: (L, heads, gh, gw) from :func:`attention_maps`. Size:
    (heads + 1) * PANEL by L * PANEL + TITLE inches. Each panel is scaled to its own maximum,
    so the figure shows where each head looks, not how strongly.
    """
    depth, heads = maps.shape[:2]
    fig = Figure(figsize=((heads + 1) * PANEL, depth * PANEL + TITLE), dpi=DPI, layout="constrained")
    axes = fig.subplots(depth, heads + 1, squeeze=False)
    art = None
    for layer in range(depth):
        panels = [maps[layer].mean(dim=0)] + list(maps[layer])
        for col, m in enumerate(panels):
            ax = axes[layer, col]
            art = _overlay(ax, image, m, patch_size)
            if layer == 0:
                ax.set_title("mean of heads" if col == 0 else f"head {col}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=9)
    what = "class token's attention to each patch" if query == "cls" else "mean attention received by each patch"
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=9)
    fig.colorbar(art, ax=axes, shrink=0.6, label="share of panel max")
    return fig


# ----------------------------------------------------------------------------- rollout
def plot_rollout(
    images: Sequence[torch.Tensor],
    rollouts: torch.Tensor,
    kept: torch.Tensor,
    keep: float,
    patch_size: int,
    titles: Sequence[str] = (),
) -> Figure:
    """Attention rollout (the paper's Figure 6), one row per image: the input, the rollout, the
    rollout keeping the strongest ``keep`` of each layer's attention, and the input weighted by
    the rollout as the paper draws it. Size: 4 * PANEL by len(images) * PANEL + TITLE inches."""
    n = len(images)
    fig = Figure(figsize=(4 * PANEL, n * PANEL + TITLE), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    heads = ["input", "rollout", f"rollout, top {keep:.0%}", "input x rollout"]
    for i, image in enumerate(images):
        ax = axes[i, 0]
        shown = _display(image)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(titles):
            ax.set_ylabel(titles[i], fontsize=8)
        _overlay(axes[i, 1], image, rollouts[i], patch_size)
        _overlay(axes[i, 2], image, kept[i], patch_size)
        mask = _scaled(upsample_map(rollouts[i], tuple(image.shape[-2:]), patch_size))
        masked = shown * (mask if shown.ndim == 2 else mask[..., None])
        ax = axes[i, 3]
        ax.imshow(masked, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            for ax, head in zip(axes[0], heads, strict=True):
                ax.set_title(head, fontsize=9)
    fig.suptitle("Attention rollout (Abnar & Zuidema 2020): what reaches the output", fontsize=9)
    return fig


def plot_class_maps(
    images: Sequence[torch.Tensor], maps: torch.Tensor, patch_size: int, titles: Sequence[str], method: str
) -> Figure:
    """A class-specific heat-map per image (``method`` names it), one row each: the input, the map,
    and the input weighted by the map. Size: 3 * PANEL by len(images) * PANEL + TITLE inches."""
    n = len(images)
    fig = Figure(figsize=(3 * PANEL, n * PANEL + TITLE), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i, image in enumerate(images):
        shown = _display(image)
        mask = _scaled(upsample_map(maps[i], tuple(image.shape[-2:]), patch_size))
        for ax, pixels in ((axes[i, 0], shown), (axes[i, 2], shown * (mask if shown.ndim == 2 else mask[..., None]))):
            ax.imshow(pixels, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(titles[i] if i < len(titles) else "", fontsize=8)
        _overlay(axes[i, 1], image, maps[i], patch_size)
    for ax, head in zip(axes[0], ["input", method, f"input x {method}"], strict=True):
        ax.set_title(head, fontsize=9)
    fig.suptitle(f"{method}: the evidence for the class named on the left", fontsize=9)
    return fig


def plot_faithfulness(
    fraction: torch.Tensor, curves: dict[str, tuple[torch.Tensor, torch.Tensor]], images: int
) -> Figure:
    """The mean deletion and insertion curves of each method (``curves[method] = (deletion,
    insertion)``, each (S + 1,)) against the fraction of patches removed or shown."""
    fig = Figure(figsize=(8.0, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    for method, (deletion, insertion) in curves.items():
        style = "--" if method == "random" else "-"
        axes[0].plot(fraction.numpy(), deletion.numpy(), style, label=method)
        axes[1].plot(fraction.numpy(), insertion.numpy(), style, label=method)
    for ax, what in zip(
        axes,
        ["deletion: patches removed (lower is better)", "insertion: patches shown (higher is better)"],
        strict=True,
    ):
        ax.set_xlabel("fraction of patches, most relevant first")
        ax.set_ylabel("probability of the class")
        ax.set_title(what, fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle(f"Faithfulness (Petsiuk et al. 2018), mean of {images} images", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- attention distance
MEAN_DISTANCE_SIZE = (6.0, 4.5)


def plot_mean_attention_distance(
    distances: torch.Tensor, grid: tuple[int, int], patch_size: int, num_images: int, title: str = ""
) -> Figure:
    """Mean attention distance of every head against depth (the paper's Figure 7, right).

    distances: (L, heads) in pixels. The dashed line is the distance of uniform attention over
    all patches, the most global a head can be on average.
    """
    depth, heads = distances.shape
    fig = Figure(figsize=MEAN_DISTANCE_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    layers = np.arange(1, depth + 1)
    palette = matplotlib.colormaps["tab10" if heads <= 10 else "tab20"]
    colours = [palette(h % palette.N) for h in range(heads)]
    for h in range(heads):
        label = f"head {h + 1}" if heads <= 16 else None
        ax.scatter(layers, distances[:, h].numpy(), s=28, color=colours[h], label=label, alpha=0.85)
    ceiling = float(patch_distances(grid, patch_size).double().mean())
    ax.axhline(ceiling, color="gray", linestyle="--", linewidth=1, label=f"uniform attention\n({ceiling:.1f} px)")
    top = max(ceiling, float(distances.max()) if distances.numel() else 0.0)
    ax.set_ylim(0, top * 1.1 + 1e-6)
    ax.set_xlim(0.5, depth + 0.5)
    ax.set_xticks(layers)
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside right center")  # beside the axes: never over a point
    image_px = f"{grid[0] * patch_size}x{grid[1] * patch_size} px, patch {patch_size}"
    fig.suptitle(title or f"Mean attention distance, {num_images} image(s) ({image_px})", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- position embeddings
POSEMB_SIZE = (6.0, 5.0)


def plot_posemb_similarity(similarity: torch.Tensor | None, reason: str = "", title: str = "") -> Figure:
    """Cosine similarity of position embeddings (the paper's Figure 7, centre): a gh x gw grid of
    small maps, the map at (row i, column j) showing patch (i, j)'s similarity to every patch.

    ``similarity``: (gh, gw, gh, gw) from :func:`posemb_similarity`, or None with a ``reason``
    (a model without position embeddings) to draw a figure that says so.
    """
    title = title or "Position embedding similarity"
    if similarity is None:
        return _not_applicable(title, reason or "this model has no position embedding", POSEMB_SIZE)
    gh, gw = similarity.shape[:2]
    # One mosaic image with one-pixel gaps: fast even for ViT-B/16's 14 x 14 maps of 14 x 14.
    mosaic = np.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), np.nan, dtype=np.float32)
    for i in range(gh):
        for j in range(gw):
            mosaic[i * (gh + 1) : i * (gh + 1) + gh, j * (gw + 1) : j * (gw + 1) + gw] = similarity[i, j].numpy()
    fig = Figure(figsize=POSEMB_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    cmap = _cmap_with_white_gaps(SIMILARITY)
    art = ax.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    step = max(1, math.ceil(max(gh, gw) / 14))
    ax.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(0, gw, step)], [str(j + 1) for j in range(0, gw, step)])
    ax.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(0, gh, step)], [str(i + 1) for i in range(0, gh, step)])
    ax.tick_params(length=0, labelsize=8)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title(title, fontsize=10)
    fig.colorbar(art, ax=ax, shrink=0.8, label="Cosine similarity")
    return fig


def _cmap_with_white_gaps(name: str):
    return matplotlib.colormaps[name].with_extremes(bad="white")


# ----------------------------------------------------------------------------- patch filters
FILTERS_SIZE = (7.0, 5.0)


def plot_patch_filters(filters: PatchFilters | None, reason: str = "", title: str = "") -> Figure:
    """The leading principal components of the patch projection as image tiles (Figure 7, left).

    Each tile is one component (a P x P pattern, in colour for RGB), scaled to use the whole
    gray or colour range, and labelled with the share of the filters' variance it explains.
    """
    title = title or "Patch embedding filters: principal components of E"
    if filters is None:
        return _not_applicable(title, reason or "this model has no linear patch filter", FILTERS_SIZE)
    comps = filters.components
    k = comps.shape[0]
    cols = min(7, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=FILTERS_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if idx >= k:
            ax.axis("off")
            continue
        c = comps[idx]
        lo, hi = c.min(), c.max()
        tile = (c - lo) / (hi - lo) if hi > lo else torch.full_like(c, 0.5)
        shown = _display(tile)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"PC{idx + 1} {float(filters.explained_variance_ratio[idx]):.0%}", fontsize=7)
    fig.suptitle(f"{title} (share of variance)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- attention sinks
SINKS_SIZE = (13.5, 4.5)
_PREFIX_COLOURS = {"class": "tab:blue", "distillation": "tab:purple", "register": "tab:green"}


def plot_sinks(
    image: torch.Tensor, sinks: Sinks, index: int, patch_size: int, kinds: Sequence[str], title: str = ""
) -> Figure:
    """One image's token norms and sinks (Darcet et al. 2024), three panels:

    - every token's norm after each block, in multiples of that layer's median patch norm (log
      scale), patches in gray, sinks in red, prefix tokens coloured by ``kinds``, and the threshold;
    - the image with the norms of the layer holding the most sinks (the last layer when none)
      over it, each sink patch outlined;
    - per layer, the share of the other tokens' attention the sinks take in the next block, beside
      the share uniform attention would give them (and the registers' share, when there are any).
    """
    ratio = sinks.norm_ratio[index]  # (L, T)
    is_sink = sinks.is_sink[index]  # (L, N)
    p, (gh, gw) = sinks.num_prefix_tokens, sinks.grid
    depth = ratio.shape[0]
    layers = np.arange(1, depth + 1)
    fig = Figure(figsize=SINKS_SIZE, dpi=DPI, layout="constrained")
    norms_ax, image_ax, share_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1.1]})
    # token norms per layer
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, ratio.shape[1] - p)
    for layer in range(depth):
        patch = ratio[layer, p:].numpy()
        sink = is_sink[layer].numpy()
        norms_ax.scatter(layer + 1 + jitter[~sink], patch[~sink], s=6, color="0.6", alpha=0.6)
        norms_ax.scatter(layer + 1 + jitter[sink], patch[sink], s=18, color="tab:red")
    for kind in dict.fromkeys(kinds):
        cols = [i for i, k in enumerate(kinds) if k == kind]
        xs = np.repeat(layers, len(cols)) + 0.3
        norms_ax.scatter(
            xs, ratio[:, cols].flatten().numpy(), s=18, marker="^", color=_PREFIX_COLOURS[kind], label=kind
        )
    norms_ax.scatter([], [], s=6, color="0.6", label="patch")
    norms_ax.scatter([], [], s=18, color="tab:red", label="sink patch")
    norms_ax.axhline(sinks.ratio, color="k", linestyle="--", linewidth=1, label=f"{sinks.ratio:g}x median")
    norms_ax.set_yscale("log")
    norms_ax.set_xticks(layers)
    norms_ax.set_xlabel("layer (output of block)")
    norms_ax.set_ylabel("token norm / median patch norm")
    top = max(float(ratio.max()), sinks.ratio)
    norms_ax.set_ylim(min(float(ratio.min()), 1.0) / 2, top * 30)  # headroom for the legend above every point
    norms_ax.legend(fontsize=7, loc="upper center", ncol=3)
    norms_ax.grid(alpha=0.3)
    # where the sinks sit
    counts = is_sink.sum(dim=-1)
    shown = int(counts.argmax()) if counts.any() else depth - 1
    art = _overlay(image_ax, image, ratio[shown, p:].reshape(gh, gw), patch_size)
    q = patch_size
    for n in is_sink[shown].nonzero().flatten().tolist():
        row, col = divmod(n, gw)  # pixel centres are at integers: a patch spans [col * q - 0.5, (col + 1) * q - 0.5)
        box = matplotlib.patches.Rectangle((col * q - 0.5, row * q - 0.5), q, q, fill=False, color="tab:red", lw=1.5)
        image_ax.add_patch(box)
    image_ax.set_title(f"norms after layer {shown + 1}: {int(counts[shown])} sink(s) outlined", fontsize=9)
    fig.colorbar(art, ax=image_ax, shrink=0.7, label="share of max norm")
    # the attention they take
    absorbed = sinks.absorbed[index].numpy()
    fair = sinks.fair_share[index].numpy()
    share_ax.bar(layers - 0.2, np.nan_to_num(absorbed), width=0.4, color="tab:red", label="taken by the sinks")
    fair = np.where((counts.numpy() > 0) & ~np.isnan(absorbed), fair, np.nan)  # where a next block reads them
    share_ax.scatter(layers - 0.2, fair, marker="_", s=200, color="k", label="if uniform")
    if sinks.register_absorbed is not None:
        taken = np.nan_to_num(sinks.register_absorbed[index].numpy())
        share_ax.bar(layers + 0.2, taken, width=0.4, color="tab:green", label="taken by the registers")
    share_ax.set_xticks(layers)
    share_ax.set_ylim(0, 1)
    share_ax.set_xlabel("layer whose tokens are attended (by the next block)")
    share_ax.set_ylabel("share of the other tokens' attention")
    share_ax.legend(fontsize=7, loc="upper left")
    share_ax.grid(alpha=0.3, axis="y")
    where = layer_ranges((counts.nonzero().flatten() + 1).tolist())
    verdict = f"sinks after layer(s) {where}, up to {int(counts.max())} per layer" if counts.any() else "no sinks"
    fig.suptitle(f"{title}: {verdict}" if title else verdict, fontsize=10)
    return fig
