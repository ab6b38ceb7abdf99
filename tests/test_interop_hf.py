"""Hugging Face <-> vitkit: a random-init ViTForImageClassification (weights perturbed) gives the
same logits in vitkit, and a folder written by to_hf loads in transformers with them again."""

import json

import pytest
import torch
from conftest import perturbed

from vitkit import create_model
from vitkit.interop import InteropError, from_hf, to_hf

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8
)


def images(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_classifier_to_vitkit_and_back(tmp_path):
    config = transformers.ViTConfig(**SMALL, num_labels=5, id2label={i: f"class {i}" for i in range(5)})
    reference = perturbed(transformers.ViTForImageClassification(config))
    x = images()
    with torch.no_grad():
        expected = reference(pixel_values=x).logits
        model = from_hf(reference)
        assert model.config.layer_norm_eps == 1e-12 and model.config.class_names[2] == "class 2"
        assert (model(x) - expected).abs().max().item() < 1e-4
        reference.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors
        from_folder = from_hf(tmp_path / "hf")
        assert (from_folder(x) - expected).abs().max().item() < 1e-4
        to_hf(from_folder, tmp_path / "out")
        back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
        assert (back(pixel_values=x).logits - expected).abs().max().item() < 1e-4
        assert back.config.id2label[4] == "class 4"


def test_pytorch_model_bin_folder(tmp_path):
    config = transformers.ViTConfig(**SMALL, num_labels=3)
    reference = perturbed(transformers.ViTForImageClassification(config))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config.to_dict()))
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}  # in-memory names (transformers 5)
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    model = from_hf(tmp_path / "hf")
    assert model.config.class_names is None  # generic LABEL_i names are not kept
    with torch.no_grad():
        assert (model(images()) - reference(pixel_values=images()).logits).abs().max().item() < 1e-4


def test_vit_model_pooler_is_the_pre_logits_layer():
    reference = perturbed(transformers.ViTModel(transformers.ViTConfig(**SMALL)))
    model = from_hf(reference)
    assert model.config.representation_size == 64 and model.config.num_classes == 0
    with torch.no_grad():
        diff = (model(images()) - reference(pixel_values=images()).pooler_output).abs().max().item()
    assert diff < 1e-4


def test_vitkit_model_with_other_position_options_round_trips(tmp_path):
    """sincos2d has no HF equivalent: it is written out as the learned table it evaluates to."""
    model = create_model("vit_tiny_32", depth=1, patch_size=8, posemb="sincos2d")
    perturbed(model)
    to_hf(model, tmp_path / "out")
    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (back(pixel_values=images()).logits - model(images())).abs().max().item() < 1e-4


def test_errors(tmp_path):
    with pytest.raises(InteropError, match="pool='gap'"):
        to_hf(create_model("vit_tiny_32", depth=1, pool="gap", class_token=False), tmp_path / "gap")
    (tmp_path / "deit").mkdir()
    (tmp_path / "deit" / "config.json").write_text(json.dumps({"model_type": "deit"}))
    with pytest.raises(InteropError, match=r"expected a Hugging Face ViT .*found 'deit'"):
        from_hf(tmp_path / "deit")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(InteropError, match="no model.safetensors or pytorch_model.bin"):
        from_hf(tmp_path / "empty")
