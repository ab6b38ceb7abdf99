"""Masked patch prediction: the ViT paper's self-supervision (sec. 4.6, appendix B.1.2).

The paper, in the manner of BERT's masked language modelling: "we corrupt 50% of patch
embeddings by either replacing their embeddings with a learnable [mask] embedding (80%), a random
other patch embedding (10%) or just keeping them as is (10%)", and predicts "the 3-bit, mean
color (i.e., 512 colors in total) of every corrupted patch using their respective patch
representations".

Where the paper leaves a choice, this module reads it so:

- *Patch embeddings* are x_p E of eq. (1), before E_pos is added: a [mask] embedding or a patch
  moved from elsewhere then still receives the position of the patch it replaces, as BERT adds
  position embeddings to its [MASK] token, so the model knows where it has to predict a colour.
- *50 %* is an exact count per image, round(0.5 N) patches picked by a random permutation (as
  BERT picks a fixed number of predictions per sequence); each picked patch then draws its fate
  80/10/10 on its own, so those three shares hold on average.
- *A random other patch* is drawn uniformly from every patch of the batch except itself (from any
  image, at any position), and it is that patch's uncorrupted embedding.
- *3-bit mean colour*: per channel, the mean over the patch's pixels in [0, 1], quantised to
  8 levels min(floor(8 mean), 7); the class is r*64 + g*8 + b (8 classes for one channel).
- The prediction is a linear layer on each corrupted patch's final token state (after the
  encoder's final LayerNorm); cross-entropy is averaged over the corrupted patches of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..model import VisionTransformer
from .common import Pixels, PretextOutput, check_encoder, check_image, encode, no_weight_decay, scalar, uniform


def mpp_targets(pixels: torch.Tensor, patch_size: int, bits: int = 3) -> torch.Tensor:
    """Pixels (B, C, H, W) in [0, 1] -> each patch's quantised mean colour (B, N), long.

    Per channel: min(floor(mean * 2^bits), 2^bits - 1); the channels combine as digits of base
    2^bits, the first channel most significant (RGB, 3 bits: r*64 + g*8 + b, 512 classes).
    """
    levels = 2**bits
    means = F.avg_pool2d(pixels.float(), patch_size)  # (B, C, H/P, W/P)
    q = (means * levels).floor().clamp(0, levels - 1).long()
    c = q.shape[1]
    weights = levels ** torch.arange(c - 1, -1, -1, device=q.device)  # (C,): 64, 8, 1 for RGB
    return (q * weights.view(1, c, 1, 1)).sum(dim=1).flatten(1)  # (B, N), row-major


class Corruption(NamedTuple):
    """Which patches an MPP step corrupts, and how; each (B, N) bool."""

    corrupted: torch.Tensor  # predicted: the union of the three below
    mask_token: torch.Tensor  # replaced by the learned [mask] embedding
    random_patch: torch.Tensor  # replaced by another patch's embedding (the rest are kept)


def corruption(
    batch: int,
    num_patches: int,
    ratio: float = 0.5,
    replace: Sequence[float] = (0.8, 0.1, 0.1),
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Corruption:
    """Draw the corruption of one batch: exactly round(ratio * N) patches per image, by a random
    permutation; each of those is masked, swapped for a random patch, or kept with the
    probabilities ``replace`` = (mask, random, keep)."""
    count = corrupted_count(num_patches, ratio)
    mask_share, random_share, _ = check_replace(replace)
    rank = uniform((batch, num_patches), generator, device).argsort(dim=1).argsort(dim=1)  # a random permutation
    corrupted = rank < count
    fate = uniform((batch, num_patches), generator, device)
    mask_token = corrupted & (fate < mask_share)
    random_patch = corrupted & (fate >= mask_share) & (fate < mask_share + random_share)
    return Corruption(corrupted, mask_token, random_patch)


def random_sources(
    batch: int, num_patches: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """For each patch, a uniformly drawn *other* patch of the batch: (B, N) indices into the
    batch's B*N patches, never the patch's own index (unless the batch has only one patch)."""
    total = batch * num_patches
    if total == 1:
        return torch.zeros(1, 1, dtype=torch.long, device=device)
    draw = (uniform((batch, num_patches), generator, device) * (total - 1)).long().clamp(max=total - 2)
    own = torch.arange(total, device=device).view(batch, num_patches)
    return draw + (draw >= own).long()  # skip over its own index: uniform over the other total-1


def corrupted_count(num_patches: int, ratio: float) -> int:
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"mask_ratio={ratio} must be in (0, 1]")
    count = round(num_patches * ratio)
    if count < 1:
        raise ConfigError(f"mask_ratio={ratio} of {num_patches} patches corrupts none; raise it")
    return count


def check_replace(replace: Sequence[float]) -> tuple[float, float, float]:
    shares = tuple(float(v) for v in replace)
    if len(shares) != 3 or min(shares) < 0 or not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ConfigError(f"replace={list(replace)} must be three shares (mask, random, keep) >= 0 that sum to 1")
    return shares  # type: ignore[return-value]


class MaskedPatchPrediction(nn.Module):
    """The ViT paper's masked patch prediction around a :class:`VisionTransformer` encoder.

    ``forward(images)`` takes normalised images and returns :class:`PretextOutput`: the
    cross-entropy over the corrupted patches, how many of them were predicted right, and how many
    there were. ``encoder`` is saved on its own as an ordinary checkpoint after pre-training; the
    [mask] embedding and the colour head belong to the objective and are left behind.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        mask_ratio: float = 0.5,
        replace: Sequence[float] = (0.8, 0.1, 0.1),
        bits: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        c = encoder.config
        corrupted_count(c.num_patches, mask_ratio)
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ConfigError(f"bits={bits!r} must be an integer from 1 to 8 (the paper uses 3)")
        self.encoder = encoder
        self.mask_ratio = float(mask_ratio)
        self.replace = check_replace(replace)
        self.bits = bits
        self.num_colours = (2**bits) ** c.in_channels
        self.pixels = Pixels(c.in_channels, mean, std)
        self.mask_token = nn.Parameter(torch.empty(1, 1, c.width))
        self.head = nn.Linear(c.width, self.num_colours)
        nn.init.normal_(self.mask_token, std=0.02)  # BERT's and MAE's init of the [mask] embedding
        # Xavier, not zero as vitkit's classifier: a zero head would pass no gradient to the encoder
        # on the first step, and the pretext head is thrown away anyway
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def corrupt(
        self, patches: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embeddings (B, N, D) -> (corrupted embeddings (B, N, D), which were corrupted (B, N))."""
        b, n, d = patches.shape
        draw = corruption(b, n, self.mask_ratio, self.replace, generator, patches.device)
        sources = random_sources(b, n, generator, patches.device)
        moved = patches.reshape(b * n, d)[sources.flatten()].view(b, n, d)  # another patch's embedding
        x = torch.where(draw.mask_token[..., None], self.mask_token.to(patches.dtype), patches)
        x = torch.where(draw.random_patch[..., None], moved, x)
        return x, draw.corrupted

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> PretextOutput:
        enc = self.encoder
        check_image(images, enc.config.patch_size)
        patches, grid = enc.embed_patches(images)  # x_p E: (B, N, D)
        x, corrupted = self.corrupt(patches, generator)
        tokens = encode(enc, enc.add_positions_and_prefix(x, grid))
        logits = self.head(tokens[:, enc.config.num_prefix_tokens :]).float()  # (B, N, colours)
        targets = mpp_targets(self.pixels(images), enc.config.patch_size, self.bits)  # (B, N)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        weight = corrupted.float()
        loss = (ce * weight).sum() / weight.sum()
        correct = ((logits.argmax(dim=-1) == targets) & corrupted).sum()
        return PretextOutput(loss, correct, scalar(corrupted.sum(), images.device))

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio}, replace={self.replace}, bits={self.bits}"
