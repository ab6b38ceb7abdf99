"""Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

Hide most patches (75 %), run the encoder on the visible ones only, and let a light decoder,
which sees the encoded visible patches plus a shared mask token at every hidden position,
reconstruct the hidden patches' pixels. The loss is the mean squared error on the hidden patches
only, each target patch normalised by its own mean and variance (MAE's ``norm_pix_loss``, which
the paper finds gives better representations).

Choices here:

- Masking keeps exactly round(N (1 - mask_ratio)) patches per image, chosen by sorting uniform
  noise per image (MAE's per-sample shuffle); the kept indices are then sorted ascending. The
  encoder does not care about the order of its tokens (each carries its position embedding), and
  sorted indices let the decoder put every token back with one scatter.
- The decoder's position embedding is the fixed 2-D sine-cosine table, as in MAE: nothing to
  learn, and defined for any grid. Its blocks are vitkit's own ``Block`` built from a small
  ``ViTConfig`` (MLP 4x its width). The decoder sees the encoder's prefix tokens (class token)
  too, as MAE's does, without a position.
- The encoder must have ``stem="patch"``: a convolutional stem mixes neighbouring patches before
  masking, so the "visible" tokens would carry information about the hidden ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..config import ViTConfig
from ..embed import PositionEmbedding
from ..errors import ConfigError
from ..model import Block, VisionTransformer
from .common import (
    Pixels,
    PretextOutput,
    check_encoder,
    check_image,
    encode,
    no_weight_decay,
    patchify,
    scalar,
    uniform,
)


class Masking(NamedTuple):
    """Which patches an MAE step shows the encoder."""

    keep: torch.Tensor  # (B, K) long: the visible patches' indices, ascending per image
    mask: torch.Tensor  # (B, N) bool: True where hidden (and so reconstructed and scored)


def random_masking(
    batch: int,
    num_patches: int,
    keep: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Masking:
    """Keep exactly ``keep`` random patches of each image: the first ``keep`` of a per-image
    random permutation (argsort of uniform noise), sorted back into raster order."""
    if not 0 < keep <= num_patches:
        raise ConfigError(f"keep={keep} patches must be between 1 and the {num_patches} patches of an image")
    noise = uniform((batch, num_patches), generator, device)
    kept = noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, K)
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=kept.device).scatter(1, kept, False)
    return Masking(kept, mask)


def kept_count(num_patches: int, mask_ratio: float) -> int:
    keep = round(num_patches * (1.0 - mask_ratio))
    if not 0.0 < mask_ratio < 1.0 or not 0 < keep < num_patches:
        raise ConfigError(
            f"mask_ratio={mask_ratio} of {num_patches} patches keeps {keep}; MAE needs at least one patch "
            "visible and one hidden (the paper uses 0.75)"
        )
    return keep


class MaskedAutoencoder(nn.Module):
    """MAE pre-training around a :class:`VisionTransformer` encoder.

    ``forward(images)`` takes normalised images and returns :class:`PretextOutput` with the
    reconstruction loss and the number of hidden patches (``correct`` is 0: nothing is
    classified). The decoder exists only for pre-training; ``encoder`` is saved on its own.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        mask_ratio: float = 0.75,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        c = encoder.config
        if c.stem != "patch":
            raise ConfigError(
                f"MAE needs stem='patch', got stem={c.stem!r}: a convolutional stem mixes neighbouring "
                "patches before masking, so visible tokens would leak the hidden ones; build the encoder "
                "with stem='patch' (masked patch prediction, objective 'mpp', works with any stem)"
            )
        kept_count(c.num_patches, mask_ratio)
        self.encoder = encoder
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.pixels = Pixels(c.in_channels, mean, std)
        self.decoder_config = ViTConfig(
            image_size=c.image_size,
            patch_size=c.patch_size,
            in_channels=c.in_channels,
            num_classes=0,
            width=decoder_width,
            depth=decoder_depth,
            num_heads=decoder_heads,
            mlp_dim=4 * decoder_width,
            pool="gap",
            class_token=False,
            posemb="sincos2d",
            layer_norm_eps=c.layer_norm_eps,
            fused_attention=c.fused_attention,
            dynamic_image_size=c.dynamic_image_size,
        )
        d = self.decoder_config
        self.decoder_embed = nn.Linear(c.width, d.width)
        self.mask_token = nn.Parameter(torch.empty(1, 1, d.width))
        self.decoder_pos = PositionEmbedding("sincos2d", d.grid_size, d.width, 0)
        self.decoder_blocks = nn.ModuleList(Block(d) for _ in range(d.depth))
        self.decoder_norm = nn.LayerNorm(d.width, eps=d.layer_norm_eps)
        self.decoder_pred = nn.Linear(d.width, c.patch_size**2 * c.in_channels)
        self.reset_decoder()

    def reset_decoder(self) -> None:
        """MAE's initialisation: Xavier-uniform Linear layers with zero biases, a N(0, 0.02) mask token."""
        nn.init.normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("encoder."):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def decode(self, tokens: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Encoded (B, prefix + K, D) -> predicted pixels of every patch (B, N, P*P*C)."""
        prefix_tokens = self.encoder.config.num_prefix_tokens
        x = self.decoder_embed(tokens)  # (B, prefix + K, D_dec)
        b, _, d = x.shape
        n = grid[0] * grid[1]
        # the visible tokens back at their positions, the mask token everywhere else: (B, N, D_dec)
        full = (
            self.mask_token.to(x.dtype)
            .expand(b, n, d)
            .scatter(1, keep[..., None].expand(-1, -1, d), x[:, prefix_tokens:])
        )
        full = full + self.decoder_pos(grid).to(x.dtype)
        x = torch.cat([x[:, :prefix_tokens], full], dim=1)
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_pred(self.decoder_norm(x[:, prefix_tokens:]))

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the reconstruction targets (B, N, P*P*C) in float32: pixels in
        [0, 1], and with ``norm_pix_loss`` each patch minus its mean over its P*P*C values,
        divided by sqrt(var + 1e-6) (MAE's unbiased variance)."""
        target = patchify(self.pixels(images), self.encoder.config.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> PretextOutput:
        enc = self.encoder
        check_image(images, enc.config.patch_size)
        patches, grid = enc.embed_patches(images)  # (B, N, D)
        b, n, d = patches.shape
        masking = random_masking(b, n, kept_count(n, self.mask_ratio), generator, patches.device)
        visible = patches.gather(1, masking.keep[..., None].expand(-1, -1, d))  # (B, K, D)
        tokens = encode(enc, enc.add_positions_and_prefix(visible, grid, keep=masking.keep))
        pred = self.decode(tokens, masking.keep, grid).float()
        error = ((pred - self.targets(images)) ** 2).mean(dim=-1)  # (B, N): per-patch MSE
        weight = masking.mask.float()
        loss = (error * weight).sum() / weight.sum()
        return PretextOutput(loss, scalar(0, images.device), scalar(masking.mask.sum(), images.device))

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio}, norm_pix_loss={self.norm_pix_loss}"
