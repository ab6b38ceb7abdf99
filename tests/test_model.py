import pytest
import torch
from conftest import perturbed

from vitkit import VisionTransformer, ViTConfig, create_model, list_presets
from vitkit.config import canonical_name, get_config
from vitkit.model import count_params

# timm's parameter counts at 224x224, class token, learned 1-D position embedding, no pre-logits.
TIMM_PARAMS_1000 = {
    "vit_ti16": 5_717_416,
    "vit_s16": 22_050_664,
    "vit_s32": 22_878_952,
    "vit_b16": 86_567_656,
    "vit_b32": 88_224_232,
    "vit_l16": 304_326_632,
    "vit_l32": 306_535_400,
    "vit_h14": 632_045_800,
}
# timm's own defaults for L/32 and H/14 (the in21k releases) have no head: these are those counts.
TIMM_PARAMS_HEADLESS = {"vit_l32": 305_510_400, "vit_h14": 630_764_800}


@pytest.mark.parametrize("name", list(TIMM_PARAMS_1000))
def test_parameter_counts_equal_timm(name):
    assert count_params(get_config(name)) == TIMM_PARAMS_1000[name]
    if name in TIMM_PARAMS_HEADLESS:
        assert count_params(get_config(name, num_classes=0)) == TIMM_PARAMS_HEADLESS[name]


def test_paper_spellings_name_the_same_preset():
    assert canonical_name("ViT-B/16") == "vit_b16"
    assert canonical_name("ViT-Ti/16") == "vit_ti16"
    assert canonical_name("vit_base_patch16_224") == "vit_b16"
    assert canonical_name("ViT-H/14") == "vit_h14"
    assert "vit_b16" in list_presets()


def test_unknown_preset_and_override_are_clear_errors():
    with pytest.raises(ValueError, match="unknown preset 'vit_q99'"):
        create_model("vit_q99")
    with pytest.raises(ValueError, match=r"unknown ViTConfig field\(s\) \['widht'\]"):
        create_model("vit_ti16", widht=10)
    with pytest.raises(ValueError, match="pool='cls' needs class_token=True"):
        ViTConfig(class_token=False)
    with pytest.raises(ValueError, match="an input of 30x30 px does not divide into patches of 16 px"):
        ViTConfig(image_size=30, patch_size=16)
    with pytest.raises(ValueError, match="fused_attention='False' must be true or false"):
        create_model("vit_tiny_28", fused_attention="False")


def test_head_is_zero_initialised_so_a_fresh_model_is_uniform():
    model = create_model("vit_tiny_28", depth=1).eval()
    logits = model(torch.randn(4, 1, 28, 28))
    assert torch.equal(logits, torch.zeros(4, 10))


def _trained_like(model):
    return perturbed(model, 0.02)


def test_gap_pool_ignores_the_class_token():
    model = _trained_like(create_model("vit_tiny_28", depth=2, pool="gap"))
    x = torch.randn(2, 1, 28, 28)
    tokens, _ = model.forward_features(x)
    changed = tokens.clone()
    changed[:, 0] += 100.0
    assert torch.equal(model.forward_head(tokens), model.forward_head(changed))
    assert torch.allclose(model.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1), atol=1e-6)
    cls = _trained_like(create_model("vit_tiny_28", depth=2, pool="cls"))
    t, _ = cls.forward_features(x)
    assert torch.equal(cls.forward_head(t, pre_logits=True), t[:, 0])


def test_no_class_token_variant():
    model = _trained_like(create_model("vit_tiny_28", depth=2, pool="gap", class_token=False))
    tokens, attn = model.forward_features(torch.randn(2, 1, 28, 28), return_attention=True)
    assert tokens.shape == (2, 49, 192) and attn[0].shape == (2, 3, 49, 49)


def test_forward_with_attention_equals_fused_forward():
    model = _trained_like(create_model("vit_tiny_28", depth=3))
    x = torch.randn(2, 1, 28, 28)
    plain = model(x)
    logits, attn = model(x, return_attention=True)
    assert torch.allclose(plain, logits, atol=1e-5)
    assert len(attn) == 3 and all(a.shape == (2, 3, 50, 50) for a in attn)


