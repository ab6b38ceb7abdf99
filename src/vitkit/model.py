"""The Vision Transformer (paper sec. 3.1, eqs. 1-4).

    z_0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos        (1)  embed.py
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                      (2)  Block, attention.py
    z_l  = MLP(LN(z'_l)) + z'_l                            (3)  Block
    y    = LN(z_L^0)                                       (4)  VisionTransformer.forward_head

``forward_features`` returns all token states (and, when asked, every layer's attention);
``forward_head`` pools them (class token or mean of the patches) and classifies, so features,
logits and attention all come from one forward pass. ``forward_intermediates`` returns the
token states after chosen blocks, as timm's method of that name does.

DeiT (Touvron et al. 2021, sec. 5) adds a distillation token after the class token, with a row
of its own in E_pos and a head of its own that learns from a teacher's predictions; at test time
the model averages the two heads. Registers (Darcet et al. 2024, "Vision Transformers Need
Registers") are learned tokens after those, without a position row, that no head reads: they
give the model somewhere other than background patches to park global computation. The prefix
tokens (class, distillation, registers, then the patches) are one mechanism:
``ViTConfig.prefix_tokens`` names them in order and everything that separates them from the
patches counts them with ``num_prefix_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .config import ViTConfig
from .embed import ConvStem, PatchEmbed, PositionEmbedding, lecun_normal_, pi_resize_kernel
from .errors import ConfigError, InputError
from .hybrid import HybridEmbed


class MLP(nn.Module):
    """Two layers with a GELU non-linearity (paper sec. 3.1): D -> mlp_dim -> D."""

    def __init__(self, width: int, mlp_dim: int, dropout: float = 0.0, gelu_approximate: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.act = nn.GELU(approximate="tanh" if gelu_approximate else "none")
        self.fc2 = nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a whole residual branch per sample
    with probability ``p`` and scale the kept ones by 1/(1-p); the identity in ``eval()``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """One encoder layer: pre-LayerNorm, attention and MLP, each added back to the residual stream."""

    def __init__(self, config: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.attn = MultiHeadAttention(
            c.width, c.num_heads, c.qkv_bias, c.attention_dropout, c.dropout, fused=c.fused_attention
        )
        self.norm2 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.mlp = MLP(c.width, c.mlp_dim, c.dropout, c.gelu_approximate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attn(self.norm1(x), return_attention)
        x = x + self.drop_path(a)  # eq. (2)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # eq. (3)
        return x, probs


class VisionTransformer(nn.Module):
    """One ViT whose options (pooling, position embedding, stem, pre-logits) come from ``ViTConfig``.

    Only the modules the config uses are built, so no parameter sits unused (DDP needs that).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        if c.stem == "patch":
            self.patch_embed: nn.Module = PatchEmbed(c.patch_size, c.in_channels, c.width)
        elif c.stem == "conv":
            self.patch_embed = ConvStem(c.patch_size, c.in_channels, c.width, c.stem_channels, c.stem_convs)
        else:  # "bit": the paper's R50+ViT hybrid
            self.patch_embed = HybridEmbed(c.patch_size, c.in_channels, c.width, c.stem_units, c.stem_channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width)) if c.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.width)) if c.distill_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, c.register_tokens, c.width)) if c.register_tokens else None
        self.pos_embed = PositionEmbedding(c.posemb, c.grid_size, c.width, c.num_prefix_rows)
        self.pos_drop = nn.Dropout(c.dropout)
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]  # linear decay rule
        self.blocks = nn.ModuleList(Block(c, r) for r in rates)
        self.norm = nn.LayerNorm(c.width, eps=c.layer_norm_eps) if not c.fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(c.width, eps=c.layer_norm_eps) if c.fc_norm else nn.Identity()
        if c.representation_size:
            self.pre_logits: nn.Module = nn.Sequential(nn.Linear(c.width, c.representation_size), nn.Tanh())
            head_in = c.representation_size
        else:
            self.pre_logits = nn.Identity()
            head_in = c.width
        self.head = nn.Linear(head_in, c.num_classes) if c.num_classes else nn.Identity()
        # DeiT's second head, on the distillation token; without classes there is nothing to distil
        self.head_dist = nn.Linear(head_in, c.num_classes) if c.distill_token and c.num_classes else None
        self.distilled_training = False  # see set_distilled_training
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Initialise as the JAX reference code does: Xavier-uniform Linear layers (q, k, v each on
        its own), tiny MLP biases, LeCun-normal patch projection, zero class token and a
        zero-initialised head, so that a fresh model predicts the uniform distribution.

        The distillation head is zero-initialised too, but the distillation token is drawn from a
        normal of std 0.02 (``trunc_normal_(std=.02)`` as in timm and DeiT's code, whose cut at the
        absolute +-2 never bites): were it zero like the class token, the two tokens would differ
        only by their position rows, and with ``posemb`` "sincos2d" or "none" (no prefix rows) not
        at all, so both heads would read the same state and the distillation token could not
        become a separate representation. Registers are drawn the same way for the same reason:
        with no position row, equal registers would stay equal forever (attention treats equal
        tokens alike), i.e. be one register counted R times. timm and DINOv2 draw them at std 1e-6,
        which breaks that symmetry too, but slowly."""
        if self.config.stem == "patch" and not self.patch_embed.proj.weight.is_meta:
            lecun_normal_(self.patch_embed.proj.weight)
            nn.init.zeros_(self.patch_embed.proj.bias)
        for name, m in self.named_modules():
            if not isinstance(m, nn.Linear) or m.weight.is_meta:
                continue
            if name.endswith("qkv"):
                for w in m.weight.chunk(3, dim=0):  # W_q, W_k, W_v are three (D, D) matrices
                    nn.init.xavier_uniform_(w)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                if ".mlp." in f".{name}":
                    nn.init.normal_(m.bias, std=1e-6)
                else:
                    nn.init.zeros_(m.bias)
        for head in (self.head, self.head_dist):
            if isinstance(head, nn.Linear) and not head.weight.is_meta:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        for token in (self.dist_token, self.reg_token):
            if token is not None and not token.is_meta:
                nn.init.trunc_normal_(token, std=0.02)

    # ------------------------------------------------------------------ input checks
    def _grid_for(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Check the batch against the config; pad when sizes may vary. Returns (x, token grid)."""
        c = self.config
        if x.ndim != 4:
            raise InputError(f"expected a 4-D image batch (batch, channels, height, width), got shape {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise InputError(
                f"expected {c.in_channels} channel(s), got {x.shape[1]} (input shape {tuple(x.shape)}); "
                "convert the images to the model's channel count"
            )
        h, w = x.shape[-2:]
        p = c.patch_size
        if (h, w) != tuple(c.image_size):
            if not c.dynamic_image_size:
                raise InputError(
                    f"expected {c.image_size[0]}x{c.image_size[1]} images, got {h}x{w}; resize the input, "
                    "or build the model with dynamic_image_size=True (or image_size=...) to resample"
                )
            if h < p or w < p:
                raise InputError(f"image {h}x{w} is smaller than one {p}x{p} patch")
        if h % p or w % p:
            if not c.dynamic_image_size:
                raise InputError(f"image size {h}x{w} is not divisible by patch size {p}")
            x = F.pad(x, (0, (-w) % p, 0, (-h) % p))  # pad right and bottom to whole patches
        return x, (math.ceil(h / p), math.ceil(w / p))

    # ------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1): images (B, C, H, W) -> token sequence z_0 (B, prefix + N, D)."""
        return self._embed(x)[0]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """:meth:`embed`, and the token grid it used (H/P, W/P)."""
        x, grid = self.embed_patches(x)
        return self.add_positions_and_prefix(x, grid), grid

    def embed_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> the patch embeddings x_p E (B, N, D) of eq. (1), before any
        position is added, and the token grid (H/P, W/P). Masked pre-training corrupts or drops
        patches here, between the projection and :meth:`add_positions_and_prefix`."""
        x, grid = self._grid_for(x)
        return self.patch_embed(x), grid

    def add_positions_and_prefix(
        self, x: torch.Tensor, grid: tuple[int, int], keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The rest of eq. (1): patch embeddings (B, N, D) -> z_0 (B, prefix + N, D).

        Adds the patch rows of E_pos, then prepends the prefix tokens with their own rows. With
        ``keep`` (B, K) of patch indices, ``x`` holds only those K patches (B, K, D) and each gets
        the position row of the patch it came from (MAE's encoder sees the visible patches only).
        """
        pos = self.pos_embed(grid)  # (1, N, D) or None
        if pos is not None:
            if keep is not None:  # (1, N, D) -> (B, K, D): the rows of the kept patches
                pos = pos.expand(x.shape[0], -1, -1).gather(1, keep[..., None].expand(-1, -1, pos.shape[-1]))
            x = x + pos.to(x.dtype)
        prefix = self.prefix_tokens()
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B, prefix + N, D)
        return self.pos_drop(x)

    def prefix_tokens(self) -> torch.Tensor | None:
        """The tokens prepended to the patches, (1, prefix, D), in ``config.prefix_tokens`` order
        (class, distillation, registers), the first ``num_prefix_rows`` plus their rows of E_pos
        where the option has rows (registers have none); None when the model has none."""
        tokens = [getattr(self, name) for name in self.config.prefix_tokens]
        if not tokens:
            return None
        prefix = torch.cat(tokens, dim=1)  # (1, prefix, D)
        rows = self.pos_embed.prefix  # (1, num_prefix_rows, D) or None
        if rows is None:
            return prefix
        r = rows.shape[1]
        return torch.cat([prefix[:, :r] + rows, prefix[:, r:]], dim=1)

    def forward_features(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Images -> (final token states (B, prefix + N, D), per-layer attention (B, heads, T, T) or ()).

        Eqs. 1-3 and the final LayerNorm, without pooling or head: pass the states on to
        :meth:`forward_head`, so features, logits and attention come from one forward pass.
        ``x`` is (B, C, H, W) at the native size (any size with ``dynamic_image_size``); a size the
        model cannot take raises ``InputError`` naming it.
        """
        x = self.embed(x)
        attentions = []
        for block in self.blocks:
            x, probs = block(x, return_attention)
            if return_attention:
                attentions.append(probs)
        return self.norm(x), tuple(attentions)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        return_prefix_tokens: bool = False,
        intermediates_only: bool = False,
        stop_early: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """The token states after chosen blocks, for features and dense heads (timm's semantics).

        ``indices``: an int n takes the last n blocks, a sequence takes those blocks (negative
        counts from the end), None takes all. Each state has its prefix tokens (class,
        distillation and register tokens) removed and, for ``output_fmt="NCHW"``, is laid out as a
        (B, D, H, W) map of the patch grid; ``"NLC"`` keeps (B, N, D). ``norm`` applies the final LayerNorm to each;
        ``return_prefix_tokens`` pairs each with its (B, prefix, D) prefix tokens. Returns
        (``forward_features``' tokens, intermediates), or only the intermediates. ``stop_early``
        skips the blocks after the last one asked for (only with ``intermediates_only``).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise InputError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = block_indices(len(self.blocks), indices)
        if stop_early and not intermediates_only:
            raise InputError("stop_early=True skips blocks the final features need; pass intermediates_only=True")
        tokens, grid = self._embed(x)
        last = max(take) if stop_early else len(self.blocks) - 1
        states = []
        for i, block in enumerate(self.blocks[: last + 1]):
            tokens, _ = block(tokens)
            if i in take:
                states.append(self.norm(tokens) if norm else tokens)
        n = self.config.num_prefix_tokens
        prefixes = [s[:, :n] for s in states]
        states = [s[:, n:] for s in states]
        if output_fmt == "NCHW":
            states = [s.transpose(1, 2).reshape(s.shape[0], -1, *grid) for s in states]
        out: list = list(zip(states, prefixes, strict=True)) if return_prefix_tokens and n else states
        return out if intermediates_only else (self.norm(tokens), out)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D): the class token's state, or the mean of the patch tokens."""
        if self.config.pool == "cls":
            return tokens[:, 0]
        return tokens[:, self.config.num_prefix_tokens :].mean(dim=1)

    def _represent(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) -> what a head reads: the pooled state after ``fc_norm`` and the pre-logits layer."""
        return self.pre_logits(self.fc_norm(pooled))

    def forward_heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states -> (class logits, distillation logits), each (B, classes).

        The class head reads the model's pooling (class token, or mean of the patches); the
        distillation head reads the distillation token. DeiT trains the first on the labels and
        the second on the teacher's predictions (sec. 5, "distillation token").
        """
        if self.head_dist is None:
            raise InputError(
                f"forward_heads needs a distillation head; this model has distill_token={self.config.distill_token}, "
                f"num_classes={self.config.num_classes}: use forward_head"
            )
        dist = tokens[:, self.config.prefix_tokens.index("dist_token")]
        return self.head(self._represent(self.pool(tokens))), self.head_dist(self._represent(dist))

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Token states -> logits (B, classes), or the pooled representation with ``pre_logits``.

        With a distillation head the logits are the mean of the two heads, as DeiT predicts at test
        time; ``pre_logits`` then still gives the class representation only (the vector the class
        head reads, what probes and ``vitkit embed`` use), where timm averages the two tokens.
        """
        if pre_logits:
            return self._represent(self.pool(tokens))
        if self.head_dist is None:
            return self.head(self._represent(self.pool(tokens)))
        cls, dist = self.forward_heads(tokens)
        return (cls + dist) / 2

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Logits (B, classes); with ``return_attention=True``, (logits, per-layer attention).

        In distilled training (:meth:`set_distilled_training` and ``train()`` mode) the logits are
        the pair (class logits, distillation logits) of :meth:`forward_heads` instead of their mean.
        """
        tokens, attentions = self.forward_features(x, return_attention)
        if self.distilled_training and self.training:
            logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = self.forward_heads(tokens)
        else:
            logits = self.forward_head(tokens)
        return (logits, attentions) if return_attention else logits

    def set_distilled_training(self, enable: bool = True) -> None:
        """Make ``forward`` return (class logits, distillation logits) in training mode, for a
        distillation loss on each (timm's ``VisionTransformerDistilled`` switch of the same name).

        A switch rather than a separate method, because DDP and ``torch.compile`` wrappers only
        call ``forward``. In ``eval()`` mode the model still averages the heads.
        """
        if enable and self.head_dist is None:
            raise ConfigError(
                "set_distilled_training needs a distillation head: build the model with distill_token=True "
                f"and num_classes > 0 (it has distill_token={self.config.distill_token}, "
                f"num_classes={self.config.num_classes})"
            )
        self.distilled_training = enable

    # ------------------------------------------------------------------ utilities
    def resample_image_size(self, image_size: int | tuple[int, int], posemb_resample: str = "bicubic") -> None:
        """Change the native input size, resampling learned position embeddings (sec. 3.2).

        In place: learned tables are interpolated to the new grid, bicubically or, with
        ``posemb_resample="bilinear"``, as the official code does (a sin-cos table is
        recomputed), and ``config.image_size`` becomes ``image_size`` (an int for square images,
        or (height, width)); a size that is not a multiple of the patch size raises ``ConfigError``
        unless ``dynamic_image_size`` pads.
        """
        new = self.config.replace(image_size=image_size)
        self.pos_embed.resample_(new.grid_size, posemb_resample)
        self.config = new

    def no_weight_decay(self) -> set[str]:
        """Parameter names that weight decay should skip: class, distillation and register tokens and
        position tables (norms and biases are recognised by their 1-D shape)."""
        skip = ("cls_token", "dist_token", "reg_token", "pos_embed.")
        return {n for n, _ in self.named_parameters() if n.startswith(skip)}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def resample_patch_size(
        self, patch_size: int, posemb_resample: str = "bicubic", image_size: int | tuple[int, int] | None = None
    ) -> None:
        """Change the patch size (and the input size, if given) in place: the patch embedding's
        kernel PI-resized (FlexiViT, :func:`~vitkit.embed.pi_resize_kernel`), so that each token
        stays what it was, and the position embeddings resampled once, from the old grid to the
        new one, as for a new image size (sec. 3.2). Twice the patch on twice the image keeps the
        grid, and the model answers on the upsampled image as it did on the original.

        A smaller patch is a finer grid (more tokens, more compute, usually more accuracy); a
        larger one is cheaper. Only the plain patch embedding (``stem="patch"``) has a kernel to
        resize."""
        if self.config.stem != "patch":
            raise ConfigError(
                f"patch_size: only a plain patch embedding can be PI-resized; this model has stem={self.config.stem!r}"
            )
        sized = self.config.replace(image_size=image_size) if image_size is not None else self.config
        check_patch_size(sized, patch_size)
        new = self.config.replace(patch_size=patch_size, image_size=sized.image_size)
        old = self.patch_embed.proj
        resized = PatchEmbed(patch_size, new.in_channels, new.width).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        with torch.no_grad():
            resized.proj.weight.copy_(pi_resize_kernel(old.weight, patch_size))
            resized.proj.bias.copy_(old.bias)
        self.patch_embed = resized
        self.pos_embed.resample_(new.grid_size, posemb_resample)
        self.config = new

    def set_fused_attention(self, fused: bool) -> None:
        """Run every block's attention through PyTorch's fused SDPA kernel, or through the written-out
        path (eqs. 6-7). The two compute the same function; which is faster depends on the device
        and on training or inference (:func:`vitkit.runtime.attention_path`). The config keeps the
        path the model was created with."""
        for block in self.blocks:
            block.attn.fused = fused


def check_patch_size(config: ViTConfig, patch_size: int) -> None:
    """A one-line error unless ``patch_size`` divides the model's input (a new patch size for
    :meth:`VisionTransformer.resample_patch_size`), naming sizes that do."""
    h, w = config.image_size
    if patch_size >= 1 and h % patch_size == 0 and w % patch_size == 0:
        return
    fits = [p for p in range(2, min(h, w) + 1) if h % p == 0 and w % p == 0 and p != config.patch_size]
    raise ConfigError(
        f"--patch-size {patch_size} does not divide the model's {h}x{w} input: give one that does, e.g. "
        f"{', '.join(map(str, fits[:6])) or 'none'} (Python: patch_size=)"
    )


def block_indices(depth: int, indices: int | Sequence[int] | None) -> list[int]:
    """Absolute block indices: None -> all, n -> the last n, a sequence -> those (negative from
    the end). An index out of range is an error that names the range."""
    if indices is None:
        indices = depth
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise InputError(f"asked for the last {indices} blocks of {depth}; give 1 to {depth}")
        return list(range(depth - indices, depth))
    take = []
    for i in indices:
        j = depth + i if i < 0 else i
        if not 0 <= j < depth:
            raise InputError(f"block {i} does not exist: the model has blocks 0 to {depth - 1} (or -{depth} to -1)")
        take.append(j)
    if not take:
        raise InputError("no block asked for; give at least one index")
    return take


def count_params(config: ViTConfig) -> int:
    """The parameter count of the model ``config`` describes, built on the meta device (shapes
    only), so that even ViT-H costs no memory."""
    with torch.device("meta"):
        return VisionTransformer(config).num_params()
