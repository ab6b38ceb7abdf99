"""int8 (torchao, onnxruntime) and bf16 weights, checked against fp32 PyTorch on real images.

The reference throughout is the fp32 model: a small ViT trained here on scikit-learn's digits, so
that its logits are spread as a trained model's are (a random model's near-ties would flip under
any rounding). torchao's arithmetic is also checked against a few lines of int8 written out.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from vitkit.cli import main
from vitkit.data import load_dataset
from vitkit.errors import ConfigError, ExportError
from vitkit.evaluate import load_for_inference
from vitkit.quantize import (
    INSTALL_HINT,
    BF16Weights,
    agreement_on,
    compare_logits,
    export_onnx_int8,
    inference_model,
    int8_torchao,
    quantize_onnx,
)

torchao = pytest.importorskip("torchao")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# int8 on real digits: the trained tiny model keeps >= 97 % of its decisions and its largest logit
# moves by <= 0.2 of the logits' standard deviation (measured: 98.9 %, 0.085 for onnxruntime).
MIN_AGREEMENT = 0.97
MAX_RELATIVE = 0.2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny ViT trained for a few seconds on digits (the test split: 359 real images)."""
    from vitkit.train import train

    out = tmp_path_factory.mktemp("quantize") / "run"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        train(tiny_config(out, epochs=8), progress=False)
    return out


@pytest.fixture(scope="module")
def trained(run_dir):
    """(fp32 model, its normalised test images, their labels)."""
    classifier = load_for_inference(run_dir)
    ds = load_dataset("digits", "test", preprocess=classifier.preprocess)
    return classifier.model, classifier.preprocess.normalize(ds.images), ds.labels