def test_stochastic_depth_only_in_training():
    model = _trained_like(create_model("vit_tiny_28", depth=4, drop_path=0.5))
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(model(x), model(x))  # eval: deterministic
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)


def test_representation_layer_and_conv_stem():
    model = _trained_like(create_model("vit_tiny_28", depth=1, representation_size=64, stem="conv"))
    assert model.forward_head(model.forward_features(torch.randn(2, 1, 28, 28))[0], pre_logits=True).shape == (2, 64)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "shape,match",
    [
        ((2, 3, 28, 28), "expected 1 channel"),
        ((2, 1, 32, 32), "expected 28x28 images, got 32x32"),
        ((1, 28, 28), "expected a 4-D image batch"),
    ],
)
def test_bad_input_gets_a_one_line_error(shape, match):
    model = create_model("vit_tiny_28", depth=1)
    with pytest.raises(ValueError, match=match) as e:
        model(torch.randn(*shape))
    assert "\n" not in str(e.value)


def test_flops_count_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    for name, kw in [
        ("vit_tiny_28", {}),
        ("vit_ti16", {"depth": 2}),
        ("vit_s32", {"depth": 2, "representation_size": 100}),
        # the hybrid stem with its stride-1 convolutions (image 32, patch 8: three stages)
        (
            "vit_tiny_28",
            {"depth": 1, "stem": "conv", "patch_size": 8, "image_size": 32, "stem_channels": 8, "stem_convs": 2},
        ),
    ]:
        cfg = get_config(name, fused_attention=False, **kw)  # torch counts nothing inside CPU SDPA
        model = VisionTransformer(cfg).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, cfg.in_channels, *cfg.image_size))
        assert abs(cfg.flops() - counter.get_total_flops()) / counter.get_total_flops() < 0.02


def test_conv_stem_stride1_convs_keep_the_token_grid():
    """stem_convs=2 adds a stride-1 3x3 conv to each stride-2 stage: six convs and the 1x1
    projection for patch 8, the same 4x4 grid of tokens as the plain hybrid stem."""
    kw = dict(depth=1, stem="conv", patch_size=8, image_size=32, stem_channels=8, pool="gap", class_token=False)
    plain, deeper = (create_model("vit_tiny_28", stem_convs=n, **kw) for n in (1, 2))
    convs = [m for m in deeper.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.stride[0] for m in convs] == [2, 1, 2, 1, 2, 1, 1]
    assert [m.out_channels for m in convs] == [8, 8, 16, 16, 32, 32, 192]
    x = torch.randn(2, 1, 32, 32)
    assert deeper.patch_embed(x).shape == plain.patch_embed(x).shape == (2, 16, 192)
    # A grayscale image's first conv answers channels-last too, so the BatchNorm and ReLU after it
    # save tensors in the layout their gradients come back in from the next conv.
    first_stage = deeper.patch_embed.convs[:3](x)
    assert first_stage.stride()[1] == 1 and first_stage.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="stem_convs"):
        create_model("vit_tiny_28", stem_convs=0, **kw)


# ---------------------------------------------------------------------------- DeiT's distillation token
# timm's counts for its deit_*_distilled_patch16_224 models (224x224, 1000 classes, both heads).
TIMM_PARAMS_DISTILLED = {
    "deit_tiny_distilled_patch16_224": ("deit_ti16_distilled", 5_910_800),
    "deit_small_distilled_patch16_224": ("deit_s16_distilled", 22_436_432),
    "deit_base_distilled_patch16_224": ("deit_b16_distilled", 87_338_192),
}


@pytest.mark.parametrize("timm_name", list(TIMM_PARAMS_DISTILLED))
def test_distilled_parameter_counts_equal_timm(timm_name):
    name, params = TIMM_PARAMS_DISTILLED[timm_name]
    assert canonical_name(timm_name) == name
    config = get_config(name)
    assert config.distill_token and config.num_prefix_tokens == 2
    assert count_params(config) == params
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False)
    assert count_params(config) == sum(p.numel() for p in reference.parameters())


