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

Parameters may sit under a prefix (``params/``, ``opt/target/``, ``params/img/``). Dense
kernels are (in, out) and become (out, in). A big_vision file without ``pos_embedding`` used
the fixed 2-D sine-cosine embedding, which vitkit's ``sincos2d`` computes identically.

Flax's ``nn.gelu`` defaults to the tanh approximation, while the timm and Hugging Face ports of
these weights use the exact GELU (under 1e-3 apart per activation). vitkit's default follows the
ports; ``gelu_approximate=True`` reproduces the JAX code's own numbers.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..config import ViTConfig
from ..model import VisionTransformer
from .common import InteropError, build, split_position_rows

_PREFIXES = ("", "params/", "opt/target/", "params/img/")
_ORIGINAL = dict(attn="MultiHeadDotProductAttention_1", norm2="LayerNorm_2", mlp="MlpBlock_3")
_BIG_VISION = dict(attn="MultiHeadDotProductAttention_0", norm2="LayerNorm_1", mlp="MlpBlock_0")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read without unpickling (``allow_pickle=False``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise InteropError(f"{path} is a single .npy array; expected an .npz archive of named Flax parameters")
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
    w = read_npz(path)
    if prefix is None:
        prefix = next((p for p in _PREFIXES if f"{p}embedding/kernel" in w), None)
        if prefix is None:
            raise InteropError(
                f"{source}: expected Flax ViT parameters ('embedding/kernel', 'Transformer/encoderblock_0/...'), "
                f"found {', '.join(repr(k) for k in list(w)[:3]) or 'an empty archive'}"
            )
    if any(k.startswith(f"{prefix}MAPHead_0/") for k in w):
        raise InteropError(f"{source} pools with a MAP head (attention pooling), which vitkit does not have")
    if f"{prefix}conv_root/kernel" in w:
        raise InteropError(f"{source} is a ResNet hybrid (R50+ViT); vitkit's conv stem is a different network")

    def get(name: str) -> np.ndarray:
        key = f"{prefix}{name}"
        if key not in w:
            raise InteropError(f"{source}: missing parameter {key!r}; the file is incomplete or not a ViT")
        return w[key]

    kernel = get("embedding/kernel")  # (P, P, C, D)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise InteropError(f"{source}: embedding/kernel has shape {kernel.shape}, expected (P, P, C, D)")
    p, _, in_channels, width = kernel.shape
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in w
    if scanned:
        depth = w[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        block_names = ["Transformer/encoderblock/"] * depth
    else:
        depth = 0
        while f"{prefix}Transformer/encoderblock_{depth}/LayerNorm_0/scale" in w:
            depth += 1
        if depth == 0:
            raise InteropError(f"{source}: no encoder blocks ('Transformer/encoderblock_0/...') in the file")
        block_names = [f"Transformer/encoderblock_{i}/" for i in range(depth)]
    names = _BIG_VISION if f"{prefix}{block_names[0]}{_BIG_VISION['attn']}/query/kernel" in w else _ORIGINAL

    def block(i: int, name: str) -> np.ndarray:
        a = get(f"{block_names[i]}{name}")
        return a[i] if scanned else a

    q_kernel = block(0, f"{names['attn']}/query/kernel")  # (D, heads, D/heads)
    num_heads = q_kernel.shape[1]
    mlp_dim = block(0, f"{names['mlp']}/Dense_0/kernel").shape[-1]
    class_token = f"{prefix}cls" in w
    size = (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)

    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": _t(kernel).permute(3, 2, 0, 1),  # HWIO -> OIHW
        "patch_embed.proj.bias": _t(get("embedding/bias")),
        "norm.weight": _t(get("Transformer/encoder_norm/scale")),
        "norm.bias": _t(get("Transformer/encoder_norm/bias")),
    }
    if class_token:
        state["cls_token"] = _t(get("cls")).reshape(1, 1, width)
    pos_key = next(
        (k for k in (f"{prefix}Transformer/posembed_input/pos_embedding", f"{prefix}pos_embedding") if k in w), None
    )
    if pos_key is not None:
        table = _t(w[pos_key])
        table = table.reshape(1, -1, width)  # (1, [1 +] N, D); big_vision may store (1, gh, gw, D)
        if size is None and w[pos_key].ndim == 4:
            size = (w[pos_key].shape[1] * p, w[pos_key].shape[2] * p)
        grid, slot = split_position_rows(table.shape[1], class_token, p, size, source)
        if class_token and slot == 0:  # big_vision: the class token gets no position
            table = torch.cat([table.new_zeros(1, 1, width), table], dim=1)
        state["pos_embed.weight"] = table
        posemb = "learned"
    else:
        if size is None:
            raise InteropError(f"{source} has no position table (sincos2d): pass image_size to say the input size")
        grid = (size[0] // p, size[1] // p)
        posemb = "sincos2d"

    for i in range(depth):
        b = f"blocks.{i}."
        a = names["attn"]
        state[b + "norm1.weight"] = _t(block(i, "LayerNorm_0/scale"))
        state[b + "norm1.bias"] = _t(block(i, "LayerNorm_0/bias"))
        # (D, heads, D/heads) -> (D, D) -> (out, in); stacked as [W_q; W_k; W_v]
        state[b + "attn.qkv.weight"] = torch.cat(
            [_t(block(i, f"{a}/{n}/kernel")).reshape(width, width).T for n in ("query", "key", "value")]
        )
        state[b + "attn.qkv.bias"] = torch.cat(
            [_t(block(i, f"{a}/{n}/bias")).reshape(-1) for n in ("query", "key", "value")]
        )
        state[b + "attn.proj.weight"] = _t(block(i, f"{a}/out/kernel")).reshape(width, width).T  # (heads, D/h, D)
        state[b + "attn.proj.bias"] = _t(block(i, f"{a}/out/bias"))
        state[b + "norm2.weight"] = _t(block(i, f"{names['norm2']}/scale"))
        state[b + "norm2.bias"] = _t(block(i, f"{names['norm2']}/bias"))
        for j in range(2):
            state[b + f"mlp.fc{j + 1}.weight"] = _t(block(i, f"{names['mlp']}/Dense_{j}/kernel")).T
            state[b + f"mlp.fc{j + 1}.bias"] = _t(block(i, f"{names['mlp']}/Dense_{j}/bias"))

    representation = None
    if f"{prefix}pre_logits/kernel" in w:
        representation = w[f"{prefix}pre_logits/kernel"].shape[-1]
        state["pre_logits.0.weight"] = _t(get("pre_logits/kernel")).T
        state["pre_logits.0.bias"] = _t(get("pre_logits/bias"))
    num_classes = 0
    if f"{prefix}head/kernel" in w and w[f"{prefix}head/kernel"].size:
        num_classes = w[f"{prefix}head/kernel"].shape[-1]
        state["head.weight"] = _t(get("head/kernel")).T
        state["head.bias"] = _t(get("head/bias"))

    config = ViTConfig(
        image_size=(grid[0] * p, grid[1] * p),
        patch_size=p,
        in_channels=in_channels,
        num_classes=num_classes,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        pool="cls" if class_token else "gap",
        class_token=class_token,
        posemb=posemb,
        representation_size=representation,
        qkv_bias=True,
        layer_norm_eps=1e-6,  # Flax LayerNorm's default
        gelu_approximate=gelu_approximate,
    )
    return build(config, state, source)
