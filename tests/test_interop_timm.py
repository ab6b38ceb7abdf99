"""timm <-> vitkit: random-init timm models (weights perturbed so that the zero heads cannot hide
a wrong mapping) must give the same logits in vitkit, and again in timm after the way back."""

import functools

import pytest
import torch
from conftest import perturbed as perturbed_model
from safetensors.torch import load_file, save_file

from vitkit import CheckpointError
from vitkit.interop import InteropError, from_timm, timm_name, to_timm, to_timm_state_dict

timm = pytest.importorskip("timm")

CASES = [
    ("vit_tiny_patch16_224", dict(depth=2)),
    ("vit_small_patch32_224", dict(depth=2)),
    # GAP-pooled, no class token, final LayerNorm before pooling (fc_norm=False), 16 heads
    ("vit_base_patch16_gap_224", dict(depth=1, img_size=64)),
    # GAP-pooled, no class token, timm's fc_norm layout (LayerNorm after pooling)
    ("vit_tiny_patch16_224", dict(depth=1, class_token=False, global_pool="avg")),
    # class token without a position (no_embed_class)
    ("flexivit_small", dict(depth=1, img_size=96)),
    # DeiT's distillation token: two prefix rows, two heads averaged in eval
    ("deit_tiny_distilled_patch16_224", dict(depth=2)),
    # register tokens: timm's reg4 preset (no_embed_class=True, no class token, GAP) ...
    ("vit_base_patch16_reg4_gap_256", dict(depth=1, img_size=64)),
    # ... and timm's default no_embed_class=False, where the registers have position rows to fold
    ("vit_tiny_patch16_224", dict(depth=1, img_size=64, reg_tokens=4)),
    ("vit_tiny_patch16_224", dict(depth=1, img_size=64, reg_tokens=2, no_embed_class=True)),
    ("vit_tiny_patch16_224", dict(depth=1, img_size=64, reg_tokens=3, class_token=False, global_pool="avg")),
]


def perturbed(name, **kw):
    return _perturbed(name, tuple(sorted(kw.items())))


@functools.cache
def _perturbed(name, kw):
    """A timm model with every weight moved off its initial value (cached: tests only read it)."""
    torch.manual_seed(0)
    return perturbed_model(timm.create_model(name, pretrained=False, **dict(kw)))


def images(size, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_timm_to_vitkit_and_back(name, kw):
    reference = perturbed(name, **kw)
    x = images(kw.get("img_size", 224))
    with torch.no_grad():
        expected = reference(x)
        from_module = from_timm(reference)
        from_state = from_timm(reference.state_dict())  # heads and pooling from the inferred name
        assert (from_module(x) - expected).abs().max().item() < 1e-4
        assert (from_state(x) - expected).abs().max().item() < 1e-4
        assert from_state.config == from_module.config
        # back again: the state dict loads into the same timm architecture, and to_timm rebuilds it
        again = timm.create_model(name, pretrained=False, **kw).eval()
        no_embed_class = reference.no_embed_class
        again.load_state_dict(to_timm_state_dict(from_module, no_embed_class=no_embed_class))
        assert (again(x) - expected).abs().max().item() < 1e-4
        assert (to_timm(from_module, no_embed_class=no_embed_class)(x) - expected).abs().max().item() < 1e-4


def test_name_inferred_from_shapes():
    for name, kw in CASES[:3]:
        assert timm_name(from_timm(perturbed(name, **kw)).config) == name
    gap = from_timm(perturbed("vit_base_patch16_gap_224", depth=1, img_size=64).state_dict())
    assert gap.config.num_heads == 16 and gap.config.pool == "gap" and not gap.config.class_token


def test_resampled_position_grid_matches_timm():
    """Converting to 384x384 resamples the grid as timm's resample_abs_pos_embed does (bicubic)."""
    from timm.layers import resample_abs_pos_embed

    from vitkit.checkpoint import adapt

    reference = perturbed("vit_tiny_patch16_224", depth=1)
    with torch.no_grad():  # a smooth learned grid: low-frequency waves over the 14x14 positions
        gy, gx = torch.meshgrid(torch.linspace(0, 1, 14), torch.linspace(0, 1, 14), indexing="ij")
        freq = torch.linspace(0.5, 2.0, 192)
        grid = torch.sin(gy.reshape(-1, 1) * freq * 3) + torch.cos(gx.reshape(-1, 1) * freq * 2)
        reference.pos_embed[0, 1:] = grid
    model = adapt(from_timm(reference), image_size=384).eval()
    expected = resample_abs_pos_embed(reference.pos_embed.detach(), new_size=[24, 24], num_prefix_tokens=1)
    assert model.pos_embed.weight.shape == (1, 1 + 24 * 24, 192)
    assert (model.pos_embed.weight - expected).abs().max().item() < 1e-5
    # and the 384 model gives timm's logits for timm's own 384 model built from the resampled table
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=384).eval()
    state = reference.state_dict()
    state["pos_embed"] = expected
    big.load_state_dict(state)
    x = images(384, n=1)
    with torch.no_grad():
        assert (model(x) - big(x)).abs().max().item() < 1e-4


