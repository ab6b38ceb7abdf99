"""Hugging Face transformers <-> vitkit: ``ViTModel`` / ``ViTForImageClassification``, and DeiT's
``DeiTModel`` / ``DeiTForImageClassificationWithTeacher``.

The mapping, per layer N (HF name under ``vit.encoder.layer.N.`` -> vitkit ``blocks.N.``):

    attention.attention.{query,key,value}  -> attn.qkv  (stacked as [W_q; W_k; W_v], eq. 5)
    attention.output.dense                 -> attn.proj
    layernorm_before / layernorm_after     -> norm1 / norm2
    intermediate.dense / output.dense      -> mlp.fc1 / mlp.fc2

plus ``vit.embeddings.{cls_token, position_embeddings, patch_embeddings.projection}``,
``vit.layernorm`` -> ``norm`` and ``classifier`` -> ``head``. HF keeps heads as contiguous
D/heads slices of each projection, as vitkit does, so the stacking needs no permutation.

Pooling: ``ViTForImageClassification`` classifies the class token's final state, without the
pooler (it is built with ``add_pooling_layer=False``), so it is vitkit's ``pool="cls"`` with no
pre-logits layer. A bare ``ViTModel`` has the pooler (Linear + tanh on the class token) and no
classifier: that is exactly vitkit's pre-logits layer (``representation_size``) with
``num_classes=0``, so the vitkit model's output is HF's ``pooler_output``.

DeiT (``"model_type": "deit"``) is the same encoder under ``deit.`` instead of ``vit.``, plus
``deit.embeddings.distillation_token`` (vitkit's ``dist_token``, row 1 of the position table) and
two classifiers, ``cls_classifier`` and ``distillation_classifier`` (``head``, ``head_dist``), whose
logits ``DeiTForImageClassificationWithTeacher`` averages as vitkit does. HF's plain
``DeiTForImageClassification`` keeps the distillation token but classifies the class token alone,
a model vitkit does not have: it is refused.

HF's default ``layer_norm_eps`` is 1e-12 (vitkit and timm: 1e-6); it is carried over, since it
changes the last digits of the logits.

Preprocessing travels as ``preprocessor_config.json``, a stock ``ViTImageProcessor`` (resize,
rescale, normalise), read into a :class:`~vitkit.preprocess.Preprocess` and written from one.
``transformers.pipeline`` turns every image into RGB first, so a grayscale model is written with
a three-channel patch embedding: the grey kernel times Pillow's ``L`` luma weights, which computes
on an RGB image what the grey model computes on its luma, and on a grey image turned RGB exactly
what it computes on the grey image. What the processor cannot do (a zero border) is refused
rather than written as a model that answers differently.

The shorter-side resize and centre crop (``fit="crop"``, the default for a folder of photos) is
refused too, after measuring. Transformers' stock processors that express it (``BitImageProcessor``:
``size={"shortest_edge": S}``, ``crop_size``; ``ConvNextImageProcessor``'s ``crop_pct``) resize as
vitkit does (the same torchvision call, the same truncated long side) but place the crop at
``floor((L - S) / 2)``, where vitkit, torchvision and timm round half to even: one pixel apart
whenever ``L - S`` is 3 modulo 4, about one photo in four. Through ``transformers.pipeline`` on
300 real photo crops, 291 to 300 top-1 answers agreed with ``vitkit predict`` (64 and 224 px,
random and trained models: ``benchmarks/crop_agreement.py``), in five cases of six short of the
299 in 300 vitkit asks of a converted folder; timm's ``pretrained_cfg`` keeps the rule exactly. Reading goes
the other way: a ``BitImageProcessor``- or ``ConvNextImageProcessor``-style file is read as that
rule (see :func:`preprocess_from_hf`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME
from ..config import ViTConfig
from ..files import atomic_write_bytes, atomic_write_json, read_json_object
from ..images import LUMA
from ..model import VisionTransformer
from ..preprocess import Preprocess
from .common import InteropError, build, position_rows, read_state_dict, require_plain

_LAYER = "encoder.layer."
_BLOCK_MAP = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_GENERIC_LABEL = "LABEL_"
PREPROCESSOR_NAME = "preprocessor_config.json"
VIT_PROCESSOR_MEAN_STD = (0.5, 0.5, 0.5)  # ViTImageProcessor's defaults: pixels to [-1, 1]
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's numbering, as HF stores it
# model_type -> the prefix of the encoder's names in the files
_PREFIXES = {"vit": "vit.", "deit": "deit."}
# HF classifier names -> vitkit's heads: ViT's (and DeiT without teacher's) one, DeiT with teacher's two
_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
# transformers >= 5 names its modules differently in memory (``layers.N.attention.q_proj``,
# ``mlp.fc1``) while its files keep the names above; both are read, files are written the old way.
_MEMORY_NAMES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def _file_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``vit.`` (``deit.``) prefix and map in-memory names to the on-disk ones."""
    out = {}
    for k, v in state.items():
        prefix = next((p for p in _PREFIXES.values() if k.startswith(p)), "")
        k = k[len(prefix) :]
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            for new, old in _MEMORY_NAMES.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new) :]
                    break
            k = f"{_LAYER}{i}.{rest}"
        out[k] = v
    return out


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json and the weights of a ``save_pretrained`` folder (single or sharded files)."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise InteropError(f"{folder} has no config.json; a Hugging Face model folder holds config.json + weights")
    try:
        hf_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{config_path} is not valid JSON ({e})") from None
    if not isinstance(hf_config, dict) or hf_config.get("model_type") not in _PREFIXES:
        found = hf_config.get("model_type") if isinstance(hf_config, dict) else type(hf_config).__name__
        raise InteropError(
            f'{config_path}: expected a Hugging Face ViT or DeiT ("model_type": "vit" or "deit"), found {found!r}'
        )
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return hf_config, state
    for weights_name in (WEIGHTS_NAME, "pytorch_model.bin"):
        if (folder / weights_name).is_file():
            return hf_config, read_state_dict(folder / weights_name)
    raise InteropError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin")


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


