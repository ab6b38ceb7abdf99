"""Bridges to the other ViT ecosystems: timm, Hugging Face transformers and Google's JAX checkpoints.

Each bridge renames and reshapes weights; none needs the other library installed to read its
files (timm and transformers are only imported when their model objects are passed in, or to
look up a timm architecture's settings). :func:`load_any` reads any supported source, detecting
the format; :func:`load_artifact` adds run folders and the preprocessing the files record, and is
what every command reads a model with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME
from ..checkpoint import load as load_vitkit
from ..cnn import is_resnet_config
from ..model import VisionTransformer
from .common import TORCH_SUFFIXES, InteropError, read_state_dict
from .hf import (
    PREPROCESSOR_NAME,
    from_hf,
    hf_config_dict,
    preprocess_from_hf,
    processor_config,
    to_hf,
    to_hf_state_dict,
)
from .jax import from_jax_npz, read_npz, save_jax_npz, to_jax_arrays
from .timm import (
    TimmFolder,
    from_timm,
    preprocess_from_timm,
    pretrained_cfg_for,
    save_timm,
    timm_kwargs,
    timm_model_args,
    timm_name,
    to_timm,
    to_timm_state_dict,
)

FORMATS = ("vitkit", "timm", "hf", "jax")

__all__ = [
    "FORMATS",
    "PREPROCESSOR_NAME",
    "Artifact",
    "InteropError",
    "TimmFolder",
    "detect_format",
    "from_hf",
    "from_jax_npz",
    "from_timm",
    "hf_config_dict",
    "load_any",
    "load_artifact",
    "preprocess_from_hf",
    "preprocess_from_timm",
    "pretrained_cfg_for",
    "processor_config",
    "read_npz",
    "read_state_dict",
    "resolve_checkpoint",
    "save_jax_npz",
    "save_timm",
    "timm_kwargs",
    "timm_model_args",
    "timm_name",
    "to_hf",
    "to_hf_state_dict",
    "to_jax_arrays",
    "to_timm",
    "to_timm_state_dict",
]

_EXPECTED = {
    "vitkit": "a vitkit checkpoint folder (config.json with ViTConfig fields + model.safetensors)",
    "hf": 'a Hugging Face folder (config.json with "model_type": "vit" or "deit" + model.safetensors or '
    "pytorch_model.bin)",
    "jax": "a Google/big_vision .npz file",
    "timm": "a timm state dict file (.safetensors, .pth, .pt or .bin) or timm folder",
}


def _describe(path: Path) -> str:
    if path.is_dir():
        config = path / CONFIG_NAME
        if not config.is_file():
            return f"a folder without {CONFIG_NAME}"
        try:
            data = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"a folder whose {CONFIG_NAME} is not valid JSON"
        if isinstance(data, dict) and "model_type" in data:
            return f'a Hugging Face folder with "model_type": {data["model_type"]!r}'
        if isinstance(data, dict) and "architecture" in data and not is_resnet_config(data):
            return f"a timm folder for {data['architecture']!r}"
        return "a vitkit checkpoint folder"
    return f"a {path.suffix or 'suffix-less'} file"


def detect_format(path: str | os.PathLike) -> str:
    """The format of a checkpoint path: 'vitkit', 'hf', 'jax' or 'timm' (see ``_EXPECTED``).

    Read from the path alone (a folder's config.json, else the file's suffix); no weights are
    loaded. Raises ``FileNotFoundError`` for a missing path and :class:`InteropError`, naming
    what each format expects, for a path that is none of them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if path.is_dir():
        config = path / CONFIG_NAME
        if not config.is_file():
            raise InteropError(
                f"{path}: a checkpoint folder needs {CONFIG_NAME}; expected {_EXPECTED['vitkit']} or {_EXPECTED['hf']}"
            )
        try:
            data = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InteropError(f"{config} is not valid JSON ({e})") from None
        if isinstance(data, dict) and "model_type" in data:
            return "hf"
        if isinstance(data, dict) and "architecture" in data and not is_resnet_config(data):
            return "timm"  # timm's save/push_to_hub folder (vitkit's CNN marks itself "resnet")
        return "vitkit"
    if path.suffix == ".npz":
        return "jax"
    if path.suffix in (".safetensors", *TORCH_SUFFIXES):
        return "timm"
    raise InteropError(
        f"{path}: cannot tell the format of {_describe(path)}; expected one of: " + "; ".join(_EXPECTED.values())
    )


def load_any(
    path: str | os.PathLike,
    fmt: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    name: str | None = None,
) -> tuple[VisionTransformer, str]:
    """(model, format) from any supported checkpoint; ``fmt`` forces the format (else detected).

    ``image_size`` is the size the *source* was trained at, needed only where a file cannot say
    (non-square grids); ``name`` is a timm architecture name. A forced ``fmt`` that does not
    match the path is an :class:`InteropError` naming what was expected and what was found.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise InteropError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    detected = detect_format(path)
    fmt = fmt or detected
    if fmt != detected:
        raise InteropError(f"--from {fmt} expects {_EXPECTED[fmt]}, but {path} is {_describe(path)}")
    kwargs: dict[str, Any] = {}
    if fmt == "vitkit":
        return load_vitkit(path), fmt
    if fmt == "hf":
        return from_hf(path), fmt
    if fmt == "jax":
        return from_jax_npz(path, image_size=image_size), fmt
    if image_size is not None:
        kwargs["image_size"] = image_size
    if path.is_dir():  # timm folder: config.json names the architecture and its arguments, beside the weights
        timm_config = json.loads((path / CONFIG_NAME).read_text())
        name = name or str(timm_config["architecture"]).split(".")[0]  # drop the pretrained tag (".augreg_in21k")
        kwargs["model_args"] = timm_config.get("model_args") or {}
        weights = next((path / n for n in (WEIGHTS_NAME, "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise InteropError(f"{path} has a timm config.json but no model.safetensors or pytorch_model.bin")
        path = weights
    return from_timm(path, name=name, **kwargs), fmt


from .artifact import Artifact, load_artifact, resolve_checkpoint  # noqa: E402 - it reads through load_any