def test_errors_name_the_problem():
    state = perturbed("vit_tiny_patch16_224", depth=2).state_dict()
    bad = dict(state)
    bad["blocks.1.mlp.fc1.weight"] = bad["blocks.1.mlp.fc1.weight"][:100]
    with pytest.raises(
        CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight: expected \(768, 192\), found \(100, 192\)"
    ):
        from_timm(bad)
    missing = {k: v for k, v in state.items() if not k.startswith("blocks.1.attn")}
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\), first: blocks\.1\.attn\.qkv\.weight"):
        from_timm(missing)
    with pytest.raises(InteropError, match="LayerScale"):
        from_timm(perturbed("vit_tiny_patch16_224", depth=1, init_values=1e-5))
    with pytest.raises(InteropError, match="not a timm ViT state dict"):
        from_timm({"conv1.weight": torch.zeros(3)})
    with pytest.raises(InteropError, match="width 192 does not match"):
        from_timm(state, name="vit_small_patch16_224")
    with pytest.raises(InteropError, match="'resnet18' is not a timm ViT architecture"):
        from_timm(state, name="resnet18")
    with pytest.raises(InteropError, match="expected timm's VisionTransformer"):
        from_timm(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------- DeiT, distilled
def test_distilled_deit_files_both_ways(tmp_path):
    """timm's deit_*_distilled_* weights written to disk load into vitkit with timm's eval logits
    (the mean of the two heads); vitkit's file loads into timm's VisionTransformerDistilled."""
    import vitkit
    from vitkit.cli import main
    from vitkit.interop import load_any

    name = "deit_small_distilled_patch16_224"
    reference = perturbed(name, depth=2, img_size=64)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "deit.safetensors")
    x = images(64, n=3)
    with torch.no_grad():
        expected = reference(x)
        model, fmt = load_any(tmp_path / "deit.safetensors")  # heads and family from the inferred name
        c = model.config
        assert fmt == "timm" and c.distill_token and c.num_heads == 6 and c.num_prefix_tokens == 2
        assert model.pos_embed.weight.shape == (1, 2 + 16, 384)
        assert (model(x) - expected).abs().max().item() < 1e-5
        assert timm_name(c) == name
        # the pair in training, as timm gives it (dropout is 0, so train mode is deterministic)
        reference.train().set_distilled_training(True)
        model.train().set_distilled_training(True)
        for ours, theirs in zip(model(x), reference(x), strict=True):
            assert (ours - theirs).abs().max().item() < 1e-5
        reference.eval().set_distilled_training(False)  # the reference is cached for other tests
        model.eval()
        # and back: vitkit's state dict, written to disk, loads into timm's distilled model
        save_file(to_timm_state_dict(model), tmp_path / "back.safetensors")
        again = timm.create_model(name, pretrained=False, depth=2, img_size=64).eval()
        again.load_state_dict(load_file(tmp_path / "back.safetensors"))
        assert (again(x) - expected).abs().max().item() < 1e-5
    # vitkit convert takes the file, and a timm folder naming the architecture
    assert main(["convert", str(tmp_path / "deit.safetensors"), str(tmp_path / "converted")]) == 0
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(f'{{"architecture": "{name}.fb_in1k"}}')
    (tmp_path / "deit.safetensors").rename(tmp_path / "folder" / "model.safetensors")
    with torch.no_grad():
        assert (vitkit.load(tmp_path / "converted")(x) - expected).abs().max().item() < 1e-5
        assert (load_any(tmp_path / "folder")[0](x) - expected).abs().max().item() < 1e-5


