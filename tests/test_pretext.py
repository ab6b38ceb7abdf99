"""Masked pre-training objectives: targets and losses against hand computations, the random
draws against their stated shares, and both objectives training a real encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitkit import VisionTransformer, ViTConfig, load, save
from vitkit.errors import ConfigError, InputError
from vitkit.pretext import (
    MaskedAutoencoder,
    MaskedPatchPrediction,
    build_pretext,
    corruption,
    encoder_to_save,
    mpp_targets,
    patchify,
    random_masking,
    random_sources,
)

torch.set_num_threads(1)

MEAN, STD = (0.3, 0.5, 0.4), (0.2, 0.25, 0.3)


def encoder(**kw) -> VisionTransformer:  # noqa: ANN003 - ViTConfig fields
    base = dict(image_size=16, patch_size=4, in_channels=3, num_classes=0, width=32, depth=1, num_heads=2, mlp_dim=64)
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**(base | kw)))


def normalise(pixels: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:  # noqa: ANN001
    return (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- MPP targets
def four_patches(planes: list[list[list[float]]]) -> torch.Tensor:
    """A (1, C, 4, 4) image from, per patch in row-major order, per channel, its 4 pixels."""
    channels = len(planes[0])
    image = torch.zeros(1, channels, 4, 4)
    for k, patch in enumerate(planes):
        r, c = divmod(k, 2)
        for ch, pixels in enumerate(patch):
            image[0, ch, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = torch.tensor(pixels).view(2, 2)
    return image


def test_mpp_targets_are_3_bit_mean_colours_by_hand():
    image = four_patches(
        [
            [[0.0, 0.2, 0.4, 0.6], [0.5] * 4, [0.9] * 4],  # means .3 .5 .9 -> levels 2 4 7 -> 2*64 + 4*8 + 7
            [[1.0] * 4, [0.0] * 4, [0.1, 0.1, 0.2, 0.2]],  # 1.0 -> min(8, 7) = 7; 0; .15 -> 1 -> 7*64 + 1
            [[0.124] * 4, [0.126] * 4, [0.99] * 4],  # .992 -> 0, 1.008 -> 1, 7.92 -> 7 -> 8 + 7
            [[0.75] * 4] * 3,  # 6 each -> 6*64 + 6*8 + 6
        ]
    )
    assert mpp_targets(image, 2).tolist() == [[167, 449, 15, 438]]
    # one bit per channel: (.3, .5, .9) -> (0, 1, 1) -> 0*4 + 1*2 + 1
    assert mpp_targets(image, 2, bits=1)[0, 0].item() == 3


def test_mpp_targets_of_one_channel_are_8_levels_by_hand():
    image = four_patches([[[0.0, 0.1, 0.2, 0.3]], [[1.0] * 4], [[0.5] * 4], [[0.6, 0.7, 0.6, 0.7]]])
    # means .15 1.0 .5 .65 -> floor(8 mean) 1, 8 -> 7, 4, 5
    assert mpp_targets(image, 2).tolist() == [[1, 7, 4, 5]]


# ----------------------------------------------------------------------------- MPP corruption
def test_corruption_shares_hold_over_many_draws():
    b, n, draws = 32, 16, 100
    g = seeded(0)
    corrupted = mask = rand = 0
    per_position = torch.zeros(n)
    for _ in range(draws):
        c = corruption(b, n, 0.5, (0.8, 0.1, 0.1), g)
        assert (c.corrupted.sum(dim=1) == n // 2).all()  # exactly half of every image
        assert not (c.mask_token & c.random_patch).any()
        assert not ((c.mask_token | c.random_patch) & ~c.corrupted).any()
        corrupted += int(c.corrupted.sum())
        mask += int(c.mask_token.sum())
        rand += int(c.random_patch.sum())
        per_position += c.corrupted.sum(dim=0)
    keep = corrupted - mask - rand
    for got, p in ((mask, 0.8), (rand, 0.1), (keep, 0.1)):
        sd = math.sqrt(corrupted * p * (1 - p))  # each corrupted patch draws its fate on its own
        assert abs(got - corrupted * p) < 4 * sd, (got, corrupted * p, sd)
    # every position is as likely as any other to be corrupted: 1/2 (the count per image is fixed,
    # which only lowers the variance below the binomial one)
    sd = math.sqrt(b * draws * 0.25)
    assert (per_position - b * draws * 0.5).abs().max() < 4 * sd


def test_random_sources_are_other_patches_of_the_batch():
    b, n = 4, 8
    g = seeded(1)
    seen = torch.zeros(b * n, dtype=torch.long)
    for _ in range(400):
        src = random_sources(b, n, g)
        assert ((src >= 0) & (src < b * n)).all()
        assert (src != torch.arange(b * n).view(b, n)).all()  # never itself
        seen += torch.bincount(src.flatten(), minlength=b * n)
    # from any image, at any position: 400*32 draws over 32 sources, 400 each on average
    assert seen.min() > 400 - 4 * math.sqrt(400), seen


def test_mpp_corrupts_embeddings_as_drawn():
    w = MaskedPatchPrediction(encoder())
    patches = torch.randn(3, 16, 32)
    x, corrupted = w.corrupt(patches, seeded(7))
    g = seeded(7)  # the same draws, in the same order, by hand
    c = corruption(3, 16, 0.5, (0.8, 0.1, 0.1), g)
    src = random_sources(3, 16, g)
    assert torch.equal(corrupted, c.corrupted)
    flat = patches.reshape(48, 32)
    for i in range(3):
        for j in range(16):
            if c.mask_token[i, j]:
                expected = w.mask_token[0, 0]
            elif c.random_patch[i, j]:
                expected = flat[src[i, j]]
            else:  # not corrupted, or corrupted and kept as it is
                expected = patches[i, j]
            assert torch.equal(x[i, j], expected)


def test_mpp_corrupts_before_the_positions_are_added(monkeypatch):
    """The [mask] embedding takes the place of x_p E and then gets that patch's position row, as
    BERT's [MASK] gets its position: what eq. (1) receives already holds the mask token."""
    w = MaskedPatchPrediction(encoder())
    seen = []
    original = w.encoder.add_positions_and_prefix
    monkeypatch.setattr(w.encoder, "add_positions_and_prefix", lambda x, grid: seen.append(x) or original(x, grid))
    w(torch.randn(2, 3, 16, 16), generator=seeded(4))
    masked = corruption(2, 16, 0.5, (0.8, 0.1, 0.1), seeded(4)).mask_token
    assert masked.sum() > 0 and torch.equal(seen[0][masked], w.mask_token[0].expand(int(masked.sum()), -1))


