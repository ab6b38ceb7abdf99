"""Start from pre-trained weights: the paper's transfer (sec. 3.2), any source, adapted to the data.

The paper pre-trains on a large dataset and fine-tunes on a small one: "we remove the
pre-trained prediction head and attach a zero-initialized D x K feedforward layer", often at a
higher resolution, with "2D interpolation of the pre-trained position embeddings". This module
does those steps for a model from any source vitkit reads, and two more that real data needs:

- **Source.** A vitkit checkpoint or run folder, a Google ``.npz``, a timm state dict, a Hugging
  Face folder, or ``hf-hub:ORG/NAME`` fetched through ``huggingface_hub`` into its usual cache.
  With the weights comes the way the source saw its images (:class:`~vitkit.preprocess.Preprocess`):
  the resize rule and, above all, the normalisation, because the same weights on differently
  normalised pixels are a different model.
- **Channels.** Grayscale data on an RGB model: the first layer's kernel is summed over the
  colour channels (timm's ``adapt_input_conv`` rule), with the per-channel normalisation folded
  into kernel and bias so that the adapted model computes on a grey image exactly what the
  original computed on that image replicated to RGB. RGB data on a grayscale model: the kernel is
  repeated in equal thirds.
- **Resolution** and **head**, as the paper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CONFIG_NAME, Model, adapt
from .config import ViTConfig
from .errors import ConfigError, InteropError
from .interop import load_artifact
from .interop.hf import VIT_PROCESSOR_MEAN_STD
from .interop.timm import IMAGENET_MEAN, IMAGENET_STD, TIMM_CROP_PCT
from .model import VisionTransformer
from .preprocess import Preprocess

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
HALF = VIT_PROCESSOR_MEAN_STD  # Google's ViT repositories, as Hugging Face's ViTImageProcessor: [-1, 1]


@dataclass
class Source:
    """Pre-trained weights and how their model saw its images."""

    model: Model  # a ViT, or (a vitkit checkpoint) the CNN reference
    preprocess: Preprocess
    fmt: str  # vitkit | timm | hf | jax
    name: str  # what the user gave: a path, or hf-hub:ORG/NAME
    normalisation: str  # which rule gave the normalisation, for the log and the run record


# ============================================================================ finding and reading a source
def resolve_source(spec: str, flag: str = "--init") -> Path:
    """A local path for ``spec``: the path itself, or for ``hf-hub:ORG/NAME`` the snapshot folder
    in Hugging Face's cache (downloaded when missing; with ``HF_HUB_OFFLINE=1``, the cache only).
    ``flag`` is the option that named it, for the messages."""
    if not spec.startswith(HUB_PREFIX):
        path = Path(spec).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{flag} {spec}: no such file or folder")
        return path
    repo = spec[len(HUB_PREFIX) :]
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HFValidationError
    except ImportError:
        raise ConfigError(f"{flag} {spec} needs huggingface_hub: pip install huggingface_hub") from None
    try:  # safetensors (or a Google .npz) where the repository has them; pickled weights only if not
        folder = Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.npz"]))
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.npz")):
            folder = Path(snapshot_download(repo, allow_patterns=["*.json", "*.bin", "*.pth"]))
    except HFValidationError as e:
        raise ConfigError(f"{flag} {spec}: {str(e).splitlines()[0]}; write hf-hub:ORG/NAME") from None
    except Exception as e:  # offline without a cached copy, unknown repository, no network
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InteropError(
            f"{flag} {spec}: cannot fetch {repo} from the Hugging Face hub or find it in its cache ({first}); "
            "check the name, the network, or HF_HUB_OFFLINE"
        ) from None
    npz = sorted(folder.glob("*.npz"))
    return npz[0] if not (folder / CONFIG_NAME).is_file() and len(npz) == 1 else folder


def load_source(
    spec: str, mean: list[float] | None = None, std: list[float] | None = None, flag: str = "--init"
) -> Source:
    """The model of ``spec`` and its Preprocess; ``mean``/``std`` replace the normalisation.
    ``flag`` is the option that named the source (``--init``, ``--teacher``), for the messages.

    The preprocessing is what the files record (:func:`vitkit.interop.load_artifact`), else the
    format's convention: fine-tuning learns on top of it, and ``--mean``/``--std`` correct it."""
    artifact = load_artifact(resolve_source(spec, flag))
    if artifact.preprocess is not None:
        preprocess, rule = artifact.preprocess, f"recorded in its {artifact.recorded_in}"
    else:
        preprocess, rule = _convention(artifact.fmt, artifact.model.config)
    if mean is not None or std is not None:
        if mean is None or std is None or len(mean) != len(std):
            raise ConfigError("give --mean and --std together, one value per channel of the source")
        preprocess, rule = preprocess.replace(mean=mean, std=std), "--mean/--std"
    return Source(artifact.model.eval(), preprocess, artifact.fmt, spec, rule)


