"""Distillation from a teacher (DeiT, Touvron et al. 2021): the paper's data hunger, answered with a
CNN's knowledge instead of more images.

A ViT trained from scratch on a small dataset lacks the CNN's built-in locality and trails it.
DeiT trains the ViT to match a trained classifier's predictions as well as the labels:

    loss = (1 - alpha) * CE(student, labels) + alpha * distill(student', teacher)

- **hard** (DeiT's best): ``distill`` is the cross-entropy against the teacher's top class;
- **soft** (Hinton et al. 2015): the KL divergence between the teacher's and the student's
  distributions softened by a temperature ``tau``, times ``tau**2`` so that its gradients keep
  their size as ``tau`` grows. DeiT's code divides the summed KL by the number of *logits*
  (batch x classes); vitkit takes the mean over images (``batchmean``), which is the KL
  divergence the formula names. DeiT's alpha for soft is then not the same number.

``student'`` is the same logits, or with ``--distill-token`` those of the distillation token's own
head (the class head learns from the labels, the distillation head from the teacher, and
inference averages the two: :class:`vitkit.model.VisionTransformer`).

The teacher runs in the same step on the same augmented pixels, without gradients, each model
preparing them its own way (:meth:`vitkit.preprocess.Preprocess.from_batch`): its time is part of
the step's, and so of ``--time-budget``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..preprocess import Preprocess
from ..transfer import load_source
from .step import Classification, Outcome, hits

log = logging.getLogger(__name__)

DISTILL_KINDS = ("hard", "soft")
TIMM_PREFIX = "timm:"


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """The distillation term on fp32 logits (B, classes): hard or soft (see the module's docstring)."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(1))
    if kind == "soft":
        log_p = F.log_softmax(student / tau, dim=1)
        log_q = F.log_softmax(teacher / tau, dim=1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (tau * tau)
    raise ConfigError(f"--distill {kind!r}: choose {' or '.join(DISTILL_KINDS)}")


@dataclass
class Teacher:
    """A frozen classifier, how it prepares its images, and which of its outputs are the
    student's classes (``order``: the teacher's index of each student class)."""

    model: nn.Module
    preprocess: Preprocess
    name: str
    order: list[int] | None = None  # None: the same classes in the same order

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, student: Preprocess) -> torch.Tensor:
        """The teacher's logits for a batch the student's preprocessing made, in the student's
        class order, as fp32."""
        logits = self.model(self.preprocess.from_batch(x, student)).float()
        return logits if self.order is None else logits[:, self.order]

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class Distillation(Classification):
    """The DeiT objective: (1 - alpha) x cross-entropy on the labels + alpha x the distillation
    term against ``teacher``. A student with a distillation token returns (class logits,
    distillation logits) while training; its score is their average, as at inference."""

    def __init__(
        self,
        teacher: Teacher,
        student: Preprocess,
        kind: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(label_smoothing)
        self.teacher, self.student, self.kind, self.alpha, self.tau = teacher, student, kind, alpha, tau

    def __call__(self, forward: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Outcome:
        out = forward(x)
        cls, dist = out if isinstance(out, tuple) else (out, out)
        taught = self.teacher(x, self.student)
        loss = (1 - self.alpha) * self.cross_entropy(cls, target)
        loss = loss + self.alpha * distillation_loss(dist.float(), taught, self.kind, self.tau)
        logits = (cls + dist) / 2 if isinstance(out, tuple) else cls
        return Outcome(loss, hits(logits, target), len(target))


# ============================================================================ finding the teacher
def load_teacher(spec: str, classes: list[str], device: torch.device) -> Teacher:
    """The teacher ``--teacher SPEC`` names, on ``device``, in eval mode, without gradients.

    SPEC is a vitkit run or checkpoint folder (a ViT or the CNN), any file ``--init`` reads
    (timm, Hugging Face, Google), or ``timm:MODEL_NAME=FILE``: any timm classifier, built by
    its name, with the weights of FILE. The teacher must know the student's ``classes``.
    """
    if spec.startswith(TIMM_PREFIX):
        teacher = _timm_teacher(spec)
        teacher.order = _class_order(spec, [], classes, int(teacher.model.num_classes))
    else:
        try:
            source = load_source(spec, flag="--teacher")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}; train a teacher first (the CNN: `vitkit train --recipe fmnist-10m-cnn --out {spec}`), or "
                "train without one: --teacher none"
            ) from None
        teacher = Teacher(source.model, source.preprocess, spec)
        teacher.order = _class_order(spec, list(source.preprocess.class_names), classes, _num_classes(source.model))
    teacher.model.to(device).eval().requires_grad_(False)
    return teacher


def _num_classes(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "num_classes", 0) or 0)


def _class_order(spec: str, names: list[str], classes: list[str], outputs: int) -> list[int] | None:
    """Which teacher output answers each student class: refused, in one line, unless the
    teacher was trained on the student's classes (by name; a teacher without names, by count)."""
    if not names:
        if outputs != len(classes):
            raise ConfigError(
                f"--teacher {spec} predicts {outputs} classes and the data has {len(classes)}: the teacher must be "
                "trained on the student's classes (train one with `vitkit train --data ... --model resnet_fmnist`)"
            )
        return None
    if names == classes:
        return None
    missing = [c for c in classes if c not in names]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConfigError(
            f"--teacher {spec} does not know the data's classes {', '.join(missing[:5])}{more}: the teacher must "
            "know the student's classes; train it on the same data, or pass --classes to train on the teacher's"
        )
    log.info(
        "--teacher %s: the data's %d classes are among its %d; its outputs are taken in the data's order",
        spec,
        len(classes),
        len(names),
    )
    return [names.index(c) for c in classes]


def _timm_teacher(spec: str) -> Teacher:
    """``timm:MODEL_NAME=FILE``: timm's architecture by name, the weights and class count from
    FILE, and the preprocessing timm's config for that model names."""
    name, sep, file = spec[len(TIMM_PREFIX) :].partition("=")
    if not sep or not name or not file:
        raise ConfigError(f"--teacher {spec}: write timm:MODEL_NAME=FILE, e.g. timm:resnet18=teacher.safetensors")
    if not Path(file).is_file():
        raise FileNotFoundError(f"--teacher {spec}: no such file {file}")
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise ConfigError(f"--teacher {spec} needs timm: pip install timm") from None
    from ..interop.common import read_state_dict

    if name not in timm.list_models():
        raise ConfigError(f"--teacher {spec}: timm has no model {name!r} (see timm.list_models())")
    state = read_state_dict(file)
    model = timm.create_model(name, pretrained=False)
    head = model.pretrained_cfg.get("classifier", "head")
    head = head[0] if isinstance(head, (list, tuple)) else head
    weight = state.get(f"{head}.weight")
    if weight is None:
        raise ConfigError(f"--teacher {spec}: {file} has no {head}.weight, the classifier of timm's {name}")
    model.reset_classifier(weight.shape[0])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"--teacher {spec}: {file} does not hold timm's {name} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    cfg = resolve_data_config({}, model=model)
    channels, h, w = cfg["input_size"]
    interpolation = cfg.get("interpolation", "bilinear")
    pre = Preprocess(
        (h, w),
        channels,
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
        mean=cfg["mean"][:channels],
        std=cfg["std"][:channels],
    )
    return Teacher(model, pre, spec, order=None)
