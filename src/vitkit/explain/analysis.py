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

from ..config import ViTConfig
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


# ----------------------------------------------------------------------------- class-specific
def grad_rollout(
    attentions: Sequence[torch.Tensor] | torch.Tensor, gradients: Sequence[torch.Tensor] | torch.Tensor
) -> torch.Tensor:
    """Gradient-weighted rollout (Chefer et al. 2021, "Generic Attention-model Explainability",
    eqs. 5-6): (B, T, T).

    Rollout shows where the model looks, for every class at once. Weighting each layer's
    attention A by the gradient of the chosen class's logit with respect to it, keeping only the
    positive part (the evidence *for* the class) and averaging over heads gives
    Abar = E_h[(dy/dA * A)+]; the layers then accumulate as R <- R + Abar R from R = I, the
    identity standing for the residual path."""
    cam = (_stack(gradients) * _stack(attentions)).clamp(min=0).mean(dim=2)  # (L, B, T, T)
    _, batch, t, _ = cam.shape
    relevance = torch.eye(t, dtype=cam.dtype, device=cam.device).expand(batch, t, t).clone()
    for layer in cam:
        relevance = relevance + layer @ relevance
    return relevance


def attention_gradients(
    model: VisionTransformer, images: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
    """(logits, each layer's attention, its gradient for the class, the classes): one forward with
    attention and one backward of the sum of the chosen logits (each image's own class: the
    predicted one when ``classes`` is None). In eval mode, the explicit attention path."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits, attn = model(images, return_attention=True)
            chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
            grads = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), attn)
    finally:
        model.train(was_training)
    detached = tuple(a.detach().float().cpu() for a in attn)
    return logits.detach().float().cpu(), detached, tuple(g.float().cpu() for g in grads), chosen.cpu()


def grad_rollout_map(
    model: VisionTransformer, images: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the grad-rollout seen from the output, (B, gh, gw); the logits; the classes explained):
    the class token's row over the patches, or for a GAP model the patch rows' mean, as
    :func:`rollout_map`. Register and distillation tokens stay out of the grid."""
    logits, attn, grads, chosen = attention_gradients(model, images, classes)
    c = model.config
    joint = grad_rollout(attn, grads)
    grid = grid_for(model, tuple(images.shape[-2:]))
    _check_tokens(joint.shape[-1], grid, c.num_prefix_tokens)
    query = default_query(c.num_prefix_tokens, c.pool)
    return _query_row(joint, c.num_prefix_tokens, query).reshape(joint.shape[0], *grid), logits, chosen


# ----------------------------------------------------------------------------- faithfulness
@dataclass
class Faithfulness:
    """Deletion and insertion curves of one ranking of the patches (Petsiuk et al. 2018, RISE).

    ``deletion[b, s]``: the probability of image b's class after the first ``fraction[s]`` of its
    patches, in the ranking's order, were set to the baseline; ``insertion[b, s]``: the same
    class's probability on the baseline with only those patches shown. A faithful map ranks first
    the patches the answer depends on: its deletion curve falls fast (a low area) and its
    insertion curve rises fast (a high area)."""

    fraction: torch.Tensor  # (S + 1,) from 0 to 1
    deletion: torch.Tensor  # (B, S + 1)
    insertion: torch.Tensor  # (B, S + 1)

    @staticmethod
    def _area(curves: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
        return torch.trapezoid(curves, fraction, dim=-1)

    @property
    def deletion_auc(self) -> torch.Tensor:  # (B,)
        return self._area(self.deletion, self.fraction)

    @property
    def insertion_auc(self) -> torch.Tensor:  # (B,)
        return self._area(self.insertion, self.fraction)


@torch.no_grad()
def deletion_insertion(
    model: VisionTransformer, inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, steps: int = 16
) -> Faithfulness:
    """The deletion and insertion curves (:class:`Faithfulness`) of ``maps`` (B, gh, gw) for each
    image's class in ``classes``, in ``steps`` equal steps of patches.

    A removed patch is set to 0 in the normalised input: the training images' mean colour, the
    value that carries the least information to a model trained on them (black would be an
    unusual, bright-edged pattern). Insertion starts from that blank image. Ties in a map keep
    the patches' row-major order, so a constant map is the reading order."""
    if steps < 1:
        raise ConfigError(f"steps={steps} must be at least 1")
    b, _, h, w = inputs.shape
    gh, gw = maps.shape[-2:]
    n = gh * gw
    order = maps.reshape(b, n).argsort(dim=1, descending=True, stable=True)  # most relevant first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(b, n))  # each patch's place
    p = model.config.patch_size
    counts = [round(n * s / steps) for s in range(steps + 1)]
    deletion, insertion = [], []
    for k in counts:
        shown = (rank < k).reshape(b, 1, gh, gw).repeat_interleave(p, 2).repeat_interleave(p, 3)[..., :h, :w]
        for curve, x in ((deletion, inputs * ~shown), (insertion, inputs * shown)):
            probs = model(x).float().softmax(dim=1)
            curve.append(probs.gather(1, classes[:, None].to(probs.device))[:, 0].cpu())
    fraction = torch.tensor(counts, dtype=torch.float32) / n
    return Faithfulness(fraction, torch.stack(deletion, dim=1), torch.stack(insertion, dim=1))


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


# ----------------------------------------------------------------------------- attention sinks
# Darcet et al. 2024 ("Vision Transformers Need Registers", sec. 2, Fig. 3) find the artefact
# tokens of large ViTs as a separate mode of the token norms, about an order of magnitude above
# the bulk (their cut-off, 150, against ordinary norms mostly well under it), while the ordinary
# spread of a layer's norms stays within a few times its median. So a patch token is a sink when
# its norm is more than SINK_RATIO times the median patch-token norm of its layer and image.
SINK_RATIO = 10.0


@dataclass
class Sinks:
    """Token norms and attention sinks of a batch (:func:`find_sinks`), everything on the CPU.

    Layer ``l`` is the residual stream after block ``l`` (before the final LayerNorm, which would
    hide the norms). Its sinks are judged by the attention of block ``l + 1``, whose keys are
    computed from exactly those states; the last layer has no next block, so its shares are NaN.
    Sinks are patch tokens: the artefacts. Prefix tokens (class, distillation, registers) are
    reported beside them by their norms and, for registers, the attention they take in the same way.
    """

    norms: torch.Tensor  # (B, L, T) every token's norm after each block, prefix tokens first
    median: torch.Tensor  # (B, L) median norm of the patch tokens: the "typical" norm
    ratio: float  # a patch token is a sink when its norm > ratio * median
    absorbed: torch.Tensor  # (B, L) share of the other tokens' attention the sinks take in block l + 1
    register_absorbed: torch.Tensor | None  # (B, L) the same share for the register tokens; None without
    patch_variance: torch.Tensor  # (B, N) pixel variance of each patch (over its channels and pixels)
    num_prefix_tokens: int
    register_tokens: int  # the last of the prefix tokens
    grid: tuple[int, int]

    @property
    def norm_ratio(self) -> torch.Tensor:
        """(B, L, T): every token's norm in multiples of its layer's median patch norm."""
        return self.norms / self.median[..., None].clamp_min(torch.finfo(self.norms.dtype).tiny)

    @property
    def is_sink(self) -> torch.Tensor:
        """(B, L, N) bool: the patch tokens over the threshold."""
        return self.norm_ratio[..., self.num_prefix_tokens :] > self.ratio

    @property
    def variance_rank(self) -> torch.Tensor:
        """(B, N): :func:`variance_rank` of each patch in its image; below 0.5 is flatter than most."""
        return variance_rank(self.patch_variance)

    @property
    def fair_share(self) -> torch.Tensor:
        """(B, L): the share the sinks would take if every token were attended alike, sinks / T."""
        return self.is_sink.sum(dim=-1).float() / self.norms.shape[-1]


@torch.inference_mode()
def token_norms(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """(B, L, T): the L2 norm of every token (prefix tokens first) after each block."""
    taken = model.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
    if model.config.num_prefix_tokens:
        taken = [torch.cat([prefix, patches], dim=1) for patches, prefix in taken]
    return torch.stack(taken, dim=1).float().norm(dim=-1)


@torch.inference_mode()
def sink_absorption(attentions: Sequence[torch.Tensor] | torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """(B, L): for the tokens ``chosen`` after each block ((B, L, T) bool), the attention (mean of
    heads) that every other token, as a query of the next block, pays to all of them together,
    averaged over those queries. 0 where a layer chose none; NaN for the last layer."""
    a = _stack(attentions).mean(dim=2)  # (L, B, T, T): heads averaged
    num_layers, batch, t, _ = a.shape
    out = torch.full((batch, num_layers), float("nan"))
    for layer in range(num_layers - 1):
        mask = chosen[:, layer].to(a.device)  # (B, T)
        taken = (a[layer + 1] * mask[:, None, :]).sum(dim=-1)  # (B, T): each query's attention to them
        others = (~mask).float()
        share = (taken * others).sum(dim=-1) / others.sum(dim=-1).clamp_min(1)
        out[:, layer] = torch.where(mask.any(dim=-1), share, torch.zeros_like(share)).cpu()
    return out


def patch_variance(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N): each patch's pixel variance over its channels and pixels, a plain
    measure of how much it holds (a flat background patch has none). Partial patches are padded
    with zeros, as the model pads them."""
    p = patch_size
    x = F.pad(pixels.float(), (0, (-pixels.shape[-1]) % p, 0, (-pixels.shape[-2]) % p))
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
    return patches.var(dim=-1, unbiased=False)  # (B, N)


def variance_rank(variance: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N) in [0, 1]: the share of the image's other patches that are flatter (ties
    count half), so below 0.5 means below the image's median. A rank rather than a ratio to the
    median, because an image that is mostly flat background (Fashion-MNIST) has a median of 0."""
    v = variance[..., :, None]  # (B, N, 1) against (B, 1, N)
    below = (variance[..., None, :] < v).sum(dim=-1).float()
    ties = (variance[..., None, :] == v).sum(dim=-1).float() - 1  # not counting the patch itself
    return (below + 0.5 * ties) / max(variance.shape[-1] - 1, 1)


@torch.inference_mode()
def find_sinks(
    model: VisionTransformer, inputs: torch.Tensor, pixels: torch.Tensor | None = None, ratio: float = SINK_RATIO
) -> Sinks:
    """Token norms per layer, the patch tokens over ``ratio`` times the median patch norm, the
    attention they (and any registers) take, and the pixel variance of their patches, for a batch.

    ``inputs``: (B, C, H, W) normalised as the model expects; ``pixels``: the same images as drawn
    (default: ``inputs``), whose patch variance says whether a sink sits on a flat patch.
    """
    if not ratio > 1.0:
        raise ConfigError(f"sink ratio {ratio} must be above 1 (a multiple of the median token norm)")
    c = model.config
    was_training = model.training
    model.eval()
    try:
        norms = token_norms(model, inputs).cpu()
        _, attn = model(inputs, return_attention=True)
    finally:
        model.train(was_training)
    p = c.num_prefix_tokens
    median = norms[..., p:].median(dim=-1).values  # (B, L)
    sinks = norms[..., p:] > ratio * median[..., None]  # (B, L, N)
    chosen = torch.cat([torch.zeros_like(norms[..., :p], dtype=torch.bool), sinks], dim=-1)  # (B, L, T)
    registers = None
    if c.register_tokens:
        registers = torch.zeros_like(chosen)
        registers[..., c.num_prefix_rows : p] = True
        registers = sink_absorption(attn, registers)
    return Sinks(
        norms=norms,
        median=median,
        ratio=ratio,
        absorbed=sink_absorption(attn, chosen),
        register_absorbed=registers,
        patch_variance=patch_variance((inputs if pixels is None else pixels).cpu(), c.patch_size),
        num_prefix_tokens=p,
        register_tokens=c.register_tokens,
        grid=grid_for(model, tuple(inputs.shape[-2:])),
    )


def concat_sinks(parts: Sequence[Sinks]) -> Sinks:
    """Batches of :func:`find_sinks` as one (same model, ratio and grid)."""
    first = parts[0]
    registers = None if first.register_absorbed is None else torch.cat([s.register_absorbed for s in parts])
    return Sinks(
        norms=torch.cat([s.norms for s in parts]),
        median=torch.cat([s.median for s in parts]),
        ratio=first.ratio,
        absorbed=torch.cat([s.absorbed for s in parts]),
        register_absorbed=registers,
        patch_variance=torch.cat([s.patch_variance for s in parts]),
        num_prefix_tokens=first.num_prefix_tokens,
        register_tokens=first.register_tokens,
        grid=first.grid,
    )


def prefix_kinds(config: ViTConfig) -> list[str]:
    """What each prefix token is, in order: "class", "distillation", then one "register" each."""
    kinds = {"cls_token": ["class"], "dist_token": ["distillation"], "reg_token": ["register"] * config.register_tokens}
    return [kind for name in config.prefix_tokens for kind in kinds[name]]


def layer_ranges(layers: Sequence[int]) -> str:
    """[3, 4, 5, 8] -> "3-5, 8" (1-based layer numbers)."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _mean(values: torch.Tensor) -> float | None:
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else None


def sink_verdict(s: Sinks) -> str:
    """One line that answers "are there attention sinks?", including "no sinks" when there are none."""
    n, sinks = s.norms.shape[0], s.is_sink  # (B, L, N)
    patch_ratio = s.norm_ratio[..., s.num_prefix_tokens :]
    if not sinks.any():
        top = patch_ratio.amax(dim=(0, 2))  # (L,)
        layer = int(top.argmax())
        text = (
            f"no sinks: no patch token's norm is over {s.ratio:g}x its layer's median in {n} image(s) "
            f"(largest: {float(top[layer]):.1f}x, layer {layer + 1})"
        )
    else:
        count = sinks.sum(dim=-1)  # (B, L)
        layers = (sinks.any(dim=(0, 2)).nonzero().flatten() + 1).tolist()
        has = count > 0
        absorbed, fair = _mean(s.absorbed[has]), _mean(s.fair_share[has & ~s.absorbed.isnan()])
        flat = (s.variance_rank[:, None, :].expand_as(sinks)[sinks] < 0.5).float().mean()
        text = (
            f"sinks in {int(has.any(dim=1).sum())} of {n} image(s): up to {int(count.max())} patch token(s) per "
            f"layer over {s.ratio:g}x the median norm, in layer(s) {layer_ranges(layers)}; "
        )
        if absorbed is None:
            text += "only after the last block, which no attention reads; "
        else:
            text += f"the next block gives them {absorbed:.0%} of the other tokens' attention ({fair:.0%} if uniform); "
        text += f"{float(flat):.0%} sit on patches flatter than their image's median patch"
    if s.register_absorbed is not None:
        registers = s.norm_ratio[..., s.num_prefix_tokens - s.register_tokens : s.num_prefix_tokens]
        text += (
            f"; {s.register_tokens} register(s): up to {float(registers.max()):.1f}x the median norm, "
            f"{_mean(s.register_absorbed) or 0.0:.0%} of the other tokens' attention"
        )
    return text
