"""What the timm, Hugging Face and JAX bridges share: safe file reading, building a checked
model from a renamed state dict, and the position table written out for formats that only
know one learned 1-D table.

Loading never executes code from the file: safetensors is plain data, ``.npz`` is read with
``allow_pickle=False`` and PyTorch pickles with ``torch.load(weights_only=True)``, which refuses
anything but tensors and containers of them.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoint import check_state_dict, read_weights
from ..config import ViTConfig
from ..errors import InteropError
from ..model import VisionTransformer

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Keys under which training scripts (timm, DeiT, MAE, Lightning) nest the weights in a .pth file.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` or PyTorch (``.pth``/``.pt``/``.bin``/``.ckpt``) file.

    A training checkpoint that nests the weights under ``state_dict`` or ``model`` is unwrapped.
    A truncated file, a pickle holding Python objects, or something that is not a name->tensor
    mapping is a one-line :class:`InteropError` saying what was expected and what was found.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if path.is_dir():
        raise InteropError(f"{path} is a folder; expected a weights file (.safetensors, .pth, .pt, .bin)")
    if path.suffix == ".safetensors":
        return read_weights(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise InteropError(
            f"{path}: unknown weights file type {path.suffix!r}; expected .safetensors, "
            f"{', '.join(TORCH_SUFFIXES)} (state dicts) or .npz (JAX)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines()]
        found = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        found = found.split("error:", 1)[-1].split(". ")[0].strip().rstrip(".")
        raise InteropError(
            f"{path} holds Python objects, not only tensors ({found}); vitkit loads with weights_only=True "
            "so that no code from the file runs: save a plain state dict (torch.save(model.state_dict(), ...))"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InteropError(f"{path} is not a readable PyTorch file ({first}); it may be truncated or corrupt") from None
    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise InteropError(f"{path} should hold a mapping of tensor names to tensors, found {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InteropError(
            f"{path} should hold only tensors, but {len(not_tensors)} entr(y/ies) are not, first: {not_tensors[:3]}"
        )
    return {str(k): v for k, v in obj.items()}


def build(config: ViTConfig, state: Mapping[str, torch.Tensor], source: str) -> VisionTransformer:
    """A model for ``config`` holding exactly ``state`` (every name and shape checked first), in eval mode."""
    model = VisionTransformer(config)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    check_state_dict(model, state, source=source)
    model.load_state_dict(state)
    return model.eval()


def square_side(n: int) -> int | None:
    """``s`` with ``s * s == n``, else None."""
    s = math.isqrt(n)
    return s if s * s == n else None


def split_position_rows(
    rows: int, num_prefix_tokens: int, patch_size: int, image_size: tuple[int, int] | None, source: str
) -> tuple[tuple[int, int], int]:
    """(token grid, prefix rows: 0 or ``num_prefix_tokens``) from the length of a 1-D position table.

    Foreign tables have N rows (no prefix rows: GAP models, big_vision, timm ``no_embed_class``)
    or N + prefix (row 0 for the class token, row 1 for DeiT's distillation token, then timm's
    register rows). A square grid is assumed unless ``image_size`` says otherwise; N and N + 1
    (or N + 2) are both squares only for N = 0, so those cases never collide. With registers an
    odd prefix of 3 or more can (a class token and 4 registers: 2x2 + 5 = 3x3), and the prefix
    reading wins; a timm model object, or ``image_size``, says which it is.
    """
    if image_size is not None:
        grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        slot = rows - grid[0] * grid[1]
        if slot not in (0, num_prefix_tokens):
            raise InteropError(
                f"{source}: a position table of {rows} rows does not fit image size {image_size} with "
                f"patch size {patch_size} ({grid[0]}x{grid[1]} patches and {num_prefix_tokens} prefix "
                "token(s)); pass the image size it was trained at"
            )
        return grid, slot
    if num_prefix_tokens and square_side(rows - num_prefix_tokens):
        side = square_side(rows - num_prefix_tokens)
        return (side, side), num_prefix_tokens
    side = square_side(rows)
    if side:
        return (side, side), 0
    raise InteropError(
        f"{source}: cannot infer a square patch grid from a position table of {rows} rows; "
        "pass image_size=(height, width) (--image-size on the command line) for non-square grids"
    )


def position_rows(model: VisionTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix rows (1, prefix, D), patch rows (1, N, D)) of the model's E_pos at its native grid;
    the prefix rows are those of the class and distillation tokens (registers have none).

    Formats with a single learned 1-D table (timm, Hugging Face) get any vitkit option written
    out as one: ``learned2d`` and ``sincos2d`` as the table they evaluate to, ``none`` as zeros,
    and zero prefix rows (class, distillation) where vitkit adds nothing to those tokens. The
    logits are unchanged at the native image size.
    """
    c = model.config
    with torch.no_grad():
        patches = model.pos_embed(c.grid_size)
        if patches is None:
            patches = torch.zeros(1, c.num_patches, c.width)
        prefix = model.pos_embed.prefix
        if prefix is None:
            prefix = torch.zeros(1, c.num_prefix_rows, c.width)
    return prefix.detach().clone(), patches.detach().clone()


def require_plain(model: VisionTransformer, target: str) -> None:
    """Refuse options that ``target`` has no equivalent for (the convolutional stems)."""
    if model.config.stem == "bit":
        raise InteropError(
            f"{target} has no ResNet hybrid (stem='bit', paper sec. 3.1); convert --to timm or --to vitkit keeps it"
        )
    if model.config.stem != "patch":
        raise InteropError(
            f"{target} has no convolutional stem; only stem='patch' models can be written in its format "
            "(convert --to vitkit keeps it)"
        )
