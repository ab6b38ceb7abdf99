"""The BiT-ResNet hybrid (paper sec. 3.1, ``stem="bit"``) against timm's hybrids, built independently
from timm's own classes, and Google's ``.npz`` layout written from a timm model by the names timm's
``_load_weights`` reads (and checked with that loader)."""

import json
from functools import partial

import numpy as np
import pytest
import torch

import vitkit
from vitkit.config import get_config
from vitkit.errors import ConfigError
from vitkit.interop import from_jax_npz, from_timm, to_timm, to_timm_state_dict
from vitkit.interop.common import InteropError
from vitkit.model import count_params

timm = pytest.importorskip("timm")
from timm.layers import HybridEmbed, StdConv2dSame  # noqa: E402
from timm.models.resnetv2 import ResNetV2  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the same reductions, hence the same rounding, on every machine; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A hybrid small enough for seconds on a CPU: a 32-channel root, three stages (stride 16), 1x1 patches.
SMALL = dict(
    image_size=64,
    patch_size=16,
    stem_units=(1, 2, 1),
    stem_channels=32,
    width=64,
    depth=2,
    num_heads=2,
    mlp_dim=128,
    num_classes=5,
)


def timm_small(**kw) -> torch.nn.Module:
    """SMALL built from timm's classes directly, as its vision_transformer_hybrid._resnetv2 does."""
    backbone = ResNetV2(
        layers=(1, 2, 1),
        channels=(128, 256, 512),
        stem_chs=32,
        num_classes=0,
        global_pool="",
        preact=False,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8),
    )
    args = dict(img_size=64, patch_size=1, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5) | kw
    return TimmViT(embed_layer=partial(HybridEmbed, backbone=backbone), **args)


