"""Cheaper inference on a CPU: int8 Linear layers, bf16 weights, and how far they move the logits.

Every variant quantises the same thing, the ``nn.Linear`` layers (attention's qkv and output
projections, the MLPs, the head: nearly all of a ViT's FLOPs). The convolutional stem, LayerNorm,
softmax and attention's two activation-by-activation products stay in floating point.

- **int8 in PyTorch** (:func:`int8_torchao`): torchao's dynamic quantisation, int8 weights per
  output row, int8 activations with a scale measured per row at every forward
  (``Int8DynamicActivationInt8WeightConfig``). It replaces ``torch.ao.quantization.quantize_dynamic``,
  which PyTorch deprecates. torchao is an optional dependency (``pip install vitkit[int8]``).
- **int8 in onnxruntime** (:func:`quantize_onnx`, :func:`export_onnx_int8`): onnxruntime's
  ``quantize_dynamic``, int8 weights (QInt8) for MatMul/Gemm with a constant weight, uint8
  activations quantised at every run (``DynamicQuantizeLinear`` + ``MatMulInteger``).
- **bf16 weights** (:class:`BF16Weights`): the parameters cast to bfloat16 once, instead of autocast
  casting the fp32 weights again at every forward; LayerNorm and softmax take bf16 in and
  accumulate in fp32 inside PyTorch's CPU kernels.

:func:`inference_model` is the one entry point: (weights, runtime) -> a module that maps images to
fp32 logits, so that ``vitkit evaluate``, ``vitkit export`` and ``benchmarks/int8.py`` run the same
code. :func:`compare_logits` says how far a variant's logits are from fp32 PyTorch's on real images:
the largest difference and how often the top-1 class agrees, because int8 is judged by its
decisions, not by an fp32 tolerance of 1e-4.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ExportError
from .export import DEFAULT_OPSET, OnnxModel, export_onnx, with_metadata
from .files import atomic_write_bytes
from .model import VisionTransformer

log = logging.getLogger(__name__)

WEIGHTS = ("fp32", "bf16", "int8")
RUNTIMES = ("pytorch", "onnxruntime")
INSTALL_HINT = "pip install vitkit[int8]"

# What `vitkit export --int8 --check` accepts on real images. Dynamic int8 rounds every Linear
# input and weight to 1 part in ~127 of its range (onnxruntime: one range per activation tensor,
# the whole batch), so the largest logit difference over a test set is about a tenth of the
# logits' standard deviation (measured: 0.06 on the Fashion-MNIST model, 0.075-0.11 on small
# digits models) and a few near-ties flip (0.1 % of Fashion-MNIST, 1-2 % of the digits models'
# decisions). A broken graph moves logits by about one standard deviation and flips most
# decisions; these bounds tell the two apart with a margin of two over the measured figures.
MIN_TOP1_AGREEMENT = 0.95
MAX_RELATIVE_LOGIT_DIFF = 0.25


# ============================================================================ PyTorch int8 (torchao)
@contextlib.contextmanager
def _quiet_torch_pytree() -> Iterator[None]:
    """Silence torch's warning that torchao registers an Enum with pytree (torchao 0.18 with torch
    2.10+): it is about torchao's code, not the user's, and says nothing they can act on."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _torchao_int8_config() -> Any:
    """torchao's dynamic int8-activation, int8-weight config, or a one-line error saying how to install it."""
    try:
        with _quiet_torch_pytree():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    except ImportError:
        raise ConfigError(f"int8 in PyTorch needs torchao, which is not installed: {INSTALL_HINT}") from None
    return Int8DynamicActivationInt8WeightConfig()


def int8_torchao(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers compute in int8 (torchao, dynamic activations).

    The copy is quantised, not ``model``: the fp32 model stays usable as the reference.
    On a CPU without ``torch.compile`` each layer quantises its input in separate eager ops,
    which can cost more than the int8 product saves (``benchmarks/int8.py`` measures it).
    """
    config = _torchao_int8_config()
    from torchao.quantization import quantize_

    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, config)  # default filter: every nn.Linear
    return quantized


# ============================================================================ bf16 weights
class BF16Weights(nn.Module):
    """``model`` with its parameters and buffers in bfloat16, cast once; images are cast to bf16
    on the way in and logits back to fp32 on the way out.

    Under autocast the fp32 weights are cast to bf16 again at every forward (a copy of every
    weight per call); here they are stored in bf16, which also halves their memory.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(torch.bfloat16)).float()


# ============================================================================ onnxruntime int8
def _ort_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise ExportError("int8 ONNX needs onnxruntime, which is not installed: pip install onnxruntime") from None
    return quantization


