"""Few-shot probing, features and embeddings, checked against scikit-learn, timm and hand rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, perturbed, tiny_config, write_digits

from vitkit import VisionTransformer
from vitkit.cli import main
from vitkit.config import get_config
from vitkit.errors import InputError
from vitkit.features import Embeddings, features
from vitkit.probe import knn, ridge_fit, standardize, targets
from vitkit.train import train


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as 64-dim features: real data, and a known-good linear problem."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float64), torch.tensor(d.target)


# ============================================================================ the ridge probe
def test_ridge_probe_equals_sklearn_ridge_on_the_same_features_and_penalty():
    from sklearn.linear_model import Ridge

    x, y = _digits()
    train, test = slice(0, 200), slice(1000, None)
    l2 = 2.0**-2
    probe = ridge_fit(x[train], y[train], 10, l2_grid=[l2])
    xs, mean, scale = standardize(x[train])
    reference = Ridge(alpha=l2 * 200, fit_intercept=True).fit(xs.numpy(), targets(y[train], 10).numpy())
    x_test = ((x[test] - mean) / scale).numpy()
    assert np.allclose(probe.scores(x[test]).numpy(), reference.predict(x_test), atol=1e-8)
    ours = probe.accuracy(x[test], y[test])
    theirs = float((reference.predict(x_test).argmax(1) == y[test].numpy()).mean())
    assert ours == theirs and ours > 0.7  # 200 training images of 10 classes; chance is 0.1


def test_leave_one_out_equals_refitting_without_each_image():
    from sklearn.linear_model import Ridge

    x, y = _digits()
    x, y = x[:60], y[:60]
    for l2 in (2.0**-4, 2.0**4):
        probe = ridge_fit(x, y, 10, l2_grid=[l2])
        xs, _, _ = standardize(x)
        t = targets(y, 10).numpy()
        hits, errors = [], []
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            # the same penalty per image: lam = l2 * n, where n is the full k-shot set
            model = Ridge(alpha=l2 * len(x), fit_intercept=True).fit(xs.numpy()[keep], t[keep])
            pred = model.predict(xs.numpy()[i : i + 1])[0]
            hits.append(pred.argmax() == int(y[i]))
            errors.append(((pred - t[i]) ** 2).mean())
        assert probe.loo_accuracy[l2] == pytest.approx(float(np.mean(hits)), abs=1e-12)
        assert probe.loo_error[l2] == pytest.approx(float(np.mean(errors)), rel=1e-6)


def test_the_penalty_is_the_best_by_leave_one_out_then_by_squared_error():
    x, y = _digits()
    for shots in (1, 5):
        index = torch.cat([(y == c).nonzero()[:shots, 0] for c in range(10)])
        probe = ridge_fit(x[index], y[index], 10)
        best = max(probe.loo_accuracy.values())
        tied = [l2 for l2, acc in probe.loo_accuracy.items() if acc == best]
        assert probe.l2 == min(tied, key=probe.loo_error.get)
        if shots == 1:  # leaving the only image of a class out: LOO accuracy is 0 everywhere
            assert best == 0.0 and len(tied) == len(probe.loo_accuracy)


def test_knn_equals_sklearn_with_the_same_rule():
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _digits()
    train_x, train_y, test_x = x[:300], y[:300], x[1000:1300]
    ours = knn(train_x, train_y, test_x, 10, k=20, temperature=0.07)
    mean = train_x.mean(0)

    def weights(distances):  # cosine distance = 1 - similarity
        return np.exp((1 - distances) / 0.07)

    reference = KNeighborsClassifier(20, weights=weights, metric="cosine").fit((train_x - mean).numpy(), train_y)
    assert (ours.numpy() == reference.predict((test_x - mean).numpy())).mean() > 0.99  # ties may differ


def test_more_shots_than_a_class_has_is_a_one_line_error(digits_run, capsys):
    assert main(["probe", str(digits_run), "--data", "digits", "--shots", "1,500"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shots 500" in err and "give at most" in err


# ============================================================================ the probe command
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("probe") / "digits"
    # pooled by the mean of the patch tokens, with no class token
    train(tiny_config(run, epochs=3, model_overrides=TINY | dict(class_token=False)), progress=False)
    return run


def test_probe_command_writes_a_table_and_reuses_the_cached_features(digits_run, tmp_path, capsys):
    args = ["probe", str(digits_run), "--shots", "1,5", "--seeds", "2", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert "computing the representation" in first
    assert main([*args, "--out", str(tmp_path / "b"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "a" / "probe.json").read_text())["summary"] == record["summary"]
    assert [r["shots"] for r in record["summary"]] == [1, 5] and len(record["runs"]) == 4
    assert record["knn"]["k"] == 20 and record["ridge"]["chosen_by"] == "LOO"
    five = record["summary"][1]
    assert 0.3 < five["ridge_mean"] <= 1.0  # a trained model's features beat chance (10 %) by far
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2  # train and test, computed once


def test_probe_and_embed_take_classes_the_model_never_saw(digits_run, tmp_path, capsys):
    """A few-shot probe is for new classes (the paper's transfer, sec. 4): the images keep their own
    classes instead of being refused as unknown to the model's head (`probe RUN --data OTHER` failed)."""
    folder = write_digits(tmp_path / "new", per_class=12, classes=3)
    for c, name in enumerate(["circle", "stroke", "hook"]):
        (folder / str(c)).rename(folder / name)
    assert main(["probe", str(digits_run), "--data", str(folder), "--shots", "1,5", "--out", str(tmp_path / "p")]) == 0
    assert "circle" not in capsys.readouterr().err
    record = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert [r["shots"] for r in record["summary"]] == [1, 5]
    out = tmp_path / "e.safetensors"
    assert main(["embed", str(digits_run), "--data", str(folder), "--split", "all", "--out", str(out)]) == 0
    embeddings = Embeddings.load(out)
    assert embeddings.class_names == ["circle", "hook", "stroke"] and len(embeddings.names) == 36


# ============================================================================ features
def _model(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = get_config("vit_tiny_28", width=32, depth=3, num_heads=2, mlp_dim=64, in_channels=1, num_classes=4, **kw)
    return perturbed(VisionTransformer(cfg))


def test_last_intermediate_with_norm_equals_forward_features():
    model = _model()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, states = model.forward_intermediates(x, norm=True, output_fmt="NLC", return_prefix_tokens=True)
        tokens, _ = model.forward_features(x)
        patches, prefix = states[-1]
    assert len(states) == 3
    assert torch.equal(final, tokens)
    assert torch.allclose(torch.cat([prefix, patches], dim=1), tokens, atol=1e-6)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 7, 7)] * 2  # NCHW maps of the 7x7 grid


