"""One resolver: whatever a user names as a model -> the model, its format, and its preprocessing.

Every command that takes a model (predict, evaluate, probe, embed, explain, serve, export,
convert, ``train --init``) reads it here, so each accepts the same things: a run folder (its
``best/``, else ``last/``), a vitkit checkpoint folder, or what ``vitkit convert`` wrote (a
Hugging Face folder, a timm folder or file), and a Google ``.npz``.

With the weights comes the preprocessing the files *record*: vitkit's ``preprocess.json``,
Hugging Face's ``preprocessor_config.json``, timm's ``pretrained_cfg`` in its config.json. A file
that records none gives ``preprocess=None``: inference refuses to guess (the same weights on
differently normalised pixels answer differently), while fine-tuning may fall back to a
format's convention (:mod:`vitkit.transfer`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import CONFIG_NAME, Model
from ..config import ViTConfig
from ..errors import CheckpointError
from ..files import find_complete
from ..preprocess import PREPROCESS_NAME, Preprocess
from .hf import preprocess_from_hf
from .timm import preprocess_from_timm

RUN_CHECKPOINTS = ("best", "last")  # a run folder's checkpoints, in the order they are preferred


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint from a run folder (its ``best``, else ``last``), or the path itself when it is
    a checkpoint folder or a weights file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; give a run folder (runs/NAME), a checkpoint folder or timm / Hugging Face / "
            "Google weights"
        )
    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return path
    for name in RUN_CHECKPOINTS:
        found = find_complete(path / name, CONFIG_NAME)
        if found is not None:
            return found
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (config.json + model.safetensors) nor a run folder holding "
        "best/ or last/; train one with `vitkit train --out RUN`"
    )


@dataclass
class Artifact:
    """A model as read from disk, with what its files say about its images."""

    model: Model
    fmt: str  # vitkit | timm | hf | jax
    path: Path  # the checkpoint folder or file that was read (a run folder's best/ or last/)
    preprocess: Preprocess | None  # None: the files record no preprocessing
    recorded_in: str  # the file that recorded it ("" when none did)


def load_artifact(
    spec: str | os.PathLike,
    fmt: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    name: str | None = None,
) -> Artifact:
    """The model at ``spec`` (a run folder, a checkpoint folder or file of any format ``load_any``
    reads) and the preprocessing its files record. ``fmt``, ``image_size`` and ``name`` are
    :func:`vitkit.interop.load_any`'s."""
    from . import load_any  # the package's reader; imported here as the package imports this module

    path = resolve_checkpoint(spec)
    model, fmt = load_any(path, fmt=fmt, image_size=image_size, name=name)
    preprocess, recorded_in = recorded_preprocess(path, fmt, model.config)
    if preprocess is not None and not preprocess.class_names:  # foreign files name classes in the model
        preprocess = preprocess.replace(class_names=Preprocess.for_model(model.config).class_names)
    return Artifact(model, fmt, path, preprocess, recorded_in)


def recorded_preprocess(path: Path, fmt: str, config: ViTConfig) -> tuple[Preprocess | None, str]:
    """(the preprocessing the files at ``path`` record, the file that records it), or (None, "")."""
    folder = path if path.is_dir() else path.parent
    if fmt == "vitkit" and (path / PREPROCESS_NAME).is_file():
        return Preprocess.load(path, config), PREPROCESS_NAME
    if fmt == "hf":
        pre = preprocess_from_hf(path, config)
        return pre, ("preprocessor_config.json" if pre is not None else "")
    if fmt == "timm" and (folder / CONFIG_NAME).is_file():
        try:
            data = json.loads((folder / CONFIG_NAME).read_text())
        except (OSError, ValueError):
            return None, ""
        cfg = data.get("pretrained_cfg") if isinstance(data, dict) and "architecture" in data else None
        if isinstance(cfg, dict):
            return preprocess_from_timm(cfg, config), "pretrained_cfg in config.json"
    return None, ""