class _DropMessage(logging.Filter):
    """Drop log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quantize_onnx(
    source: str | os.PathLike,
    target: str | os.PathLike,
    preprocess: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``source``'s graph with int8 MatMul/Gemm weights (onnxruntime dynamic quantisation) to
    ``target``, atomically.

    ``preprocess`` first runs onnxruntime's ``quant_pre_process`` (symbolic shape inference and
    graph optimisation), which onnxruntime's quantiser recommends. It is off by default because it
    does not help here: the same products are quantised and the accuracy is the same, but the graph
    ran 12-16 % slower (the shape inference step; ``benchmarks/int8.py`` times both). Conv (the
    stem) and activation-by-activation MatMuls (attention) stay in fp32.
    """
    q = _ort_quantization()
    target = Path(target)
    quiet = _DropMessage("Please consider to run pre-processing")  # onnxruntime's advice, measured above
    root = logging.getLogger()
    with tempfile.TemporaryDirectory(prefix="vitkit-int8-") as tmp:
        graph = Path(source)
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(graph), str(Path(tmp) / "pre.onnx"))
            graph = Path(tmp) / "pre.onnx"
        int8 = Path(tmp) / "int8.onnx"
        root.addFilter(quiet)
        try:
            q.quantize_dynamic(
                str(graph), str(int8), op_types_to_quantize=["MatMul", "Gemm"], weight_type=q.QuantType.QInt8
            )
        finally:
            root.removeFilter(quiet)
        # the whole file appears at target, or nothing does; the metadata set again, whatever the quantiser kept
        atomic_write_bytes(target, with_metadata(int8.read_bytes(), metadata or {}))
    return target


def export_onnx_int8(
    model: VisionTransformer,
    path: str | os.PathLike,
    dynamic_image_size: bool = False,
    opset: int = DEFAULT_OPSET,
    preprocess: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """:func:`~vitkit.export.export_onnx` then :func:`quantize_onnx`: only the int8 graph is written
    to ``path`` (atomically), with ``metadata``; the fp32 graph lives in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="vitkit-export-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", dynamic_image_size=dynamic_image_size, opset=opset)
        return quantize_onnx(fp32, path, preprocess=preprocess, metadata=metadata)


# ============================================================================ one entry point
def inference_model(
    model: VisionTransformer,
    weights: str = "fp32",
    runtime: str = "pytorch",
    threads: int | None = None,
    preprocess: bool = False,
    spin: bool = True,
) -> nn.Module:
    """``model`` ready to classify with ``weights`` (``fp32``, ``bf16``, ``int8``) on ``runtime``
    (``pytorch``, or ``onnxruntime`` through a temporary export): images in, fp32 logits out.

    ``threads`` and ``spin`` are onnxruntime's (:func:`~vitkit.export.onnx_session`; PyTorch's
    threads are set process-wide, by the caller); ``preprocess`` is :func:`quantize_onnx`'s.
    fp32 PyTorch is ``model`` itself (in eval mode); every other variant is a copy or a graph, and
    leaves ``model`` as it was.
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r}: choose one of {', '.join(WEIGHTS)}")
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    model = model.eval()
    if runtime == "pytorch":
        if weights == "int8":
            return int8_torchao(model)
        return BF16Weights(model) if weights == "bf16" else model
    if weights == "bf16":
        raise ConfigError("bf16 weights run in PyTorch only; drop --onnx, or use --int8 with it")
    with tempfile.TemporaryDirectory(prefix="vitkit-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        if weights == "int8":
            export_onnx_int8(model, path, preprocess=preprocess)
        else:
            export_onnx(model, path)
        return OnnxModel(path, threads, spin)  # the session holds the graph; the file may go


# ============================================================================ how far from fp32
@dataclass(frozen=True)
class Agreement:
    """How a variant's logits compare with the fp32 reference's on the same images.

    ``logit_spread`` is the standard deviation of the reference logits, the scale against which
    ``max_abs_diff`` is judged (a difference of 0.05 matters for logits within 0.1 of each other,
    not for logits spread over 20). The accuracies are there when the images' labels were given.
    """

    images: int
    max_abs_diff: float
    mean_abs_diff: float
    logit_spread: float
    top1_agreement: float
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.logit_spread, 1e-12)

    def ok(self, min_agreement: float = MIN_TOP1_AGREEMENT, max_relative: float = MAX_RELATIVE_LOGIT_DIFF) -> bool:
        return self.top1_agreement >= min_agreement and self.relative_diff <= max_relative

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self) | {"relative_diff": self.relative_diff}


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor | None = None) -> Agreement:
    """:class:`Agreement` of ``candidate`` logits (B, classes) with ``reference`` logits, and both
    accuracies when ``labels`` (B,) are given."""
    if reference.shape != candidate.shape:
        raise ExportError(
            f"logits of shape {tuple(candidate.shape)} differ from the reference's {tuple(reference.shape)}"
        )
    reference, candidate = reference.float(), candidate.float()
    diff = (candidate - reference).abs()
    accuracy = (lambda logits: float((logits.argmax(1) == labels).float().mean())) if labels is not None else None
    return Agreement(
        images=reference.shape[0],
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        logit_spread=float(reference.std()),
        top1_agreement=float((candidate.argmax(1) == reference.argmax(1)).float().mean()),
        reference_accuracy=accuracy(reference) if accuracy else None,
        candidate_accuracy=accuracy(candidate) if accuracy else None,
    )


@torch.no_grad()
def agreement_on(
    reference: nn.Module,
    candidate: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 256,
) -> Agreement:
    """Run both modules on ``images`` (normalised, (N, C, H, W)) in batches and compare their logits."""
    reference, candidate = reference.eval(), candidate.eval()
    ref, got = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        ref.append(reference(x).float())
        got.append(candidate(x).float())
    return compare_logits(torch.cat(ref), torch.cat(got), labels)