def test_forward_intermediates_agree_with_timm_on_the_same_weights():
    timm = pytest.importorskip("timm")
    from vitkit.interop import from_timm

    torch.manual_seed(0)
    reference = perturbed(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=64))
    model = from_timm(reference).eval()
    x = torch.randn(2, 3, 64, 64)
    for kw in (dict(indices=2), dict(indices=[0, -1], norm=True), dict(indices=[1], output_fmt="NLC")):
        with torch.no_grad():
            theirs = reference.forward_intermediates(x, intermediates_only=True, **kw)
            ours = model.forward_intermediates(x, intermediates_only=True, **kw)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_features_pool_by_layer_and_refuse_cls_without_a_class_token():
    model = _model()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        tokens, _ = model.forward_features(x)
        assert torch.equal(features(model, x), model.forward_head(tokens, pre_logits=True))
        assert features(model, x, layer=1, pool="tokens").shape == (3, 50, 32)
        assert features(model, x, layer=1, pool="gap").shape == (3, 32)
        assert torch.equal(features(model, x, layer=-1, pool="cls"), features(model, x, layer=2, pool="tokens")[:, 0])
    gap = _model(pool="gap", class_token=False)
    with pytest.raises(InputError, match="use --pool gap"):
        features(gap, x, layer=-1, pool="cls")
    with pytest.raises(InputError, match="blocks 0 to 2"):
        features(model, x, layer=3)