def randomised(model: torch.nn.Module, seed: int = 0, matrix_std: float = 0.2) -> torch.nn.Module:
    """Every parameter drawn at random (norm scales around 1, std 0.2; Linear matrices at
    ``matrix_std``), so that no zero-initialised scale or head hides a wrong mapping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = matrix_std if p.ndim == 2 else 0.2
            p.copy_(
                torch.randn(p.shape, generator=g) * std + (1.0 if "norm" in name and name.endswith("weight") else 0)
            )
    return model.eval()


def image(size: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_parameter_counts_equal_timms():
    for ours, theirs in (("vit_r50_b16", "vit_base_r50_s16_384"), ("R26+ViT-S/32", "vit_small_r26_s32_224")):
        with torch.device("meta"):
            reference = sum(p.numel() for p in timm.create_model(theirs).parameters())
        assert count_params(get_config(ours)) == reference, ours
    assert count_params(get_config("vit_r50_b16")) == 98_950_952  # timm's vit_base_r50_s16_384


def test_presets_and_their_names():
    c = get_config("R50+ViT-B/16")
    assert (c.stem, c.stem_units, c.image_size, c.grid_size) == ("bit", (3, 4, 9), (384, 384), (24, 24))
    assert get_config("vit_base_r50_s16_384") == c
    r26 = get_config("vit_small_r26_s32_224")
    assert (r26.stem_units, r26.width, r26.patch_size, r26.grid_size) == ((2, 2, 2, 2), 384, 32, (7, 7))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(stem_channels=48), "stem_channels=48 must be a multiple of 32"),
        (dict(patch_size=8), "patch_size=8 must be a multiple of it"),
        (dict(stem_units=(3, 0)), "stem_units=(3, 0)"),
    ],
)
def test_bad_hybrid_configs_are_one_line_errors(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        get_config("vit_r26_s32", **overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_logits_equal_timms_both_ways():
    theirs = randomised(timm_small())
    x = image()
    with torch.no_grad():
        expected = theirs(x)
        ours = from_timm(theirs)
        assert ours.config.stem == "bit" and ours.config.stem_units == (1, 2, 1)
        assert (ours(x) - expected).abs().max().item() < 1e-4
        back = to_timm(randomised(vitkit.create_model("vit_r26_s32", **SMALL), seed=2))
        assert (back(x) - vitkit.interop.from_timm(back)(x)).abs().max().item() < 1e-4
        fresh = timm_small()  # an independently built timm model takes the state dict vitkit writes
        fresh.load_state_dict(to_timm_state_dict(ours))
        assert (fresh.eval()(x) - expected).abs().max().item() < 1e-4


def test_a_registered_timm_hybrids_state_dict_file_loads_by_its_shapes(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    theirs = randomised(timm.create_model("vit_small_r26_s32_224", img_size=64, depth=1, num_classes=3))
    path = tmp_path / "r26.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, path)
    ours = from_timm(path)  # no name: the shapes say R26 (2, 2, 2, 2), width 384, a 2x2 grid at stride 32
    c = ours.config
    assert (c.stem_units, c.patch_size, c.grid_size, c.num_heads) == ((2, 2, 2, 2), 32, (2, 2), 6)
    x = image()
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-4


def test_a_timm_hybrid_with_pre_activation_blocks_is_refused():
    backbone = ResNetV2(layers=(1,), stem_chs=32, channels=(128,), num_classes=0, global_pool="", preact=True)
    model = TimmViT(img_size=32, patch_size=1, embed_dim=64, depth=1, num_heads=2, num_classes=0,
                    embed_layer=partial(HybridEmbed, backbone=backbone))  # fmt: skip
    with pytest.raises(InteropError, match="not the BiT hybrid"):
        from_timm(model)


# ----------------------------------------------------------------------------- Google's .npz
def write_hybrid_npz(model: torch.nn.Module, path) -> None:
    """A timm hybrid in google-research/vision_transformer's layout: the inverse of the names and
    transposes timm's vision_transformer._load_weights reads (HWIO kernels, (in, out) dense
    kernels, q/k/v split per head)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    b = "patch_embed.backbone."
    out = {"conv_root/kernel": sd[f"{b}stem.conv.weight"].transpose(2, 3, 1, 0)}
    out |= {"gn_root/scale": sd[f"{b}stem.norm.weight"], "gn_root/bias": sd[f"{b}stem.norm.bias"]}
    for i, stage in enumerate(model.patch_embed.backbone.stages):
        for j, block in enumerate(stage.blocks):
            src, dst = f"{b}stages.{i}.blocks.{j}.", f"block{i + 1}/unit{j + 1}/"
            pairs = [(f"conv{r}", f"gn{r}", f"conv{r}", f"norm{r}") for r in (1, 2, 3)]
            if block.downsample is not None:
                pairs.append(("conv_proj", "gn_proj", "downsample.conv", "downsample.norm"))
            for conv, gn, tconv, tnorm in pairs:
                out[f"{dst}{conv}/kernel"] = sd[f"{src}{tconv}.weight"].transpose(2, 3, 1, 0)
                out[f"{dst}{gn}/scale"], out[f"{dst}{gn}/bias"] = sd[f"{src}{tnorm}.weight"], sd[f"{src}{tnorm}.bias"]
    out["embedding/kernel"] = sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
    out["embedding/bias"] = sd["patch_embed.proj.bias"]
    out["cls"] = sd["cls_token"]
    out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    d = sd["cls_token"].shape[-1]
    for n in range(len(model.blocks)):
        t, f = f"blocks.{n}.", f"Transformer/encoderblock_{n}/"
        heads = model.blocks[n].attn.num_heads
        out[f + "LayerNorm_0/scale"], out[f + "LayerNorm_0/bias"] = sd[t + "norm1.weight"], sd[t + "norm1.bias"]
        out[f + "LayerNorm_2/scale"], out[f + "LayerNorm_2/bias"] = sd[t + "norm2.weight"], sd[t + "norm2.bias"]
        qkv_w, qkv_b = sd[t + "attn.qkv.weight"].reshape(3, d, d), sd[t + "attn.qkv.bias"].reshape(3, d)
        for k, name in enumerate(("query", "key", "value")):
            a = f + f"MultiHeadDotProductAttention_1/{name}/"
            out[a + "kernel"] = qkv_w[k].T.reshape(d, heads, d // heads)
            out[a + "bias"] = qkv_b[k].reshape(heads, d // heads)
        a = f + "MultiHeadDotProductAttention_1/out/"
        out[a + "kernel"], out[a + "bias"] = (
            sd[t + "attn.proj.weight"].T.reshape(heads, d // heads, d),
            sd[t + "attn.proj.bias"],
        )
        for k in (1, 2):
            out[f + f"MlpBlock_3/Dense_{k - 1}/kernel"] = sd[t + f"mlp.fc{k}.weight"].T
            out[f + f"MlpBlock_3/Dense_{k - 1}/bias"] = sd[t + f"mlp.fc{k}.bias"]
    out["Transformer/encoder_norm/scale"], out["Transformer/encoder_norm/bias"] = sd["norm.weight"], sd["norm.bias"]
    out["head/kernel"], out["head/bias"] = sd["head.weight"].T, sd["head.bias"]
    np.savez(path, **out)


def test_npz_layout_loads_with_timms_logits(tmp_path):
    from timm.models.vision_transformer import _load_weights

    theirs = randomised(timm_small())
    path = tmp_path / "R_Ti_16.npz"
    write_hybrid_npz(theirs, path)
    x = image()
    with torch.no_grad():
        expected = theirs(x)
        reread = timm_small()  # the writer is right: timm's own npz loader reads back the same model
        _load_weights(reread, str(path))
        assert (reread.eval()(x) - expected).abs().max().item() < 1e-5
        ours = from_jax_npz(path)
        assert (ours.config.stem_units, ours.config.patch_size, ours.config.in_channels) == ((1, 2, 1), 16, 3)
        assert (ours(x) - expected).abs().max().item() < 1e-4


def test_vitkits_npz_writer_is_read_by_timms_loader(tmp_path):
    """save_jax_npz: the original layout, checked with the reader vitkit did not write (timm's)."""
    from timm.models.vision_transformer import _load_weights

    from vitkit.interop import save_jax_npz

    ours = randomised(vitkit.create_model("vit_r26_s32", **SMALL), seed=3)
    save_jax_npz(ours, tmp_path / "hybrid.npz")
    theirs = timm_small()
    _load_weights(theirs, str(tmp_path / "hybrid.npz"))
    x = image()
    with torch.no_grad():
        expected = ours(x)
        assert (theirs.eval()(x) - expected).abs().max().item() < 1e-4
        assert (from_jax_npz(tmp_path / "hybrid.npz")(x) - expected).abs().max().item() < 1e-4
        plain = randomised(vitkit.create_model("vit_tiny_32", depth=2), seed=4)  # and a plain ViT, same writer
        save_jax_npz(plain, tmp_path / "plain.npz")
        reference = timm.create_model(
            "vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, mlp_ratio=2.0, num_classes=10
        )
        _load_weights(reference, str(tmp_path / "plain.npz"))
        y = torch.randn(2, 3, 32, 32)
        assert (reference.eval()(y) - plain(y)).abs().max().item() < 1e-4
    with pytest.raises(InteropError, match="cannot hold a distillation token; convert --to vitkit keeps it"):
        save_jax_npz(vitkit.create_model("vit_tiny_32", depth=1, distill_token=True), tmp_path / "d.npz")
    assert not (tmp_path / "d.npz").exists()


# ----------------------------------------------------------------------------- vitkit's own files, explain
def test_vitkit_folder_round_trip_keeps_the_hybrid(tmp_path):
    model = randomised(vitkit.create_model("vit_r26_s32", **SMALL))
    vitkit.save(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["stem_units"] == [1, 2, 1]
    again = vitkit.load(tmp_path / "m")
    x = image()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_explain_uses_the_feature_maps_grid(tmp_path):
    from vitkit.explain import explain_batch, grid_for, write_report

    model = vitkit.create_model("vit_r26_s32", **SMALL | dict(image_size=(64, 48))).eval()
    images = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        feature_map = model.patch_embed.backbone(images)  # the ResNet's own output says the grid
    assert grid_for(model, (64, 48)) == tuple(feature_map.shape[-2:]) == (4, 3)
    e = explain_batch(model, images)
    assert e.attention_maps.shape == (2, 2, 2, 4, 3) and e.rollout.shape == (2, 4, 3)
    written = write_report(model, images, tmp_path, per_image=1, num_components=4)
    assert written and all(p.stat().st_size > 0 for p in written)
    assert "not_applicable" in json.loads((tmp_path / "patch_filters.json").read_text())


def test_hf_refuses_the_hybrid_naming_the_formats_that_keep_it():
    from vitkit.interop import to_hf_state_dict

    with pytest.raises(InteropError) as e:
        to_hf_state_dict(vitkit.create_model("vit_r26_s32", **SMALL))
    assert "no ResNet hybrid" in str(e.value) and "--to timm or --to vitkit" in str(e.value)


@pytest.mark.slow
def test_r50_vit_b16_at_384_equals_timms_logits():
    """The paper's R50+ViT-B/16 itself, once, at batch 1 (random weights: none can be downloaded here).

    Linear matrices are drawn at std 0.02 (timm's init): at 0.2 each width-768 layer multiplies the
    residual stream by about 5, and twelve blocks turn float32 rounding (the two backbones agree to
    1e-12 in float64) into logit differences of 1e-2."""
    torch.manual_seed(0)
    theirs = randomised(timm.create_model("vit_base_r50_s16_384"), matrix_std=0.02)
    ours = from_timm(theirs, name="vit_base_r50_s16_384")
    assert ours.config == get_config("R50+ViT-B/16")
    x = image(384, batch=1)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-4


def test_flops_of_the_resnet_equal_torchs_count():
    """ViTConfig.flops counts the ResNet's convolutions (rounding up at each stride, as "SAME"
    padding does); torch's counter on the module itself is the reference."""
    from torch.utils.flop_counter import FlopCounterMode

    config = get_config("vit_r26_s32", **SMALL | dict(image_size=(80, 48), fused_attention=False))
    model = vitkit.create_model("vit_r26_s32", **SMALL | dict(image_size=(80, 48), fused_attention=False)).eval()
    x = torch.randn(1, 3, 80, 48)
    with FlopCounterMode(display=False) as stem:
        model.patch_embed(x)
    with FlopCounterMode(display=False) as whole:
        model(x)
    assert config._bit_stem_flops(80, 48) == stem.get_total_flops()
    assert abs(config.flops() - whole.get_total_flops()) / whole.get_total_flops() < 0.02


def test_timm_folder_of_a_registered_shape_builds_in_timm_and_reads_back(tmp_path):
    from vitkit.interop import load_any, save_timm

    model = randomised(vitkit.create_model("vit_r26_s32", image_size=64, depth=1, num_classes=3), matrix_std=0.02)
    written = save_timm(model, tmp_path / "timm")
    assert written.name == "vit_small_r26_s32_224" and written.model_args["patch_size"] == 1
    x = image()
    with torch.no_grad():
        expected = model(x)
        theirs = timm.create_model(
            written.name,
            pretrained=True,
            pretrained_cfg_overlay=written.overlay(tmp_path / "timm"),
            **written.model_args,
        )
        assert (theirs.eval()(x) - expected).abs().max().item() < 1e-4
        again, fmt = load_any(tmp_path / "timm")
        assert fmt == "timm" and again.config.stem_units == (2, 2, 2, 2)
        assert (again(x) - expected).abs().max().item() < 1e-4


def test_a_hybrid_timm_registers_no_name_for_is_refused_as_a_timm_folder(tmp_path):
    from vitkit.interop import save_timm

    with pytest.raises(InteropError, match="timm registers no hybrid like this one") as e:
        save_timm(vitkit.create_model("vit_r26_s32", **SMALL), tmp_path / "timm")
    assert "--to vitkit" in str(e.value) and not (tmp_path / "timm").exists()


def test_convert_to_hf_refuses_in_one_line(tmp_path, capsys):
    from vitkit.cli import main

    vitkit.save(vitkit.create_model("vit_r26_s32", **SMALL), tmp_path / "m")
    assert main(["convert", str(tmp_path / "m"), str(tmp_path / "hf"), "--to", "hf"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no ResNet hybrid" in err and "--to timm or --to vitkit keeps it" in err
    assert not (tmp_path / "hf").exists()


def test_grey_images_for_an_rgb_hybrid_are_refused_naming_the_flag():
    from vitkit.preprocess import Preprocess
    from vitkit.transfer import adapt_channels

    model = vitkit.create_model("vit_r26_s32", **SMALL)
    with pytest.raises(ConfigError, match="pass --channels 3"):
        adapt_channels(model, Preprocess.for_model(model.config), 1)


def test_onnx_export_at_a_fixed_size(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.export import check_onnx, export_onnx

    model = randomised(vitkit.create_model("vit_r26_s32", **SMALL), matrix_std=0.02)
    export_onnx(model, tmp_path / "m.onnx")  # "SAME" padding is computed from the traced (fixed) size
    assert check_onnx(model, tmp_path / "m.onnx") < 1e-4


def test_timms_stem_only_hybrid_loads_and_saves():
    """vit_tiny_r_s16_p8_*: the ResNet's root block alone (stride 4) under an 8x8 projection."""
    theirs = randomised(timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, depth=1, num_classes=3))
    x = image()
    with torch.no_grad():
        ours = from_timm(theirs.state_dict())
        assert (ours.config.stem_units, ours.config.patch_size, ours.config.grid_size) == ((), 32, (2, 2))
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-4
        assert set(to_timm_state_dict(ours)) == set(theirs.state_dict())
        assert (to_timm(ours)(x) - theirs(x)).abs().max().item() < 1e-4


def test_convert_reads_a_hybrid_npz_through_the_one_resolver(tmp_path, capsys):
    from vitkit.cli import main
    from vitkit.interop import load_artifact, save_jax_npz

    model = randomised(vitkit.create_model("vit_r26_s32", **SMALL), seed=5)
    save_jax_npz(model, tmp_path / "R26_S_32.npz")
    assert load_artifact(tmp_path / "R26_S_32.npz").fmt == "jax"
    assert main(["convert", str(tmp_path / "R26_S_32.npz"), str(tmp_path / "out")]) == 0
    x = image()
    with torch.no_grad():
        assert (vitkit.load(tmp_path / "out")(x) - model(x)).abs().max().item() < 1e-4
