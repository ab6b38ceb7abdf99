"""ONNX export and its parity check against PyTorch.

``torch.onnx.export`` has two exporters. The TorchScript-based one (``dynamo=False``) needs only
the ``onnx`` package and exports both attention paths; the dynamo exporter additionally needs
``onnxscript``. vitkit uses the TorchScript exporter, with the explicit attention path (plain
MatMul / Softmax, which every ONNX runtime runs) and a dynamic batch dimension.

The image size is fixed by default: then the position embeddings are a constant table and no
interpolation is in the graph (bicubic resampling in ONNX runtimes has cost other libraries accuracy).
With ``dynamic_image_size=True`` the graph resamples the position grid for each input size,
as the PyTorch model does; sizes must then be multiples of the patch size.

Every export can carry metadata (ONNX ``metadata_props``, read by onnxruntime's
``InferenceSession.get_modelmeta().custom_metadata_map``): ``vitkit export`` writes
``preprocess`` (the JSON of the model's preprocess.json) and ``class_names`` (a JSON list), so the
file alone says how to prepare an image and what each logit means. An ONNX model that answers
worse than its source is most often one fed differently prepared pixels.

Every export can be checked with onnxruntime against PyTorch on the same random input
(:func:`check_onnx`), which returns the largest absolute difference of the logits.
:class:`OnnxModel` runs an exported graph behind the ``nn.Module`` interface, so that the code
that evaluates a PyTorch model evaluates the graph too (``vitkit evaluate --onnx``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ExportError
from .files import atomic_write_bytes
from .model import VisionTransformer
from .preprocess import Preprocess

DEFAULT_OPSET = 18
_PROTOBUF_LIMIT = 2**31 - 1  # one ONNX file holds at most 2 GiB; larger models need external data


@contextlib.contextmanager
def _explicit_attention(model: VisionTransformer) -> Iterator[None]:
    """Switch every block to the explicit attention path for the duration of the export."""
    saved = [block.attn.fused for block in model.blocks]
    try:
        model.set_fused_attention(False)
        yield
    finally:
        for block, fused in zip(model.blocks, saved, strict=True):
            block.attn.fused = fused


def _bicubic_aa_symbolic(g, input, output_size, align_corners, scales_h=None, scales_w=None):
    """ONNX Resize for PyTorch's antialiased bicubic (``F.interpolate(..., antialias=True)``).

    PyTorch's antialiased kernel is PIL's: cubic coefficient a = -0.5, weights outside the image
    dropped and the rest renormalised, the filter stretched when shrinking. ONNX Resize (opset 18)
    says the same with ``antialias=1, cubic_coeff_a=-0.5, exclude_outside=1``. The TorchScript
    exporter has no symbolic of its own for this op.
    """
    from torch.onnx import symbolic_helper as sh

    shape = g.op("Shape", input)
    lead = sh._slice_helper(g, shape, axes=[0], starts=[0], ends=[2])  # (batch, channels)
    size = g.op("Cast", output_size, to_i=7)  # INT64
    size = g.op("Concat", lead, size, axis_i=0)
    placeholder = sh._optional_input_placeholder_tensor(g)
    return g.op(
        "Resize",
        input,
        placeholder,
        sh._optional_input_placeholder_tensor(g),
        size,
        antialias_i=1,
        coordinate_transformation_mode_s="align_corners" if sh._maybe_get_const(align_corners, "b") else "half_pixel",
        cubic_coeff_a_f=-0.5,
        exclude_outside_i=1,
        mode_s="cubic",
    )


class _AnySize(nn.Module):
    """The model's forward written with traceable shapes, so that one graph serves every image size.

    vitkit's ``embed`` reads the grid from the input's shape as Python ints, which the tracer
    records as constants; here the grid comes from the patch embedding's output shape and the
    learned table is resampled with the same bicubic (antialiased) interpolation for every input.
    Only learned (1-D) and absent position embeddings are supported.
    """

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m, c = self.model, self.model.config
        x = m.patch_embed.proj(images)  # (B, D, gh, gw)
        gh, gw = x.shape[-2], x.shape[-1]
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        if c.posemb == "learned":
            gh0, gw0 = c.grid_size
            table = m.pos_embed.weight[:, m.pos_embed.num_prefix_tokens :]  # (1, N0, D)
            table = table.reshape(1, gh0, gw0, c.width).permute(0, 3, 1, 2)
            table = F.interpolate(table, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
            x = x + table.flatten(2).transpose(1, 2)
        prefix = m.prefix_tokens()  # class (and distillation) token, with their position rows
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)
        for block in m.blocks:
            x, _ = block(x)
        return m.forward_head(m.norm(x))


def export_onnx(
    model: VisionTransformer,
    path: str | os.PathLike,
    batch_size: int = 1,
    dynamic_image_size: bool = False,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``model`` to ONNX at ``path``: input ``images`` (B, C, H, W), output ``logits`` (B, classes).

    The batch dimension is dynamic; ``batch_size`` only shapes the example input that is traced.
    ``metadata`` goes into the file's ``metadata_props`` (:func:`onnx_metadata` makes vitkit's).
    Written atomically (the whole file appears or none of it).
    """
    model = model.eval()
    c = model.config
    if dynamic_image_size and (c.stem != "patch" or c.posemb not in ("learned", "none")):
        raise ExportError(
            f"dynamic_image_size export supports stem='patch' with posemb 'learned' or 'none'; this model has "
            f"stem={c.stem!r}, posemb={c.posemb!r}: export at a fixed size instead"
        )
    size_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if size_bytes > _PROTOBUF_LIMIT:
        raise ExportError(f"the model's {size_bytes / 2**30:.1f} GiB of weights exceed ONNX's 2 GiB single-file limit")
    h, w = c.image_size
    example = torch.randn(batch_size, c.in_channels, h, w)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_image_size else {0: "batch"}
    module: nn.Module = _AnySize(model) if dynamic_image_size else model
    buffer = io.BytesIO()
    if dynamic_image_size:
        if opset < 18:
            raise ExportError(f"dynamic_image_size export needs opset >= 18 (antialiased Resize), got {opset}")
        torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _bicubic_aa_symbolic, opset)
    try:
        with _explicit_attention(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected and harmless here
            torch.onnx.export(
                module,
                (example,),
                buffer,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": axes, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        if dynamic_image_size:  # leave no global registration behind
            torch.onnx.unregister_custom_op_symbolic("aten::_upsample_bicubic2d_aa", opset)
    path = Path(path)
    atomic_write_bytes(path, with_metadata(buffer.getvalue(), metadata or {}))
    return path


def onnx_metadata(preprocess: Preprocess) -> dict[str, str]:
    """The entries every ``vitkit export`` writes: ``preprocess`` (preprocess.json's JSON: how to
    turn an image file into the input tensor) and ``class_names`` (a JSON list, one per logit)."""
    return {
        "preprocess": json.dumps(preprocess.to_dict()),
        "class_names": json.dumps(list(preprocess.class_names)),
    }


def with_metadata(graph: bytes, metadata: Mapping[str, str]) -> bytes:
    """``graph`` (a serialised ONNX model) with ``metadata`` set in its ``metadata_props``."""
    if not metadata:
        return graph
    import onnx

    model = onnx.load_from_string(graph)
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX file at ``path``, as onnxruntime reports them."""
    return dict(onnx_session(path, threads=1).get_modelmeta().custom_metadata_map)


def check_onnx(
    model: VisionTransformer,
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 3),
    image_size: int | tuple[int, int] | None = None,
    seed: int = 0,
) -> float:
    """Run the ONNX file with onnxruntime and PyTorch on the same random images; return the
    largest absolute logit difference over all ``batch_sizes``."""
    c = model.config
    if image_size is None:
        h, w = c.image_size
    else:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if (h, w) != tuple(c.image_size) and not c.dynamic_image_size:
        model = copy.copy(model)  # same weights; the reference accepts the other size by resampling
        model.config = c.replace(dynamic_image_size=True)
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval()
    for b in batch_sizes:
        images = torch.randn(b, c.in_channels, h, w, generator=generator)
        with torch.no_grad():
            expected = model(images).numpy()
        (got,) = session.run(["logits"], {"images": images.numpy()})
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def onnx_session(path: str | os.PathLike, threads: int | None = None, spin: bool = True):  # noqa: ANN201 - an ort.InferenceSession
    """An onnxruntime CPU session for the graph at ``path``; ``threads`` caps its intra-op threads
    (None: onnxruntime's default, one per physical core).

    ``spin=False`` stops its threads from busy-waiting for the next run after each one: faster
    answers by default, but spinning threads take cores from whatever runs next in the process
    (``benchmarks/int8.py`` interleaves PyTorch runs with onnxruntime's, and turns it off).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "running an ONNX graph needs onnxruntime, which is not installed: pip install onnxruntime"
        ) from None
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """An exported graph run by onnxruntime, called like the model it came from: images (B, C, H, W)
    in, float logits (B, classes) out on the images' device.

    onnxruntime reads the file once, when the session is made; the file can be deleted afterwards.
    The module has no parameters, so ``train()`` / ``eval()`` change nothing.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spin: bool = True) -> None:
        super().__init__()
        self.session = onnx_session(path, threads, spin)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(["logits"], {"images": pixels})
        return torch.from_numpy(logits).to(images.device)
