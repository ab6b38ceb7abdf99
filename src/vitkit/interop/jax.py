"""Google's ViT checkpoints (``.npz``): google-research/vision_transformer, the AugReg releases, big_vision.

The files are flat archives of Flax parameters, named by module path. Everything about the
architecture is read from the file itself:

    embedding/kernel (P, P, C, D)          patch size P, channels C, width D; HWIO -> OIHW
    cls (1, 1, D)                          present: class token (pool "cls"), absent: GAP
    Transformer/posembed_input/pos_embedding (1, [1 +] N, D)   original files (class slot if cls)
    pos_embedding (1, N, D)                big_vision: top level, never a class slot
    Transformer/encoderblock_{i}/...       depth = number of blocks; or one scanned
    Transformer/encoderblock/...           block whose arrays have a leading depth axis
        LayerNorm_0, LayerNorm_2|1         norm1, norm2 (original | big_vision numbering)
        MultiHeadDotProductAttention_1|0/{query,key,value}/kernel (D, heads, D/heads) -> heads
        MultiHeadDotProductAttention_1|0/out/kernel (heads, D/heads, D)
        MlpBlock_3|0/Dense_0, Dense_1      mlp_dim from Dense_0's kernel
    Transformer/encoder_norm               final LayerNorm (before pooling, also for GAP)
    pre_logits/{kernel,bias}               representation layer (Linear + tanh) if present
    head/{kernel,bias}                     classifier (absent or empty: no head)
    conv_root, gn_root, block{i}/unit{j}/  a ResNet hybrid (R50+ViT-B/16, R26+ViT-S/32): the BiT ResNet of
        conv{1,2,3}, gn{1,2,3},            vitkit's stem="bit" (models_resnet.py's names); embedding/kernel
        conv_proj, gn_proj                 is then (1, 1, C_feat, D), the paper's 1x1 patches (sec. 3.1)

Parameters may sit under a prefix (``params/``, ``opt/target/``, ``params/img/``). Dense
kernels are (in, out) and become (out, in). A big_vision file without ``pos_embedding`` used
the fixed 2-D sine-cosine embedding, which vitkit's ``sincos2d`` computes identically.

A hybrid's ResNet computes as timm's port of these files does (weight standardisation with 1e-8
inside the square root, GroupNorm eps 1e-5). ``models_resnet.py`` itself divides by std + 1e-5 and
uses Flax's GroupNorm eps of 1e-6; both epsilons are far below the spread of trained kernels and
of activations, so the ports' numbers are the reference here, as for the GELU below.

:func:`save_jax_npz` writes the original layout back (plain or hybrid), for the JAX code and for
timm's ``.npz`` loader; what the files cannot say (a distillation token, registers, ``fc_norm``,
the small conv stem) is refused in one line.

Flax's ``nn.gelu`` defaults to the tanh approximation, while the timm and Hugging Face ports of
these weights use the exact GELU (under 1e-3 apart per activation). vitkit's default follows the
ports; ``gelu_approximate=True`` reproduces the JAX code's own numbers.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ViTConfig, bit_stride
from ..files import atomic_write_bytes
from ..model import VisionTransformer
from .common import InteropError, build, position_rows, split_position_rows

_PREFIXES = ("", "params/", "opt/target/", "params/img/")


@dataclass(frozen=True)
class _Scheme:
    """Module names inside an encoder block, numbered differently by the original code and big_vision."""

    attn: str
    norm2: str
    mlp: str


_ORIGINAL = _Scheme(attn="MultiHeadDotProductAttention_1", norm2="LayerNorm_2", mlp="MlpBlock_3")
_BIG_VISION = _Scheme(attn="MultiHeadDotProductAttention_0", norm2="LayerNorm_1", mlp="MlpBlock_0")


@dataclass(frozen=True)
class _Params:
    """The archive's arrays seen from under ``prefix``, so that a missing one is an error naming the file."""

    arrays: dict[str, np.ndarray]
    prefix: str
    source: str

    def __contains__(self, name: str) -> bool:
        return f"{self.prefix}{name}" in self.arrays

    def __getitem__(self, name: str) -> np.ndarray:
        key = f"{self.prefix}{name}"
        if key not in self.arrays:
            raise InteropError(f"{self.source}: missing parameter {key!r}; the file is incomplete or not a ViT")
        return self.arrays[key]