def test_mpp_loss_is_cross_entropy_on_corrupted_patches_by_hand():
    w = MaskedPatchPrediction(encoder(), mean=MEAN, std=STD)
    bias = torch.linspace(-2.0, 3.0, 512) * torch.cos(torch.arange(512.0))
    with torch.no_grad():  # logits = bias for every patch, whatever the encoder says
        w.head.weight.zero_()
        w.head.bias.copy_(bias)
    pixels = torch.rand(2, 3, 16, 16, generator=seeded(3))
    out = w(normalise(pixels), generator=seeded(5))
    corrupted = corruption(2, 16, 0.5, (0.8, 0.1, 0.1), seeded(5)).corrupted
    targets = mpp_targets(pixels, 4)
    log_z = math.log(sum(math.exp(v) for v in bias.tolist()))
    losses = [log_z - bias[t].item() for t, c in zip(targets.flatten(), corrupted.flatten(), strict=True) if c]
    assert out.loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert out.count.item() == 16 == len(losses)
    best = int(bias.argmax())
    assert out.correct.item() == sum(
        int(t == best) for t, c in zip(targets.flatten(), corrupted.flatten(), strict=True) if c
    )
    assert out.loss.dtype == torch.float32 and out.correct.dtype == out.count.dtype == torch.long


# ----------------------------------------------------------------------------- MAE
def test_random_masking_keeps_exactly_a_quarter_and_puts_them_back():
    b, n = 64, 16
    masking = random_masking(b, n, 4, seeded(0))
    assert masking.keep.shape == (b, 4)
    for keep, mask in zip(masking.keep.tolist(), masking.mask, strict=True):
        assert keep == sorted(set(keep))  # distinct and in raster order
        assert [j for j in range(n) if not mask[j]] == keep  # the mask hides exactly the rest
    # gathering the kept patches and scattering them back restores them in place
    values = torch.randn(b, n, 5)
    kept = values.gather(1, masking.keep[..., None].expand(-1, -1, 5))
    back = torch.zeros_like(values).scatter(1, masking.keep[..., None].expand(-1, -1, 5), kept)
    assert torch.equal(back[~masking.mask], values[~masking.mask])
    # which patches are kept is random: every position is kept by some image, none by all
    assert (masking.mask.sum(dim=0) < b).all() and (masking.mask.sum(dim=0) > 0).all()


