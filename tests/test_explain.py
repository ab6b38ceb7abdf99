import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FMNIST, needs_fashion_mnist, perturbed
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.embed import sincos2d
from vitkit.explain import (
    attention_maps,
    explain_batch,
    find_sinks,
    mean_attention_distance,
    model_patch_filters,
    patch_filters_pca,
    posemb_similarity,
    rollout,
    rollout_map,
    sink_verdict,
    uniform_attention_distance,
    write_report,
    write_sinks,
)
from vitkit.explain.analysis import patch_variance, sink_absorption, variance_rank
from vitkit.preprocess import Preprocess


def _layer(*heads):
    """One layer's attention (B=1, heads, T, T) from per-head row lists."""
    return torch.tensor([heads], dtype=torch.float32)


# ----------------------------------------------------------------------------- rollout
# Two layers over [cls, p1, p2]. Head means: M1 = [[.2,.4,.4],[0,1,0],[0,0,1]], M2 = [[0,1,0],[.5,.5,0],[0,0,1]].
# (M + I) / 2: A1 = [[.6,.2,.2],[0,1,0],[0,0,1]], A2 = [[.5,.5,0],[.25,.75,0],[0,0,1]].
# A2 @ A1 = [[.3,.6,.1],[.15,.8,.05],[0,0,1]], worked out by hand.
LAYER1 = _layer([[0.3, 0.3, 0.4], [0, 1, 0], [0, 0, 1]], [[0.1, 0.5, 0.4], [0, 1, 0], [0, 0, 1]])
LAYER2 = _layer([[0, 1, 0], [0.5, 0.5, 0], [0, 0, 1]], [[0, 1, 0], [0.5, 0.5, 0], [0, 0, 1]])


def test_rollout_equals_hand_computation():
    expected = torch.tensor([[0.3, 0.6, 0.1], [0.15, 0.8, 0.05], [0, 0, 1]])
    torch.testing.assert_close(rollout([LAYER1, LAYER2])[0], expected)
    torch.testing.assert_close(rollout_map([LAYER1, LAYER2], (1, 2), 1, "cls")[0], torch.tensor([[0.6, 0.1]]))
    # GAP models: the patch rows' mean, ([.8, .05] + [0, 1]) / 2.
    torch.testing.assert_close(rollout_map([LAYER1, LAYER2], (1, 2), 1, "mean")[0], torch.tensor([[0.4, 0.525]]))


def test_rollout_keeping_the_strongest_attention_by_hand():
    m = _layer([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.35, 0.4]])
    # keep 2 of 9: only .6 and .5 survive, both on the diagonal, so each row is the identity.
    torch.testing.assert_close(rollout([m], keep=2 / 9)[0], torch.eye(3))
    # keep 4 of 9: .6, .5, .4, .35; row 2 becomes [0, .35, .4 + 1] / 1.75 = [0, .2, .8].
    expected = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0.2, 0.8]])
    torch.testing.assert_close(rollout([m], keep=4 / 9)[0], expected)
    with pytest.raises(ValueError, match="keep=0"):
        rollout([m], keep=0)


def test_rollout_of_identity_and_uniform_attention_is_uniform_over_patches():
    grid, t = (3, 4), 13
    eye = torch.eye(t).expand(2, 3, t, t)
    # Identity attention mixes nothing: the class token receives nothing from any patch (a constant
    # map) and each patch only itself, so the patch rows' mean is 1/N everywhere.
    cls_map = rollout_map([eye] * 4, grid, 1, "cls")
    assert torch.all(cls_map == cls_map.flatten()[0])
    torch.testing.assert_close(rollout_map([eye] * 4, grid, 1, "mean"), torch.full((2, 3, 4), 1 / 12))
    # Uniform attention U: (U + I)/2 to the L-th power is (1 - 2^-L) U + 2^-L I.
    uniform = torch.full((2, 3, t, t), 1 / t)
    torch.testing.assert_close(rollout_map([uniform] * 3, grid, 1, "cls"), torch.full((2, 3, 4), (1 - 0.5**3) / t))