def test_torchao_int8_is_per_row_symmetric_int8():
    """One Linear, against the int8 arithmetic written out: per-output-row int8 weights, per-token int8
    activations, scale = absmax / 127.5 (torchao's symmetric range [-128, 127]), int32 products."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 48))
    x = torch.randn(5, 7, 64)
    w, b = layer[0].weight.detach(), layer[0].bias.detach()
    sw = w.abs().amax(1, keepdim=True) / 127.5
    sx = x.abs().amax(-1, keepdim=True) / 127.5
    qw = (w * (1.0 / sw)).round().clamp(-128, 127)
    qx = (x * (1.0 / sx)).round().clamp(-128, 127)
    expected = (qx @ qw.T) * sx * sw.T + b
    with torch.no_grad():
        got, fp32 = int8_torchao(layer)(x), layer(x)
    assert (got - expected).abs().max() < 1e-5
    assert (got - fp32).abs().max() > 1e-3  # it did quantise: fp32 is further away than the reference
    assert layer[0].weight.dtype == torch.float32  # the original is left alone


@pytest.mark.parametrize(
    "weights, runtime", [("int8", "pytorch"), ("int8", "onnxruntime"), ("bf16", "pytorch"), ("fp32", "onnxruntime")]
)
def test_variants_agree_with_fp32_on_real_digits(trained, weights, runtime):
    model, images, labels = trained
    variant = inference_model(model, weights, runtime, threads=1)
    a = agreement_on(model, variant, images, labels, batch_size=100)
    assert a.images == len(labels) == 359
    if weights == "fp32":  # the same arithmetic in another runtime
        assert a.max_abs_diff < 1e-4 and a.top1_agreement == 1.0
        return
    assert a.top1_agreement >= MIN_AGREEMENT, a
    assert 1e-4 < a.max_abs_diff and a.relative_diff <= MAX_RELATIVE, a  # changed, but only a little
    assert abs(a.candidate_accuracy - a.reference_accuracy) <= 0.02, a


def test_bf16_weights_are_cast_once(trained):
    model, images, _ = trained
    wrapped = BF16Weights(model)
    assert {p.dtype for p in wrapped.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # a copy was cast
    with torch.no_grad():
        assert wrapped(images[:4]).dtype == torch.float32


def test_int8_onnx_graph_quantises_the_linear_layers_only(trained, tmp_path):
    model, images, _ = trained
    path = export_onnx_int8(model, tmp_path / "int8.onnx")
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    depth = model.config.depth
    assert ops.count("MatMulInteger") == 4 * depth + 1  # qkv, proj, fc1, fc2 per block, and the head
    assert ops.count("MatMul") == 2 * depth  # q k^T and attn v stay in fp32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no fp32 graph or temporary left


def test_quantize_onnx_writes_atomically(trained, tmp_path, monkeypatch):
    """A quantiser that fails half-way leaves the previous file as it was and nothing else behind."""
    from onnxruntime import quantization

    model, _, _ = trained
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    fp32 = tmp_path / "src" / "fp32.onnx"
    from vitkit.export import export_onnx

    export_onnx(model, fp32)

    def half_written(source, output, **kw):
        with open(output, "wb") as f:
            f.write(b"half a graph")
        raise RuntimeError("disk full")

    monkeypatch.setattr(quantization, "quantize_dynamic", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_onnx(fp32, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "src"]


def test_missing_torchao_is_a_one_line_error(trained, monkeypatch, capsys, run_dir):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao...` now raises ImportError
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    model, _, _ = trained
    with pytest.raises(ConfigError, match=r"pip install vitkit\[int8\]"):
        int8_torchao(model)
    assert main(["evaluate", str(run_dir), "--int8", "--out", str(run_dir / "none")]) == 1
    err = capsys.readouterr().err
    assert INSTALL_HINT in err and err.count("\n") == 1


def test_vitkit_imports_without_torchao():
    code = "import sys; sys.modules['torchao'] = None; import vitkit, vitkit.cli, vitkit.quantize; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_compare_logits_against_hand_counts():
    reference = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    candidate = torch.tensor([[1.9, 0.1, -1.0], [0.0, 0.4, 0.5]])  # the second row's top-1 moves
    a = compare_logits(reference, candidate, labels=torch.tensor([0, 1]))
    assert a.images == 2 and a.top1_agreement == 0.5
    assert a.reference_accuracy == 1.0 and a.candidate_accuracy == 0.5
    assert a.max_abs_diff == pytest.approx(0.6) and a.mean_abs_diff == pytest.approx(0.8 / 6)
    assert a.logit_spread == pytest.approx(reference.std().item()) and not a.ok()
    with pytest.raises(ExportError, match="differ"):
        compare_logits(reference, candidate[:1])


def test_unsupported_combinations_are_errors(trained):
    model, _, _ = trained
    with pytest.raises(ConfigError, match="PyTorch only"):
        inference_model(model, "bf16", "onnxruntime")
    with pytest.raises(ConfigError, match="weights='int4'"):
        inference_model(model, "int4")


def test_evaluate_and_export_commands(run_dir, tmp_path, capsys):
    """Each variant through `vitkit evaluate`: its own report folder, accuracy within 2 points of fp32."""
    top1 = {}
    for flags, folder in [
        ([], "eval-test"),
        (["--int8"], "eval-test-int8"),
        (["--onnx", "--int8"], "eval-test-onnx-int8"),
        (["--precision", "bf16-weights"], "eval-test-bf16-weights"),
    ]:
        assert main(["evaluate", str(run_dir), "--json", *flags]) == 0
        result = json.loads(capsys.readouterr().out)
        assert (run_dir / folder / "summary.json").is_file()
        top1[folder] = result["top1"]
    assert result["inference"] == "pytorch, bf16 weights"
    assert all(abs(v - top1["eval-test"]) <= 0.02 for v in top1.values()), top1
    assert main(["evaluate", str(run_dir), "--onnx", "--precision", "bf16"]) == 1
    assert "does not combine" in capsys.readouterr().err

    assert main(["export", str(run_dir / "best"), str(tmp_path / "m.onnx"), "--int8", "--check"]) == 0
    out = capsys.readouterr().out
    assert "on 359 real images: top-1 agreement" in out and "(ok)" in out