def test_patchify_lays_out_patches_by_hand():
    pixels = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)  # value = ch*16 + y*4 + x
    patches = patchify(pixels, 2)
    # patch 1 (top right): rows 0-1, columns 2-3, each pixel's two channels side by side
    assert patches[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]
    assert patches.shape == (1, 4, 8)


def hand_normalised_patch(pixels: np.ndarray, row: int, col: int, p: int) -> np.ndarray:
    """MAE's target by hand: the patch's values in (row, column, channel) order, minus their mean,
    over sqrt(unbiased variance + 1e-6)."""
    v = np.array([pixels[ch, row * p + y, col * p + x] for y in range(p) for x in range(p) for ch in range(3)])
    return (v - v.mean()) / math.sqrt(v.var(ddof=1) + 1e-6)


def test_mae_loss_is_mse_on_normalised_hidden_patches_by_hand():
    w = MaskedAutoencoder(encoder(image_size=8), mask_ratio=0.75, mean=MEAN, std=STD)
    bias = torch.linspace(-1.0, 1.0, 48)
    with torch.no_grad():  # the decoder predicts its bias for every patch
        w.decoder_pred.weight.zero_()
        w.decoder_pred.bias.copy_(bias)
    pixels = torch.rand(2, 3, 8, 8, generator=seeded(3), dtype=torch.float64).float()
    out = w(normalise(pixels), generator=seeded(11))
    mask = random_masking(2, 4, 1, seeded(11)).mask  # 8x8 with patch 4: 4 patches, 1 kept
    errors = []
    for i in range(2):
        for j in range(4):
            if mask[i, j]:
                t = hand_normalised_patch(pixels[i].double().numpy(), j // 2, j % 2, 4)
                errors.append(np.mean((bias.double().numpy() - t) ** 2))
    assert len(errors) == 6 == out.count.item()
    assert out.loss.item() == pytest.approx(float(np.mean(errors)), rel=1e-4)
    assert out.correct.item() == 0 and out.loss.dtype == torch.float32


def test_mae_without_norm_pix_loss_scores_raw_pixels():
    w = MaskedAutoencoder(encoder(image_size=8), norm_pix_loss=False, mean=MEAN, std=STD)
    with torch.no_grad():
        w.decoder_pred.weight.zero_()
        w.decoder_pred.bias.fill_(0.5)
    pixels = torch.rand(1, 3, 8, 8, generator=seeded(4))
    out = w(normalise(pixels), generator=seeded(2))
    mask = random_masking(1, 4, 1, seeded(2)).mask[0]
    hidden = patchify(pixels, 4)[0][mask]
    assert out.loss.item() == pytest.approx(((hidden - 0.5) ** 2).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- both objectives
def digits(n: int = 32) -> torch.Tensor:
    """Real images: scikit-learn's 8x8 digits, upsampled to 16x16, one channel in [0, 1]."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=16, mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_objective_trains_the_encoder_on_digits(objective):
    pixels = digits()
    mean, std = (pixels.mean().item(),), (pixels.std().item(),)
    images = normalise(pixels, mean, std)
    torch.manual_seed(0)
    w = build_pretext(objective, encoder(in_channels=1, width=48, num_heads=4, mlp_dim=96), mean, std)
    before = w(images, generator=seeded(99)).loss.item()
    w(images).loss.backward()
    missing = [name for name, p in w.named_parameters() if p.grad is None]
    assert not missing, f"no gradient (DDP would stop): {missing}"
    assert w.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # the loss reaches the encoder
    opt = torch.optim.Adam(w.parameters(), lr=3e-3)
    for step in range(30):
        torch.manual_seed(step)  # as the loop seeds each step
        opt.zero_grad()
        w(images).loss.backward()
        opt.step()
    after = w(images, generator=seeded(99)).loss.item()
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_steps_reproduce_from_the_global_seed_and_the_loss_is_float32_under_bf16(objective):
    w = build_pretext(objective, encoder(), MEAN, STD)
    images = torch.randn(2, 3, 16, 16, generator=seeded(0))
    losses = []
    for _ in range(2):
        torch.manual_seed(1234)
        losses.append(w(images).loss)
    torch.manual_seed(4321)
    assert torch.equal(losses[0], losses[1]) and not torch.equal(losses[0], w(images).loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert w(images).loss.dtype == torch.float32


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_the_encoder_saves_as_an_ordinary_checkpoint(objective, tmp_path):
    config = ViTConfig(image_size=16, patch_size=4, num_classes=0, width=32, depth=2, num_heads=2, mlp_dim=64)
    w = build_pretext(objective, VisionTransformer(config), MEAN, STD)
    plain = VisionTransformer(config).state_dict()
    saved = encoder_to_save(w).state_dict()
    assert list(saved) == list(plain)
    assert all(saved[k].shape == plain[k].shape for k in plain)
    ddp_like = torch.nn.Module()
    ddp_like.module = w  # DistributedDataParallel keeps the wrapped model as .module
    assert encoder_to_save(ddp_like) is w.encoder
    save(encoder_to_save(w), tmp_path / "enc")
    reloaded = load(tmp_path / "enc")
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in saved.items())


def test_embedding_split_is_the_one_embedding_path():
    """embed_patches + add_positions_and_prefix is eq. (1); with ``keep`` each kept patch gets its own row."""
    for posemb in ("learned", "learned2d", "sincos2d", "none"):
        m = encoder(posemb=posemb).eval()
        with torch.no_grad():
            m.cls_token.normal_()
            m.pos_embed.apply(lambda mod: [p.normal_() for p in mod.parameters(recurse=False)])
        x = torch.randn(2, 3, 16, 16)
        full = m.embed(x)
        patches, grid = m.embed_patches(x)
        assert torch.equal(m.add_positions_and_prefix(patches, grid), full)
        keep = torch.tensor([[1, 5, 6], [0, 2, 15]])
        part = m.add_positions_and_prefix(patches.gather(1, keep[..., None].expand(-1, -1, 32)), grid, keep=keep)
        assert torch.allclose(part[:, 0], full[:, 0])  # the class token is untouched
        assert torch.allclose(part[:, 1:], full[:, 1:].gather(1, keep[..., None].expand(-1, -1, 32)))


def test_settings_that_cannot_work_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="stem='patch'"):
        MaskedAutoencoder(encoder(stem="conv", stem_channels=8))
    MaskedPatchPrediction(encoder(stem="conv", stem_channels=8))  # MPP corrupts after the stem
    with pytest.raises(ConfigError, match="num_classes=0"):
        MaskedPatchPrediction(encoder(num_classes=10))
    with pytest.raises(ConfigError, match="unknown pre-training objective 'bert'"):
        build_pretext("bert", encoder(), MEAN, STD)
    with pytest.raises(ConfigError, match="decoder_depth"):
        build_pretext("mpp", encoder(), MEAN, STD, decoder_depth=2)
    with pytest.raises(ConfigError, match="3 channel"):
        build_pretext("mae", encoder(), (0.5,), (0.5,))
    with pytest.raises(ConfigError, match="replace"):
        MaskedPatchPrediction(encoder(), replace=(0.8, 0.1, 0.2))
    with pytest.raises(ConfigError, match="mask_ratio"):
        MaskedAutoencoder(encoder(), mask_ratio=1.0)
    w = MaskedAutoencoder(encoder(dynamic_image_size=True))
    with pytest.raises(InputError, match="not divisible by patch size 4"):
        w(torch.zeros(1, 3, 18, 16))


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_weight_decay_skips_the_tokens_and_position_tables_as_in_classification(objective):
    from vitkit.train.optim import param_groups

    wrapper = build_pretext(objective, encoder(), MEAN, STD)
    names = {id(p): n for n, p in wrapper.named_parameters()}
    undecayed = {names[id(p)] for g in param_groups(wrapper, 0.05) if g["weight_decay"] == 0 for p in g["params"]}
    assert {"mask_token", "encoder.cls_token", "encoder.pos_embed.weight"} <= undecayed
    assert "encoder.blocks.0.attn.qkv.weight" not in undecayed