# ----------------------------------------------------------------------------- attention maps
def test_attention_maps_pick_the_class_row_or_the_mean_received():
    a = torch.rand(2, 3, 7, 7).softmax(dim=-1)  # B=2, heads=3, cls + 2x3 grid
    maps = attention_maps([a, a], (2, 3), 1, "cls")
    assert maps.shape == (2, 2, 3, 2, 3)
    torch.testing.assert_close(maps[1, 0, 2].flatten(), a[1, 2, 0, 1:])
    maps = attention_maps([a], (2, 3), 1, "mean")
    torch.testing.assert_close(maps[0, 0, 1].flatten(), a[0, 1, 1:, 1:].mean(dim=0))
    with pytest.raises(ValueError, match="needs a class token"):
        attention_maps([a[..., 1:, 1:]], (2, 3), 0, "cls")
    with pytest.raises(ValueError, match="does not match grid"):
        attention_maps([a], (3, 3), 1)


def test_explain_leaves_out_both_prefix_tokens_of_a_distilled_model():
    """Class token at 0, distillation token at 1: the maps are the class row over the patches 2:."""
    torch.manual_seed(0)
    model = vitkit.create_model("vit_tiny_28", depth=2, width=32, num_heads=2, mlp_dim=32, distill_token=True)
    model = perturbed(model)
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        logits, attn = model(images, return_attention=True)
    e = explain_batch(model, images)
    assert e.query == "cls" and e.attention_maps.shape == (2, 2, 2, 7, 7)
    torch.testing.assert_close(e.attention_maps[1, 0, 1].flatten(), attn[0][1, 1, 0, 2:])
    torch.testing.assert_close(e.logits, logits)
    mean = explain_batch(model, images, query="mean")
    torch.testing.assert_close(mean.attention_maps[0, 1, 0].flatten(), attn[1][0, 0, 2:, 2:].mean(dim=0))


def test_explain_leaves_registers_out_of_the_patch_grid():
    """Class token at 0, registers at 1-3: the maps are the class row over the patches 4:."""
    torch.manual_seed(0)
    model = perturbed(vitkit.create_model("vit_tiny_28", depth=2, width=32, num_heads=2, mlp_dim=32, register_tokens=3))
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        _, attn = model(images, return_attention=True)
    e = explain_batch(model, images)
    assert attn[0].shape[-1] == 4 + 49 and e.attention_maps.shape == (2, 2, 2, 7, 7)
    torch.testing.assert_close(e.attention_maps[1, 0, 1].flatten(), attn[0][1, 1, 0, 4:])
    torch.testing.assert_close(e.rollout[0].flatten(), rollout(attn)[0, 0, 4:])


# ----------------------------------------------------------------------------- attention distance
def _average_grid_distance(gh, gw, patch):
    """Mean distance between two patch centres of a gh x gw grid, pairs counted in both orders."""
    cells = [(r, c) for r in range(gh) for c in range(gw)]
    return sum(patch * math.hypot(r1 - r2, c1 - c2) for r1, c1 in cells for r2, c2 in cells) / len(cells) ** 2


@pytest.mark.parametrize("prefix", [0, 1])
def test_mean_attention_distance_of_identity_uniform_and_neighbour_attention(prefix):
    grid, patch, n = (3, 4), 4, 12
    t = prefix + n
    eye = torch.eye(t).expand(2, 3, t, t)
    assert torch.all(mean_attention_distance([eye, eye], grid, patch, prefix) == 0)
    uniform = torch.full((2, 3, t, t), 1 / t)  # the class token's share is left out and re-normalised
    expected = _average_grid_distance(3, 4, patch)
    torch.testing.assert_close(mean_attention_distance([uniform], grid, patch, prefix), torch.full((1, 3), expected))
    assert uniform_attention_distance(grid, patch) == pytest.approx(expected)
    # Every patch attends to the patch one row down (the last row to the first): mean (2*4 + 8) / 3 px.
    shift = torch.zeros(1, 1, t, t)
    for q in range(n):
        shift[0, 0, prefix + q, prefix + (q + 4) % n] = 1
    assert float(mean_attention_distance([shift], grid, patch, prefix)) == pytest.approx((4 * 8 + 8 * 4) / 12)


