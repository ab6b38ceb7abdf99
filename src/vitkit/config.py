"""ViTConfig and the preset table.

The presets are the rows of the paper's Table 1 (Base, Large, Huge), DeiT's Tiny and Small
(Touvron et al. 2021, Table 1), DeiT's distilled Tiny, Small and Base (with a distillation token),
and small-image presets for 28x28 and 32x32 inputs that fit a laptop CPU. The config is a plain
dataclass so that it can be saved next to every checkpoint as JSON and read back without guessing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

POOLS = ("cls", "gap")
POSEMBS = ("learned", "learned2d", "sincos2d", "none")
STEMS = ("patch", "conv", "bit")
_POSITIVE_INTEGERS = (
    "patch_size",
    "in_channels",
    "width",
    "depth",
    "num_heads",
    "mlp_dim",
    "stem_channels",
    "stem_convs",
)


def from_known_fields(cls: type, d: dict[str, Any]) -> Any:
    """``cls(**d)`` for a dataclass, with a ValueError naming any key that is not one of its fields."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**d)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"expected an int or a pair of ints (height, width), got {value!r}")


@dataclass
class ViTConfig:
    """Everything that defines a Vision Transformer, and nothing that defines how it is trained.

    Names follow the paper's Table 1: ``width`` is the hidden size D, ``depth`` the number of
    layers L, ``mlp_dim`` the MLP size, ``num_heads`` the heads k.
    """

    image_size: tuple[int, int] | int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: str = "cls"  # "cls": the class token's final state; "gap": mean of the patch tokens
    class_token: bool = True  # prepend a learned class token (required by pool="cls")
    distill_token: bool = False  # DeiT's distillation token, after the class token, with a second head
    register_tokens: int = 0  # Darcet et al. 2024's registers: learned prefix tokens with no position row
    posemb: str = "learned"  # "learned" (1-D), "learned2d" (row/column, App. D.4), "sincos2d", "none"
    fc_norm: bool = False  # timm's GAP layout: final LayerNorm after pooling instead of before
    representation_size: int | None = None  # pre-logits Linear + tanh (paper sec. 3.1); None: none
    stem: str = "patch"  # "patch": one linear map per patch; "conv": a small 3x3 CNN; "bit": the paper's hybrid
    stem_channels: int = 64  # width of the convolutional stem ("conv"), or of the BiT ResNet's root ("bit")
    stem_units: tuple[int, ...] = (3, 4, 9)  # stem="bit": residual units per ResNet stage (R50+ViT-B/16's)
    stem_convs: int = 1  # 3x3 convolutions per stage of the conv stem: one halves the size, the rest keep it
    qkv_bias: bool = True
    gelu_approximate: bool = False  # tanh-approximated GELU, as Flax's nn.gelu in Google's JAX models
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth rate of the last block (linearly increasing)
    dynamic_image_size: bool = False  # accept other input sizes: pad and resample the position grid
    fused_attention: bool = True  # torch SDPA; the explicit path is used whenever attention is asked for
    class_names: list[str] | None = field(default=None)  # label names, kept with the checkpoint

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size)
        if isinstance(self.stem_units, list):  # read back from JSON
            self.stem_units = tuple(self.stem_units)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field and how to fix it."""
        if self.pool not in POOLS:
            raise ConfigError(f"pool={self.pool!r} is not one of {POOLS}")
        if self.posemb not in POSEMBS:
            raise ConfigError(f"posemb={self.posemb!r} is not one of {POSEMBS}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem={self.stem!r} is not one of {STEMS}")
        if self.pool == "cls" and not self.class_token:
            raise ConfigError("pool='cls' needs class_token=True; use pool='gap' to average the patch tokens")
        if self.distill_token and not self.class_token:
            raise ConfigError(
                "distill_token=True needs class_token=True (DeiT puts the distillation token right after the "
                "class token); set class_token=True, or distill_token=False"
            )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name}={value!r} must be true or false")
        for name in _POSITIVE_INTEGERS:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        r = self.register_tokens
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"register_tokens={self.register_tokens!r} must be a whole number >= 0 (0: no registers)")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes={self.num_classes} must be >= 0 (0 means no classifier head)")
        if self.width % self.num_heads:
            raise ConfigError(
                f"width={self.width} is not divisible by num_heads={self.num_heads}; "
                "each head gets width/num_heads dimensions"
            )
        if self.posemb == "learned2d" and self.width % 2:
            raise ConfigError(f"posemb='learned2d' concatenates two width/2 halves; width={self.width} is odd")
        if self.posemb == "sincos2d" and self.width % 4:
            raise ConfigError(f"posemb='sincos2d' needs width divisible by 4, got width={self.width}")
        if self.stem == "bit":
            self._validate_bit()
        h, w = self.image_size
        if not self.dynamic_image_size and (h % self.patch_size or w % self.patch_size):
            p, side = self.patch_size, max(h, w)
            raise ConfigError(
                f"an input of {h}x{w} px does not divide into patches of {p} px: give --image-size (plus twice --pad) "
                f"a multiple of {p}, e.g. {max(p, side // p * p)} or {-(-side // p) * p}, or pad each image up to "
                "one with --set dynamic_image_size=True (Python: image_size=, dynamic_image_size=True)"
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(f"{len(self.class_names)} class_names given for num_classes={self.num_classes}")
        for name in ("dropout", "attention_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")

    def _validate_bit(self) -> None:
        units = self.stem_units
        if not isinstance(units, tuple) or not all(isinstance(u, int) and u >= 1 for u in units):
            raise ConfigError(f"stem_units={units!r} must be a list of positive unit counts per stage, e.g. [3, 4, 9]")
        if self.stem_channels % 32:
            raise ConfigError(
                f"stem='bit' normalises in 32 groups (GroupNorm(32)); stem_channels={self.stem_channels} "
                "must be a multiple of 32, e.g. 64 as in BiT"
            )
        stride = bit_stride(len(units))
        if self.patch_size % stride:
            raise ConfigError(
                f"stem='bit' with {len(units)} stage(s) has stride {stride}; patch_size={self.patch_size} must be "
                f"a multiple of it ({stride} for the paper's 1x1 patches of the feature map)"
            )

    # ----------------------------------------------------------- derived sizes
    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along (height, width): the paper's N = HW/P^2 is their product."""
        h, w = self.image_size
        p = self.patch_size
        return (-(-h // p), -(-w // p))

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def prefix_tokens(self) -> tuple[str, ...]:
        """The parameters holding the tokens before the patches, in their fixed order: the class
        token, DeiT's distillation token, then the ``register_tokens`` registers (one (1, R, D)
        parameter, timm's ``reg_token``). The first :attr:`num_prefix_rows` tokens have a row of a
        learned 1-D position table (the rows come first, in the same order); registers have none:
        Darcet et al. 2024 (sec. 3) add them as position-free scratch space, so their order is
        meaningless and a position would only tie each one to a slot."""
        cls = ("cls_token",) if self.class_token else ()
        dist = ("dist_token",) if self.distill_token else ()
        return cls + dist + (("reg_token",) if self.register_tokens else ())

    @property
    def num_prefix_rows(self) -> int:
        """Prefix tokens that have a position row: the class and distillation tokens."""
        return int(self.class_token) + int(self.distill_token)

    @property
    def num_prefix_tokens(self) -> int:
        """Class, distillation and register tokens: what attention maps, features, pooling and
        rollout leave out of the patch grid."""
        return self.num_prefix_rows + self.register_tokens

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def flops(self, image_size: tuple[int, int] | int | None = None) -> int:
        """Forward FLOPs of one image (2 per multiply-add), counted from the architecture.

        Counts the matrix products (patch projection, q/k/v, q.k^T, attention-weighted v,
        output projection, MLP, pre-logits, heads); norms, softmax and GELU are left out, as
        is usual. ViT-B/16 at 224 is 35.1 GFLOPs by this count (17.6 G multiply-adds).
        """
        h, w = _pair(image_size) if image_size is not None else self.image_size
        p = self.patch_size
        n = (-(-h // p)) * (-(-w // p))
        t = n + self.num_prefix_tokens
        d, m = self.width, self.mlp_dim
        if self.stem == "patch":
            stem = 2 * n * self.in_channels * p * p * d
        elif self.stem == "conv":
            stem = self._conv_stem_flops(h, w)
        else:
            stem = self._bit_stem_flops(h, w)
        per_block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * m
        head_in = d
        total = stem + self.depth * per_block
        heads = 2 if self.distill_token and self.num_classes else 1  # the distillation head reads its own token
        if self.representation_size:
            total += heads * 2 * d * self.representation_size
            head_in = self.representation_size
        total += heads * 2 * head_in * self.num_classes
        return total

    def _conv_stem_flops(self, h: int, w: int) -> int:
        flops, c_in = 0, self.in_channels
        for c_out, k, s in conv_stem_layers(self.patch_size, self.stem_channels, self.width, self.stem_convs):
            h, w = -(-h // s), -(-w // s)
            flops += 2 * h * w * c_in * c_out * k * k
            c_in = c_out
        return flops

    def _bit_stem_flops(self, h: int, w: int) -> int:
        """The BiT ResNet's convolutions ("SAME" padding: each stride rounds up) and the projection."""
        flops, c_in = 0, self.in_channels
        h, w = -(-h // 2), -(-w // 2)
        flops += 2 * h * w * c_in * self.stem_channels * 49  # root 7x7 stride 2
        h, w, c_in = -(-h // 2), -(-w // 2), self.stem_channels  # 3x3 max pool, stride 2
        for i, (units, c_out) in enumerate(
            zip(self.stem_units, bit_stage_channels(self.stem_channels, len(self.stem_units)), strict=True)
        ):
            mid = c_out // 4
            for u in range(units):
                h0, w0 = h, w
                if u == 0 and i > 0:
                    h, w = -(-h // 2), -(-w // 2)
                flops += 2 * h0 * w0 * c_in * mid + 2 * h * w * mid * mid * 9 + 2 * h * w * mid * c_out
                if u == 0:
                    flops += 2 * h * w * c_in * c_out  # projected shortcut
                c_in = c_out
        k = self.patch_size // bit_stride(len(self.stem_units))
        return flops + 2 * (-(-h // k)) * (-(-w // k)) * c_in * self.width * k * k

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["stem_units"] = list(self.stem_units)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        return from_known_fields(cls, d)

    def replace(self, **overrides: Any) -> ViTConfig:
        """A copy with some fields changed; an unknown field is a ValueError naming it."""
        d = self.to_dict()
        unknown = sorted(set(overrides) - set(d))
        if unknown:
            raise ConfigError(f"unknown ViTConfig field(s) {unknown}; known fields: {sorted(d)}")
        d.update(overrides)
        return ViTConfig.from_dict(d)


def conv_stem_layers(patch_size: int, channels: int, width: int, per_stage: int = 1) -> list[tuple[int, int, int]]:
    """(out_channels, kernel, stride) of the hybrid stem: a stage of 3x3 convolutions while the
    patch size stays even, each stage halving the size with its first convolution and doubling
    the channels, then one projection whose kernel and stride are what remains (1x1 when the
    patch size is a power of two: the paper's "patches of spatial size 1x1").

    ``per_stage`` > 1 adds stride-1 convolutions to every stage, as Xiao et al. 2021 ("Early
    convolutions help transformers see better") interleave them: more of a CNN's locality and
    depth before the tokens, at the cost of convolutions at the stem's resolutions."""
    layers, remaining, c = [], patch_size, channels
    while remaining % 2 == 0:
        layers += [(c, 3, 2)] + [(c, 3, 1)] * (per_stage - 1)
        remaining //= 2
        c *= 2
    layers.append((width, remaining, remaining))
    return layers


def bit_stride(num_stages: int) -> int:
    """The BiT ResNet's total stride: 4 from its root block (stride-2 conv, stride-2 pool), then 2
    for every stage after the first (R50+ViT-B/16's three stages: 16; R26's four: 32)."""
    return 4 * 2 ** max(num_stages - 1, 0)


def bit_stage_channels(root_channels: int, num_stages: int) -> list[int]:
    """Output channels of each BiT ResNet stage: 4x the root's, doubling per stage (256, 512, 1024,
    2048 for BiT's root of 64); the bottleneck inside is a quarter of it."""
    return [4 * root_channels * 2**i for i in range(num_stages)]


# --------------------------------------------------------------------------- presets
def _row(width: int, depth: int, mlp_dim: int, num_heads: int, patch: int, **kw: Any) -> dict[str, Any]:
    return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, patch_size=patch, **kw)


# Paper Table 1 (B, L, H) and DeiT Table 1 (Ti, S); ImageNet-size defaults (224, 1000 classes).
_TI, _S = (192, 12, 768, 3), (384, 12, 1536, 6)
_B, _L, _H = (768, 12, 3072, 12), (1024, 24, 4096, 16), (1280, 32, 5120, 16)
_SMALL_IMAGE = dict(num_classes=10)

PRESETS: dict[str, dict[str, Any]] = {
    "vit_ti16": _row(*_TI, 16),
    "vit_s16": _row(*_S, 16),
    "vit_s32": _row(*_S, 32),
    "vit_b16": _row(*_B, 16),
    "vit_b32": _row(*_B, 32),
    "vit_l16": _row(*_L, 16),
    "vit_l32": _row(*_L, 32),
    "vit_h14": _row(*_H, 14),
    # DeiT's distilled models (Touvron et al. 2021, sec. 5): a distillation token and a second head.
    "deit_ti16_distilled": _row(*_TI, 16, distill_token=True),
    "deit_s16_distilled": _row(*_S, 16, distill_token=True),
    "deit_b16_distilled": _row(*_B, 16, distill_token=True),
    # The paper's hybrids (sec. 3.1, App. D.2): a BiT ResNet's stride-16 (R50, 3 stages) or stride-32
    # (R26, AugReg's) feature map as 1x1 patches; the sizes of timm's vit_base_r50_s16_384, vit_small_r26_s32_224.
    "vit_r50_b16": _row(*_B, 16, stem="bit", stem_units=(3, 4, 9), image_size=384),
    "vit_r26_s32": _row(*_S, 32, stem="bit", stem_units=(2, 2, 2, 2)),
    # Small images (Fashion-MNIST, MNIST: 28x28x1; CIFAR: 32x32x3). Patch 4 gives a 7x7 / 8x8 grid.
    "vit_tiny_28": _row(192, 6, 384, 3, 4, image_size=28, in_channels=1, **_SMALL_IMAGE),
    "vit_small_28": _row(256, 8, 512, 4, 4, image_size=28, in_channels=1, **_SMALL_IMAGE),
    "vit_tiny_32": _row(192, 6, 384, 3, 4, image_size=32, in_channels=3, **_SMALL_IMAGE),
    "vit_small_32": _row(256, 8, 512, 4, 4, image_size=32, in_channels=3, **_SMALL_IMAGE),
}

_DESCRIPTIONS = {
    "vit_ti16": "DeiT-Ti/16",
    "vit_s16": "DeiT-S/16",
    "vit_s32": "S/32",
    "vit_b16": "ViT-B/16 (paper Table 1)",
    "vit_b32": "ViT-B/32 (paper Table 1)",
    "vit_l16": "ViT-L/16 (paper Table 1)",
    "vit_l32": "ViT-L/32 (paper Table 1)",
    "vit_h14": "ViT-H/14 (paper Table 1)",
    "deit_ti16_distilled": "DeiT-Ti/16 with distillation token (DeiT sec. 5)",
    "deit_s16_distilled": "DeiT-S/16 with distillation token (DeiT sec. 5)",
    "deit_b16_distilled": "DeiT-B/16 with distillation token (DeiT sec. 5)",
    "vit_r50_b16": "R50+ViT-B/16 hybrid at 384 px (paper sec. 3.1)",
    "vit_r26_s32": "R26+ViT-S/32 hybrid (AugReg)",
    "vit_tiny_28": "28x28 grayscale, 7x7 grid",
    "vit_small_28": "28x28 grayscale, 7x7 grid",
    "vit_tiny_32": "32x32 RGB, 8x8 grid",
    "vit_small_32": "32x32 RGB, 8x8 grid",
}

_SIZE_LETTERS = {
    "ti": "ti",
    "tiny": "ti",
    "s": "s",
    "small": "s",
    "b": "b",
    "base": "b",
    "l": "l",
    "large": "l",
    "h": "h",
    "huge": "h",
}


def canonical_name(name: str) -> str:
    """Map a preset spelling to its key: ``"ViT-B/16"``, ``"vit-b16"``, ``"vit_base_patch16_224"``
    and ``"vit_b16"`` all name the same row; so do timm's ``"deit_base_distilled_patch16_224"``
    and ``"deit_b16_distilled"``."""
    key = name.strip().lower()
    if key in PRESETS:
        return key
    m = re.fullmatch(r"vit[-_ ]?(ti|tiny|s|small|b|base|l|large|h|huge)[/_-]?(?:patch)?(\d+)(?:_224)?", key)
    if m:
        candidate = f"vit_{_SIZE_LETTERS[m.group(1)]}{m.group(2)}"
        if candidate in PRESETS:
            return candidate
    hybrid = (  # "R50+ViT-B/16" (the paper's spelling) and timm's "vit_base_r50_s16_384"
        r"(?:vit[-_ ]?)?r(?P<resnet>26|50)\+?[-_ ]?vit[-_ ]?(?P<size>ti|tiny|s|small|b|base)[/_-](?:patch)?(?P<p>\d+)",
        r"vit_(?P<size>ti|tiny|s|small|b|base)_r(?P<resnet>26|50)_s(?P<p>\d+)(?:_\d+)?",
    )
    m = next((m for m in (re.fullmatch(pattern, key) for pattern in hybrid) if m), None)
    if m:
        candidate = f"vit_r{m['resnet']}_{_SIZE_LETTERS[m['size']]}{m['p']}"
        if candidate in PRESETS:
            return candidate
    m = re.fullmatch(r"deit[-_ ]?(ti|tiny|s|small|b|base)[_-]distilled[/_-](?:patch)?(\d+)(?:_224)?", key)
    if m:
        candidate = f"deit_{_SIZE_LETTERS[m.group(1)]}{m.group(2)}_distilled"
        if candidate in PRESETS:
            return candidate
    raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (see `vitkit presets`)")


def list_presets() -> list[str]:
    """The preset names accepted by :func:`create_model`, in the order ``vitkit presets`` prints.

    Returns:
        The canonical names such as ``"vit_b16"``; ``create_model`` also accepts the paper's
        spelling, ``"ViT-B/16"``, and timm's names for the same rows.
    """
    return list(PRESETS)


def preset_description(name: str) -> str:
    return _DESCRIPTIONS.get(canonical_name(name), "")


def get_config(name: str, **overrides: Any) -> ViTConfig:
    """The preset's config with ``overrides`` applied (an unknown field is a ValueError)."""
    return ViTConfig(**PRESETS[canonical_name(name)]).replace(**overrides)