# Hugging Face's names for the exact GELU and for its tanh approximation.
_HF_GELUS = {"gelu": False, "gelu_pytorch_tanh": True, "gelu_new": True}


def _config_from_hf(hf: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str) -> ViTConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_GELUS:
        raise InteropError(f"{source}: hidden_act={act!r}; vitkit's MLP takes one of {sorted(_HF_GELUS)}")
    patch = _pair(hf.get("patch_size", 16))
    if patch[0] != patch[1]:
        raise InteropError(f"{source}: non-square patches {patch} are not supported")
    distill_token = "embeddings.distillation_token" in state
    if distill_token and "classifier.weight" in state:
        raise InteropError(
            f"{source} is a DeiTForImageClassification: it classifies the class token alone while its "
            "distillation token still takes part in attention, which vitkit's distilled model (the mean of a "
            "class head and a distillation head) cannot express; use DeiTForImageClassificationWithTeacher"
        )
    head = next((f"{n}.weight" for n in ("classifier", "cls_classifier") if f"{n}.weight" in state), None)
    num_classes = state[head].shape[0] if head else 0
    representation = None
    if "pooler.dense.weight" in state and num_classes == 0:
        if hf.get("pooler_act", "tanh") != "tanh":
            raise InteropError(f"{source}: pooler_act={hf['pooler_act']!r}; vitkit's pre-logits layer uses tanh")
        representation = state["pooler.dense.weight"].shape[0]
    class_names = None
    id2label = hf.get("id2label") or {}
    if num_classes and len(id2label) == num_classes:
        names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(num_classes)]
        if not all(n.startswith(_GENERIC_LABEL) for n in names):
            class_names = names
    return ViTConfig(
        image_size=_pair(hf.get("image_size", 224)),
        patch_size=patch[0],
        in_channels=int(hf.get("num_channels", 3)),
        num_classes=num_classes,
        width=int(hf.get("hidden_size", 768)),
        depth=int(hf.get("num_hidden_layers", 12)),
        num_heads=int(hf.get("num_attention_heads", 12)),
        mlp_dim=int(hf.get("intermediate_size", 3072)),
        pool="cls",
        class_token=True,
        distill_token=distill_token,
        posemb="learned",
        representation_size=representation,
        qkv_bias=bool(hf.get("qkv_bias", True)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        gelu_approximate=_HF_GELUS[act],
        class_names=class_names,
    )


def _state_from_hf(state: Mapping[str, torch.Tensor], depth: int, source: str) -> dict[str, torch.Tensor]:
    state = _file_names(state)
    if "embeddings.patch_embeddings.projection.weight" not in state:
        raise InteropError(
            f"{source} is not a Hugging Face ViT state dict: expected "
            f"'vit.embeddings.patch_embeddings.projection.weight', found {', '.join(list(state)[:3])} ..."
        )

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise InteropError(f"{source}: missing tensor 'vit.{name}'; the checkpoint is incomplete")
        return state.pop(name)

    out: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": take("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": take("embeddings.patch_embeddings.projection.bias"),
        "cls_token": take("embeddings.cls_token"),
        "pos_embed.weight": take("embeddings.position_embeddings"),
        "norm.weight": take("layernorm.weight"),
        "norm.bias": take("layernorm.bias"),
    }
    if "embeddings.distillation_token" in state:
        out["dist_token"] = take("embeddings.distillation_token")
    state.pop("embeddings.mask_token", None)  # masked-image-modelling only; unused when classifying
    for i in range(depth):
        pre = f"{_LAYER}{i}."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{pre}attention.attention.{n}.{kind}", None) for n in ("query", "key", "value")]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)  # (3D, D) / (3D,): [W_q; W_k; W_v]
            for hf_name, name in _BLOCK_MAP.items():
                if f"{pre}{hf_name}.{kind}" in state:
                    out[f"blocks.{i}.{name}.{kind}"] = state.pop(f"{pre}{hf_name}.{kind}")
    for kind in ("weight", "bias"):
        for hf_name, name in _HEADS.items():
            if f"{hf_name}.{kind}" in state:
                out[f"{name}.{kind}"] = state.pop(f"{hf_name}.{kind}")
    if "pooler.dense.weight" in state:
        if "head.weight" in out:  # ViTForImageClassification ignores a pooler: so does vitkit
            state.pop("pooler.dense.weight"), state.pop("pooler.dense.bias", None)
        else:
            out["pre_logits.0.weight"] = state.pop("pooler.dense.weight")
            out["pre_logits.0.bias"] = state.pop("pooler.dense.bias")
    out.update(state)  # anything left is reported as unexpected by the shape check
    return out