# ----------------------------------------------------------------------------- embeddings
def test_sincos2d_similarity_peaks_at_each_patch_own_position():
    grid = (5, 7)
    sim = posemb_similarity(sincos2d(grid, 64), grid)
    assert sim.shape == (5, 7, 5, 7)
    flat = sim.reshape(35, 35)
    assert torch.equal(flat.argmax(dim=1), torch.arange(35))
    torch.testing.assert_close(flat.diagonal(), torch.ones(35))
    torch.testing.assert_close(flat, flat.T)


def test_patch_filter_pca_finds_the_dominant_direction():
    torch.manual_seed(0)
    direction = torch.randn(1, 3, 4, 4)
    direction /= direction.norm()
    weight = torch.randn(64, 1, 1, 1) * 5 * direction + 0.01 * torch.randn(64, 3, 4, 4)
    pca = patch_filters_pca(weight, num_components=100)
    assert pca.components.shape == (48, 3, 4, 4)  # at most C*P*P components
    assert float(pca.explained_variance_ratio[0]) > 0.99
    assert abs(float((pca.components[0] * direction).sum())) == pytest.approx(1, abs=1e-3)
    # Against numpy: the same variance shares.
    flat = weight.reshape(64, -1).double().numpy()
    s = np.linalg.svd(flat - flat.mean(0), compute_uv=False) ** 2
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), s / s.sum(), rtol=1e-4, atol=1e-7)


def test_hybrid_model_has_no_patch_filter():
    model = vitkit.create_model("vit_tiny_28", depth=1, width=32, num_heads=2, mlp_dim=32, stem="conv")
    with pytest.raises(ValueError, match="no linear patch filter"):
        model_patch_filters(model)


# ----------------------------------------------------------------------------- every option
@pytest.mark.parametrize(
    "overrides",
    [
        dict(pool="gap", class_token=False, posemb="sincos2d"),
        dict(pool="gap", class_token=True, posemb="learned2d"),
        dict(posemb="none", stem="conv"),
        dict(image_size=(24, 32), in_channels=3, patch_size=8, posemb="learned"),
        dict(image_size=(28, 28), patch_size=8, dynamic_image_size=True),  # a 4x4 grid over a padded image
        dict(distill_token=True),  # two prefix tokens: class, distillation
        dict(distill_token=True, pool="gap", posemb="sincos2d"),
        dict(register_tokens=4),  # five prefix tokens: class, four registers
        dict(distill_token=True, register_tokens=2, pool="gap", class_token=True),
    ],
)
def test_report_for_every_pooling_posemb_stem_and_size(tmp_path, overrides):
    torch.manual_seed(0)
    model = vitkit.create_model("vit_tiny_28", depth=2, width=32, num_heads=2, mlp_dim=32, **overrides).eval()
    c = model.config
    images = torch.rand(3, c.in_channels, *c.image_size)
    e = explain_batch(model, images)
    assert e.attention_maps.shape == (3, 2, 2, *c.grid_size)
    assert e.query == ("cls" if c.pool == "cls" else "mean")
    assert torch.all(e.mean_attention_distance >= 0)
    written = write_report(model, images, tmp_path, per_image=2, num_components=6)
    assert len(written) == 2 * (2 + 4) and all(p.stat().st_size > 0 for p in written)
    posemb = json.loads((tmp_path / "posemb_similarity.json").read_text())
    assert ("not_applicable" in posemb) == (c.posemb == "none")
    filters = json.loads((tmp_path / "patch_filters.json").read_text())
    assert ("not_applicable" in filters) == (c.stem == "conv")


