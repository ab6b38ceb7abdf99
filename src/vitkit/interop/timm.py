"""timm <-> vitkit: ``timm.models.vision_transformer.VisionTransformer`` weights in both directions.

timm's names are vitkit's (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``mlp.fc1`` ...) except
that timm's ``pos_embed`` is a bare parameter (vitkit: ``pos_embed.weight``). Its table has a
class-token row 0 unless the model has no class token or was built with ``no_embed_class=True``
(FlexiViT and others), where the class token gets no position: vitkit then holds a zero row 0,
which adds the same nothing. timm's GAP models come in two layouts, both in vitkit: the final
LayerNorm before pooling (``fc_norm=False``, the ``*_gap_*`` names) or after it (``fc_norm``).
DeiT's distilled models (``VisionTransformerDistilled``, ``deit_*_distilled_*``) use vitkit's names
too: ``dist_token``, a ``pos_embed`` with two prefix rows (class, distillation) and ``head_dist``;
like vitkit's, their eval forward averages the two heads. Register tokens (``reg_token``, timm's
``reg_tokens=N``) are vitkit's too, after the class token. With ``no_embed_class=True`` (timm's
``vit_*_reg*`` presets) they have no position row, as in vitkit; with timm's default they have one,
a constant added to a learned token, which loading folds into the token (and logs, as timm's own
DINOv2 filter says what it converts); saving writes zero rows there.

A state dict does not say how many heads the model has nor, with a class token, how it pools;
those come from the timm architecture name, which is inferred from the shapes when not given.
Weights are not downloaded: timm (if installed) only builds the named model on the meta device to
read its settings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME
from ..config import ViTConfig, bit_stage_channels, bit_stride
from ..files import atomic_write_bytes, atomic_write_json
from ..model import VisionTransformer
from ..preprocess import Preprocess
from .common import InteropError, build, position_rows, read_state_dict, require_plain, split_position_rows

log = logging.getLogger(__name__)

# timm's size names by width, and their head counts (ViT paper Table 1, DeiT, timm's medium/betwixt/giant).
_SIZE_BY_WIDTH = {192: "tiny", 384: "small", 512: "medium", 640: "betwixt", 768: "base", 1024: "large", 1280: "huge"}
_HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1280: 16, 1408: 16}
# Features of some timm ViTs that vitkit's model does not have, by a parameter name that reveals them.
_UNSUPPORTED = {
    "attn_pool.": "attention pooling (global_pool='map')",
    ".ls1.gamma": "LayerScale (init_values)",
    ".attn.q_norm.": "query/key normalisation (qk_norm)",
    ".attn.norm.": "a norm inside attention (scale_attn_norm)",
    ".mlp.norm.": "a norm inside the MLP (scale_mlp_norm)",
    "norm_pre.": "a LayerNorm before the encoder (pre_norm, CLIP-style)",
    "patch_embed.norm.": "a norm after the patch embedding",
    "patch_embed.backbone.": "a ResNet hybrid stem other than BiT's (vitkit has stem='bit': timm's vit_*_r26/r50_*)",
    ".mlp.fc1_g.": "a gated MLP (SwiGLU)",
}


def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults
TIMM_CROP_PCT = 0.9  # what timm's ViT configurations give crop_pct


def _family_name(config: ViTConfig) -> str:
    """``vit_{size}_patch{P}[_gap]_{image}`` (``deit_{size}_distilled_patch{P}_{image}``): the name
    timm would give this shape, which timm may not register (``vit_tiny_patch4_28``)."""
    size = _SIZE_BY_WIDTH.get(config.width, f"w{config.width}")
    h, w = config.image_size
    img = h if h == w else f"{h}x{w}"
    if config.stem == "bit":
        return f"{_hybrid_family(config)}_{img}"
    if config.distill_token:
        return f"deit_{size}_distilled_patch{config.patch_size}_{img}"
    gap = "_gap" if config.pool == "gap" and not config.class_token and not config.fc_norm else ""
    return f"vit_{size}_patch{config.patch_size}{gap}_{img}"


def timm_name(config: ViTConfig) -> str:
    """A timm architecture name for ``config`` that timm registers: the family's own name when timm
    has it, else the nearest registered one (same size and patch, then same size at patch 16 and
    224 pixels, then the base model at 224).

    The name only picks timm's class and its defaults; :func:`timm_model_args` gives the keyword
    arguments that make the exact model (``timm.create_model(timm_name(c), **timm_model_args(c))``).
    Without timm installed it cannot look: the base model's name, which every timm has.
    """
    name = _family_name(config)
    base = "deit_base_distilled_patch16_224" if config.distill_token else "vit_base_patch16_224"
    timm = _timm()
    if timm is None:
        return base
    if config.stem == "bit":
        return _hybrid_timm_name(config, name, timm)
    family = name.rsplit("_", 1)[0]
    registered = timm.list_models(f"{family}_*")
    if not config.distill_token:
        gap = "_gap_" in name
        registered = [n for n in registered if ("_gap_" in n) == gap and n.count("_") == 3 + gap]
    same_size = re.sub(r"_patch\d+", "_patch16", family) + "_224"
    for candidate in (name, f"{family}_224", *sorted(registered), same_size):
        if candidate in registered or (candidate == same_size and timm.is_model(candidate)):
            return candidate
    return base


def _check_supported(state: Mapping[str, torch.Tensor], source: str) -> None:
    if _is_bit_hybrid(state):  # the one ResNet backbone vitkit has
        state = {k: v for k, v in state.items() if not k.startswith(_BACKBONE)}
    for marker, feature in _UNSUPPORTED.items():
        hit = next((k for k in state if marker in k or k.startswith(marker)), None)
        if hit is not None:
            raise InteropError(f"{source} uses {feature} (tensor {hit!r}), which vitkit's ViT does not have")
    if "blocks.0.attn.qkv.weight" not in state or "patch_embed.proj.weight" not in state:
        found = ", ".join(list(state)[:3])
        raise InteropError(
            f"{source} is not a timm ViT state dict: expected 'patch_embed.proj.weight' and "
            f"'blocks.0.attn.qkv.weight', found {found} ..."
        )


def _require_timm_vit(model: nn.Module, source: str) -> None:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if not isinstance(model, TimmViT):
        raise InteropError(f"{source} is a {type(model).__name__}; expected timm's VisionTransformer")


def _module_settings(model: nn.Module, source: str) -> dict[str, Any]:
    """What a timm model object says about itself beyond its tensor shapes."""
    block = model.blocks[0]
    act = getattr(block.mlp, "act", None)
    if not isinstance(act, nn.GELU):
        raise InteropError(f"{source}: MLP activation {act!r} is not a GELU, which vitkit's MLP uses")
    if getattr(model, "pool_include_prefix", False):
        raise InteropError(f"{source} averages the class token into its pool (pool_include_prefix=True)")
    if not isinstance(block.norm1, nn.LayerNorm):
        raise InteropError(f"{source}: norm {type(block.norm1).__name__} is not a LayerNorm")
    if isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity):
        raise InteropError(f"{source} has no final LayerNorm (final_norm=False), which vitkit always has")
    if hasattr(model.patch_embed, "backbone"):
        _check_bit_module(model.patch_embed.backbone, source)
    return dict(
        num_heads=block.attn.num_heads,
        global_pool=model.global_pool,
        grid=tuple(model.patch_embed.grid_size),
        layer_norm_eps=block.norm1.eps,
        gelu_approximate=act.approximate == "tanh",
    )


def _name_settings(name: str, source: str, model_args: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of a timm architecture name with its ``model_args``: built on the meta device when
    timm is installed, else from the arguments and the usual width -> heads table (``*_gap_*``
    names pool the patches)."""
    name = name.split(".")[0]  # "vit_base_patch16_224.augreg_in21k" names the architecture before the dot
    timm = _timm()
    if timm is not None and timm.is_model(name):
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, **{**model_args, "depth": 1})
        except (TypeError, ValueError) as e:
            raise InteropError(f"{source}: {name!r} is not a timm ViT architecture ({e})") from None
        _require_timm_vit(model, f"timm architecture {name!r}")
        settings = _module_settings(model, f"timm architecture {name!r}")
        settings.pop("grid")  # the state dict's own table decides the grid
        settings["width"] = model.embed_dim
        return settings
    settings = dict(global_pool=model_args.get("global_pool", "avg" if "_gap_" in name else "token"))
    return settings | ({"num_heads": model_args["num_heads"]} if "num_heads" in model_args else {})