def from_hf(model_or_folder: nn.Module | str | os.PathLike) -> VisionTransformer:
    """A vitkit model with the weights of a Hugging Face ``ViTForImageClassification`` or ``ViTModel``
    (or DeiT's ``DeiTForImageClassificationWithTeacher`` or ``DeiTModel``).

    ``model_or_folder``: the transformers model object, or a ``save_pretrained`` folder (config.json
    + model.safetensors or pytorch_model.bin); reading a folder does not need transformers.
    """
    if isinstance(model_or_folder, nn.Module):
        source = f"Hugging Face {type(model_or_folder).__name__}"
        if not hasattr(getattr(model_or_folder, "config", None), "to_dict"):
            raise InteropError(f"{source} has no transformers config; expected ViTModel or ViTForImageClassification")
        hf_config = model_or_folder.config.to_dict()
        if hf_config.get("model_type") not in _PREFIXES:
            raise InteropError(f"{source}: expected model_type 'vit' or 'deit', found {hf_config.get('model_type')!r}")
        state = dict(model_or_folder.state_dict())
    else:
        folder = Path(model_or_folder)
        if not folder.exists():
            raise FileNotFoundError(f"{folder} not found")
        if not folder.is_dir():
            raise InteropError(f"{folder} is a file; a Hugging Face model is a folder with config.json + weights")
        source = str(folder)
        hf_config, state = _read_folder(folder)
    config = _config_from_hf(hf_config, _file_names(state), source)
    return build(config, _state_from_hf(state, config.depth, source), source)


