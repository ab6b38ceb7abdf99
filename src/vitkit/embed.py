"""Patch embedding, class token and position embeddings: the paper's equation (1).

    z_0 = [x_class; x_p^1 E; x_p^2 E; ...; x_p^N E] + E_pos

``PatchEmbed`` is ``x_p E``; the position-embedding modules give ``E_pos``. The model adds the
patch rows of ``E_pos`` to the patches first and then prepends the prefix tokens (the class token
and DeiT's distillation token, each plus its row of ``E_pos`` where the option has rows, then the
register tokens, which have no row), which is the same sum written in one fixed order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import conv_stem_layers
from .errors import ConfigError


class PatchEmbed(nn.Module):
    """Cut the image into P x P patches, flatten each and multiply by one matrix E (D x P*P*C).

    A stride-P convolution with a P x P kernel computes exactly that product for every patch at
    once, and its weights are the same numbers as E laid out as (D, C, P, P), so checkpoints that
    store E as a conv kernel (timm, Hugging Face, the JAX originals) load directly.
    """

    def __init__(self, patch_size: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H, W) -> (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # -> (B, N, D), patches in row-major order


def pi_resize_kernel(
    kernel: torch.Tensor, new_size: int | tuple[int, int], interpolation: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """A patch-embedding kernel (D, C, p, p) resized to another patch size by FlexiViT's PI-resize
    (Beyer et al. 2023, sec. 3.4).

    Resizing a patch x (p x p) to p' x p' is a linear map B (p'^2 x p^2). The kernel w' that gives
    every resized patch the token the original gave the original, <B x, w'> = <x, w> for all x,
    is w' = pinv(B^T) w. Upsampling (p' > p) meets that exactly; downsampling loses detail and
    w' is the least-squares best. B is built by resizing each of the p^2 one-hot patches with
    ``F.interpolate`` (bicubic with antialiasing, timm's ``resample_patch_embed`` default, so
    that both give the same kernel)."""
    new = (new_size, new_size) if isinstance(new_size, int) else tuple(new_size)
    old = tuple(kernel.shape[-2:])
    if new == old:
        return kernel
    basis = torch.eye(old[0] * old[1], dtype=torch.float32).reshape(-1, 1, *old)  # every one-hot patch
    mode = {"bicubic": "bicubic", "bilinear": "bilinear"}[interpolation]
    resized = F.interpolate(basis, size=new, mode=mode, antialias=antialias, align_corners=False)
    b = resized.reshape(old[0] * old[1], -1).T.double()  # (p'^2, p^2): column j is B applied to one-hot j
    pinv = torch.linalg.pinv(b.T)  # (p'^2, p^2)
    flat = kernel.double().reshape(*kernel.shape[:2], -1)  # (D, C, p^2)
    return (flat @ pinv.T).reshape(*kernel.shape[:2], *new).to(kernel.dtype)


class ChannelsLastConv2d(nn.Conv2d):
    """A Conv2d that runs in the channels-last (NHWC) layout, the one oneDNN's CPU kernels are
    fastest in: its small weight is reordered at each call (its gradient flows back to the usual
    NCHW parameter), so checkpoints, EMA and DDP see an ordinary Conv2d.

    The output is made channels-last too. With one input channel (a grayscale image) torch cannot
    tell the layouts apart and the first conv answers in NCHW; the BatchNorm and ReLU after it would
    then save NCHW tensors while their gradients come back channels-last from the next conv, and
    the ReLU's backward over mixed layouts is over ten times slower."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(x, self.weight.contiguous(memory_format=torch.channels_last), self.bias)
        return y.contiguous(memory_format=torch.channels_last)