def _distilled(**kw):
    torch.manual_seed(0)
    return _trained_like(
        create_model("vit_tiny_32", depth=2, width=32, num_heads=2, mlp_dim=64, distill_token=True, **kw)
    )


def test_distilled_model_averages_its_two_heads_at_inference():
    x = torch.randn(3, 3, 32, 32)
    for pool in ("cls", "gap"):
        model = _distilled(pool=pool)
        with torch.no_grad():
            tokens, _ = model.forward_features(x)  # (B, 2 + 64, D), final LayerNorm applied
            cls, dist = model.forward_heads(tokens)
            class_input = tokens[:, 0] if pool == "cls" else tokens[:, 2:].mean(1)  # the patches, not the prefix
            by_hand_cls = class_input @ model.head.weight.T + model.head.bias
            by_hand_dist = tokens[:, 1] @ model.head_dist.weight.T + model.head_dist.bias
            assert torch.allclose(cls, by_hand_cls, atol=1e-5) and torch.allclose(dist, by_hand_dist, atol=1e-5)
            assert not torch.allclose(cls, dist, atol=1e-3)  # two different heads on two different tokens
            assert torch.allclose(model(x), (by_hand_cls + by_hand_dist) / 2, atol=1e-5)
            assert torch.equal(model.forward_head(tokens), model(x))
            assert torch.equal(model.forward_head(tokens, pre_logits=True), class_input)


def test_distilled_training_returns_both_heads_and_eval_their_mean():
    model = _distilled()
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert isinstance(model(x), torch.Tensor)  # not switched on: the mean, even in training
    model.set_distilled_training()
    cls, dist = model(x)
    with torch.no_grad():
        expected = model.forward_heads(model.forward_features(x)[0])
    assert torch.allclose(cls, expected[0], atol=1e-6) and torch.allclose(dist, expected[1], atol=1e-6)
    (cls.sum() + dist.sum()).backward()
    assert model.head_dist.weight.grad.abs().sum() > 0 and model.dist_token.grad.abs().sum() > 0
    (pair, attn) = model(x, return_attention=True)
    assert len(pair) == 2 and len(attn) == 2
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), (expected[0] + expected[1]) / 2, atol=1e-6)
    plain = create_model("vit_tiny_32", depth=1)
    with pytest.raises(ValueError, match="distill_token=True"):
        plain.set_distilled_training()
    with pytest.raises(ValueError, match="use forward_head"):
        plain.forward_heads(torch.zeros(1, 65, 192))


def test_distillation_token_has_its_own_position_row_and_init():
    model = create_model("vit_tiny_32", depth=1, distill_token=True)
    assert model.pos_embed.weight.shape == (1, 2 + 64, 192)
    assert torch.equal(model.cls_token, torch.zeros(1, 1, 192))  # the JAX rule for the class token
    assert 0.01 < model.dist_token.std().item() < 0.03 and model.dist_token.abs().max() <= 2  # trunc-normal .02
    assert torch.equal(model.head_dist.weight, torch.zeros(10, 192))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z0 = model.embed(x)
        rows = model.pos_embed.weight
        assert torch.equal(z0[:, 0], (model.cls_token + rows[:, 0:1])[:, 0].expand(2, -1))
        assert torch.equal(z0[:, 1], (model.dist_token + rows[:, 1:2])[:, 0].expand(2, -1))
        patches = model.patch_embed(x) + rows[:, 2:]
        assert torch.allclose(z0[:, 2:], patches, atol=1e-6)
    assert model.no_weight_decay() == {"cls_token", "dist_token", "pos_embed.weight"}
    # without the token nothing changes: the same tensors as before it existed
    plain = create_model("vit_tiny_32", depth=1).state_dict()
    assert set(model.state_dict()) - set(plain) == {"dist_token", "head_dist.weight", "head_dist.bias"}
    assert plain["pos_embed.weight"].shape == (1, 1 + 64, 192)
    with pytest.raises(ValueError, match="distill_token=True needs class_token=True"):
        ViTConfig(pool="gap", class_token=False, distill_token=True)
    headless = create_model("vit_tiny_32", depth=1, distill_token=True, num_classes=0).eval()
    assert headless.head_dist is None and headless(x).shape == (2, 192)  # the class representation