def _architecture(config: ViTConfig) -> tuple[str, str]:
    """(model_type, architecture) of the Hugging Face class that matches ``config``."""
    if config.distill_token:
        return "deit", "DeiTForImageClassificationWithTeacher"
    return "vit", "ViTForImageClassification"


def to_hf_state_dict(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """The weights under ``ViTForImageClassification``'s names (``vit.`` prefix, ``classifier``), or
    with a distillation token ``DeiTForImageClassificationWithTeacher``'s (``deit.``, two classifiers)."""
    require_plain(model, "Hugging Face's ViT")
    c = model.config
    model_type, architecture = _architecture(c)
    if c.register_tokens:
        raise InteropError(
            f"Hugging Face's {architecture} has no register tokens (this model has register_tokens="
            f"{c.register_tokens}); save it in timm's format, which has them (reg_tokens)"
        )
    if not c.class_token or c.pool != "cls" or c.fc_norm:
        raise InteropError(
            f"Hugging Face's {architecture} classifies the class token after the final LayerNorm; "
            f"this model has pool={c.pool!r}, class_token={c.class_token}, fc_norm={c.fc_norm} "
            "(convert --to timm or --to vitkit keeps it)"
        )
    if c.representation_size:
        raise InteropError(
            f"{architecture} has no pre-logits layer before its classifier (its pooler is unused); "
            "convert a model with representation_size=None, or keep it with convert --to vitkit"
        )
    if not c.num_classes:
        raise InteropError(f"{architecture} needs a classifier; this model has num_classes=0")
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    prefix, patches = position_rows(model)
    enc = _PREFIXES[model_type]
    out = {
        f"{enc}embeddings.cls_token": sd["cls_token"],
        f"{enc}embeddings.position_embeddings": torch.cat([prefix, patches], dim=1).contiguous(),
        f"{enc}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        f"{enc}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        f"{enc}layernorm.weight": sd["norm.weight"],
        f"{enc}layernorm.bias": sd["norm.bias"],
    }
    if c.distill_token:
        out[f"{enc}embeddings.distillation_token"] = sd["dist_token"]
    heads = ("cls_classifier", "distillation_classifier") if c.distill_token else ("classifier",)
    for hf_name in heads:
        for kind in ("weight", "bias"):
            out[f"{hf_name}.{kind}"] = sd[f"{_HEADS[hf_name]}.{kind}"]
    for i in range(c.depth):
        pre = f"{enc}{_LAYER}{i}."
        for kind in ("weight", "bias"):
            qkv = sd.get(f"blocks.{i}.attn.qkv.{kind}")
            if qkv is not None:
                for name, part in zip(("query", "key", "value"), qkv.chunk(3, dim=0), strict=True):
                    out[f"{pre}attention.attention.{name}.{kind}"] = part.contiguous()
            for hf_name, name in _BLOCK_MAP.items():
                out[f"{pre}{hf_name}.{kind}"] = sd[f"blocks.{i}.{name}.{kind}"]
    return out


def hf_config_dict(config: ViTConfig) -> dict[str, Any]:
    """config.json for ``transformers.ViTConfig`` / ``ViTForImageClassification`` matching ``config``
    (``DeiTConfig`` / ``DeiTForImageClassificationWithTeacher`` with a distillation token)."""
    h, w = config.image_size
    labels = config.class_names or [f"{_GENERIC_LABEL}{i}" for i in range(config.num_classes)]
    model_type, architecture = _architecture(config)
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": config.width,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim,
        "hidden_act": "gelu_pytorch_tanh" if config.gelu_approximate else "gelu",
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "initializer_range": 0.02,
        "layer_norm_eps": config.layer_norm_eps,
        "image_size": h if h == w else [h, w],
        "patch_size": config.patch_size,
        "num_channels": config.in_channels,
        "qkv_bias": config.qkv_bias,
        "encoder_stride": config.patch_size,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "torch_dtype": "float32",
    }


