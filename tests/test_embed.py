import math

import pytest
import torch
import torch.nn.functional as F

from vitkit import create_model
from vitkit.embed import PatchEmbed, PositionEmbedding, resample_grid, sincos2d


@pytest.mark.parametrize("channels,h,w", [(3, 32, 48), (1, 28, 28), (5, 16, 8)])
def test_patch_embed_equals_unfold_then_linear(channels, h, w):
    """The strided convolution is the paper's x_p E: flatten each P x P x C patch, multiply by E."""
    torch.manual_seed(0)
    p, d = 4, 24
    pe = PatchEmbed(p, channels, d)
    x = torch.randn(2, channels, h, w)
    patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, C*P*P), row-major grid
    linear = torch.nn.Linear(channels * p * p, d)
    with torch.no_grad():
        linear.weight.copy_(pe.proj.weight.reshape(d, -1))
        linear.bias.copy_(pe.proj.bias)
    expected = linear(patches)
    assert pe(x).shape == (2, (h // p) * (w // p), d)
    assert torch.allclose(pe(x), expected, atol=1e-5)


@pytest.mark.parametrize(
    "kind,trainable", [("learned", 5 * 5 * 16 + 16), ("learned2d", 5 * 8 + 5 * 8), ("sincos2d", 0), ("none", 0)]
)
def test_position_embedding_options_shapes_and_parameters(kind, trainable):
    pe = PositionEmbedding(kind, (5, 5), 16, num_prefix_tokens=1)
    table = pe((5, 5))
    if kind == "none":
        assert table is None
    else:
        assert table.shape == (1, 25, 16)
    assert sum(p.numel() for p in pe.parameters() if p.requires_grad) == trainable
    # only the paper's 1-D learned table carries a class-token row
    assert (pe.prefix is not None) == (kind == "learned")


@pytest.mark.parametrize("posemb", ["learned", "learned2d", "sincos2d", "none"])
@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_model_runs_with_every_position_embedding_and_pool(posemb, pool):
    model = create_model("vit_tiny_28", depth=2, posemb=posemb, pool=pool).eval()
    logits, attn = model(torch.randn(2, 1, 28, 28), return_attention=True)
    assert logits.shape == (2, 10)
    assert len(attn) == 2 and attn[0].shape == (2, 3, 50, 50)


def test_sincos2d_is_fixed_and_not_saved():
    model = create_model("vit_tiny_28", depth=1, posemb="sincos2d")
    assert not any(n.startswith("pos_embed") for n, _ in model.named_parameters())
    assert not any(k.startswith("pos_embed") for k in model.state_dict())
    table = sincos2d((7, 7), 192)
    assert table.shape == (1, 49, 192)
    # each position's embedding is most similar to itself
    sim = F.normalize(table[0], dim=-1) @ F.normalize(table[0], dim=-1).T
    assert torch.equal(sim.argmax(dim=1), torch.arange(49))


def test_resampling_round_trip_is_close_to_identity_on_smooth_grids():
    gh = gw = 14
    y, x = torch.meshgrid(torch.linspace(0, 1, gh), torch.linspace(0, 1, gw), indexing="ij")
    channels = [torch.sin(math.pi * (a * x + b * y)) for a, b in [(0.5, 0.3), (0.2, 0.7), (0.9, 0.1), (0.4, 0.4)]]
    grid = torch.stack(channels, dim=-1).reshape(1, gh * gw, 4)
    up = resample_grid(grid, (14, 14), (24, 24))
    assert up.shape == (1, 576, 4)
    back = resample_grid(up, (24, 24), (14, 14))
    assert (back - grid).abs().max() < 0.03
    assert (back - grid).abs().mean() < 0.005


def test_resampling_keeps_the_class_token_row():
    model = create_model("vit_tiny_28", depth=1)
    cls_row = model.pos_embed.weight[:, :1].clone()
    model.resample_image_size(56)
    assert model.pos_embed.weight.shape == (1, 1 + 14 * 14, 192)
    assert torch.equal(model.pos_embed.weight[:, :1], cls_row)
    assert model(torch.randn(1, 1, 56, 56)).shape == (1, 10)


def test_non_square_images():
    model = create_model("vit_tiny_28", depth=1, image_size=(28, 56)).eval()
    assert model.config.grid_size == (7, 14)
    assert model(torch.randn(2, 1, 28, 56)).shape == (2, 10)


@pytest.mark.parametrize("posemb", ["learned", "learned2d", "sincos2d"])
def test_dynamic_image_size_resamples_on_the_fly(posemb):
    model = create_model("vit_tiny_28", depth=1, posemb=posemb, dynamic_image_size=True).eval()
    with torch.no_grad():
        native = model(torch.randn(1, 1, 28, 28))
        other = model(torch.randn(1, 1, 30, 44))  # not a multiple of 4: padded to 32x44
    assert native.shape == other.shape == (1, 10)
