"""Frozen features of a model: what ``vitkit probe`` fits and ``vitkit embed`` writes.

The default features are the model's *representation*, the pooled, normalised vector its head
reads (``forward_head(..., pre_logits=True)``): the paper's few-shot probes fit exactly that.
``layer`` takes instead the token states after one block (``forward_intermediates``), pooled by
the class token, the mean of the patch tokens, or kept whole.

:func:`cached_representation` keeps the representation of a whole dataset in a file under the
vitkit cache, keyed by the checkpoint's weights and the dataset's pixels, so that probing a
checkpoint at several shot counts and seeds, or again tomorrow, runs the model once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.builtin import cache_dir
from .data.dataset import ImageDataset, inference_batch, iterate_batches, pixel_digest
from .errors import InputError
from .files import atomic_write
from .model import VisionTransformer, block_indices
from .preprocess import Preprocess
from .runtime import autocast

POOLS = ("cls", "gap", "tokens")


def check_pool(model: VisionTransformer, pool: str) -> None:
    if pool not in POOLS:
        raise InputError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool == "cls" and not model.config.class_token:
        raise InputError("--pool cls: this model has no class token; use --pool gap (the mean of the patch tokens)")


@torch.no_grad()
def features(
    model: VisionTransformer, x: torch.Tensor, layer: int | None = None, pool: str | None = None
) -> torch.Tensor:
    """One batch of normalised images -> features.

    ``layer=None``: the representation the head reads, (B, D). Otherwise the token states after
    block ``layer`` (negative counts from the end), pooled by ``pool`` (default: the model's own
    pooling): "cls" (B, D), "gap" (B, D) or "tokens" (B, T, D).
    """
    if layer is None:
        if pool not in (None, model.config.pool):
            raise InputError(
                f"the representation is pooled as the model pools ({model.config.pool}); "
                f"for --pool {pool}, also give --layer (e.g. --layer -1)"
            )
        tokens, _ = model.forward_features(x)
        return model.forward_head(tokens, pre_logits=True)
    pool = pool or model.config.pool
    check_pool(model, pool)
    (index,) = block_indices(len(model.blocks), [layer])
    (taken,) = model.forward_intermediates(
        x, [index], output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True, stop_early=True
    )
    patches, prefix = taken if model.config.num_prefix_tokens else (taken, taken[:, :0])
    if pool == "gap":
        return patches.mean(1)
    if pool == "cls":
        return prefix[:, 0]
    return torch.cat([prefix, patches], dim=1)


@torch.no_grad()
def dataset_features(
    model: VisionTransformer,
    dataset: ImageDataset,
    preprocess: Preprocess,
    layer: int | None = None,
    pool: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> torch.Tensor:
    """:func:`features` of every image of ``dataset`` (pixels as ``preprocess`` prepared them), in
    float32 on the CPU."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for index in iterate_batches(len(dataset), inference_batch(batch_size, dataset.images)):
        x = preprocess.normalize(dataset.images[index].to(device))
        with autocast(device, bf16):
            out.append(features(model, x, layer, pool).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def cached_representation(
    model: VisionTransformer,
    weights: str | os.PathLike,
    dataset: ImageDataset,
    preprocess: Preprocess,
    device: str | torch.device = "cpu",
    cache: str | os.PathLike | None = None,
    log=print,  # noqa: ANN001
) -> torch.Tensor:
    """The representation of every image of ``dataset``, read from the cache when this checkpoint
    (``weights``, the file) has already seen these pixels, else computed and stored there."""
    from safetensors.torch import load_file, save

    key = _cache_key(weights, dataset, preprocess)
    path = Path(cache or cache_dir() / "features") / f"{key}.safetensors"
    if path.is_file():
        log(f"features: {len(dataset)} images of {dataset.name or 'the dataset'} from the cache {path}")
        return load_file(path)["features"]
    log(f"features: computing the representation of {len(dataset)} images of {dataset.name or 'the dataset'}")
    out = dataset_features(model, dataset, preprocess, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(save({"features": out.contiguous()})))
    return out


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, read once per (path, size, modification time): a probe keys the train
    and the test split by the same weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_key(weights: str | os.PathLike, dataset: ImageDataset, preprocess: Preprocess) -> str:
    """A digest of the weights file, the pixels, the labels and the preparation."""
    stat = os.stat(weights)
    h = hashlib.sha256(_file_digest(str(weights), stat.st_size, stat.st_mtime_ns).encode())
    h.update(pixel_digest(dataset.images).encode())
    h.update(dataset.labels.to(torch.int64).numpy().tobytes())
    h.update(repr(preprocess).encode())
    return h.hexdigest()[:32]


@dataclass
class Embeddings:
    """Features with their labels (-1: unknown) and the name of each image, as ``vitkit embed``
    writes them: ``.safetensors`` (tensors, names in the metadata) or ``.npz`` (arrays)."""

    features: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    class_names: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if len(self.names) != len(self.features) or len(self.labels) != len(self.features):
            raise InputError(f"{len(self.features)} features, {len(self.labels)} labels and {len(self.names)} names")
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            meta = {"names": json.dumps(self.names), "class_names": json.dumps(self.class_names)} | self.info
            tensors = {"features": self.features.contiguous(), "labels": self.labels.to(torch.int64).contiguous()}
            atomic_write(path, lambda f: f.write(save(tensors, metadata=meta)))
        elif path.suffix == ".npz":
            import numpy as np

            def write(f) -> None:  # noqa: ANN001
                np.savez(
                    f,
                    features=self.features.numpy(),
                    labels=self.labels.to(torch.int64).numpy(),
                    names=np.array(self.names, dtype=str),
                    class_names=np.array(self.class_names, dtype=str),
                    info=np.array(json.dumps(self.info)),
                )

            atomic_write(path, write)
        else:
            raise InputError(f"--out {path}: write .safetensors or .npz (give the file one of those endings)")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Embeddings:
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = dict(f.metadata() or {})
                features, labels = f.get_tensor("features"), f.get_tensor("labels")
            names, class_names = json.loads(meta.pop("names")), json.loads(meta.pop("class_names"))
            return cls(features, labels, names, class_names, meta)
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as z:
                return cls(
                    torch.from_numpy(z["features"]),
                    torch.from_numpy(z["labels"]),
                    z["names"].tolist(),
                    z["class_names"].tolist(),
                    json.loads(str(z["info"])),
                )
        raise InputError(f"{path}: embeddings are .safetensors or .npz files")