def _convention(fmt: str, config: ViTConfig) -> tuple[Preprocess, str]:
    """How a source whose files record no preprocessing most likely saw its images, and the rule."""
    size, channels = config.image_size, config.in_channels
    if fmt == "jax":
        return Preprocess(size, channels, mean=HALF[:channels], std=HALF[:channels]), "Google's convention (0.5, 0.5)"
    if fmt == "hf":
        pre = Preprocess(size, channels, mean=HALF[:channels], std=HALF[:channels])
        return pre, "no preprocessor_config.json: ViTImageProcessor's defaults (0.5, 0.5)"
    if fmt == "timm":
        pre = Preprocess(size, channels, interpolation="bicubic", fit="crop", crop_fraction=TIMM_CROP_PCT)
        pre = pre.replace(mean=IMAGENET_MEAN[:channels], std=IMAGENET_STD[:channels])
        return pre, "a bare timm file: ImageNet's mean/std (pass --mean/--std if the model was trained otherwise)"
    return Preprocess.for_model(config), "none recorded: pixels scaled to [0, 1]"


# ============================================================================ adapting it to the data
def valid_size(size: int, stride: int) -> int:
    """``size`` if the patch size (a conv stem's total stride) divides it; else a one-line error
    naming the nearest sizes that it divides."""
    if size >= stride and size % stride == 0:
        return size
    lower, upper = (size // stride) * stride, (size // stride + 1) * stride
    near = f"{lower} or {upper}" if lower >= stride else f"{upper}"
    raise ConfigError(f"--image-size {size} is not a multiple of the patch size {stride}; use {near}")


def _resize(
    model: VisionTransformer, pre: Preprocess, size: int, notes: list[str], posemb_resample: str = "bicubic"
) -> tuple[VisionTransformer, Preprocess]:
    """The model and its Preprocess at input size ``size``: position embeddings resampled (sec. 3.2;
    ``posemb_resample`` bicubic or bilinear), and a zero border kept in proportion (28 + 2 + 2 at 32
    becomes 56 + 4 + 4 at 64)."""
    valid_size(size, model.config.patch_size)
    old = pre.input_size
    if (size, size) == tuple(old):
        return model, pre
    pre = pre.at_input_size((size, size))
    rule = "bilinear, as the official code" if posemb_resample == "bilinear" else "bicubic"
    notes.append(f"resolution {old[0]}x{old[1]} -> {size}x{size}: position embeddings resampled ({rule})")
    return adapt(model, image_size=size, posemb_resample=posemb_resample), pre


def _first_conv(model: VisionTransformer) -> torch.nn.Conv2d:
    embed = model.patch_embed
    return embed.proj if model.config.stem == "patch" else embed.convs[0]


def adapt_channels(model: VisionTransformer, pre: Preprocess, channels: int) -> tuple[VisionTransformer, Preprocess]:
    """The model for ``channels``-channel images (1 or 3), and how to normalise them.

    RGB to grey: the kernel W_c of each colour is scaled by s/s_c and summed, where s_c, m_c are the
    source's per-channel std and mean and s, m their averages (the grey image's normalisation);
    the first layer then meets (g - m)/s instead of (g - m_c)/s_c, and the difference, the kernel's
    sum times (m_c - m)/s_c, is taken off its bias (a conv stem's first convolution has none: it goes
    into the BatchNorm's running mean, and in training BatchNorm removes it by itself). A grey image
    then gives exactly what the source gave for it replicated to RGB (up to a conv stem's zero
    padding when the channels' statistics differ). With equal statistics this is timm's rule: the
    sum of the kernel. Grey to RGB: the kernel in equal thirds, the grey statistics on each channel.
    """
    old = model.config.in_channels
    if channels == old:
        return model, pre
    if model.config.stem == "bit":
        # A weight-standardised kernel is renormalised at every call: summed or split over the colours
        # it is rescaled per output channel, which the GroupNorm after it does not undo.
        raise ConfigError(
            f"the ResNet hybrid (stem='bit') takes {old}-channel images and its weight-standardised first "
            f"convolution cannot be adapted to {channels} exactly; pass --channels {old} to convert the images instead"
        )
    conv = _first_conv(model)
    w = conv.weight.detach().float()
    m, s = torch.tensor(pre.mean), torch.tensor(pre.std)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = "patch_embed.proj" if model.config.stem == "patch" else "patch_embed.convs.0"
    if (old, channels) == (3, 1):
        grey_m, grey_s = m.mean(), s.mean()
        state[f"{key}.weight"] = (w * (grey_s / s).view(1, 3, 1, 1)).sum(1, keepdim=True)
        shift = (w.sum((2, 3)) * ((m - grey_m) / s).view(1, 3)).sum(1)  # per output channel
        if model.config.stem == "patch":
            state[f"{key}.bias"] = state[f"{key}.bias"] - shift
        else:
            state["patch_embed.convs.1.running_mean"] = state["patch_embed.convs.1.running_mean"] + shift
        pre = pre.replace(channels=1, mean=[float(grey_m)], std=[float(grey_s)])
    elif (old, channels) == (1, 3):
        state[f"{key}.weight"] = w.repeat(1, 3, 1, 1) / 3
        pre = pre.replace(channels=3, mean=list(pre.mean) * 3, std=list(pre.std) * 3)
    else:
        raise ConfigError(f"cannot adapt a {old}-channel model to {channels}-channel images; use 1 or 3 channels")
    new = VisionTransformer(model.config.replace(in_channels=channels))
    new.load_state_dict(state)
    return new.train(model.training), pre


def adapt_input(
    source: Source, channels: int, size: int | None = None, posemb_resample: str = "bicubic"
) -> tuple[VisionTransformer, Preprocess, list[str]]:
    """The source's model and Preprocess for ``channels``-channel images at input size ``size``
    (default: the source's own, else position embeddings resampled by ``posemb_resample``);
    returns (model, preprocess, what was adapted)."""
    model, pre, notes = source.model, source.preprocess, []
    if size is not None:
        model, pre = _resize(model, pre, size, notes, posemb_resample)
    if channels != model.config.in_channels:
        notes.append(
            f"input channels {model.config.in_channels} -> {channels}: first layer adapted, normalisation folded"
        )
        model, pre = adapt_channels(model, pre, channels)
    return model, pre, notes


def adapt_head(
    model: VisionTransformer, class_names: list[str], keep_head: bool, notes: list[str]
) -> VisionTransformer:
    """The source's head when asked and its classes are the data's; else a new zero-initialised
    linear head (the pre-logits layer goes with the old head, as in the paper's fine-tuning).
    A DeiT source's distillation head is replaced too: both new heads start at zero."""
    c = model.config
    same = c.num_classes == len(class_names) and list(c.class_names or []) == list(class_names)
    if keep_head:
        if not same:
            have = c.class_names or f"{c.num_classes} unnamed classes"
            raise ConfigError(
                f"--keep-head: the source's classes ({have}) are not the data's ({class_names}); "
                "leave --keep-head out for a new head"
            )
        notes.append("head kept: the classes match")
        return model
    heads = "heads (class and distillation)" if c.distill_token else "head"
    notes.append(
        f"new zero-initialised {heads} for {len(class_names)} classes"
        + (" (pre-logits layer dropped)" if c.representation_size else "")
    )
    return adapt(
        model, num_classes=len(class_names), class_names=list(class_names), representation_size=None, fresh_head=True
    )
