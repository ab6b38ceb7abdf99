"""Checkpoint folders: ``config.json`` + ``model.safetensors``, the Hugging Face convention.

A folder holds a ViT, or the CNN reference (:mod:`vitkit.cnn`) when its config.json says
``"architecture": "resnet"``; :func:`load` builds whichever it describes. Safetensors never
executes code from the file. Every file is written whole
(:mod:`vitkit.files`), so a crash mid-write leaves either the old complete file or the new
complete one, never half of either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .cnn import ResNet, ResNetConfig, is_resnet_config
from .config import ViTConfig
from .errors import CheckpointError, ConfigError
from .files import atomic_write_bytes, atomic_write_json, read_json_object
from .model import VisionTransformer, check_patch_size

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

Model = VisionTransformer | ResNet  # what a vitkit checkpoint folder holds
ModelConfig = ViTConfig | ResNetConfig


def build(config: ModelConfig) -> Model:
    """The model ``config`` describes, freshly initialised: a ResNet for a ResNetConfig, else a ViT."""
    return ResNet(config) if isinstance(config, ResNetConfig) else VisionTransformer(config)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """A config.json's fields as the config they describe: a ResNet's by its marker, else a ViT's."""
    return ResNetConfig.from_dict(d) if is_resnet_config(d) else ViTConfig.from_dict(d)


def require_vit(model: Model, command: str, source: str | os.PathLike) -> VisionTransformer:
    """``model`` itself when it is a ViT; for the CNN, a ConfigError saying that ``command`` (e.g.
    ``"explain (attention maps)"``) needs a Vision Transformer and ``source`` holds a CNN."""
    if isinstance(model, ResNet):
        raise ConfigError(
            f'{source} holds a CNN (a ResNet: its config.json says "architecture": "resnet"); {command} needs a '
            "Vision Transformer (a CNN is for train, evaluate and predict)"
        )
    return model


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the persistent tensors (safetensors refuses shared/strided ones)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save(model: Model, directory: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` to ``directory`` as config.json + model.safetensors, each atomically.

    The weights are written before the config, and loading reads the config first and checks
    every tensor against it, so an interrupted save cannot pass for a complete one.
    """
    model = getattr(model, "module", model)  # unwrap DDP / compiled wrappers
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, (VisionTransformer, ResNet)):
        raise TypeError(f"vitkit.save expects a VisionTransformer or a vitkit ResNet, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "vitkit": "1"}
    meta.update(metadata or {})
    blob = st_save(state_dict_for_saving(model), metadata=meta)
    atomic_write_bytes(directory / WEIGHTS_NAME, blob)
    atomic_write_json(directory / CONFIG_NAME, model.config.to_dict())
    return directory


def read_config(directory: str | os.PathLike) -> ModelConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: a vitkit checkpoint is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by vitkit.save or `vitkit train`)"
        )
    data = read_json_object(path, "model config fields")
    try:
        return config_from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file into CPU tensors, with a clear error for a truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found; the checkpoint folder is incomplete")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt"
        ) from None


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Compare names and shapes with the model's own; raise naming the first mismatches."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        f"{k}: expected {expected[k]}, found {found[k]}" for k in expected if k in found and expected[k] != found[k]
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), first: {'; '.join(wrong[:3])}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), first: {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), first: {', '.join(unexpected[:3])}")
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + " | ".join(problems))


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> Model:
    """Build the model described by ``directory/config.json`` and load its weights, in eval mode:
    a ViT, or the CNN (:class:`vitkit.cnn.ResNet`) when the config is marked ``"resnet"``.

    ``overrides`` change the config on the way in. Two of them adapt the weights as the paper's
    fine-tuning does (sec. 3.2): a new ``image_size`` resamples the learned position embeddings
    to the new grid (``posemb_resample="bilinear"`` as the official code, else bicubic), and a
    new ``num_classes`` replaces the head with a zero-initialised one.
    Any other override must keep every tensor's shape (dropout rates, drop_path, ...). A ResNet
    loads as it was saved (no overrides).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    config = read_config(directory)
    state = read_weights(directory / WEIGHTS_NAME)
    model = build(config)
    check_state_dict(model, state, source=str(directory / WEIGHTS_NAME))
    model.load_state_dict(state)
    if overrides:
        model = adapt(model, **overrides)
    return model.to(map_location).eval()


def adapt(
    model: VisionTransformer, fresh_head: bool = False, posemb_resample: str = "bicubic", **overrides: Any
) -> VisionTransformer:
    """A new model with ``overrides`` applied to the config and the trained weights carried over
    (position embeddings resampled to a new image size by ``posemb_resample``, bicubic or the
    official code's bilinear, and the head replaced for a new class count).

    ``fresh_head`` replaces the head (and a pre-logits layer that goes away) even when the class
    count stays: new classes of the same number need a new head too. A distillation head is
    replaced with the class head, both zero-initialised.

    ``model`` itself is left as it was: callers keep using it as the source (its config is what a
    fine-tuning run records as the source's). The new model is built at the old image size, takes
    the weights, and only then resamples its own position embeddings.
    """
    model = require_vit(model, f"adapting the weights ({sorted(overrides) or 'a fresh head'})", "the model")
    old = model.config
    if "num_classes" in overrides and overrides["num_classes"] != old.num_classes:
        overrides.setdefault("class_names", None)
    if overrides.get("patch_size", old.patch_size) != old.patch_size:
        check_patch_size(old.replace(image_size=overrides.get("image_size", old.image_size)), overrides["patch_size"])
    new_config = old.replace(**overrides)
    state = model.state_dict()
    new_model = VisionTransformer(new_config.replace(image_size=old.image_size, patch_size=old.patch_size))
    renewed = ["head.", "head_dist."]  # DeiT's distillation head is replaced with the class head
    new_pre_logits = new_config.representation_size != old.representation_size
    if new_pre_logits:
        renewed.append("pre_logits.")
    if fresh_head or new_config.num_classes != old.num_classes or new_pre_logits:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(renewed))}
        state.update({k: v for k, v in new_model.state_dict().items() if k.startswith(tuple(renewed))})
    check_state_dict(new_model, state, source=f"weights with overrides {sorted(overrides)}")
    new_model.load_state_dict(state)
    if new_config.patch_size != old.patch_size:  # FlexiViT's PI-resize, the grid resampled once
        new_model.resample_patch_size(new_config.patch_size, posemb_resample, new_config.image_size)
    elif new_config.image_size != old.image_size:
        new_model.resample_image_size(new_config.image_size, posemb_resample)  # its own tables, not the source's
    return new_model
