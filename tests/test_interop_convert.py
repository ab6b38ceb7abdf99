"""``vitkit convert``: format detection, resampling, head replacement, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from conftest import perturbed
from safetensors.torch import save_file

import vitkit
from vitkit.cli import main

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return perturbed(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1))


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"vitkit {argv[0]}: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_convert_timm_file_with_new_size_and_head(tmp_path, capsys, timm_model):
    weights = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, weights)
    assert main(["convert", str(weights), str(tmp_path / "same")]) == 0
    assert "(timm)" in capsys.readouterr().out
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (vitkit.load(tmp_path / "same")(x) - timm_model(x)).abs().max().item() < 1e-4

    torch.save(timm_model.state_dict(), tmp_path / "vit_tiny.pth")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "vit_tiny.pth"),
                str(tmp_path / "big"),
                "--image-size",
                "384",
                "--num-classes",
                "10",
            ]
        )
        == 0
    )
    model = vitkit.load(tmp_path / "big")
    assert model.config.image_size == (384, 384) and model.config.num_classes == 10
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 10)


def test_convert_npz_and_hf_folder(tmp_path, capsys):
    from test_interop_jax import flax_arrays

    np.savez(tmp_path / "vit.npz", **flax_arrays(pre_logits=True))
    assert main(["convert", str(tmp_path / "vit.npz"), str(tmp_path / "from_jax")]) == 0
    assert "(jax)" in capsys.readouterr().out
    assert vitkit.load(tmp_path / "from_jax").config.representation_size == 40

    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "from_hf"), "--from", "hf"]) == 0
    assert "(hf)" in capsys.readouterr().out
    assert vitkit.load(tmp_path / "from_hf").config.layer_norm_eps == 1e-12


def test_convert_timm_hub_folder(tmp_path, capsys, timm_model):
    """timm's own folders: config.json names the architecture (with a pretrained tag) beside the weights."""
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224.augreg_in1k"}))
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, tmp_path / "timm" / "model.safetensors")
    assert main(["convert", str(tmp_path / "timm"), str(tmp_path / "out")]) == 0
    assert "(timm)" in capsys.readouterr().out
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (vitkit.load(tmp_path / "out")(x) - timm_model(x)).abs().max().item() < 1e-4
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["convert", str(tmp_path / "timm"), str(tmp_path / "file")], "is a file")


class NotATensor:
    pass


def test_bad_input_gives_one_line_errors(tmp_path, capsys, timm_model):
    state = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    torch.save(state, tmp_path / "good.pth")
    out = str(tmp_path / "out")

    (tmp_path / "cut.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:5000])
    one_line_error(capsys, ["convert", str(tmp_path / "cut.pth"), out], "not a readable PyTorch file", "truncated")

    save_file(state, tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes()[:5000])
    one_line_error(capsys, ["convert", str(tmp_path / "cut.safetensors"), out], "not a readable safetensors file")

    np.savez(tmp_path / "w.npz", a=np.zeros((100, 100)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "w.npz").read_bytes()[:3000])
    one_line_error(capsys, ["convert", str(tmp_path / "cut.npz"), out], "not a readable .npz archive")

    torch.save({"weights": NotATensor()}, tmp_path / "pickle.pth")
    one_line_error(capsys, ["convert", str(tmp_path / "pickle.pth"), out], "holds Python objects", "weights_only")

    one_line_error(
        capsys,
        ["convert", str(tmp_path / "good.pth"), out, "--from", "hf"],
        "--from hf expects a Hugging Face folder",
        "is a .pth file",
    )
    one_line_error(capsys, ["convert", str(tmp_path / "good.pth"), out, "--from", "jax"], "expects a Google")

    state["blocks.0.attn.proj.weight"] = state["blocks.0.attn.proj.weight"][:, :10]
    torch.save(state, tmp_path / "mismatch.pth")
    one_line_error(
        capsys,
        ["convert", str(tmp_path / "mismatch.pth"), out],
        "blocks.0.attn.proj.weight: expected (192, 192), found (192, 10)",
    )

    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(capsys, ["convert", str(tmp_path / "notes.txt"), out], "cannot tell the format")
    one_line_error(capsys, ["convert", str(tmp_path / "missing.pth"), out], "not found")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    one_line_error(capsys, ["convert", str(tmp_path / "folder"), out], "no model.safetensors or pytorch_model.bin")
    assert not (tmp_path / "out").exists()
