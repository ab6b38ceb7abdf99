"""The numbers behind the pictures: attention maps, rollout, attention distance, embeddings.

Every function here takes and returns tensors and imports no plotting code, so the same
numbers can feed a figure, a JSON file or a web page. The paper's section 4.5 ("Inspecting the
Vision Transformer") is the guide: Figure 6 is attention rollout, Figure 7 shows the patch
filters (left), the position-embedding similarity (centre) and the mean attention distance
(right).

Conventions: ``attentions`` is what ``model(x, return_attention=True)`` returns, a sequence of
per-layer probabilities of shape (B, heads, T, T) with T = num_prefix_tokens + gh * gw; rows are
queries, columns keys, and the patch tokens follow the prefix (class) token in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..model import VisionTransformer

QUERIES = ("cls", "mean")


def _stack(attentions: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Per-layer attention as one float tensor (L, B, heads, T, T)."""
    if isinstance(attentions, torch.Tensor):
        a = attentions if attentions.ndim == 5 else attentions[None]
    else:
        if len(attentions) == 0:
            raise InputError("no attention given: call the model with return_attention=True")
        a = torch.stack(list(attentions))
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise InputError(f"expected attention of shape (B, heads, T, T) per layer, got {tuple(a.shape[1:])}")
    return a.float()


def _check_tokens(tokens: int, grid: tuple[int, int], num_prefix_tokens: int) -> int:
    n = grid[0] * grid[1]
    if tokens != num_prefix_tokens + n:
        raise ConfigError(
            f"attention over {tokens} tokens does not match grid {tuple(grid)} plus {num_prefix_tokens} "
            f"prefix token(s) ({num_prefix_tokens + n}); pass the grid of the images the attention came from"
        )
    return n


def default_query(num_prefix_tokens: int, pool: str = "cls") -> str:
    """Which query summarises a model: its class token when it classifies from it, else the mean."""
    return "cls" if pool == "cls" and num_prefix_tokens > 0 else "mean"


def _query_row(a: torch.Tensor, num_prefix_tokens: int, query: str) -> torch.Tensor:
    """(..., T, T) -> (..., N): the class token's row over the patches, or the patch rows' mean."""
    if query not in QUERIES:
        raise ConfigError(f"query={query!r} is not one of {QUERIES}")
    p = num_prefix_tokens
    if query == "cls":
        if p == 0:
            raise ConfigError("query='cls' needs a class token; this model has none, use query='mean'")
        return a[..., 0, p:]
    return a[..., p:, p:].mean(dim=-2)  # attention each patch receives, averaged over patch queries


# ----------------------------------------------------------------------------- attention maps
@torch.inference_mode()
def attention_maps(
    attentions: Sequence[torch.Tensor] | torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    query: str = "cls",
) -> torch.Tensor:
    """Per layer and head, where the model looks: (B, L, heads, gh, gw).

    ``query="cls"``: the class token's attention over the patches (the row that decides a
    ``pool="cls"`` model's output). ``query="mean"``: the attention each patch receives, averaged
    over all patch queries, the natural summary for a GAP model, which has no single query.
    The class token's own column is left out, so a map need not sum to one.
    """
    a = _stack(attentions)  # (L, B, heads, T, T)
    _check_tokens(a.shape[-1], grid, num_prefix_tokens)
    maps = _query_row(a, num_prefix_tokens, query)  # (L, B, heads, N)
    return maps.reshape(*maps.shape[:-1], *grid).transpose(0, 1)  # -> (B, L, heads, gh, gw)