def to_hf(model: VisionTransformer, folder: str | os.PathLike, preprocess: Preprocess | None = None) -> Path:
    """Write a folder (config.json + model.safetensors) that
    ``transformers.ViTForImageClassification.from_pretrained(folder)`` loads with the same logits
    (``DeiTForImageClassificationWithTeacher`` for a model with a distillation token; transformers'
    ``AutoModelForImageClassification`` would build ``DeiTForImageClassification`` instead).

    With ``preprocess``, the folder is ready for ``transformers.pipeline("image-classification")``:
    it gets ``preprocessor_config.json``, class names from the Preprocess when the model has none,
    and a grey model takes RGB (the kernel spread by the luma weights). Written without
    importing transformers; each file is written atomically.
    """
    from safetensors.torch import save as st_save

    state = to_hf_state_dict(model)
    config = hf_config_dict(model.config)
    processor = processor_config(preprocess) if preprocess is not None else None
    if preprocess is not None:
        if not model.config.class_names and preprocess.class_names:
            names = list(preprocess.class_names)
            config["id2label"] = {str(i): name for i, name in enumerate(names)}
            config["label2id"] = {name: i for i, name in enumerate(names)}
        if model.config.in_channels == 1:
            state, config["num_channels"] = _rgb_state(state, config["model_type"]), 3
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS_NAME, st_save(state, metadata={"format": "pt"}))
    if processor is not None:
        atomic_write_json(folder / PREPROCESSOR_NAME, processor)
    atomic_write_json(folder / CONFIG_NAME, config)
    return folder


# ============================================================================ preprocessing
def preprocess_from_hf(folder: str | os.PathLike, config: ViTConfig) -> Preprocess | None:
    """The folder's ``preprocessor_config.json`` as a Preprocess for the model's size and channels,
    or None when the folder has none. ``ViTImageProcessor``'s fields are a stretch; a shorter side
    (``size={"shortest_edge": S}``) with a centre crop (``BitImageProcessor``, CLIP's, DINOv2's) or
    ``crop_pct`` (``ConvNextImageProcessor``) is vitkit's ``fit="crop"``, whose centre is torchvision's
    (the module docstring says where Hugging Face's differs by a pixel)."""
    path = Path(folder) / PREPROCESSOR_NAME
    if not path.is_file():
        return None
    data = read_json_object(path, "image processor settings")
    size, channels = config.image_size, config.in_channels
    normalise = data.get("do_normalize", True)
    mean = data.get("image_mean", VIT_PROCESSOR_MEAN_STD) if normalise else (0.0,) * 3
    std = data.get("image_std", VIT_PROCESSOR_MEAN_STD) if normalise else (1.0,) * 3
    try:
        fit, crop_fraction = _resize_rule(data, path)
    except InteropError as e:  # the weights still load; the inference commands then ask for --assume-preprocess
        warnings.warn(f"{e}; read as recording no preprocessing", stacklevel=2)
        return None
    return Preprocess(
        size,
        channels,
        interpolation=_PIL_RESAMPLE.get(data.get("resample", 2), "bilinear"),
        fit=fit,
        crop_fraction=crop_fraction,
        mean=list(mean)[:channels],
        std=list(std)[:channels],
    )