# ----------------------------------------------------------------------------- CLI
def _fashion_mnist_pngs(folder: Path, n: int) -> list[Path]:
    raw = gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz").read()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"fmnist_{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    return paths


@needs_fashion_mnist
def test_cli_writes_png_figures_of_the_expected_size(tmp_path):
    torch.manual_seed(0)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    model = vitkit.create_model("vit_tiny_28", depth=2, width=32, num_heads=2, mlp_dim=64, class_names=names)
    vitkit.save(model, tmp_path / "run" / "best")
    (tmp_path / "run" / "best" / "preprocess.json").write_text(json.dumps({"mean": [0.286], "std": [0.353]}))
    images = _fashion_mnist_pngs(tmp_path / "images", 5)
    out = tmp_path / "out"
    data = ["--data", "fashion-mnist", "--data-dir", str(FMNIST), "--num-images", "3"]
    assert (
        main(["explain", str(tmp_path / "run"), str(images[0]), str(tmp_path / "images"), *data, "--out", str(out)])
        == 0
    )
    # Layout: 1.5-inch panels at 100 dpi plus a 0.5-inch title band; the rest have fixed sizes.
    expected = {
        "attention_maps_00_fmnist_0.png": (3 * 150, 2 * 150 + 50),  # (heads + 1) x layers
        "attention_maps_05_fmnist_4.png": (3 * 150, 2 * 150 + 50),
        "attention_maps_07_test00001_Pullover.png": (3 * 150, 2 * 150 + 50),
        "rollout.png": (4 * 150, 8 * 150 + 50),  # one row per image, at most --per-image (8)
        "mean_attention_distance.png": (600, 450),
        "posemb_similarity.png": (600, 500),
        "patch_filters.png": (700, 500),
    }
    for name, size in expected.items():
        path = out / name
        assert path.stat().st_size > 5000, name  # a drawn figure, not an empty canvas
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == size, name
            assert np.asarray(img.convert("L")).std() > 10, name
        numbers = json.loads(path.with_suffix(".json").read_text())
        assert numbers
    maps = json.loads((out / "attention_maps_00_fmnist_0.json").read_text())
    assert maps["prediction"]["label"] in names and np.array(maps["maps"]).shape == (2, 2, 7, 7)
    distance = json.loads((out / "mean_attention_distance.json").read_text())
    assert distance["num_images"] == 9 and np.array(distance["distance"]).shape == (2, 2)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "missing"), "x.png", "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


def _saved_tiny(folder: Path) -> Path:
    torch.manual_seed(0)
    model = vitkit.create_model("vit_tiny_28", depth=1, width=16, num_heads=2, mlp_dim=32, num_classes=3)
    vitkit.save(perturbed(model), folder)
    Preprocess.for_model(model.config).save(folder)  # inference refuses a model without its preprocessing
    return folder