class ConvStem(nn.Module):
    """The paper's hybrid input (sec. 3.1): a small CNN's feature map, cut into 1x1 patches.

    Convolutions bring the locality prior that a plain ViT lacks, which is what wins when data or
    compute are short (the convolutional tokenizers of CCT and of Xiao et al. 2021, "Early
    convolutions help transformers see better", make the same point). The total stride equals ``patch_size``, so the token grid and
    everything after the stem is the same as with ``PatchEmbed``.
    """

    def __init__(self, patch_size: int, in_channels: int, width: int, channels: int = 64, per_stage: int = 1) -> None:
        super().__init__()
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        c_in = in_channels
        *convs, (c_out, k, s) = conv_stem_layers(patch_size, channels, width, per_stage)
        for c, kernel, stride in convs:
            layers += [
                ChannelsLastConv2d(c_in, c, kernel, stride, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = ChannelsLastConv2d(c_in, c_out, kernel_size=k, stride=s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.convs(x))  # (B, C, H, W) -> (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # -> (B, N, D)


# ----------------------------------------------------------------------------- position embeddings
POSEMB_RESAMPLE = ("bicubic", "bilinear")


def resample_grid(
    posemb: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resample (1, gh*gw, D) patch position embeddings to a new grid on the 2-D grid.

    This is how the paper fine-tunes at higher resolution (sec. 3.2): "2D interpolation of the
    pre-trained position embeddings, according to their location in the original image".
    ``bicubic`` (antialiased, which only matters when shrinking) is timm's rule and does better in
    practice; ``bilinear`` is the official code's, ``scipy.ndimage.zoom(order=1)``, which maps
    the grid's corner cells onto each other (``align_corners=True``), for reproducing its numbers.
    """
    if mode not in POSEMB_RESAMPLE:
        raise ConfigError(f"posemb_resample={mode!r}: choose one of {', '.join(POSEMB_RESAMPLE)}")
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    dim = posemb.shape[-1]
    dtype = posemb.dtype
    grid = posemb.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, D, gh, gw)
    if mode == "bilinear":
        grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=True)
    else:
        grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(dtype)


def _resample_axis(table: torch.Tensor, size: int) -> torch.Tensor:
    """Linear resampling of a (length, D) table of one axis to (size, D)."""
    if table.shape[0] == size:
        return table
    out = F.interpolate(table.T[None].float(), size=size, mode="linear", align_corners=False)
    return out[0].T.contiguous().to(table.dtype)


def sincos2d(grid: tuple[int, int], dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding (1, gh*gw, D): a quarter of the channels each for
    sin(y), cos(y), sin(x), cos(x) at geometrically spaced frequencies (as in big_vision)."""
    gh, gw = grid
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / max(quarter - 1, 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


class PositionEmbedding(nn.Module):
    """E_pos for one of the paper's options (appendix D.4), with a fixed calling convention.

    ``forward(grid)`` returns the patch rows, shape (1, gh*gw, D), for a grid that may differ from
    the one it was built for (then learned tables are resampled); ``prefix`` holds the rows of the
    ``num_prefix_tokens`` prefix tokens that have one, (1, prefix, D), for the option that has
    them, else ``None``. Register tokens are not counted here: they have no row.

    - ``learned``: one learned vector per position, 1-D, the paper's default. With a class token
      the table has N+1 rows, row 0 for the class token, exactly the paper's E_pos (and timm's
      ``pos_embed`` layout); with DeiT's distillation token too, N+2 rows, row 1 for it. Only
      the prefix rows stay put when the grid is resampled.
    - ``learned2d``: an X table and a Y table of D/2 each, concatenated per patch.
    - ``sincos2d``: fixed, not trained; a non-persistent buffer recomputed for any grid.
    - ``none``: no position information at all: the encoder then sees a bag of patches.
    """

    def __init__(self, kind: str, grid: tuple[int, int], width: int, num_prefix_tokens: int) -> None:
        super().__init__()
        self.kind = kind
        self.grid = tuple(grid)
        self.width = width
        self.num_prefix_tokens = num_prefix_tokens if kind == "learned" else 0
        gh, gw = self.grid
        if kind == "learned":
            self.weight = nn.Parameter(torch.empty(1, self.num_prefix_tokens + gh * gw, width))
            nn.init.normal_(self.weight, std=0.02)
        elif kind == "learned2d":
            self.row = nn.Parameter(torch.empty(gh, width // 2))  # Y embedding
            self.col = nn.Parameter(torch.empty(gw, width // 2))  # X embedding
            nn.init.normal_(self.row, std=0.02)
            nn.init.normal_(self.col, std=0.02)
        elif kind == "sincos2d":
            self.register_buffer("table", sincos2d(self.grid, width), persistent=False)
        elif kind != "none":
            raise ConfigError(f"unknown position embedding {kind!r}")

    @property
    def prefix(self) -> torch.Tensor | None:
        if self.kind == "learned" and self.num_prefix_tokens:
            return self.weight[:, : self.num_prefix_tokens]
        return None

    def forward(self, grid: tuple[int, int]) -> torch.Tensor | None:
        grid = tuple(grid)
        if self.kind == "learned":
            patches = self.weight[:, self.num_prefix_tokens :]
            return resample_grid(patches, self.grid, grid)
        if self.kind == "learned2d":
            row, col = self.row, self.col
            if grid != self.grid:  # 1-D resampling of each axis
                row, col = _resample_axis(row, grid[0]), _resample_axis(col, grid[1])
            gh, gw = grid
            # (gh, 1, D/2) and (1, gw, D/2) broadcast to (gh, gw, D): [x-embedding, y-embedding]
            table = torch.cat([col[None, :, :].expand(gh, gw, -1), row[:, None, :].expand(gh, gw, -1)], dim=-1)
            return table.reshape(1, gh * gw, self.width)
        if self.kind == "sincos2d":
            if grid == self.grid:
                return self.table
            return sincos2d(grid, self.width).to(self.table.device)
        return None

    def resample_(self, new_grid: tuple[int, int], mode: str = "bicubic") -> None:
        """Resample the learned tables in place to ``new_grid`` (for loading at another size);
        ``mode`` as :func:`resample_grid` (a 2-D table of per-axis rows is resampled linearly)."""
        new_grid = tuple(new_grid)
        if new_grid == self.grid:
            return
        with torch.no_grad():
            if self.kind == "learned":
                prefix = self.weight[:, : self.num_prefix_tokens]
                patches = resample_grid(self.weight[:, self.num_prefix_tokens :], self.grid, new_grid, mode)
                self.weight = nn.Parameter(torch.cat([prefix, patches], dim=1))
            elif self.kind == "learned2d":
                self.row = nn.Parameter(_resample_axis(self.row, new_grid[0]))
                self.col = nn.Parameter(_resample_axis(self.col, new_grid[1]))
            elif self.kind == "sincos2d":
                self.table = sincos2d(new_grid, self.width).to(self.table.device)
        self.grid = new_grid

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, grid={self.grid}, width={self.width}"


def lecun_normal_(tensor: torch.Tensor) -> torch.Tensor:
    """LeCun normal (truncated), the JAX reference's initialiser for the patch projection."""
    fan_in = tensor[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # correct for truncation at 2 std
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)
