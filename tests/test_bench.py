import json

import pytest
import torch
from conftest import perturbed

from vitkit import bench, create_model
from vitkit.cli import main
from vitkit.config import get_config


@pytest.mark.parametrize("name", ["vit_tiny_28", "vit_s16", "vit_b16"])
def test_analytic_flops_equal_torch_flop_counter(name):
    cfg = get_config(name)
    counted = bench.counted_flops(cfg)  # on the meta device: free even for ViT-B
    assert abs(cfg.flops() - counted) / counted < 0.02
    assert bench.model_flops(cfg, "train") == 3 * cfg.flops()
    assert bench.model_flops(cfg, "infer") == cfg.flops()


def test_bench_cli_runs_a_tiny_case(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "vit_tiny_28", "--batch-size", "2", "--mode", "train", "--dtype", "bf16"]
    args += ["--device", "cpu", "--warmup", "1", "--repeats", "2", "--peak-size", "256", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and "MFU" in text and "torch.utils.flop_counter" in text
    record = json.loads(out.read_text())
    assert record["model"] == "vit_tiny_28" and len(record["seconds"]) == 2
    assert record["images_per_s"] > 0 and record["mfu"] > 0
    assert record["gflops_forward"] == pytest.approx(record["gflops_counted"], rel=0.02)
    probes = record["peak_probes_tflops"]  # three before the steps, three after; the best is the peak
    assert len(probes) == 6 and record["peak_tflops"] == pytest.approx(max(probes), abs=1e-4)
    assert record["peak_spread"] == pytest.approx((max(probes) - min(probes)) / max(probes), abs=2e-3)


def test_bench_cli_names_a_missing_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--model", "vit_tiny_28", "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_interleaved_timing_runs_every_step_in_turn():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timings = bench.time_interleaved(steps, torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order
    assert all(len(t.seconds) == 3 and t.median >= 0 and t.spread >= 0 for t in timings.values())


def test_train_step_changes_the_weights_and_infer_does_not():
    model = create_model("vit_tiny_28", depth=1)
    before = model.head.weight.detach().clone()
    infer = bench.make_step(model, "infer", torch.bfloat16, 2, torch.device("cpu"), (1, 28, 28), 10)
    infer()
    assert torch.equal(model.head.weight, before)
    train = bench.make_step(model, "train", torch.bfloat16, 2, torch.device("cpu"), (1, 28, 28), 10)
    train()
    assert not torch.equal(model.head.weight, before)


def test_peak_probe_reports_a_positive_rate_per_try():
    rates = bench.peak_probes(torch.device("cpu"), torch.float32, size=128, repeats=3, min_seconds=0.01)
    assert len(rates) == 3 and min(rates) > 0
    assert bench.peak_matmul_flops(torch.device("cpu"), torch.float32, size=128, repeats=1, min_seconds=0.01) > 0


@pytest.mark.slow
def test_compiled_and_eager_models_agree_within_bf16_tolerance():
    torch.manual_seed(0)
    model = perturbed(create_model("vit_tiny_28", depth=1), 0.02)  # a non-zero head: logits differ per image
    compiled = bench.compile_model(model)
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        eager_fp32 = model(x)
        assert torch.allclose(compiled(x), eager_fp32, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager, comp = model(x).float(), compiled(x).float()
    scale = eager_fp32.abs().max()
    assert (comp - eager).abs().max() <= 0.02 * scale + 1e-3
    assert (comp - eager_fp32).abs().max() <= 0.05 * scale + 1e-3


def test_bench_times_a_recipes_model_and_profiles_its_step(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--recipe", "fmnist-10m", "--batch-size", "4", "--mode", "train", "--dtype", "fp32"]
    args += [
        "--device",
        "cpu",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--peak-size",
        "128",
        "--profile",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "kind of work" in text and "aten::" in text
    record = json.loads(out.read_text())
    # The main job's model as `vitkit train` built it in the search's winning runs (the params in
    # benchmarks/results/recipe_search.jsonl): 28x28 images padded to 32, the conv stem with three
    # convs a stage, width 128, depth 4.
    assert record["params"] == 1_030_890
    by_kind = record["profile"]["ms_per_step_by_kind"]
    assert by_kind["matmul"] > 0 and by_kind["convolution"] > 0  # the blocks' linears and the conv stem
    assert by_kind["optimiser and clipping"] > 0  # AdamW and the gradient norm for clipping at 1
    top = {o["op"] for o in record["profile"]["top_ops"]}
    assert top & {"aten::mm", "aten::addmm"}


@pytest.mark.parametrize(
    "op, kind",
    [
        ("aten::addmm", "matmul"),
        ("aten::bmm", "matmul"),
        ("aten::add_", "elementwise and reductions"),
        ("aten::_fused_adamw_", "optimiser and clipping"),
        ("aten::linalg_vector_norm", "optimiser and clipping"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention (SDPA)"),
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::native_layer_norm_backward", "normalisation"),
        ("aten::copy_", "dtype casts and copies"),
        ("aten::gelu_backward", "activation"),
        ("aten::_softmax_backward_data", "softmax and loss"),
        ("aten::cat", "other"),
    ],
)
def test_operators_are_sorted_into_kinds_of_work(op, kind):
    assert bench.op_kind(op) == kind