@dataclass(frozen=True)
class _Blocks:
    """Where the encoder blocks' arrays sit: one path per block, or one scanned path shared by all."""

    paths: tuple[str, ...]
    scanned: bool  # one block whose arrays have a leading depth axis
    scheme: _Scheme

    @property
    def depth(self) -> int:
        return len(self.paths)

    def array(self, params: _Params, i: int, name: str) -> np.ndarray:
        """Block ``i``'s array ``name``: its own, or its slice of the scanned one."""
        a = params[f"{self.paths[i]}{name}"]
        return a[i] if self.scanned else a


@dataclass(frozen=True)
class _Architecture:
    """The network's shape as the file states it, read before any array is converted."""

    patch_size: int
    in_channels: int
    width: int
    num_heads: int
    mlp_dim: int
    class_token: bool
    blocks: _Blocks
    stem_units: tuple[int, ...] | None = None  # a ResNet hybrid's units per stage; None: patches
    root_channels: int = 64  # a ResNet hybrid's root width (BiT's 64 x width factor)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read without unpickling (``allow_pickle=False``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # an ndarray has no close(): nothing to release
            raise InteropError(f"{path} is a single .npy array; expected an .npz archive of named Flax parameters")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except InteropError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InteropError(f"{path} is not a readable .npz archive ({first}); it may be truncated or corrupt") from None


