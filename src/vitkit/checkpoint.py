"""Checkpoint folders: ``config.json`` + ``model.safetensors``, the Hugging Face convention.

Safetensors never executes code from the file. Every write goes to a temporary file in the
same folder, is flushed to disk and then renamed over the target, so a crash mid-write leaves
either the old complete file or the new complete one, never half of either.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import ViTConfig
from .errors import CheckpointError
from .model import VisionTransformer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _default_mode() -> int:
    """0666 less the umask, read once (reading it means setting it, which is not thread-safe)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(fileobj)`` to a temporary name, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode())  # mkstemp makes 0600 files; give the usual 0644 (per umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


@contextlib.contextmanager
def building_folder(final: Path, on_oserror: Callable[[OSError], Exception]) -> Iterator[Path]:
    """A folder written whole or not at all: the block fills a temporary sibling of ``final``
    (``final.tmp-PID``), which is renamed to ``final`` when the block ends well and removed when it
    does not. An OSError (a full disk, above all) is raised as ``on_oserror(error)``: a one-line
    message that names the place and what to do."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process of the same pid
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise on_oserror(e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the persistent tensors (safetensors refuses shared/strided ones)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save(model: VisionTransformer, directory: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` to ``directory`` as config.json + model.safetensors, each atomically.

    The weights are written before the config, and loading reads the config first and checks
    every tensor against it, so an interrupted save cannot pass for a complete one.
    """
    model = getattr(model, "module", model)  # unwrap DDP / compiled wrappers
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"vitkit.save expects a VisionTransformer, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "vitkit": "1"}
    meta.update(metadata or {})
    blob = st_save(state_dict_for_saving(model), metadata=meta)
    atomic_write_bytes(directory / WEIGHTS_NAME, blob)
    atomic_write_json(directory / CONFIG_NAME, model.config.to_dict())
    return directory


def find_swapped(run_dir: Path, name: str, also: str | None = None) -> Path | None:
    """The complete checkpoint ``run_dir/name``, or the previous one that a kill in the middle of
    swapping a new one in left as ``.name.old`` (``vitkit train`` writes checkpoints that way).
    Complete means holding ``config.json`` (written last by :func:`save`) and the file ``also``."""
    for candidate in (run_dir / name, run_dir / f".{name}.old"):
        if (candidate / CONFIG_NAME).is_file() and (also is None or (candidate / also).is_file()):
            return candidate
    return None


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A checkpoint's JSON file that must hold an object (of ``what``), or a one-line CheckpointError."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt, save it again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object of {what}, found {type(data).__name__}")
    return data


def read_config(directory: str | os.PathLike) -> ViTConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: a vitkit checkpoint is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by vitkit.save or `vitkit train`)"
        )
    data = read_json_object(path, "ViTConfig fields")
    try:
        return ViTConfig.from_dict(data)
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


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> VisionTransformer:
    """Build the model described by ``directory/config.json`` and load its weights, in eval mode.

    ``overrides`` change the config on the way in. Two of them adapt the weights as the paper's
    fine-tuning does (sec. 3.2): a new ``image_size`` resamples the learned position embeddings
    to the new grid, and a new ``num_classes`` replaces the head with a zero-initialised one.
    Any other override must keep every tensor's shape (dropout rates, drop_path, ...).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    config = read_config(directory)
    state = read_weights(directory / WEIGHTS_NAME)
    model = VisionTransformer(config)
    check_state_dict(model, state, source=str(directory / WEIGHTS_NAME))
    model.load_state_dict(state)
    if overrides:
        model = adapt(model, **overrides)
    return model.to(map_location).eval()


def adapt(model: VisionTransformer, fresh_head: bool = False, **overrides: Any) -> VisionTransformer:
    """A new model with ``overrides`` applied to the config and the trained weights carried over
    (position embeddings resampled to a new image size, head replaced for a new class count).

    ``fresh_head`` replaces the head (and a pre-logits layer that goes away) even when the class
    count stays: new classes of the same number need a new head too.

    ``model`` itself is left as it was: callers keep using it as the source (its config is what a
    fine-tuning run records as the source's). The new model is built at the old image size, takes
    the weights, and only then resamples its own position embeddings.
    """
    old = model.config
    if "num_classes" in overrides and overrides["num_classes"] != old.num_classes:
        overrides.setdefault("class_names", None)
    new_config = old.replace(**overrides)
    state = model.state_dict()
    new_model = VisionTransformer(new_config.replace(image_size=old.image_size))
    renewed = ["head."]
    if new_config.representation_size != old.representation_size:
        renewed.append("pre_logits.")
    if fresh_head or new_config.num_classes != old.num_classes or len(renewed) > 1:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(renewed))}
        state.update({k: v for k, v in new_model.state_dict().items() if k.startswith(tuple(renewed))})
    check_state_dict(new_model, state, source=f"weights with overrides {sorted(overrides)}")
    new_model.load_state_dict(state)
    if new_config.image_size != old.image_size:
        new_model.resample_image_size(new_config.image_size)  # its own tables, not the source's
    return new_model
