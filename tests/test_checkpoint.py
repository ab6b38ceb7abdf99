import json

import pytest
import torch
from conftest import perturbed

import vitkit
from vitkit import CheckpointError, create_model
from vitkit.checkpoint import adapt


def _model(**kw):
    torch.manual_seed(0)
    return perturbed(create_model("vit_tiny_28", depth=2, **kw), 0.02)


@pytest.mark.parametrize("posemb", ["learned", "learned2d", "sincos2d", "none"])
def test_save_then_load_gives_identical_outputs(tmp_path, posemb):
    model = _model(posemb=posemb, class_names=[f"c{i}" for i in range(10)])
    vitkit.save(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = vitkit.load(tmp_path / "ckpt")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert loaded.config == model.config
    assert loaded.config.class_names[3] == "c3"


def test_create_model_from_checkpoint_resamples_and_replaces_head(tmp_path):
    model = _model()
    vitkit.save(model, tmp_path / "ckpt")
    bigger = create_model(str(tmp_path / "ckpt"), image_size=56, num_classes=3)
    assert bigger.config.image_size == (56, 56) and bigger.config.num_classes == 3
    assert bigger.pos_embed.weight.shape == (1, 1 + 196, 192)
    assert torch.equal(bigger.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert bigger(torch.randn(1, 1, 56, 56)).shape == (1, 3)


def test_shape_mismatch_names_the_tensor(tmp_path):
    vitkit.save(_model(), tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["mlp_dim"] = 100
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"blocks\.0\.mlp\.fc1\.weight: expected \(100, 192\), found \(384, 192\)"
    ):
        vitkit.load(tmp_path / "ckpt")


def test_truncated_and_missing_checkpoints(tmp_path):
    vitkit.save(_model(), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        vitkit.load(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        vitkit.load(tmp_path / "nowhere")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        vitkit.load(tmp_path / "ckpt")


@pytest.mark.parametrize("posemb", ["learned", "learned2d", "sincos2d"])
def test_adapt_leaves_the_model_it_is_given_unchanged(posemb):
    """adapt returns a new model; it once resampled its argument's position embeddings and config
    in place, so the source's config read afterwards (a fine-tuning run's record) was the new one."""
    import copy

    model = _model(posemb=posemb)
    before = copy.deepcopy(model)
    bigger = adapt(model, image_size=56, num_classes=3)
    assert bigger.config.image_size == (56, 56) and bigger.config.num_classes == 3
    assert model.config == before.config and model.config.image_size == (28, 28)
    assert model.pos_embed.grid == before.pos_embed.grid == (7, 7)
    state, reference = model.state_dict(), before.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), before(x))


def test_distilled_model_saves_loads_and_gets_two_fresh_heads(tmp_path):
    """A DeiT-style model round-trips; a new class count replaces both heads with zero ones (what
    ``train --init`` does through transfer.adapt_head) and keeps every other tensor."""
    from vitkit.transfer import adapt_head

    model = _model(distill_token=True)
    vitkit.save(model, tmp_path / "ckpt")
    loaded = vitkit.load(tmp_path / "ckpt")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), loaded(x)) and loaded.config.distill_token
    notes = []
    new = adapt_head(loaded, ["a", "b", "c"], keep_head=False, notes=notes)
    assert "heads (class and distillation)" in notes[0]
    for name in ("head", "head_dist"):
        layer = getattr(new, name)
        assert layer.weight.shape == (3, 192) and not layer.weight.any() and not layer.bias.any(), name
    old = loaded.state_dict()
    for k, v in new.state_dict().items():
        if not k.startswith(("head.", "head_dist.")):
            assert torch.equal(v, old[k]), k
    assert torch.equal(new.eval()(x), torch.zeros(3, 3))
    same = adapt(loaded, fresh_head=True)  # same class count, new classes: both heads fresh too
    assert not same.head_dist.weight.any() and torch.equal(same.dist_token, loaded.dist_token)


def test_bilinear_posemb_resampling_is_the_official_codes_zoom(tmp_path, capsys):
    """``posemb_resample="bilinear"`` equals ``scipy.ndimage.zoom(order=1)``, which
    google-research/vision_transformer applies to the position grid; the default stays bicubic
    (timm's), which differs; ``vitkit convert --posemb-resample`` and ``create_model`` reach it."""
    import numpy as np
    import scipy.ndimage

    import vitkit
    from vitkit.cli import main
    from vitkit.embed import resample_grid

    torch.manual_seed(0)
    posemb = torch.randn(1, 7 * 7, 8)
    ours = resample_grid(posemb, (7, 7), (12, 12), "bilinear").reshape(12, 12, 8).numpy()
    zoom = scipy.ndimage.zoom(posemb.reshape(7, 7, 8).numpy(), (12 / 7, 12 / 7, 1), order=1)
    np.testing.assert_allclose(ours, zoom, atol=1e-5)
    assert np.abs(resample_grid(posemb, (7, 7), (12, 12)).reshape(12, 12, 8).numpy() - zoom).max() > 1e-2
    model = vitkit.create_model("vit_tiny_28", depth=1)
    vitkit.save(model, tmp_path / "src")
    table = vitkit.create_model(str(tmp_path / "src"), image_size=48, posemb_resample="bilinear").pos_embed.weight
    assert (
        main(
            [
                "convert",
                str(tmp_path / "src"),
                str(tmp_path / "dst"),
                "--image-size",
                "48",
                "--posemb-resample",
                "bilinear",
            ]
        )
        == 0
    )
    assert "position embeddings resampled bilinear" in capsys.readouterr().out
    torch.testing.assert_close(vitkit.load(tmp_path / "dst").pos_embed.weight, table)
    expected = resample_grid(model.pos_embed.weight[:, 1:].detach(), (7, 7), (12, 12), "bilinear")
    torch.testing.assert_close(table[:, 1:].detach(), expected)