def _t(a: np.ndarray) -> torch.Tensor:
    if a.dtype.kind == "V":  # bfloat16 stored as raw 2-byte records
        raise InteropError(f"array of raw dtype {a.dtype} (bfloat16?); convert the file to float32 first")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _find_prefix(arrays: dict[str, np.ndarray], source: str) -> str:
    """Where the parameters sit: the first known prefix under which ``embedding/kernel`` is found."""
    prefix = next((p for p in _PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise InteropError(
            f"{source}: expected Flax ViT parameters ('embedding/kernel', 'Transformer/encoderblock_0/...'), "
            f"found {', '.join(repr(k) for k in list(arrays)[:3]) or 'an empty archive'}"
        )
    return prefix


def _reject_unsupported(params: _Params) -> None:
    """Refuse the ViT variants vitkit has no module for, rather than fail later on a missing array."""
    if any(k.startswith(f"{params.prefix}MAPHead_0/") for k in params.arrays):
        raise InteropError(f"{params.source} pools with a MAP head (attention pooling), which vitkit does not have")


def _find_blocks(params: _Params) -> _Blocks:
    """The encoder blocks: numbered ``encoderblock_{i}``, or one scanned ``encoderblock`` (depth on axis 0)."""
    scanned = "Transformer/encoderblock/LayerNorm_0/scale" in params
    if scanned:
        depth = params["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        paths = ("Transformer/encoderblock/",) * depth
    else:
        depth = 0
        while f"Transformer/encoderblock_{depth}/LayerNorm_0/scale" in params:
            depth += 1
        if depth == 0:
            raise InteropError(f"{params.source}: no encoder blocks ('Transformer/encoderblock_0/...') in the file")
        paths = tuple(f"Transformer/encoderblock_{i}/" for i in range(depth))
    scheme = _BIG_VISION if f"{paths[0]}{_BIG_VISION.attn}/query/kernel" in params else _ORIGINAL
    return _Blocks(paths, scanned, scheme)


def _read_architecture(params: _Params) -> _Architecture:
    """Patch size, channels and width from the patch kernel; heads and MLP width from the first block."""
    kernel = params["embedding/kernel"]  # (P, P, C, D)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise InteropError(f"{params.source}: embedding/kernel has shape {kernel.shape}, expected (P, P, C, D)")
    p, _, in_channels, width = kernel.shape
    units = _resnet_units(params)
    if units is not None:  # the embedding reads the ResNet's feature map, whose cell is bit_stride pixels
        in_channels = params["conv_root/kernel"].shape[2]
        p *= bit_stride(len(units))
    blocks = _find_blocks(params)
    q_kernel = blocks.array(params, 0, f"{blocks.scheme.attn}/query/kernel")  # (D, heads, D/heads)
    mlp_dim = blocks.array(params, 0, f"{blocks.scheme.mlp}/Dense_0/kernel").shape[-1]
    return _Architecture(
        patch_size=p,
        in_channels=in_channels,
        width=width,
        num_heads=q_kernel.shape[1],
        mlp_dim=mlp_dim,
        class_token="cls" in params,
        blocks=blocks,
        stem_units=units,
        root_channels=params["conv_root/kernel"].shape[3] if units is not None else 64,
    )


def _image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``image_size`` as (height, width), or None when not given."""
    return (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)


def _resnet_units(params: _Params) -> tuple[int, ...] | None:
    """Units per stage of a hybrid's ResNet (``block{i}/unit{j}/...``), or None without ``conv_root``."""
    if "conv_root/kernel" not in params:
        return None
    units: list[int] = []
    while f"block{len(units) + 1}/unit1/conv1/kernel" in params:
        n = 1
        while f"block{len(units) + 1}/unit{n + 1}/conv1/kernel" in params:
            n += 1
        units.append(n)
    return tuple(units)


def _resnet_names(units: tuple[int, ...]) -> list[tuple[str, str, str]]:
    """(the .npz name, vitkit's name, ``conv`` or ``norm``) of every tensor of the hybrid's BiT
    ResNet (:mod:`vitkit.hybrid`): one table that reading and writing both follow.
    google-research/vision_transformer's ``models_resnet`` names them ``conv_root``, ``gn_root``,
    then ``block{i}/unit{j}/`` with ``conv1..3``, ``gn1..3`` and, in each stage's first unit, the
    shortcut's ``conv_proj`` and ``gn_proj``."""
    b = "patch_embed.backbone."
    names = [("conv_root", f"{b}stem.conv", "conv"), ("gn_root", f"{b}stem.norm", "norm")]
    for i, n in enumerate(units):
        for j in range(n):
            src, dst = f"block{i + 1}/unit{j + 1}/", f"{b}stages.{i}.blocks.{j}."
            for r in (1, 2, 3):
                names += [(f"{src}conv{r}", f"{dst}conv{r}", "conv"), (f"{src}gn{r}", f"{dst}norm{r}", "norm")]
            if j == 0:
                names += [(f"{src}conv_proj", f"{dst}downsample.conv", "conv")]
                names += [(f"{src}gn_proj", f"{dst}downsample.norm", "norm")]
    return names


def _resnet_backbone(params: _Params, units: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The hybrid's BiT ResNet under vitkit's names (:func:`_resnet_names`). Kernels are HWIO
    (-> OIHW); the convolutions have no bias."""
    state: dict[str, torch.Tensor] = {}
    for npz, ours, kind in _resnet_names(units):
        if kind == "conv":
            state[f"{ours}.weight"] = _t(params[f"{npz}/kernel"]).permute(3, 2, 0, 1)
        else:
            state |= {f"{ours}.weight": _t(params[f"{npz}/scale"]), f"{ours}.bias": _t(params[f"{npz}/bias"])}
    return state


def _patch_embedding(params: _Params) -> dict[str, torch.Tensor]:
    return {
        "patch_embed.proj.weight": _t(params["embedding/kernel"]).permute(3, 2, 0, 1),  # HWIO -> OIHW
        "patch_embed.proj.bias": _t(params["embedding/bias"]),
    }


def _encoder_norm(params: _Params) -> dict[str, torch.Tensor]:
    return {
        "norm.weight": _t(params["Transformer/encoder_norm/scale"]),
        "norm.bias": _t(params["Transformer/encoder_norm/bias"]),
    }


def _tokens_and_positions(
    params: _Params, arch: _Architecture, size: tuple[int, int] | None
) -> tuple[dict[str, torch.Tensor], tuple[int, int], str]:
    """The class token and position table, the patch grid, and vitkit's ``posemb`` for them.

    The grid is read from the table (its length, or big_vision's 2-D shape) unless ``size``
    says otherwise. A file without a table used sincos2d, whose grid only ``size`` can give.
    """
    p, width = arch.patch_size, arch.width
    state: dict[str, torch.Tensor] = {}
    if arch.class_token:
        state["cls_token"] = _t(params["cls"]).reshape(1, 1, width)
    name = next((n for n in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if n in params), None)
    if name is None:
        if size is None:
            raise InteropError(
                f"{params.source} has no position table (sincos2d): pass image_size to say the input size"
            )
        return state, (size[0] // p, size[1] // p), "sincos2d"
    stored = params[name]
    table = _t(stored).reshape(1, -1, width)  # (1, [1 +] N, D); big_vision may store (1, gh, gw, D)
    if size is None and stored.ndim == 4:
        size = (stored.shape[1] * p, stored.shape[2] * p)
    grid, slot = split_position_rows(table.shape[1], int(arch.class_token), p, size, params.source)
    if arch.class_token and slot == 0:  # big_vision: the class token gets no position
        table = torch.cat([table.new_zeros(1, 1, width), table], dim=1)
    state["pos_embed.weight"] = table
    return state, grid, "learned"


def _encoder_block(params: _Params, blocks: _Blocks, i: int, width: int) -> dict[str, torch.Tensor]:
    """Block ``i`` under vitkit's names; Flax keeps q, k, v per head and apart, vitkit fuses them."""

    def get(name: str) -> torch.Tensor:
        return _t(blocks.array(params, i, name))

    b, a, norm2, mlp = f"blocks.{i}.", blocks.scheme.attn, blocks.scheme.norm2, blocks.scheme.mlp
    state = {
        b + "norm1.weight": get("LayerNorm_0/scale"),
        b + "norm1.bias": get("LayerNorm_0/bias"),
        # (D, heads, D/heads) -> (D, D) -> (out, in); stacked as [W_q; W_k; W_v]
        b + "attn.qkv.weight": torch.cat(
            [get(f"{a}/{n}/kernel").reshape(width, width).T for n in ("query", "key", "value")]
        ),
        b + "attn.qkv.bias": torch.cat([get(f"{a}/{n}/bias").reshape(-1) for n in ("query", "key", "value")]),
        b + "attn.proj.weight": get(f"{a}/out/kernel").reshape(width, width).T,  # (heads, D/h, D)
        b + "attn.proj.bias": get(f"{a}/out/bias"),
        b + "norm2.weight": get(f"{norm2}/scale"),
        b + "norm2.bias": get(f"{norm2}/bias"),
    }
    for j in range(2):
        state[b + f"mlp.fc{j + 1}.weight"] = get(f"{mlp}/Dense_{j}/kernel").T
        state[b + f"mlp.fc{j + 1}.bias"] = get(f"{mlp}/Dense_{j}/bias")
    return state


def _pre_logits_and_head(params: _Params) -> tuple[dict[str, torch.Tensor], int | None, int]:
    """The representation layer and classifier, each only if present (an empty ``head/kernel`` is no head).

    Returns (state, representation_size, num_classes), the last two for the config.
    """
    state: dict[str, torch.Tensor] = {}
    representation = None
    if "pre_logits/kernel" in params:
        representation = params["pre_logits/kernel"].shape[-1]
        state["pre_logits.0.weight"] = _t(params["pre_logits/kernel"]).T
        state["pre_logits.0.bias"] = _t(params["pre_logits/bias"])
    num_classes = 0
    if "head/kernel" in params and params["head/kernel"].size:
        num_classes = params["head/kernel"].shape[-1]
        state["head.weight"] = _t(params["head/kernel"]).T
        state["head.bias"] = _t(params["head/bias"])
    return state, representation, num_classes


def _config(
    arch: _Architecture,
    grid: tuple[int, int],
    posemb: str,
    representation: int | None,
    num_classes: int,
    gelu_approximate: bool,
) -> ViTConfig:
    hybrid = (
        {}
        if arch.stem_units is None
        else dict(stem="bit", stem_units=arch.stem_units, stem_channels=arch.root_channels)
    )
    return ViTConfig(
        image_size=(grid[0] * arch.patch_size, grid[1] * arch.patch_size),
        patch_size=arch.patch_size,
        in_channels=arch.in_channels,
        num_classes=num_classes,
        width=arch.width,
        depth=arch.blocks.depth,
        num_heads=arch.num_heads,
        mlp_dim=arch.mlp_dim,
        pool="cls" if arch.class_token else "gap",
        class_token=arch.class_token,
        posemb=posemb,
        representation_size=representation,
        qkv_bias=True,
        layer_norm_eps=1e-6,  # Flax LayerNorm's default
        gelu_approximate=gelu_approximate,
        **hybrid,
    )


def from_jax_npz(
    path: str | os.PathLike,
    image_size: int | tuple[int, int] | None = None,
    prefix: str | None = None,
    gelu_approximate: bool = False,
) -> VisionTransformer:
    """A vitkit model from a Google ViT ``.npz`` checkpoint, architecture read from the file.

    ``image_size``: the size the checkpoint was trained at, needed only for non-square grids
    (it is otherwise read from the position table). ``prefix``: where the parameters sit inside
    the archive, detected when omitted. ``gelu_approximate=True`` uses the tanh GELU of the
    JAX code that trained these weights (its numbers exactly); the default exact GELU gives the
    numbers of the timm and Hugging Face ports of the same files.
    """
    path = Path(path)
    source = str(path)
    arrays = read_npz(path)
    params = _Params(arrays, _find_prefix(arrays, source) if prefix is None else prefix, source)
    _reject_unsupported(params)
    arch = _read_architecture(params)
    state = _patch_embedding(params) | _encoder_norm(params)
    if arch.stem_units is not None:
        state |= _resnet_backbone(params, arch.stem_units)
    tokens, grid, posemb = _tokens_and_positions(params, arch, _image_size(image_size))
    state |= tokens
    for i in range(arch.blocks.depth):
        state |= _encoder_block(params, arch.blocks, i, arch.width)
    head, representation, num_classes = _pre_logits_and_head(params)
    state |= head
    config = _config(arch, grid, posemb, representation, num_classes, gelu_approximate)
    return build(config, state, source)


# ============================================================================ writing: the original layout
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _require_original_layout(model: VisionTransformer) -> None:
    """Refuse what google-research/vision_transformer's files cannot say, naming the format that can."""
    c = model.config
    refusals = {
        c.stem == "conv": "the small convolutional stem (stem='conv')",
        c.distill_token: "a distillation token",
        bool(c.register_tokens): "register tokens",
        c.fc_norm: "a LayerNorm after pooling (fc_norm)",
        c.pool == "gap" and c.class_token: "a class token that the pooling ignores (pool='gap' with class_token)",
        not c.qkv_bias: "attention without q/k/v biases",
        c.layer_norm_eps != 1e-6: f"a LayerNorm eps of {c.layer_norm_eps:g} (Flax's is 1e-6)",
    }
    what = next((w for cond, w in refusals.items() if cond), None)
    if what is not None:
        raise InteropError(f"Google's .npz layout cannot hold {what}; convert --to vitkit keeps it")


def _resnet_arrays(sd: dict[str, torch.Tensor], units: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The inverse of :func:`_resnet_backbone`: vitkit's ResNet under ``models_resnet``'s names."""
    out: dict[str, np.ndarray] = {}
    for npz, ours, kind in _resnet_names(units):
        if kind == "conv":
            out[f"{npz}/kernel"] = _np(sd[f"{ours}.weight"].permute(2, 3, 1, 0))  # OIHW -> HWIO
        else:
            out |= {f"{npz}/scale": _np(sd[f"{ours}.weight"]), f"{npz}/bias": _np(sd[f"{ours}.bias"])}
    return out


def _encoder_arrays(sd: dict[str, torch.Tensor], depth: int, width: int, heads: int) -> dict[str, np.ndarray]:
    """The inverse of :func:`_encoder_block` for every block, in the original numbering."""
    out: dict[str, np.ndarray] = {}
    s = _ORIGINAL
    for i in range(depth):
        t, f = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out |= {f"{f}LayerNorm_0/scale": _np(sd[t + "norm1.weight"]), f"{f}LayerNorm_0/bias": _np(sd[t + "norm1.bias"])}
        out |= {f"{f}{s.norm2}/scale": _np(sd[t + "norm2.weight"]), f"{f}{s.norm2}/bias": _np(sd[t + "norm2.bias"])}
        w, bias = sd[t + "attn.qkv.weight"].reshape(3, width, width), sd[t + "attn.qkv.bias"].reshape(3, width)
        for k, name in enumerate(("query", "key", "value")):  # (out, in) -> (D, heads, D/heads)
            out[f"{f}{s.attn}/{name}/kernel"] = _np(w[k].T.reshape(width, heads, width // heads))
            out[f"{f}{s.attn}/{name}/bias"] = _np(bias[k].reshape(heads, width // heads))
        out[f"{f}{s.attn}/out/kernel"] = _np(sd[t + "attn.proj.weight"].T.reshape(heads, width // heads, width))
        out[f"{f}{s.attn}/out/bias"] = _np(sd[t + "attn.proj.bias"])
        for j in range(2):
            out[f"{f}{s.mlp}/Dense_{j}/kernel"] = _np(sd[t + f"mlp.fc{j + 1}.weight"].T)
            out[f"{f}{s.mlp}/Dense_{j}/bias"] = _np(sd[t + f"mlp.fc{j + 1}.bias"])
    return out


def to_jax_arrays(model: VisionTransformer) -> dict[str, np.ndarray]:
    """The model's weights in google-research/vision_transformer's ``.npz`` layout (the one
    :func:`from_jax_npz` and timm's ``_load_weights`` read), plain or ResNet hybrid.

    Position options other than ``learned`` are written as the one table they evaluate to at the
    native size (``common.position_rows``); a class token's row is kept in the table's slot 0.
    """
    _require_original_layout(model)
    c = model.config
    sd = model.state_dict()
    out = {
        "embedding/kernel": _np(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),  # OIHW -> HWIO
        "embedding/bias": _np(sd["patch_embed.proj.bias"]),
        "Transformer/encoder_norm/scale": _np(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": _np(sd["norm.bias"]),
    }
    if c.stem == "bit":
        out |= _resnet_arrays(sd, c.stem_units)
    prefix, patches = position_rows(model)
    if c.class_token:
        out["cls"] = _np(sd["cls_token"])
    out["Transformer/posembed_input/pos_embedding"] = _np(torch.cat([prefix, patches], dim=1))
    out |= _encoder_arrays(sd, c.depth, c.width, c.num_heads)
    if c.representation_size:
        out["pre_logits/kernel"], out["pre_logits/bias"] = (
            _np(sd["pre_logits.0.weight"].T),
            _np(sd["pre_logits.0.bias"]),
        )
    if c.num_classes:
        out["head/kernel"], out["head/bias"] = _np(sd["head.weight"].T), _np(sd["head.bias"])
    return out


def save_jax_npz(model: VisionTransformer, path: str | os.PathLike) -> Path:
    """Write :func:`to_jax_arrays` as an ``.npz`` file, whole or not at all."""
    buffer = io.BytesIO()
    np.savez(buffer, **to_jax_arrays(model))
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