def test_distilled_model_keeps_both_prefix_tokens_out_of_the_patch_grid():
    model = _model(distill_token=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, states = model.forward_intermediates(x, norm=True, output_fmt="NLC", return_prefix_tokens=True)
        tokens, _ = model.forward_features(x)
        patches, prefix = states[-1]
        assert prefix.shape == (2, 2, 32) and patches.shape == (2, 49, 32)  # class and distillation tokens
        assert torch.allclose(torch.cat([prefix, patches], dim=1), tokens, atol=1e-6)
        (grid,) = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert grid.shape == (2, 32, 7, 7)
        whole = features(model, x, layer=-1, pool="tokens")
        (raw,) = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
        assert whole.shape == (2, 51, 32) and torch.equal(whole[:, 2:], raw)
        assert torch.equal(features(model, x, layer=-1, pool="cls"), whole[:, 0])
        assert torch.allclose(features(model, x, layer=-1, pool="gap"), raw.mean(1), atol=1e-6)
        assert torch.equal(features(model, x), tokens[:, 0])  # the class representation, not the mean


@pytest.mark.parametrize("kw, prefix", [(dict(register_tokens=3), 4), (dict(distill_token=True, register_tokens=2), 4)])
def test_register_tokens_stay_out_of_the_patch_grid(kw, prefix):
    """Registers are prefix tokens (after class and distillation), as in timm: not in the grid,
    not in the patch mean, and first in --pool tokens after the class (and distillation) token."""
    model = _model(**kw)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        tokens, _ = model.forward_features(x)
        _, states = model.forward_intermediates(x, norm=True, output_fmt="NLC", return_prefix_tokens=True)
        patches, prefixes = states[-1]
        assert prefixes.shape == (2, prefix, 32) and patches.shape == (2, 49, 32)
        assert torch.allclose(torch.cat([prefixes, patches], dim=1), tokens, atol=1e-6)
        whole = features(model, x, layer=-1, pool="tokens")
        (raw,) = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
        assert whole.shape == (2, prefix + 49, 32) and torch.equal(whole[:, prefix:], raw)
        assert torch.allclose(features(model, x, layer=-1, pool="gap"), whole[:, prefix:].mean(1), atol=1e-6)
        assert torch.equal(features(model, x), tokens[:, 0])


# ============================================================================ embed
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_embed_reads_back_what_it_wrote(digits_run, tmp_path, suffix):
    out = tmp_path / f"emb{suffix}"
    assert (
        main(["embed", str(digits_run), "--data", "digits", "--layer", "-1", "--pool", "gap", "--out", str(out)]) == 0
    )
    back = Embeddings.load(out)
    from vitkit.data import load_dataset

    test = load_dataset("digits", "test")
    assert back.features.shape == (len(test), 64)
    assert torch.equal(back.labels, test.labels)
    assert back.names[0] == "digits/test/000000" and len(back.names) == len(test)
    assert back.class_names == test.class_names and back.info["layer"] == "-1"
    assert back.info["prefix_tokens"] == "0"  # the digits run pools by GAP, with no class token


def test_embed_a_folder_names_each_image_by_its_file(digits_run, tmp_path):
    from PIL import Image

    for c, shade in (("0", 30), ("7", 220)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), shade + i, dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    out = tmp_path / "folder.safetensors"
    argv = ["embed", str(digits_run), "--data", str(tmp_path / "imgs"), "--split", "all", "--classes", "7"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    back = Embeddings.load(out)
    assert back.names == [str(tmp_path / "imgs" / "7" / f"{i}.png") for i in range(2)]
    assert back.labels.tolist() == [0, 0] and back.class_names == ["7"]


def test_embed_files_and_the_errors_it_names(digits_run, tmp_path, capsys):
    from PIL import Image

    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(files[-1])
    out = tmp_path / "files.npz"
    assert main(["embed", str(digits_run), *map(str, files), "--out", str(out)]) == 0
    back = Embeddings.load(out)
    assert back.names == [str(f) for f in files] and back.labels.tolist() == [-1, -1, -1]
    assert back.info["layer"] == "representation"
    capsys.readouterr()
    assert main(["embed", str(digits_run), str(files[0]), "--layer", "0", "--pool", "cls", "--out", str(out)]) == 1
    assert "use --pool gap" in capsys.readouterr().err  # this model has no class token
    assert main(["embed", str(digits_run), str(files[0]), "--out", str(tmp_path / "x.csv")]) == 1
    assert ".safetensors or .npz" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_embeddings_refuse_mismatched_lengths(tmp_path):
    with pytest.raises(InputError, match="3 features, 2 labels"):
        Embeddings(torch.zeros(3, 4), torch.zeros(2), ["a", "b", "c"]).save(tmp_path / "e.npz")
    assert not (tmp_path / "e.npz").exists()
