"""ONNX export, checked with onnxruntime against PyTorch on the same images."""

import pytest
import torch
from conftest import perturbed

from vitkit import create_model
from vitkit.cli import main
from vitkit.export import check_onnx, export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def model_for_export(**kw):
    torch.manual_seed(0)
    return perturbed(create_model("vit_tiny_32", depth=2, patch_size=8, **kw))


@pytest.mark.parametrize("kw", [dict(), dict(pool="gap", class_token=False, posemb="sincos2d")], ids=["cls", "gap"])
def test_export_matches_pytorch_for_two_batch_sizes(tmp_path, kw):
    model = model_for_export(**kw)
    path = export_onnx(model, tmp_path / "model.onnx", batch_size=2)
    assert check_onnx(model, path, batch_sizes=(1, 4)) < 1e-4
    assert model.blocks[0].attn.fused  # the export's explicit attention path was switched back


def test_dynamic_image_size_export_resamples_like_pytorch(tmp_path):
    model = model_for_export()
    path = export_onnx(model, tmp_path / "model.onnx", dynamic_image_size=True)
    for size in [(32, 32), (48, 48), (64, 40), (16, 16)]:  # native, larger, non-square, smaller
        assert check_onnx(model, path, batch_sizes=(1, 2), image_size=size) < 1e-4


def test_export_command_prints_the_difference(tmp_path, capsys):
    import vitkit

    vitkit.save(model_for_export(), tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "m.onnx"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "max |onnxruntime - pytorch| =" in out and "(ok)" in out
    assert (tmp_path / "m.onnx").stat().st_size > 0
