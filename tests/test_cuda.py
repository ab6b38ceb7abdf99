"""The CUDA path, checked against the CPU: skipped where no GPU is present (CI has none).

Run on a lent GPU with ``python -m pytest tests/test_cuda.py``; the results of the last such run
are recorded in ``benchmarks/results/gpu_checks.jsonl``.
"""

import json

import pytest
import torch

from vitkit import create_model, load
from vitkit.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("fused", [True, False])
def test_fp32_logits_on_the_gpu_equal_the_cpu(fused, monkeypatch):
    # true fp32 matmuls on the GPU (TF32 would round them); restored after the test
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = create_model("vit_s16", num_classes=10, fused_attention=fused).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # the head starts at zero
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_bf16_flash_attention_equals_the_explicit_path():
    """SDPA's flash kernel (bf16, head_dim 64) computes the paper's softmax(qk^T/sqrt(d))v."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    fused = create_model("vit_s16", num_classes=10, fused_attention=True).cuda().eval()
    explicit = create_model("vit_s16", num_classes=10, fused_attention=False).cuda().eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot run these inputs
            a = fused.forward_features(x)[0].float()
        b = explicit.forward_features(x)[0].float()
    assert (a - b).abs().max().item() < 0.1 * b.abs().max().item()
    assert torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min() > 0.999


def test_train_on_the_gpu_then_predict_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--epochs", "6", "--device", "cuda", "--out", str(out)]
    argv += ["--set", "width=64", "--set", "depth=2", "--set", "num_heads=2", "--set", "mlp_dim=128"]
    argv += ["--set", "patch_size=2", "--set", "pool=gap", "--batch-size", "32", "--lr", "2e-3"]
    argv += ["--crop-padding", "0", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["bf16"] is True
    assert summary["accuracy"] > 0.8
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "digits", "--device", "cpu", "--json"]) == 0
    cpu_eval = json.loads(capsys.readouterr().out)
    assert abs(cpu_eval["top1"] - summary["accuracy"]) < 0.02  # bf16 on the GPU vs fp32 on the CPU
    model = load(out / "last", map_location="cuda")
    assert next(model.parameters()).is_cuda


def test_bench_on_the_gpu(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "vit_b16", "--batch-size", "64", "--mode", "infer", "--dtype", "bf16"]
    argv += ["--device", "cuda", "--warmup", "3", "--repeats", "5", "--json", str(out)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["images_per_s"] > 100 and 0 < record["mfu"] < 1.2
