"""Hugging Face <-> vitkit: a random-init ViTForImageClassification (weights perturbed) gives the
same logits in vitkit, and a folder written by to_hf loads in transformers with them again."""

import json

import pytest
import torch
from conftest import perturbed

import vitkit
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
    (tmp_path / "swin").mkdir()
    (tmp_path / "swin" / "config.json").write_text(json.dumps({"model_type": "swin"}))
    with pytest.raises(InteropError, match=r"expected a Hugging Face ViT or DeiT .*found 'swin'"):
        from_hf(tmp_path / "swin")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(InteropError, match="no model.safetensors or pytorch_model.bin"):
        from_hf(tmp_path / "empty")


def test_register_tokens_are_refused_with_timm_named(tmp_path):
    """transformers' ViT and DeiT have no register tokens (only Dinov2WithRegisters, another
    model): a register model is refused before anything is written, naming the format that has them."""
    assert "num_register_tokens" not in transformers.ViTConfig().to_dict()
    assert "num_register_tokens" in transformers.Dinov2WithRegistersConfig().to_dict()  # the field HF would use
    with pytest.raises(InteropError, match=r"no register tokens .*timm's format"):
        to_hf(create_model("vit_tiny_32", depth=1, register_tokens=4), tmp_path / "reg")
    assert not (tmp_path / "reg").exists()


# ---------------------------------------------------------------------------- DeiT, distilled
def _deit(cls, **kw):
    torch.manual_seed(0)
    return perturbed(cls(transformers.DeiTConfig(**SMALL, **kw)))


def test_deit_with_teacher_to_vitkit_and_back(tmp_path):
    """DeiTForImageClassificationWithTeacher saved with save_pretrained: vitkit's logits (the mean of
    its two heads) equal HF's .logits, and a folder written back loads in transformers with them."""
    reference = _deit(transformers.DeiTForImageClassificationWithTeacher, num_labels=5)
    x = images()
    with torch.no_grad():
        out = reference(pixel_values=x)
        reference.save_pretrained(tmp_path / "hf")
        model = from_hf(tmp_path / "hf")
        c = model.config
        assert c.distill_token and c.num_prefix_tokens == 2 and c.num_classes == 5
        assert (model(x) - out.logits).abs().max().item() < 1e-5
        cls, dist = model.forward_heads(model.forward_features(x)[0])
        assert (cls - out.cls_logits).abs().max().item() < 1e-5
        assert (dist - out.distillation_logits).abs().max().item() < 1e-5
        assert (from_hf(reference)(x) - out.logits).abs().max().item() < 1e-5  # the in-memory names too
        to_hf(model, tmp_path / "out")
        assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "deit"
        back = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "out").eval()
        assert (back(pixel_values=x).logits - out.logits).abs().max().item() < 1e-5
    # and what vitkit convert and vitkit.load read
    from vitkit.cli import main
    from vitkit.interop import load_any

    assert load_any(tmp_path / "hf")[1] == "hf"
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "vk")]) == 0
    with torch.no_grad():
        assert (vitkit.load(tmp_path / "vk")(x) - out.logits).abs().max().item() < 1e-5


def test_vitkit_distilled_model_writes_a_deit_folder(tmp_path):
    model = create_model("vit_tiny_32", depth=1, patch_size=8, distill_token=True, posemb="learned2d")
    perturbed(model)
    to_hf(model, tmp_path / "out")
    back = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (back(pixel_values=images()).logits - model(images())).abs().max().item() < 1e-5


def test_deit_model_pooler_and_deit_without_teacher(tmp_path):
    bare = _deit(transformers.DeiTModel)
    model = from_hf(bare)
    assert model.config.distill_token and model.config.num_classes == 0 and model.head_dist is None
    with torch.no_grad():
        diff = (model(images()) - bare(pixel_values=images()).pooler_output).abs().max().item()
    assert diff < 1e-5
    single = _deit(transformers.DeiTForImageClassification, num_labels=3)
    single.save_pretrained(tmp_path / "single")
    with pytest.raises(InteropError, match="DeiTForImageClassification: it classifies the class token alone"):
        from_hf(tmp_path / "single")