def test_distilled_intermediates_agree_with_timm():
    """timm's forward_intermediates drops its two prefix tokens: so must vitkit's."""
    reference = perturbed("deit_tiny_distilled_patch16_224", depth=2, img_size=64)
    model = from_timm(reference)
    x = images(64)
    with torch.no_grad():
        for kw in (dict(indices=2), dict(indices=[0], norm=True, output_fmt="NLC")):
            theirs = reference.forward_intermediates(x, intermediates_only=True, **kw)
            ours = model.forward_intermediates(x, intermediates_only=True, **kw)
            for a, b in zip(ours, theirs, strict=True):
                assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
        _, theirs = reference.forward_intermediates(x, indices=1, return_prefix_tokens=True, output_fmt="NLC")
        _, ours = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, output_fmt="NLC")
        assert ours[0][1].shape == theirs[0][1].shape == (2, 2, 192)
        assert (ours[0][1] - theirs[0][1]).abs().max().item() < 1e-5


def test_distilled_vitkit_model_without_timm_equivalent_is_refused():
    from vitkit import create_model

    with pytest.raises(InteropError, match="VisionTransformerDistilled reads the class token"):
        to_timm_state_dict(create_model("vit_tiny_32", depth=1, distill_token=True, pool="gap"))
    # vitkit's other position options are written out as the table with two prefix rows
    model = perturbed_model(create_model("vit_tiny_32", depth=1, patch_size=8, distill_token=True, posemb="sincos2d"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (to_timm(model)(x) - model(x)).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------- register tokens
def test_register_position_rows_are_folded_into_the_tokens(caplog):
    """timm's default gives each register a position row; vitkit has none, so loading adds the
    row to the token (a constant plus a constant) and says so in one log line."""
    reference = perturbed("vit_tiny_patch16_224", depth=1, img_size=64, reg_tokens=4)
    with caplog.at_level("INFO", logger="vitkit.interop.timm"):
        model = from_timm(reference.state_dict())
    assert "folded the position rows of 4 register token(s)" in caplog.text
    c = model.config
    assert c.register_tokens == 4 and c.num_prefix_tokens == 5 and model.pos_embed.weight.shape == (1, 1 + 16, 192)
    rows = reference.pos_embed.detach()[:, 1:5]
    assert torch.equal(model.reg_token, reference.reg_token.detach() + rows)
    # saved back with no_embed_class=True, vitkit's model is timm's reg-preset layout, same logits
    back = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=64, reg_tokens=4, no_embed_class=True).eval()
    back.load_state_dict(to_timm_state_dict(model, no_embed_class=True))
    x = images(64)
    with torch.no_grad():
        assert (back(x) - reference(x)).abs().max().item() < 1e-4


def test_register_intermediates_agree_with_timm():
    """timm's forward_intermediates drops the class token and the registers: so must vitkit's."""
    reference = perturbed("vit_tiny_patch16_224", depth=2, img_size=64, reg_tokens=4)
    model = from_timm(reference)
    x = images(64)
    with torch.no_grad():
        theirs = reference.forward_intermediates(x, indices=2, intermediates_only=True)
        ours = model.forward_intermediates(x, indices=2, intermediates_only=True)
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape == (2, 192, 4, 4) and (a - b).abs().max().item() < 1e-5
        _, theirs = reference.forward_intermediates(x, indices=1, return_prefix_tokens=True, output_fmt="NLC")
        _, ours = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, output_fmt="NLC")
        assert ours[0][1].shape == theirs[0][1].shape == (2, 5, 192)
        assert (ours[0][1] - theirs[0][1]).abs().max().item() < 1e-5


def test_registers_with_a_distillation_token_are_refused_for_timm():
    from vitkit import create_model

    model = create_model("vit_tiny_32", depth=1, distill_token=True, register_tokens=2)
    with pytest.raises(InteropError, match="VisionTransformerDistilled has no register tokens"):
        to_timm_state_dict(model)