def test_cli_device_auto_is_resolved_like_every_other_command(tmp_path, capsys):
    """``--device auto`` means CUDA when present, else the CPU (runtime.resolve_device); it was
    passed to ``model.to`` as the string "auto" and ended in a traceback."""
    checkpoint = _saved_tiny(tmp_path / "ck")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["explain", str(checkpoint), str(image), "--out", str(out), "--device", "auto"]) == 0
    assert (out / "rollout.png").is_file()
    capsys.readouterr()
    assert main(["explain", str(checkpoint), str(image), "--out", str(out), "--device", "tpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--device 'tpu'" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- attention sinks
def test_sink_absorption_equals_hand_computation():
    """Token 2 is a sink after block 1: block 2's other queries (0 and 1) pay it .5 and .8 (head
    means), so it absorbs .65; block 1's output has no sink (0); the last block's is NaN."""
    first = _layer(*[[[1 / 3] * 3] * 3] * 2)
    second = _layer(
        [[0.2, 0.2, 0.6], [0.0, 0.4, 0.6], [0, 0, 1]], [[0.2, 0.4, 0.4], [0.2, 0.0, 1.0], [0, 0, 1]]
    )  # head means: [.2, .3, .5], [.1, .2, .8]
    chosen = torch.tensor([[[False, False, True], [False, False, False]]])  # (B=1, L=2, T=3)
    torch.testing.assert_close(sink_absorption([first, second], chosen)[0, 0], torch.tensor(0.65))
    chosen = torch.tensor([[[False, False, False], [False, True, False]]])
    out = sink_absorption([first, second], chosen)[0]
    assert out[0] == 0 and out[1].isnan()


def test_patch_variance_by_hand():
    # a 4x4 image of 2x2 patches: flat 0, flat 1, a checkerboard of 0/1 (variance .25), half 0/.5 (variance 1/16)
    image = torch.tensor(
        [[[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0], [1, 0, 0.5, 0.5]]], dtype=torch.float32
    )  # patch (1,1) is [[0, 0], [0.5, 0.5]]
    var = patch_variance(image[None], 2)
    torch.testing.assert_close(var[0], torch.tensor([0.0, 0.0, 0.25, 1 / 16]))
    # ranks: the flat pair ties (half of one other each), the checkerboard is above all three
    torch.testing.assert_close(variance_rank(var)[0], torch.tensor([1 / 6, 1 / 6, 1.0, 2 / 3]))


def _plant(model, token, amount=300.0):
    """Add ``amount`` to every channel of ``token`` after the first block: a planted high-norm token."""

    def hook(module, inputs, output):
        x, probs = output
        x = x.clone()
        x[:, token] += amount
        return x, probs

    return model.blocks[0].register_forward_hook(hook)


def test_sink_detector_flags_a_planted_token_and_reports_none_without():
    torch.manual_seed(0)
    model = perturbed(vitkit.create_model("vit_tiny_28", depth=3, width=32, num_heads=2, mlp_dim=64, register_tokens=2))
    images = torch.rand(2, 1, 28, 28)
    clean = find_sinks(model, images)
    assert not clean.is_sink.any() and torch.equal(clean.absorbed[:, :2], torch.zeros(2, 2))
    verdict = sink_verdict(clean)
    assert verdict.startswith("no sinks: no patch token's norm is over 10x") and "2 register(s)" in verdict
    # the norms, computed here block by block from the model's own modules
    with torch.no_grad():
        x, expected = model.embed(images), []
        for block in model.blocks:
            x, _ = block(x)
            expected.append(x.norm(dim=-1))
    torch.testing.assert_close(clean.norms, torch.stack(expected, dim=1))
    # planted on patch 10 (token 3 + 10: after the class token and two registers)
    handle = _plant(model, 3 + 10)
    try:
        planted = find_sinks(model, images)
    finally:
        handle.remove()
    assert planted.is_sink.nonzero()[:, 2].unique().tolist() == [10]
    assert planted.is_sink[:, 0].sum().item() == 2  # one per image after the first block
    assert planted.norms[0, 0, 13] > 300 * math.sqrt(32) * 0.9  # +300 in each of 32 channels
    assert sink_verdict(planted).startswith("sinks in 2 of 2 image(s): up to 1 patch token(s)")
    # a 4x threshold flags no ordinary token either: the planted one is far above every other
    assert find_sinks(model, images, ratio=4.0).is_sink.sum() == 0
    with pytest.raises(ValueError, match="must be above 1"):
        find_sinks(model, images, ratio=1.0)


def test_sink_report_lists_the_planted_patch(tmp_path):
    torch.manual_seed(0)
    model = perturbed(vitkit.create_model("vit_tiny_28", depth=2, width=32, num_heads=2, mlp_dim=64))
    images = torch.rand(3, 1, 28, 28)
    images[:, :, 4:8, 8:12] = 0.5  # patch (1, 2) is flat: variance 0, below every textured patch
    handle = _plant(model, 1 + 9)  # patch 9 = row 1, column 2
    try:
        written, verdict = write_sinks(model, images, tmp_path, names=["a.png", "b.png", "c.png"], per_image=2)
    finally:
        handle.remove()
    assert {p.name for p in written} == {
        "sinks.json",
        "sinks_00_a.png",
        "sinks_00_a.json",
        "sinks_01_b.png",
        "sinks_01_b.json",
    }
    with Image.open(tmp_path / "sinks_00_a.png") as img:
        assert img.size == (1350, 450)
    summary = json.loads((tmp_path / "sinks.json").read_text())
    assert summary["verdict"] == verdict and summary["images_with_sinks"] == 3 and summary["prefix_tokens"] == ["class"]
    (sink,) = summary["images"][0]["layers"][0]["over_threshold"]
    assert sink["kind"] == "patch" and (sink["row"], sink["column"]) == (1, 2) and sink["token"] == 10
    assert sink["variance"] == 0 and sink["variance_rank"] == 0 and sink["low_information"] is True
    assert "100% sit on patches flatter" in verdict


def test_cli_sinks_says_no_sinks_and_refuses_a_ratio_of_one(tmp_path, capsys):
    checkpoint = _saved_tiny(tmp_path / "ck")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["explain", str(checkpoint), str(image), "--out", str(out), "--sinks"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("sinks: no sinks: no patch token's norm is over 10x its layer's median in 1 image(s)")
    assert (out / "sinks_00_a.png").is_file() and json.loads((out / "sinks.json").read_text())["images_with_sinks"] == 0
    assert main(["explain", str(checkpoint), str(image), "--out", str(out), "--sinks", "--sink-ratio", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--sink-ratio 1.0 must be above 1" in err and len(err.splitlines()) == 1


def test_grad_rollout_equals_a_hand_computation_on_one_layer_and_one_head():
    """Chefer et al.'s relevance on a 1-layer, 1-head ViT, computed from the weights by a forward
    written out here (patches, class token, position, pre-norm attention and MLP, final norm,
    head): with the attention matrix A as the variable, R = I + (dy/dA * A)+, and the map is
    the class token's row over the patches."""
    import torch.nn.functional as F

    from vitkit import create_model
    from vitkit.explain.analysis import grad_rollout_map

    torch.manual_seed(0)
    model = perturbed(
        create_model(
            "vit_tiny_28", depth=1, width=8, num_heads=1, mlp_dim=16, patch_size=14, num_classes=3, in_channels=3
        ),
        scale=0.5,
    )
    x = torch.randn(1, 3, 28, 28)
    w = {k: v.detach() for k, v in model.state_dict().items()}
    eps = model.config.layer_norm_eps
    ln = lambda t, name: F.layer_norm(t, (8,), w[f"{name}.weight"], w[f"{name}.bias"], eps)  # noqa: E731
    tokens = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    tokens = torch.cat([w["cls_token"], tokens + w["pos_embed.weight"][:, 1:]], dim=1)
    tokens[:, :1] += w["pos_embed.weight"][:, :1]
    h = ln(tokens, "blocks.0.norm1")
    q, k, v = (h @ w["blocks.0.attn.qkv.weight"].T + w["blocks.0.attn.qkv.bias"]).split(8, dim=-1)
    attention = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1).requires_grad_()  # (1, 5, 5)

    def logits_from(a: torch.Tensor) -> torch.Tensor:
        y = tokens + (a @ v) @ w["blocks.0.attn.proj.weight"].T + w["blocks.0.attn.proj.bias"]
        m = F.gelu(ln(y, "blocks.0.norm2") @ w["blocks.0.mlp.fc1.weight"].T + w["blocks.0.mlp.fc1.bias"])
        y = y + m @ w["blocks.0.mlp.fc2.weight"].T + w["blocks.0.mlp.fc2.bias"]
        return ln(y, "norm")[:, 0] @ w["head.weight"].T + w["head.bias"]

    logits = logits_from(attention)
    target = int(logits.argmax())
    (grad,) = torch.autograd.grad(logits[0, target], attention)
    relevance = torch.eye(5) + (grad * attention).clamp(min=0)
    maps, ours, classes = grad_rollout_map(model, x)
    torch.testing.assert_close(ours, logits.detach(), atol=1e-5, rtol=0)  # the same model
    assert classes.tolist() == [target]
    torch.testing.assert_close(maps[0], relevance[0, 0, 1:].detach().reshape(2, 2), atol=1e-5, rtol=0)
    other = (target + 1) % 3  # another class explains differently
    assert not torch.allclose(grad_rollout_map(model, x, torch.tensor([other]))[0], maps)


def test_explain_grad_rollout_for_a_chosen_class_and_a_wrong_one(tmp_path, capsys):
    """``--method grad-rollout --class C`` writes grad_rollout.png/.json for class C on every image
    (each image's prediction with ``pred``); a class the model does not have is one line, and
    nothing is written."""
    import json

    from vitkit.explain.analysis import grad_rollout_map

    checkpoint = _saved_tiny(tmp_path / "ck")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert (
        main(["explain", str(checkpoint), str(image), "--out", str(out), "--method", "grad-rollout", "--class", "2"])
        == 0
    )
    (record,) = json.loads((out / "grad_rollout.json").read_text())["images"]
    assert record["class"] == "2" and (out / "grad_rollout.png").is_file()
    model = vitkit.load(checkpoint)
    x = Preprocess.for_model(model.config).files([image])
    expected, _, _ = grad_rollout_map(model, x, torch.tensor([2]))
    np.testing.assert_allclose(record["map"], expected[0].numpy(), atol=1e-4)
    capsys.readouterr()
    assert (
        main(
            [
                "explain",
                str(checkpoint),
                str(image),
                "--out",
                str(tmp_path / "no"),
                "--method",
                "grad-rollout",
                "--class",
                "cat",
            ]
        )
        == 1
    )
    assert capsys.readouterr().err.strip() == (
        "vitkit explain: error: --class 'cat' is not one of the model's classes (0-2), an index or pred"
    )
    assert not (tmp_path / "no").exists()


def test_deletion_and_insertion_curves_equal_a_hand_computation():
    """A model whose logit reads one patch: ranked first, that patch takes the class's probability
    from sigmoid(2s) to 1/2 at the first deletion step and gives it back at the first insertion
    step; ranked last, nothing moves until the last step. Areas by the trapezoid rule."""
    import math
    from types import SimpleNamespace

    from vitkit.explain.analysis import deletion_insertion

    class OnePatch(torch.nn.Module):
        config = SimpleNamespace(patch_size=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[:, 0, 0:2, 2:4].sum(dim=(1, 2))  # the top-right patch of a 2x2 grid
            return torch.stack([s, -s], dim=1)

    x = torch.zeros(1, 1, 4, 4)
    x[:, :, 0:2, 2:4] = 0.25  # s = 1: p(class 0) = sigmoid(2)
    full = 1 / (1 + math.exp(-2))
    first = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # the read patch ranked first
    last = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # ... and last (ties keep the reading order)
    f = deletion_insertion(OnePatch(), x, first, torch.tensor([0]), steps=4)
    torch.testing.assert_close(f.fraction, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(f.deletion[0], torch.tensor([full, 0.5, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(f.insertion[0], torch.tensor([0.5, full, full, full, full]))
    assert math.isclose(float(f.deletion_auc[0]), 0.125 * (full + 0.5) + 0.5 * 0.75, rel_tol=1e-6)
    g = deletion_insertion(OnePatch(), x, last, torch.tensor([0]), steps=4)
    torch.testing.assert_close(g.deletion[0], torch.tensor([full, full, full, full, 0.5]))
    assert float(g.deletion_auc[0]) > float(f.deletion_auc[0]) and float(g.insertion_auc[0]) < float(f.insertion_auc[0])


def test_explain_faithfulness_scores_each_method_against_random(tmp_path, capsys):
    """``--faithfulness`` writes faithfulness.json with rollout's, grad-rollout's and random's
    areas, equal to deletion_insertion on the same images, and prints them."""
    import json

    from vitkit.explain.analysis import deletion_insertion, grad_rollout_map

    checkpoint = _saved_tiny(tmp_path / "ck")
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(files[-1])
    out = tmp_path / "out"
    assert (
        main(["explain", str(checkpoint), *map(str, files), "--out", str(out), "--faithfulness", "--steps", "7"]) == 0
    )
    printed = capsys.readouterr().out
    record = json.loads((out / "faithfulness.json").read_text())
    assert set(record["summary"]) == {"rollout", "grad-rollout", "random"} and record["images"] == 3
    assert "grad-rollout" in printed and (out / "faithfulness.png").is_file()
    model = vitkit.load(checkpoint).eval()
    x = Preprocess.for_model(model.config).files(files)
    classes = model(x).argmax(dim=1)
    f = deletion_insertion(model, x, grad_rollout_map(model, x, classes)[0], classes, steps=7)
    assert record["summary"]["grad-rollout"]["deletion_auc"] == pytest.approx(float(f.deletion_auc.mean()), abs=1e-4)
    assert record["summary"]["grad-rollout"]["insertion_auc"] == pytest.approx(float(f.insertion_auc.mean()), abs=1e-4)
