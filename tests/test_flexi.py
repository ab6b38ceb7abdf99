"""FlexiViT's PI-resize (Beyer et al. 2023): one model at several patch sizes, checked against
timm's ``resample_patch_embed`` and against the property that defines it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed

import vitkit
from vitkit.cli import main
from vitkit.embed import pi_resize_kernel


@pytest.mark.parametrize("new", [8, 6, 3, 2])
def test_pi_resize_equals_timms_resample_patch_embed(new):
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    kernel = torch.randn(16, 3, 4, 4)
    expected = timm_layers.resample_patch_embed(kernel, [new, new])  # bicubic, antialias: its defaults
    torch.testing.assert_close(pi_resize_kernel(kernel, new), expected, atol=1e-5, rtol=0)


def test_an_upsampled_patch_gives_the_token_the_original_gave():
    """<resize(x), PI-resize(w)> = <x, w> for every patch x when the patch grows: the definition
    of PI-resize (FlexiViT, sec. 3.4), which plain bicubic resizing of the kernel breaks."""
    torch.manual_seed(0)
    kernel, patches = torch.randn(16, 3, 4, 4), torch.randn(10, 3, 4, 4)
    big = F.interpolate(patches, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    tokens = torch.einsum("nchw,dchw->nd", patches, kernel)
    torch.testing.assert_close(
        torch.einsum("nchw,dchw->nd", big, pi_resize_kernel(kernel, 8)), tokens, atol=1e-4, rtol=0
    )
    naive = F.interpolate(kernel, size=(8, 8), mode="bicubic", align_corners=False)
    assert (torch.einsum("nchw,dchw->nd", big, naive) - tokens).abs().max() > 1e-1


def test_a_model_at_twice_the_patch_on_twice_the_image_answers_as_before(tmp_path):
    """A checkpoint loaded with ``patch_size=8, image_size=64`` keeps its 8x8 grid (the position
    embeddings are untouched) and PI-resizes the kernel, so on the image whose every patch was
    upsampled 2x it gives the original model's logits on the original (to float rounding through
    the blocks: 1e-4). Each patch is resized on its own, as FlexiViT defines it: resizing the
    whole image would mix neighbouring patches at their borders."""
    torch.manual_seed(0)
    model = perturbed(vitkit.create_model("vit_tiny_32", depth=2, patch_size=4, num_classes=5))
    vitkit.save(model, tmp_path / "p4")
    big = vitkit.create_model(str(tmp_path / "p4"), patch_size=8, image_size=64).eval()
    assert big.config.patch_size == 8 and big.config.grid_size == (8, 8)
    x = torch.rand(3, 3, 32, 32)
    patches = x.reshape(3, 3, 8, 4, 8, 4).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 4, 4)  # (B*64, C, 4, 4)
    patches = F.interpolate(patches, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    upsampled = patches.reshape(3, 8, 8, 3, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(big(upsampled), model(x), atol=1e-4, rtol=0)
        coarse = vitkit.create_model(str(tmp_path / "p4"), patch_size=8).eval()  # 4x4 tokens, grid resampled
        assert coarse.config.grid_size == (4, 4) and coarse(x).shape == (3, 5)


def test_convert_evaluate_and_predict_take_a_patch_size(tmp_path, capsys):
    from vitkit.preprocess import Preprocess

    torch.manual_seed(0)
    vitkit.save(vitkit.create_model("vit_tiny_28", depth=1, in_channels=1, num_classes=10), tmp_path / "ck")
    Preprocess((28, 28), 1, class_names=[str(i) for i in range(10)], dataset="digits").save(tmp_path / "ck")
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "p7"), "--patch-size", "7"]) == 0
    converted = vitkit.load(tmp_path / "p7")
    assert converted.config.patch_size == 7 and converted.patch_embed.proj.weight.shape[-2:] == (7, 7)
    assert (tmp_path / "p7" / "preprocess.json").is_file()
    assert main(["evaluate", str(tmp_path / "ck"), "--data", "digits", "--patch-size", "7", "--limit", "20"]) == 0
    assert (tmp_path / "eval-test-p7" / "summary.json").is_file()  # beside the native size's report
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "ck"), str(tmp_path / "p7" / "config.json"), "--patch-size", "5"]) == 1
    assert capsys.readouterr().err.strip() == (
        "vitkit predict: error: --patch-size 5 does not divide the model's 28x28 input: give one that does, e.g. "
        "2, 7, 14, 28 (Python: patch_size=)"
    )