def _config_from_state(
    state: Mapping[str, torch.Tensor],
    settings: dict[str, Any],
    source: str,
    image_size: tuple[int, int] | None,
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Read the architecture off the tensor shapes; return (config, state with vitkit names)."""
    width, in_channels, p, p2 = state["patch_embed.proj.weight"].shape
    if p != p2:
        raise InteropError(f"{source}: non-square patches {p}x{p2} are not supported")
    hybrid = _bit_fields(state, source)  # {} for a plain ViT
    if hybrid:  # the projection reads the feature map: its kernel times the backbone's stride is the patch
        in_channels = hybrid.pop("in_channels")
        p *= bit_stride(len(hybrid["stem_units"]))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    class_token = "cls_token" in state
    distill_token = "dist_token" in state
    register_tokens = state["reg_token"].shape[1] if "reg_token" in state else 0
    num_prefix_tokens = int(class_token) + int(distill_token) + register_tokens
    fc_norm = "fc_norm.weight" in state
    if "width" in settings and settings["width"] != width:
        raise InteropError(f"{source}: width {width} does not match the named architecture's {settings['width']}")
    if settings.get("global_pool", "token") not in ("token", "avg"):
        raise InteropError(f"{source}: timm global_pool={settings['global_pool']!r}; vitkit pools by 'token' or 'avg'")
    pool = "gap" if (not class_token or fc_norm or settings.get("global_pool") == "avg") else "cls"
    num_heads = settings.get("num_heads") or _HEADS_BY_WIDTH.get(width, max(1, width // 64))
    out = _bit_names_from_timm({k: v for k, v in state.items() if k != "pos_embed"})
    if "pos_embed" in state:
        grid = settings.get("grid")
        if image_size is None and grid is not None:
            image_size = (grid[0] * p, grid[1] * p)
        grid, out["pos_embed.weight"], registers = _position_table(state, num_prefix_tokens, p, image_size, source)
        if registers is not None:
            out["reg_token"] = registers
        posemb = "learned"
    else:
        posemb = "none"
        grid = settings.get("grid")
        if grid is None and image_size is None:
            raise InteropError(f"{source} has no position embedding: pass image_size to say the input size")
        grid = grid if image_size is None else (image_size[0] // p, image_size[1] // p)
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    config = ViTConfig(
        image_size=(grid[0] * p, grid[1] * p),
        patch_size=p,
        in_channels=in_channels,
        num_classes=num_classes,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        pool=pool,
        class_token=class_token,
        distill_token=distill_token,
        register_tokens=register_tokens,
        posemb=posemb,
        fc_norm=fc_norm,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        layer_norm_eps=settings.get("layer_norm_eps", 1e-6),
        gelu_approximate=settings.get("gelu_approximate", False),
        **hybrid,
    )
    return config, out


def _position_table(
    state: Mapping[str, torch.Tensor],
    num_prefix_tokens: int,
    patch_size: int,
    image_size: tuple[int, int] | None,
    source: str,
) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor | None]:
    """(grid, vitkit's ``pos_embed.weight``, ``reg_token`` or None) from timm's ``pos_embed``, whose table has a row for
    every prefix token (class, distillation, registers) or, with ``no_embed_class``, for none.

    vitkit's table has rows for the class and distillation tokens only (zeros when timm gave them
    none: the same nothing added). A register's row is a constant added to a learned constant, so
    it is folded into the register tokens returned: the same sum, and registers stay position-free.
    """
    table = state["pos_embed"]
    grid, slot = split_position_rows(table.shape[1], num_prefix_tokens, patch_size, image_size, source)
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    rows = num_prefix_tokens - registers  # the class and distillation tokens
    if slot == 0:  # no_embed_class: no prefix token gets a position
        return grid, torch.cat([table.new_zeros(1, rows, table.shape[-1]), table], dim=1), None
    folded = None
    if registers:
        folded = state["reg_token"] + table[:, rows:slot]
        log.info("%s: folded the position rows of %d register token(s) into the tokens", source, registers)
    return grid, torch.cat([table[:, :rows], table[:, slot:]], dim=1), folded


def from_timm(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
    name: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    model_args: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> VisionTransformer:
    """A vitkit model with the weights of a timm ViT, giving the same logits.

    ``model_or_state_dict``: a timm ``VisionTransformer``, its ``state_dict()``, or a file holding
    one (.safetensors / .pth / .bin). ``name``: the timm architecture (``"vit_base_patch16_224"``)
    for what shapes cannot say (heads; token vs average pooling when there is a class token);
    inferred from the shapes when omitted. ``image_size``: the training size, needed only for
    non-square grids. ``model_args``: the keyword arguments ``timm.create_model`` takes with
    ``name`` (the ``model_args`` of a timm folder's config.json). ``overrides``: any ViTConfig
    field, e.g. ``num_heads`` for a custom model.
    """
    if isinstance(model_or_state_dict, (str, os.PathLike)):
        source = str(model_or_state_dict)
        state = read_state_dict(Path(model_or_state_dict))
        settings: dict[str, Any] | None = None
    elif isinstance(model_or_state_dict, nn.Module):
        source = f"timm model {type(model_or_state_dict).__name__}"
        _require_timm_vit(model_or_state_dict, source)
        state = model_or_state_dict.state_dict()
        _check_supported(state, source)
        settings = _module_settings(model_or_state_dict, source)
    elif isinstance(model_or_state_dict, Mapping):
        source, state, settings = "timm state dict", dict(model_or_state_dict), None
    else:
        raise TypeError(f"from_timm expects a timm model, a state dict or a file path, got {type(model_or_state_dict)}")
    _check_supported(state, source)
    size = (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)
    if settings is None:
        if name is None:  # a first reading of the shapes names the family
            guess, _ = _config_from_state(state, {}, source, size)
            family, name = _family_name(guess), timm_name(guess)
            if not name.startswith(family.rsplit("_", 1)[0] + "_"):
                name = family  # timm has no such shape: the settings come from the shapes and widths
        settings = _name_settings(name, source, model_args or {})
    config, vitkit_state = _config_from_state(state, settings, source, size)
    if overrides:
        config = config.replace(**overrides)
    return build(config, vitkit_state, source)


def to_timm_state_dict(model: VisionTransformer, no_embed_class: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights under timm's names, loadable into the timm ViT that :func:`timm_kwargs` builds.

    vitkit's other position options are written out as timm's one learned table (see
    ``common.position_rows``); a pre-logits layer has no place in timm's ViT and is refused.
    ``no_embed_class=True`` writes the layout of timm models built that way (FlexiViT, the
    ``vit_*_reg*`` presets): the table has no class row, and the class row is folded into the class
    token, which is the same sum (and the distillation row into the distillation token). Without
    it, register tokens get zero rows, which add nothing, as vitkit adds nothing to them.
    """
    if model.config.stem != "bit":
        require_plain(model, "timm's VisionTransformer")
    c = model.config
    if c.representation_size:
        raise InteropError(
            "timm's VisionTransformer has no pre-logits (representation) layer; "
            "convert a model with representation_size=None, or keep it in vitkit"
        )
    if c.distill_token and (c.pool != "cls" or c.fc_norm):
        raise InteropError(
            "timm's VisionTransformerDistilled reads the class token for its class head, after the final "
            f"LayerNorm; this model has pool={c.pool!r}, fc_norm={c.fc_norm}: keep it in vitkit"
        )
    if c.distill_token and c.register_tokens:
        raise InteropError(
            "timm's VisionTransformerDistilled has no register tokens; this model has distill_token=True and "
            f"register_tokens={c.register_tokens}: keep it in vitkit"
        )
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("pos_embed.")}
    prefix, patches = position_rows(model)  # prefix: rows of the class and distillation tokens
    if no_embed_class:
        for i, name in enumerate(c.prefix_tokens[: c.num_prefix_rows]):  # timm's names: cls_token, dist_token
            state[name] = state[name] + prefix[:, i : i + 1]
        state["pos_embed"] = patches
    else:
        registers = patches.new_zeros(1, c.register_tokens, c.width)  # timm's rows for reg_token
        state["pos_embed"] = torch.cat([prefix, registers, patches], dim=1)
    return _bit_names_to_timm(state) if c.stem == "bit" else state


def timm_kwargs(config: ViTConfig, no_embed_class: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` matching ``config``
    (for ``timm.models.deit.VisionTransformerDistilled`` when it has a distillation token)."""
    from functools import partial

    mlp_ratio = config.mlp_dim / config.width
    if int(config.width * mlp_ratio) != config.mlp_dim:  # timm takes int(width * ratio)
        mlp_ratio = float(torch.nextafter(torch.tensor(mlp_ratio, dtype=torch.float64), torch.tensor(1e9)).item())
    kwargs: dict[str, Any] = dict(
        img_size=tuple(config.image_size),
        patch_size=config.patch_size,
        in_chans=config.in_channels,
        num_classes=config.num_classes,
        global_pool="token" if config.pool == "cls" else "avg",
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=config.qkv_bias,
        class_token=config.class_token,
        fc_norm=config.fc_norm,
        no_embed_class=no_embed_class and config.num_prefix_tokens > 0,
    )
    if config.register_tokens:
        kwargs["reg_tokens"] = config.register_tokens
    if config.layer_norm_eps != 1e-6:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=config.layer_norm_eps)
    if config.gelu_approximate:
        kwargs["act_layer"] = partial(nn.GELU, approximate="tanh")
    return kwargs


def to_timm(model: VisionTransformer, no_embed_class: bool = False) -> nn.Module:
    """A timm ``VisionTransformer`` (timm must be installed) holding the model's weights, in eval
    mode: a ``VisionTransformerDistilled`` for a model with a distillation token."""
    if _timm() is None:
        raise ImportError("to_timm needs timm: pip install timm (or use to_timm_state_dict)")
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    state = to_timm_state_dict(model, no_embed_class)
    cls = VisionTransformerDistilled if model.config.distill_token else TimmViT
    kwargs = timm_kwargs(model.config, no_embed_class)
    out = cls(**(kwargs | timm_hybrid_kwargs(model.config) if model.config.stem == "bit" else kwargs))
    out.load_state_dict(state)
    return out.eval()


# ============================================================================ the BiT-ResNet hybrid (stem="bit")
# timm's hybrids (vision_transformer_hybrid.py) put a ResNetV2(preact=False) with "SAME"-padded
# StdConv2dSame(eps=1e-8) convolutions under patch_embed.backbone, with the module names vitkit's
# hybrid.py uses; only the stem-only backbone (vit_tiny_r_s16_p8_*) is the root block itself.
_BACKBONE = "patch_embed.backbone."
# The units per stage of timm's registered hybrids (R26, R50 with 3 stages, R50 with 4), all with BiT's 64-channel root.
_TIMM_HYBRID_UNITS = ((2, 2, 2, 2), (3, 4, 9), (3, 4, 6, 3))


def _is_bit_hybrid(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k in state for k in (f"{_BACKBONE}stem.conv.weight", f"{_BACKBONE}conv.weight"))


def _bit_names_from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's names -> vitkit's: the same, except a stem-only backbone's root gains ``stem.``."""
    if f"{_BACKBONE}conv.weight" not in state:
        return state
    return {(_BACKBONE + "stem." + k[len(_BACKBONE) :] if k.startswith(_BACKBONE) else k): v for k, v in state.items()}


def _bit_names_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vitkit's names -> timm's (see :func:`_bit_names_from_timm`)."""
    if any(k.startswith(f"{_BACKBONE}stages.") for k in state):
        return state
    stem = f"{_BACKBONE}stem."
    return {(_BACKBONE + k[len(stem) :] if k.startswith(stem) else k): v for k, v in state.items()}


def _bit_fields(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The ViTConfig fields of a BiT hybrid's backbone (``stem``, ``stem_units``, ``stem_channels``,
    and the image's ``in_channels``) read off its tensor names and shapes; {} for a plain ViT."""
    if not _is_bit_hybrid(state):
        return {}
    root = state.get(f"{_BACKBONE}stem.conv.weight", state.get(f"{_BACKBONE}conv.weight"))
    units: list[int] = []
    while any(k.startswith(f"{_BACKBONE}stages.{len(units)}.") for k in state):
        i = len(units)
        blocks = {int(k.split(".")[5]) for k in state if k.startswith(f"{_BACKBONE}stages.{i}.blocks.")}
        units.append(max(blocks) + 1)
    expected = bit_stage_channels(root.shape[0], len(units))
    for i, c in enumerate(expected):
        found = state[f"{_BACKBONE}stages.{i}.blocks.0.conv3.weight"].shape[0]
        if found != c:
            raise InteropError(
                f"{source}: ResNet stage {i + 1} has {found} channels where BiT's layout with a {root.shape[0]}-channel "
                f"root has {c} (a width factor other than 1?); vitkit's stem='bit' has BiT's widths only"
            )
    return dict(stem="bit", stem_units=tuple(units), stem_channels=root.shape[0], in_channels=root.shape[1])


def _check_bit_module(backbone: nn.Module, source: str) -> None:
    """Refuse a timm hybrid whose backbone computes differently from vitkit's (other padding, eps
    or pre-activation blocks), which a state dict alone could not reveal."""
    from timm.layers import StdConv2dSame

    stem = getattr(backbone, "stem", backbone)
    conv = getattr(stem, "conv", None)
    preact = hasattr(backbone, "stages") and not isinstance(backbone.norm, nn.Identity)  # a final norm: v2 blocks
    if not isinstance(conv, StdConv2dSame) or conv.eps != 1e-8 or preact:
        raise InteropError(
            f"{source}: the ResNet backbone is not the BiT hybrid of timm's vit_*_r26/r50_* models (StdConv2dSame, "
            "eps=1e-8, no pre-activation); vitkit's stem='bit' computes that one only"
        )


def _hybrid_family(config: ViTConfig) -> str:
    """``vit_{size}_r{layers}_s{patch}``: timm's naming, with ResNet-(3 x units + 2)."""
    size = _SIZE_BY_WIDTH.get(config.width, f"w{config.width}")
    return f"vit_{size}_r{3 * sum(config.stem_units) + 2}_s{config.patch_size}"


def _hybrid_timm_name(config: ViTConfig, name: str, timm: Any) -> str:
    """The registered timm hybrid for ``config`` (``name``), else one of the same width whose
    settings (heads, pooling) a state dict loads under, else R50+ViT-B/16's."""
    if timm.is_model(name):
        return name
    family = name.rsplit("_", 1)[0]
    size = family.split("_")[1]
    for candidate in (f"{family}_224", f"{family}_384", *sorted(timm.list_models(f"vit_{size}_r??_s??_*"))):
        if timm.is_model(candidate):
            return candidate
    return "vit_base_r50_s16_384"


def _require_registered_hybrid(config: ViTConfig) -> None:
    """A timm folder names a registered architecture and plain arguments; timm registers its hybrids
    with BiT's 64-channel root and R26 or R50 stages only, and builds no other backbone from JSON."""
    name = _family_name(config)
    timm = _timm()
    registered = config.stem_channels == 64 and config.stem_units in _TIMM_HYBRID_UNITS
    if not registered or (
        timm is not None and _hybrid_timm_name(config, name, timm).rsplit("_", 1)[0] != name.rsplit("_", 1)[0]
    ):
        raise InteropError(
            f"timm registers no hybrid like this one (stem_units={list(config.stem_units)}, "
            f"stem_channels={config.stem_channels}, width={config.width}, patch_size={config.patch_size}): a timm folder "
            "can only name a registered one (vit_small_r26_s32, vit_base_r50_s16, ...); convert --to vitkit keeps it, "
            "or use vitkit.interop.to_timm in Python"
        )


def timm_hybrid_kwargs(config: ViTConfig) -> dict[str, Any]:
    """What :func:`timm_kwargs` adds for a hybrid: timm's ``HybridEmbed`` around a ``ResNetV2`` built
    as timm's ``_resnetv2`` builds it, and the projection's patch size (the feature map's cells)."""
    from functools import partial

    from timm.layers import HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem

    conv = partial(StdConv2dSame, eps=1e-8)
    units, root = config.stem_units, config.stem_channels
    if units:
        backbone: nn.Module = ResNetV2(
            layers=units,
            channels=tuple(bit_stage_channels(root, len(units))),
            stem_chs=root,
            num_classes=0,
            global_pool="",
            in_chans=config.in_channels,
            preact=False,
            stem_type="same",
            conv_layer=conv,
        )
    else:
        backbone = create_resnetv2_stem(config.in_channels, root, stem_type="same", preact=False, conv_layer=conv)
    return dict(
        patch_size=config.patch_size // bit_stride(len(units)), embed_layer=partial(HybridEmbed, backbone=backbone)
    )


# ============================================================================ timm's folders and pretrained_cfg
def preprocess_from_timm(pretrained_cfg: Mapping[str, Any], config: ViTConfig) -> Preprocess:
    """timm's ``pretrained_cfg`` (mean, std, interpolation, crop_pct, crop_mode) as a Preprocess for
    the model's size and channels. ``crop_mode="squash"`` at ``crop_pct`` 1 stretches the image to
    the input size; anything else is timm's evaluation rule, the shorter side then the centre."""
    size, channels = config.image_size, config.in_channels
    crop_pct = float(pretrained_cfg.get("crop_pct") or TIMM_CROP_PCT)
    stretch = pretrained_cfg.get("crop_mode") == "squash" and crop_pct == 1.0
    return Preprocess(
        size,
        channels,
        interpolation=pretrained_cfg.get("interpolation", "bicubic"),
        fit="stretch" if stretch else "crop",
        crop_fraction=crop_pct,
        mean=list(pretrained_cfg.get("mean", IMAGENET_MEAN))[:channels],
        std=list(pretrained_cfg.get("std", IMAGENET_STD))[:channels],
    )


def pretrained_cfg_for(pre: Preprocess) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` preprocessing fields for ``pre``, or a one-line InteropError
    naming what timm's data config cannot express (a zero border, a non-square centre).

    For a square input, timm's eval transform (``crop_mode="center"``: torchvision's ``Resize(int)``
    on a Pillow image, then ``CenterCrop``) has vitkit's arithmetic: the long side truncated, the
    centre rounded half to even; on 300 real photo crops of every shape its pixels are within 1
    grey level of vitkit's (3 with bicubic: Pillow's filter against torchvision's), and a model's
    answers agree on all 300 (tests/test_interop_convert.py). A non-square input goes through
    timm's ``ResizeKeepRatio``, which rounds the long side where vitkit truncates it: half the
    photos are resized a pixel longer, which moved 5 answers in 300, so it is refused."""
    if pre.pad:
        raise InteropError(
            f"timm's pretrained_cfg cannot add the {pre.pad}-pixel zero border this model's preprocess.json "
            "asks for (pad); --to vitkit keeps it"
        )
    (h, w) = pre.image_size
    if pre.fit == "crop" and h != w:
        raise InteropError(
            f"timm's eval transform rounds the longer side of a non-square {h}x{w} centre crop where this model's "
            "preprocess.json (fit='crop') truncates it, a pixel apart on half of all photos; --to vitkit keeps it"
        )
    return {
        "input_size": [pre.channels, *pre.input_size],
        "interpolation": pre.interpolation,
        "crop_pct": pre.crop_fraction if pre.fit == "crop" else 1.0,
        "crop_mode": "center" if pre.fit == "crop" else "squash",  # squash at crop_pct 1: a plain resize
        "mean": list(pre.mean),
        "std": list(pre.std),
    }


def timm_model_args(config: ViTConfig) -> dict[str, Any]:
    """:func:`timm_kwargs` as plain JSON values, for config.json and the printed create_model call;
    a one-line InteropError for what has no JSON spelling that vitkit reads back."""
    if config.layer_norm_eps != 1e-6:
        raise InteropError(
            f"timm's create_model cannot set a LayerNorm eps of {config.layer_norm_eps:g} from plain keyword "
            "arguments (only 1e-6); --to vitkit or --to hf keeps it"
        )
    if config.gelu_approximate:
        raise InteropError("the tanh-approximated GELU has no plain timm keyword argument; --to vitkit or --to hf")
    args = timm_kwargs(config)
    if config.stem == "bit":  # the registered name builds the backbone; the projection's kernel is left
        _require_registered_hybrid(config)
        args["patch_size"] = config.patch_size // bit_stride(len(config.stem_units))
    args["img_size"] = list(args["img_size"])
    if not args["no_embed_class"]:
        del args["no_embed_class"]  # timm's default
    return args


@dataclass(frozen=True)
class TimmFolder:
    """How timm builds what :func:`save_timm` wrote into a folder: ``timm.create_model(name,
    pretrained=True, pretrained_cfg_overlay=overlay(folder), **model_args)``, or from the folder
    itself with ``timm.create_model("local-dir:FOLDER", pretrained=True)``."""

    name: str
    model_args: dict[str, Any]
    pretrained: dict[str, Any]  # the pretrained_cfg fields the overlay sets besides the file

    def overlay(self, folder: str | os.PathLike) -> dict[str, Any]:
        """``pretrained_cfg_overlay`` for the weights in ``folder``: the file, the class count (or
        timm drops a head whose size differs from its default's) and the preprocessing."""
        return {"file": str(Path(folder) / WEIGHTS_NAME), **self.pretrained}

    def create_model_call(self, folder: str | os.PathLike) -> str:
        """The Python call that builds this model in timm, to print and to copy."""
        overlay = ", ".join(f"{k}={v!r}" for k, v in self.overlay(folder).items())
        args = "".join(f", {k}={v!r}" for k, v in self.model_args.items())
        return f"timm.create_model({self.name!r}, pretrained=True, pretrained_cfg_overlay=dict({overlay}){args})"


def save_timm(model: VisionTransformer, folder: str | os.PathLike, preprocess: Preprocess | None = None) -> TimmFolder:
    """Write timm's folder layout (as ``timm.models.save_for_hf`` does, without importing timm):
    ``model.safetensors`` with timm's names and ``config.json`` with the architecture, its
    ``model_args`` and a ``pretrained_cfg`` that carries the preprocessing and the class names."""
    from safetensors.torch import save as st_save

    c = model.config
    name, args = timm_name(c), timm_model_args(c)
    state = {k: v.contiguous() for k, v in to_timm_state_dict(model).items()}
    folder = Path(folder)
    data = pretrained_cfg_for(preprocess) if preprocess is not None else {"input_size": [c.in_channels, *c.image_size]}
    labels = list(c.class_names or (preprocess.class_names if preprocess is not None else ()))
    pretrained_cfg = {
        "architecture": name,
        "num_classes": c.num_classes,
        "first_conv": "patch_embed.backbone.stem.conv" if c.stem == "bit" else "patch_embed.proj",
        "classifier": "head",
        "fixed_input_size": True,
        **data,
    }
    config = {
        "architecture": name,
        "num_classes": c.num_classes,
        "num_features": c.width,
        "global_pool": args["global_pool"],
        **({"label_names": labels} if len(labels) == c.num_classes and labels else {}),
        "model_args": args,
        "pretrained_cfg": pretrained_cfg,
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS_NAME, st_save(state, metadata={"format": "pt"}))
    atomic_write_json(folder / CONFIG_NAME, config)
    return TimmFolder(name, args, {"num_classes": c.num_classes, **data})
