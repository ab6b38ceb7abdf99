"""Google .npz checkpoints: written here in the Flax naming from known arrays, then loaded by
timm's own npz loader (the independent reference) and by vitkit; the two must agree."""

import numpy as np
import pytest
import torch

from vitkit.interop import InteropError, from_jax_npz

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402
from timm.models.vision_transformer import _load_weights  # noqa: E402

P, C, D, HEADS, MLP, DEPTH, GRID, CLASSES, REPR = 8, 3, 48, 3, 96, 2, 4, 7, 40
IMAGE = P * GRID


def flax_arrays(
    *, big_vision=False, cls=True, pre_logits=False, scanned=False, prefix="", head=True, seed=0
) -> dict[str, np.ndarray]:
    """Random parameters of a ViT under the Flax names of vision_transformer (original) or big_vision."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    mha, ln2, mlp = (
        ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
        if big_vision
        else ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    )
    w = {"embedding/kernel": r(P, P, C, D), "embedding/bias": r(D)}
    if cls:
        w["cls"] = r(1, 1, D)
    if big_vision:  # top level, no class slot
        w["pos_embedding"] = r(1, GRID * GRID, D)
    else:  # under posembed_input, with a class slot when there is a class token
        w["Transformer/posembed_input/pos_embedding"] = r(1, GRID * GRID + int(cls), D)
    blocks = []
    for _ in range(DEPTH):
        b = {
            "LayerNorm_0/scale": 1 + r(D),
            "LayerNorm_0/bias": r(D),
            f"{ln2}/scale": 1 + r(D),
            f"{ln2}/bias": r(D),
            f"{mlp}/Dense_0/kernel": r(D, MLP),
            f"{mlp}/Dense_0/bias": r(MLP),
            f"{mlp}/Dense_1/kernel": r(MLP, D),
            f"{mlp}/Dense_1/bias": r(D),
            f"{mha}/out/kernel": r(HEADS, D // HEADS, D),
            f"{mha}/out/bias": r(D),
        }
        for n in ("query", "key", "value"):
            b[f"{mha}/{n}/kernel"] = r(D, HEADS, D // HEADS)
            b[f"{mha}/{n}/bias"] = r(HEADS, D // HEADS)
        blocks.append(b)
    if scanned:  # one block whose arrays have a leading depth axis
        for k in blocks[0]:
            w[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
    else:
        for i, b in enumerate(blocks):
            w.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in b.items()})
    w["Transformer/encoder_norm/scale"] = 1 + r(D)
    w["Transformer/encoder_norm/bias"] = r(D)
    head_in = D
    if pre_logits:
        w["pre_logits/kernel"], w["pre_logits/bias"] = r(D, REPR), r(REPR)
        head_in = REPR
    if head:
        w["head/kernel"], w["head/bias"] = r(head_in, CLASSES), r(CLASSES)
    return {f"{prefix}{k}": v for k, v in w.items()}


def timm_model(**kw):
    args = dict(img_size=IMAGE, patch_size=P, in_chans=C, embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=MLP / D)
    args.update(kw)
    return TimmViT(**args).eval()


def images(n=2):
    return torch.randn(n, C, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "layout, timm_kw",
    [
        (dict(), dict(num_classes=CLASSES)),  # vision_transformer / AugReg: class token, slot in the table
        (dict(cls=False), dict(num_classes=CLASSES, class_token=False, global_pool="avg", fc_norm=False)),
        (
            dict(big_vision=True, cls=False, prefix="params/"),
            dict(num_classes=CLASSES, class_token=False, global_pool="avg", fc_norm=False),
        ),
        (dict(big_vision=True, scanned=True), dict(num_classes=CLASSES, no_embed_class=True)),
    ],
    ids=["original-cls", "original-gap", "big_vision-gap", "big_vision-scanned-cls"],
)
def test_npz_matches_timm_loader(tmp_path, layout, timm_kw):
    path = tmp_path / "vit.npz"
    np.savez(path, **flax_arrays(**layout))
    reference = timm_model(**timm_kw)
    _load_weights(reference, str(path))
    model = from_jax_npz(path)
    c = model.config
    assert (c.patch_size, c.width, c.depth, c.num_heads, c.mlp_dim) == (P, D, DEPTH, HEADS, MLP)
    assert c.image_size == (IMAGE, IMAGE) and c.num_classes == CLASSES
    assert c.pool == ("cls" if layout.get("cls", True) else "gap")
    x = images()
    with torch.no_grad():
        diff = (model(x) - reference(x)).abs().max().item()
    assert diff < 1e-4, diff


def test_npz_with_the_tanh_gelu_of_the_jax_originals(tmp_path):
    """Flax's nn.gelu is the tanh approximation: with gelu_approximate=True vitkit computes what the
    JAX code computes (checked against timm built with the same activation), and that differs
    from the exact-GELU default of the timm and Hugging Face ports."""
    from functools import partial

    path = tmp_path / "vit.npz"
    np.savez(path, **flax_arrays())
    reference = timm_model(num_classes=CLASSES, act_layer=partial(torch.nn.GELU, approximate="tanh"))
    _load_weights(reference, str(path))
    model = from_jax_npz(path, gelu_approximate=True)
    exact = from_jax_npz(path)
    x = images()
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-4
        assert (exact(x) - reference(x)).abs().max().item() > 1e-4
    # and the setting survives the round trips through timm and Hugging Face
    from vitkit.interop import from_hf, from_timm, to_hf, to_timm

    assert from_timm(to_timm(model)).config.gelu_approximate
    to_hf(model, tmp_path / "hf")
    with torch.no_grad():
        assert torch.allclose(from_hf(tmp_path / "hf")(x), model(x), atol=1e-5)


def test_npz_with_pre_logits_layer(tmp_path):
    """timm's loader ignores pre_logits, so its features are finished by hand: tanh(x W + b) W_h + b_h."""
    arrays = flax_arrays(pre_logits=True)
    path = tmp_path / "vit.npz"
    np.savez(path, **arrays)
    reference = timm_model(num_classes=0)  # no head: timm's head could not take the REPR-wide input
    _load_weights(reference, str(path))
    model = from_jax_npz(path)
    assert model.config.representation_size == REPR
    x = images()
    with torch.no_grad():
        features = reference(x)  # (B, D): the class token's state after the final LayerNorm
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        expected = (
            torch.tanh(features @ t["pre_logits/kernel"] + t["pre_logits/bias"]) @ t["head/kernel"] + t["head/bias"]
        )
        diff = (model(x) - expected).abs().max().item()
    assert diff < 1e-4, diff


def test_npz_errors_are_one_line(tmp_path):
    path = tmp_path / "vit.npz"
    np.savez(path, **flax_arrays())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InteropError, match="not a readable .npz archive") as e:
        from_jax_npz(truncated)
    assert "\n" not in str(e.value)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(InteropError, match=r"expected Flax ViT parameters .*found 'weights'"):
        from_jax_npz(foreign)
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, **{k: v for k, v in flax_arrays().items() if "encoder_norm" not in k})
    with pytest.raises(InteropError, match="missing parameter 'Transformer/encoder_norm/scale'"):
        from_jax_npz(incomplete)
    single = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(single)  # a plain .npy array under an .npz name
    with pytest.raises(InteropError, match="is a single .npy array"):
        from_jax_npz(single)