def upsample_map(maps: torch.Tensor, image_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Patch-grid maps (..., gh, gw) -> pixel maps (..., H, W), bilinear, for overlaying.

    The grid covers gh*P x gw*P pixels; anything beyond the image (padding of a dynamic-size
    model) is cropped off.
    """
    gh, gw = maps.shape[-2:]
    flat = maps.reshape(-1, 1, gh, gw).float()
    up = F.interpolate(flat, size=(gh * patch_size, gw * patch_size), mode="bilinear", align_corners=False)
    h, w = image_size
    return up[..., :h, :w].reshape(*maps.shape[:-2], min(h, gh * patch_size), min(w, gw * patch_size))


# ----------------------------------------------------------------------------- attention rollout
@torch.inference_mode()
def rollout(attentions: Sequence[torch.Tensor] | torch.Tensor, keep: float = 1.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020; the paper's Figure 6): (B, T, T).

    Each layer's attention is averaged over heads, the identity is added for the residual
    connection (half of a token's output is the token itself) and the rows are re-normalised;
    the layers' matrices are then multiplied, last layer on the left, so entry (i, j) says how
    much of input token j flows into output token i through all the layers.

    ``keep < 1`` keeps only the strongest fraction of each layer's head-averaged attention (per
    image, over the whole T x T matrix) and zeroes the rest before adding the identity, which
    sharpens the maps by ignoring the diffuse background attention.
    """
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep={keep} must be a fraction in (0, 1]")
    a = _stack(attentions).mean(dim=2)  # (L, B, T, T): heads averaged
    num_layers, batch, t, _ = a.shape
    if keep < 1.0:
        flat = a.reshape(num_layers, batch, t * t)
        k = max(1, round(keep * t * t))
        threshold = flat.topk(k, dim=-1).values[..., -1:]  # k-th largest per layer and image
        a = torch.where(flat >= threshold, flat, torch.zeros_like(flat)).reshape(a.shape)
    eye = torch.eye(t, dtype=a.dtype, device=a.device)
    result = eye.expand(batch, t, t).clone()
    for layer in a:
        layer = layer + eye
        layer = layer / layer.sum(dim=-1, keepdim=True)
        result = layer @ result
    return result


@torch.inference_mode()
def rollout_map(
    attentions: Sequence[torch.Tensor] | torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    query: str = "cls",
    keep: float = 1.0,
) -> torch.Tensor:
    """The rollout seen from the output: (B, gh, gw).

    ``query="cls"``: the class token's row over the patches; ``"mean"``: the patch rows' mean
    (for GAP models). See :func:`rollout` for ``keep``.
    """
    joint = rollout(attentions, keep)
    _check_tokens(joint.shape[-1], grid, num_prefix_tokens)
    return _query_row(joint, num_prefix_tokens, query).reshape(joint.shape[0], *grid)


# ----------------------------------------------------------------------------- attention distance
def patch_distances(grid: tuple[int, int], patch_size: int = 1) -> torch.Tensor:
    """(N, N) Euclidean distances between patch centres, in pixels (patch_size x grid steps)."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double() * patch_size  # (N, 2)
    return torch.cdist(centres, centres).float()


@torch.inference_mode()
def mean_attention_distance(
    attentions: Sequence[torch.Tensor] | torch.Tensor,
    grid: tuple[int, int],
    patch_size: int,
    num_prefix_tokens: int,
) -> torch.Tensor:
    """Mean attention distance (the paper's Figure 7, right), (L, heads), in pixels.

    For each query patch, the distance to every key patch weighted by the attention it pays
    that key, averaged over the query patches and the batch. It is the analogue of a CNN's
    receptive field: a head with a small distance looks locally, a large one globally. The
    class token is left out as query and as key (it has no position); each query's weights over
    the patches are re-normalised to sum to one.
    """
    a = _stack(attentions)  # (L, B, heads, T, T)
    _check_tokens(a.shape[-1], grid, num_prefix_tokens)
    p = num_prefix_tokens
    patches = a[..., p:, p:]  # (L, B, heads, N, N)
    dist = patch_distances(grid, patch_size).to(patches.device)
    weights = patches.sum(dim=-1).clamp_min(torch.finfo(patches.dtype).tiny)
    per_query = (patches * dist).sum(dim=-1) / weights  # (L, B, heads, N)
    return per_query.mean(dim=(1, 3))


def uniform_attention_distance(grid: tuple[int, int], patch_size: int) -> float:
    """The mean attention distance of a head that attends uniformly to every patch: the
    average distance between two patches, the ceiling that global attention reaches."""
    return float(patch_distances(grid, patch_size).double().mean())


# ----------------------------------------------------------------------------- embeddings
@torch.inference_mode()
def posemb_similarity(posemb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of every patch's position embedding with every other (Figure 7, centre).

    posemb: (N, D) or (1, N, D), patches in row-major order. Returns (gh, gw, gh, gw): entry
    [i, j] is the map of patch (i, j)'s similarity with all patches. A learned embedding that has
    found the 2-D structure shows a bright spot at the patch itself and row/column stripes.
    """
    e = posemb.reshape(-1, posemb.shape[-1]).float()
    n = _check_tokens(e.shape[0], grid, 0)
    e = F.normalize(e, dim=-1)
    return (e @ e.T).reshape(*grid, *grid) if n else e.new_zeros(*grid, *grid)


def model_posemb(model: VisionTransformer, grid: tuple[int, int] | None = None) -> torch.Tensor | None:
    """The patch rows of a model's position embedding, (N, D), or None for ``posemb="none"``."""
    pos = model.pos_embed(tuple(grid or model.config.grid_size))
    return None if pos is None else pos.detach()[0]


@dataclass
class PatchFilters:
    """Principal components of the patch projection E (Figure 7, left)."""

    components: torch.Tensor  # (k, C, P, P), unit-norm directions in pixel space
    explained_variance_ratio: torch.Tensor  # (k,), share of the filters' variance each explains


@torch.inference_mode()
def patch_filters_pca(weight: torch.Tensor, num_components: int = 28) -> PatchFilters:
    """The leading principal components of the D linear patch filters of shape (D, C, P, P).

    E maps each flattened C*P*P patch to D numbers; its D rows are filters. Their principal
    components are the few basis functions E spans most strongly; the paper finds they
    "resemble plausible basis functions for a low-dimensional representation of the fine
    structure within each patch". At most min(D, C*P*P) components exist.
    """
    if weight.ndim != 4:
        raise ConfigError(f"expected patch filters of shape (D, C, P, P), got {tuple(weight.shape)}")
    if num_components < 1:
        raise ConfigError(f"num_components={num_components} must be at least 1")
    d, c, ph, pw = weight.shape
    flat = weight.reshape(d, -1).double()
    centred = flat - flat.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s**2
    k = min(num_components, vh.shape[0])
    ratio = var[:k] / var.sum().clamp_min(torch.finfo(var.dtype).tiny)
    # Fix each component's sign so the largest-magnitude pixel is positive (SVD signs are arbitrary).
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    return PatchFilters(comps.reshape(k, c, ph, pw).float(), ratio.float())


def model_patch_filters(model: VisionTransformer) -> torch.Tensor:
    """E as (D, C, P, P). The hybrid (``stem="conv"``) has no linear patch filter: its patches are
    1x1 cells of a CNN feature map, so a ValueError says so instead of showing a projection."""
    if model.config.stem != "patch":
        raise ConfigError(
            f"stem={model.config.stem!r}: the hybrid model has no linear patch filter to show; its "
            "'patches' are 1x1 cells of a convolutional feature map (paper sec. 3.1)"
        )
    return model.patch_embed.proj.weight.detach()


# ----------------------------------------------------------------------------- one forward pass
@dataclass
class Explanation:
    """Everything :func:`explain_batch` computes for a batch of images, all on the CPU.

    The fields are plain tensors with their shapes beside them, so a figure function (or your
    own code) can use any of them without running the model again.
    """

    logits: torch.Tensor  # (B, classes)
    query: str  # "cls" or "mean": which query the maps show
    grid: tuple[int, int]
    attention_maps: torch.Tensor  # (B, L, heads, gh, gw)
    rollout: torch.Tensor  # (B, gh, gw)
    rollout_kept: torch.Tensor  # (B, gh, gw), keeping the strongest `keep` fraction per layer
    keep: float
    mean_attention_distance: torch.Tensor  # (L, heads), averaged over this batch


def grid_for(model: VisionTransformer, image_size: tuple[int, int]) -> tuple[int, int]:
    """The token grid a model uses for images of ``image_size`` (partial patches are padded)."""
    p = model.config.patch_size
    return (math.ceil(image_size[0] / p), math.ceil(image_size[1] / p))


@torch.inference_mode()
def explain_batch(
    model: VisionTransformer, images: torch.Tensor, keep: float = 0.1, query: str | None = None
) -> Explanation:
    """One forward pass with attention, and every per-image number the figures need.

    ``images``: (B, C, H, W), already normalised as the model expects. ``query`` defaults to the
    class token for ``pool="cls"`` models and to the patch mean otherwise.
    """
    c = model.config
    query = query or default_query(c.num_prefix_tokens, c.pool)
    was_training = model.training
    model.eval()
    try:
        logits, attn = model(images, return_attention=True)
    finally:
        model.train(was_training)
    attn = tuple(a.float().cpu() for a in attn)
    grid = grid_for(model, tuple(images.shape[-2:]))
    p = c.num_prefix_tokens
    return Explanation(
        logits=logits.float().cpu(),
        query=query,
        grid=grid,
        attention_maps=attention_maps(attn, grid, p, query),
        rollout=rollout_map(attn, grid, p, query),
        rollout_kept=rollout_map(attn, grid, p, query, keep=keep),
        keep=keep,
        mean_attention_distance=mean_attention_distance(attn, grid, c.patch_size, p),
    )