def test_distilled_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    # many classes, so that the two heads (and the pre-logits layer each reads through) dominate
    kw = dict(depth=1, width=32, num_heads=2, mlp_dim=64, patch_size=16, num_classes=2000, representation_size=100)
    cfg = get_config("vit_tiny_32", distill_token=True, fused_attention=False, **kw)
    model = VisionTransformer(cfg).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    assert abs(cfg.flops() - counter.get_total_flops()) / counter.get_total_flops() < 0.02


# ---------------------------------------------------------------------------- register tokens
def test_register_tokens_add_exactly_registers_times_width_parameters():
    """Registers have no position row and no head reads them: 4 registers are 4 x width numbers."""
    for name in ("vit_tiny_32", "vit_b16"):
        plain, reg = get_config(name), get_config(name, register_tokens=4)
        assert count_params(reg) - count_params(plain) == 4 * plain.width
    # ViT-B/16 with 4 registers and no position row for them: 86,567,656 + 4 x 768 (timm's
    # vit_base_patch16_224 count, TIMM_PARAMS_1000, plus the 3,072 numbers of its reg_token)
    assert count_params(get_config("vit_b16", register_tokens=4)) == 86_570_728
    assert count_params(get_config("vit_b16", register_tokens=4, posemb="sincos2d")) == (
        count_params(get_config("vit_b16", posemb="sincos2d")) + 4 * 768
    )
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="register_tokens="):
            ViTConfig(register_tokens=bad)


@pytest.mark.parametrize("posemb", ["learned", "sincos2d"])
def test_prefix_order_is_class_distillation_registers_then_patches(posemb):
    """z_0 = [cls + row 0; dist + row 1; reg_1; ...; reg_R; patches + their rows]: registers get
    no position row, and they are a separate (1, R, D) parameter drawn at random."""
    torch.manual_seed(0)
    model = perturbed(create_model("vit_tiny_32", depth=1, distill_token=True, register_tokens=3, posemb=posemb))
    c = model.config
    assert c.prefix_tokens == ("cls_token", "dist_token", "reg_token") and c.num_prefix_tokens == 5
    assert c.num_prefix_rows == 2 and model.reg_token.shape == (1, 3, 192)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z0 = model.embed(x)
        assert z0.shape == (2, 5 + 64, 192)
        rows = model.pos_embed.prefix if posemb == "learned" else torch.zeros(1, 2, 192)
        assert torch.equal(z0[:, 0], (model.cls_token + rows[:, 0:1])[:, 0].expand(2, -1))
        assert torch.equal(z0[:, 1], (model.dist_token + rows[:, 1:2])[:, 0].expand(2, -1))
        assert torch.equal(z0[:, 2:5], model.reg_token.expand(2, -1, -1))  # no position added
        assert torch.allclose(z0[:, 5:], model.patch_embed(x) + model.pos_embed(c.grid_size), atol=1e-6)
    if posemb == "learned":
        assert model.pos_embed.weight.shape == (1, 2 + 64, 192)  # no register rows
    assert "reg_token" in model.no_weight_decay()


def test_registers_are_prefix_tokens_for_pooling_and_intermediates():
    torch.manual_seed(0)
    model = perturbed(create_model("vit_tiny_32", depth=2, pool="gap", class_token=False, register_tokens=4))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, _ = model.forward_features(x)
        assert tokens.shape == (2, 4 + 64, 192)
        assert torch.equal(model.pool(tokens), tokens[:, 4:].mean(dim=1))  # the registers are not averaged in
        states = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
        assert states[0].shape == (2, 192, 8, 8)
        _, pairs = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, output_fmt="NLC")
        assert pairs[0][0].shape == (2, 64, 192) and pairs[0][1].shape == (2, 4, 192)
    # the registers start different from each other (equal ones would stay equal: one register)
    fresh = create_model("vit_tiny_32", depth=1, register_tokens=4).reg_token[0]
    assert torch.cdist(fresh, fresh).triu(1).sum() > 0 and 0.01 < fresh.std().item() < 0.03