# ConvNextImageProcessor cuts a centre only below this shortest edge; at or above it, it stretches
_CONVNEXT_WARP_FROM = 384


def _resize_rule(data: Mapping[str, Any], path: Path) -> tuple[str, float]:
    """(fit, crop_fraction) of a processor's resize settings, or an InteropError naming a rule
    vitkit's Preprocess has no form of."""
    size = data.get("size")
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    crop_pct = data.get("crop_pct")
    if shortest is None:  # height/width: a stretch (ViTImageProcessor), unless crop_pct says otherwise
        return ("crop", float(crop_pct)) if crop_pct else ("stretch", 1.0)
    shortest = int(shortest)
    crop_size = data.get("crop_size")
    if data.get("do_center_crop") and crop_size is not None:  # BitImageProcessor, CLIP, DINOv2
        crop = (
            (crop_size, crop_size) if isinstance(crop_size, int) else (crop_size.get("height"), crop_size.get("width"))
        )
        if crop[0] is None or crop[0] != crop[1] or crop[0] > shortest:
            raise InteropError(
                f"{path}: a {crop[0]}x{crop[1]} centre of a {shortest}-px shorter side has no vitkit form (a square "
                "no larger than the shorter side)"
            )
        return "crop", _crop_fraction(int(crop[0]), shortest)
    if crop_pct and shortest < _CONVNEXT_WARP_FROM:  # ConvNextImageProcessor: shortest_edge / crop_pct, then the centre
        return "crop", float(crop_pct)
    if crop_pct:
        return "stretch", 1.0
    raise InteropError(
        f"{path}: resizes the shorter side to {shortest} px and cuts no centre, so images keep their shape, which a "
        "fixed-size ViT cannot take"
    )


def _crop_fraction(crop: int, shorter: int) -> float:
    """The ``crop_fraction`` for which vitkit's rule, ``floor(crop / crop_fraction)``, gives ``shorter``
    exactly: ``crop / shorter``, one float step smaller where the division rounds below it."""
    fraction = crop / shorter
    while math.floor(crop / fraction) < shorter:
        fraction = math.nextafter(fraction, 0.0)
    return fraction


def processor_config(pre: Preprocess) -> dict[str, Any]:
    """``preprocessor_config.json`` for a stock ``ViTImageProcessor`` that prepares images as
    ``pre`` does (for RGB input: a grey Preprocess's statistics on each channel), or a one-line
    InteropError naming what the processor cannot express."""
    if pre.pad:
        raise InteropError(
            f"Hugging Face's ViTImageProcessor cannot add the {pre.pad}-pixel zero border this model's "
            "preprocess.json asks for (pad); --to vitkit keeps it"
        )
    if pre.fit != "stretch":  # measured: see the module docstring
        raise InteropError(
            "Hugging Face's image processors cut the centre one pixel off this model's rule (preprocess.json "
            f"fit={pre.fit!r}) on about one photo in four, which changes answers; --to timm keeps that rule "
            "exactly, --to vitkit too (or train with --fit stretch, which Hugging Face's processor repeats)"
        )
    resample = {name: number for number, name in _PIL_RESAMPLE.items()}[pre.interpolation]
    per_rgb = 3 if pre.channels == 1 else 1  # a grey model's statistics on each RGB channel
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": pre.image_size[0], "width": pre.image_size[1]},
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean) * per_rgb,
        "image_std": list(pre.std) * per_rgb,
    }


def _rgb_state(state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """A grey model's weights for RGB input: the patch kernel spread by the luma weights."""
    key = f"{_PREFIXES[model_type]}embeddings.patch_embeddings.projection.weight"
    luma = torch.tensor(LUMA, dtype=state[key].dtype).view(1, 3, 1, 1)
    return state | {key: (state[key] * luma).contiguous()}  # (D, 1, P, P) -> (D, 3, P, P)
