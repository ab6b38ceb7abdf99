"""``vitkit convert``: format detection, resampling, head replacement, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from conftest import perturbed
from safetensors.torch import save_file

import vitkit
from vitkit.cli import main

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return perturbed(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1))


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"vitkit {argv[0]}: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_convert_timm_file_with_new_size_and_head(tmp_path, capsys, timm_model):
    weights = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, weights)
    assert main(["convert", str(weights), str(tmp_path / "same")]) == 0
    assert "(timm)" in capsys.readouterr().out
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (vitkit.load(tmp_path / "same")(x) - timm_model(x)).abs().max().item() < 1e-4

    torch.save(timm_model.state_dict(), tmp_path / "vit_tiny.pth")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "vit_tiny.pth"),
                str(tmp_path / "big"),
                "--image-size",
                "384",
                "--num-classes",
                "10",
            ]
        )
        == 0
    )
    model = vitkit.load(tmp_path / "big")
    assert model.config.image_size == (384, 384) and model.config.num_classes == 10
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 10)


def test_convert_npz_and_hf_folder(tmp_path, capsys):
    from test_interop_jax import flax_arrays

    np.savez(tmp_path / "vit.npz", **flax_arrays(pre_logits=True))
    assert main(["convert", str(tmp_path / "vit.npz"), str(tmp_path / "from_jax")]) == 0
    assert "(jax)" in capsys.readouterr().out
    assert vitkit.load(tmp_path / "from_jax").config.representation_size == 40

    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "from_hf"), "--from", "hf"]) == 0
    assert "(hf)" in capsys.readouterr().out
    assert vitkit.load(tmp_path / "from_hf").config.layer_norm_eps == 1e-12


def test_convert_timm_hub_folder(tmp_path, capsys, timm_model):
    """timm's own folders: config.json names the architecture (with a pretrained tag) beside the weights."""
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224.augreg_in1k"}))
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, tmp_path / "timm" / "model.safetensors")
    assert main(["convert", str(tmp_path / "timm"), str(tmp_path / "out")]) == 0
    assert "(timm)" in capsys.readouterr().out
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (vitkit.load(tmp_path / "out")(x) - timm_model(x)).abs().max().item() < 1e-4
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["convert", str(tmp_path / "timm"), str(tmp_path / "file")], "is a file")


class NotATensor:
    pass


def test_bad_input_gives_one_line_errors(tmp_path, capsys, timm_model):
    state = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    torch.save(state, tmp_path / "good.pth")
    out = str(tmp_path / "out")

    (tmp_path / "cut.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:5000])
    one_line_error(capsys, ["convert", str(tmp_path / "cut.pth"), out], "not a readable PyTorch file", "truncated")

    save_file(state, tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes()[:5000])
    one_line_error(capsys, ["convert", str(tmp_path / "cut.safetensors"), out], "not a readable safetensors file")

    np.savez(tmp_path / "w.npz", a=np.zeros((100, 100)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "w.npz").read_bytes()[:3000])
    one_line_error(capsys, ["convert", str(tmp_path / "cut.npz"), out], "not a readable .npz archive")

    torch.save({"weights": NotATensor()}, tmp_path / "pickle.pth")
    one_line_error(capsys, ["convert", str(tmp_path / "pickle.pth"), out], "holds Python objects", "weights_only")

    one_line_error(
        capsys,
        ["convert", str(tmp_path / "good.pth"), out, "--from", "hf"],
        "--from hf expects a Hugging Face folder",
        "is a .pth file",
    )
    one_line_error(capsys, ["convert", str(tmp_path / "good.pth"), out, "--from", "jax"], "expects a Google")

    state["blocks.0.attn.proj.weight"] = state["blocks.0.attn.proj.weight"][:, :10]
    torch.save(state, tmp_path / "mismatch.pth")
    one_line_error(
        capsys,
        ["convert", str(tmp_path / "mismatch.pth"), out],
        "blocks.0.attn.proj.weight: expected (192, 192), found (192, 10)",
    )

    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(capsys, ["convert", str(tmp_path / "notes.txt"), out], "cannot tell the format")
    one_line_error(capsys, ["convert", str(tmp_path / "missing.pth"), out], "missing.pth does not exist")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    one_line_error(capsys, ["convert", str(tmp_path / "folder"), out], "no model.safetensors or pytorch_model.bin")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- what convert writes, on real images
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A grey ViT trained for seconds on scikit-learn's 8x8 digits: class token (every format
    has one), preprocess.json with the digits' mean and std."""
    from conftest import TINY, tiny_config

    from vitkit.train import train

    out = tmp_path_factory.mktemp("convert") / "run"
    overrides = TINY | {"pool": "cls"}
    cfg = dict(epochs=4, crop_padding=0, threads=2, warmup_epochs=0.5, precision="fp32", model_overrides=overrides)
    train(tiny_config(out, **cfg), progress=False)
    return out


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """300 real test digits as grey PNG files."""
    from PIL import Image

    from vitkit.data import load_dataset

    folder = tmp_path_factory.mktemp("digit_pngs")
    ds = load_dataset("digits", "test")
    for i in range(300):
        Image.fromarray(ds.images[i, 0].numpy(), "L").save(folder / f"{i:03d}.png")
    return sorted(folder.iterdir())


def answers(checkpoint, files, **kw):
    from vitkit.evaluate import load_for_inference, predict_files

    return predict_files(load_for_inference(checkpoint, **kw), files, top_k=3)


def test_a_run_converts_to_a_complete_vitkit_folder_that_answers_as_the_run(tmp_path, capsys, digits_run, digit_pngs):
    """The issue's case: the copy keeps preprocess.json and gives the same answers on 300 real
    images, to the last digit of every probability."""
    assert main(["convert", str(digits_run), str(tmp_path / "copy")]) == 0
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocess.json",
    ]
    assert (tmp_path / "copy" / "preprocess.json").read_text() == (digits_run / "best" / "preprocess.json").read_text()
    assert answers(tmp_path / "copy", digit_pngs) == answers(digits_run, digit_pngs)
    # the copy converts again: convert reads what convert wrote
    assert main(["convert", str(tmp_path / "copy"), str(tmp_path / "again"), "--image-size", "16"]) == 0
    assert main(["convert", str(tmp_path / "copy"), str(tmp_path / "five"), "--num-classes", "5"]) == 0
    assert json.loads((tmp_path / "five" / "preprocess.json").read_text())["class_names"] == list("01234")
    pre = json.loads((tmp_path / "again" / "preprocess.json").read_text())
    assert (
        pre["image_size"] == [16, 16]
        and pre["mean"] == json.loads((tmp_path / "copy" / "preprocess.json").read_text())["mean"]
    )


def test_an_output_name_that_looks_like_a_file_is_refused(tmp_path, capsys, digits_run):
    dst = tmp_path / "main_copy.safetensors"
    err = one_line_error(capsys, ["convert", str(digits_run), str(dst)])
    assert err == (
        f"vitkit convert: error: {dst} looks like a file name (.safetensors), but convert writes a folder: give a "
        f"folder name (e.g. {tmp_path / 'main_copy'}); for a timm state dict file use --to timm, whose folder holds "
        "model.safetensors"
    )
    for name in ("m.pth", "m.bin", "m.onnx", "m.npz"):
        one_line_error(capsys, ["convert", str(digits_run), str(tmp_path / name), "--to", "timm"], "looks like a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a folder convert did not write is never replaced (a run folder, above all)
    one_line_error(
        capsys, ["convert", str(digits_run / "best"), str(digits_run)], "already holds files convert did not write"
    )
    assert (digits_run / "train_config.json").is_file()


def test_hf_folder_works_in_transformers_pipeline_on_real_grey_images(tmp_path, capsys, digits_run, digit_pngs):
    """pipeline gives the grey model RGB images: the luma-weighted kernel makes them the same
    input, so it agrees with `vitkit predict` on at least 299 of 300 real test digits."""
    transformers = pytest.importorskip("transformers")
    assert main(["convert", str(digits_run), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert f"pipeline('image-classification', model='{tmp_path / 'hf'}')" in capsys.readouterr().out
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    pre = json.loads((digits_run / "best" / "preprocess.json").read_text())
    assert processor["image_mean"] == pre["mean"] * 3 and processor["image_std"] == pre["std"] * 3
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["num_channels"] == 3 and config["id2label"]["7"] == "7" and config["label2id"]["7"] == 7
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"), device="cpu")
    theirs = [r[0]["label"] for r in pipe([str(f) for f in digit_pngs], top_k=1)]
    ours = [r["predictions"][0]["class"] for r in answers(digits_run, digit_pngs)]
    assert len(set(ours)) >= 5  # a model that answers one class for everything would agree trivially
    assert sum(a == b for a, b in zip(ours, theirs, strict=True)) >= 299
    # on colour pixels the RGB kernel computes what the grey model computes on Pillow's luma of them
    rgb = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(1, keepdim=True)
    m, s = pre["mean"][0], pre["std"][0]
    hf_model = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        expected = vitkit.load(digits_run / "best")((luma - m) / s)
        assert torch.allclose(hf_model(pixel_values=(rgb - m) / s).logits, expected, atol=1e-5, rtol=0)
    # and vitkit reads the folder back with its preprocessing: the same answers
    back = answers(tmp_path / "hf", digit_pngs)
    assert [r["predictions"][0]["class"] for r in back] == ours


def test_what_a_format_cannot_express_is_refused(tmp_path, capsys, digits_run):
    """A zero border (Preprocess pad) has no place in ViTImageProcessor or timm's pretrained_cfg;
    a conv stem none in either model: refused, naming the format that keeps it."""
    import shutil

    padded = tmp_path / "padded"
    shutil.copytree(digits_run / "best", padded)
    pre = json.loads((padded / "preprocess.json").read_text())
    model = vitkit.load(padded)
    vitkit.save(vitkit.checkpoint.adapt(model, image_size=12), padded)
    (padded / "preprocess.json").write_text(json.dumps(pre | {"pad": 2}))
    err = one_line_error(capsys, ["convert", str(padded), str(tmp_path / "hf"), "--to", "hf"])
    assert err == (
        "vitkit convert: error: Hugging Face's ViTImageProcessor cannot add the 2-pixel zero border this model's "
        "preprocess.json asks for (pad); --to vitkit keeps it"
    )
    one_line_error(
        capsys,
        ["convert", str(padded), str(tmp_path / "timm"), "--to", "timm"],
        "timm's pretrained_cfg cannot add the 2-pixel zero border",
        "--to vitkit keeps it",
    )
    cropped = tmp_path / "cropped"
    shutil.copytree(digits_run / "best", cropped)
    (cropped / "preprocess.json").write_text(json.dumps(pre | {"fit": "crop", "crop_fraction": 0.875}))
    err = one_line_error(capsys, ["convert", str(cropped), str(tmp_path / "hf"), "--to", "hf"])
    assert err == (  # why: test_interop_hf.py's test_hf_processors_cut_the_centre_a_pixel_off_vitkits...
        "vitkit convert: error: Hugging Face's image processors cut the centre one pixel off this model's rule "
        "(preprocess.json fit='crop') on about one photo in four, which changes answers; --to timm keeps that rule "
        "exactly, --to vitkit too (or train with --fit stretch, which Hugging Face's processor repeats)"
    )
    assert main(["convert", str(cropped), str(tmp_path / "timm"), "--to", "timm"]) == 0  # timm's own eval rule
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["crop_mode"] == "center" and cfg["crop_pct"] == 0.875
    shutil.rmtree(tmp_path / "timm")
    wide = tmp_path / "wide"  # a non-square crop: timm's ResizeKeepRatio rounds the long side, vitkit truncates
    vitkit.save(vitkit.checkpoint.adapt(model, image_size=(8, 12)), wide)
    (wide / "preprocess.json").write_text(json.dumps(pre | {"image_size": [8, 12], "fit": "crop"}))
    one_line_error(
        capsys,
        ["convert", str(wide), str(tmp_path / "timm"), "--to", "timm"],
        "rounds the longer side of a non-square 8x12 centre crop",
        "--to vitkit keeps it",
    )
    gap = tmp_path / "gap"
    vitkit.save(vitkit.create_model("vit_tiny_28", depth=1, pool="gap", class_token=False), gap)
    one_line_error(
        capsys,
        ["convert", str(gap), str(tmp_path / "hf"), "--to", "hf"],
        "classifies the class token",
        "(convert --to timm or --to vitkit keeps it)",
    )
    stem = tmp_path / "stem"
    vitkit.save(vitkit.create_model("vit_tiny_28", depth=1, stem="conv", image_size=32), stem)
    one_line_error(
        capsys,
        ["convert", str(stem), str(tmp_path / "timm"), "--to", "timm"],
        "timm's VisionTransformer has no convolutional stem",
        "(convert --to vitkit keeps it)",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cropped",
        "gap",
        "padded",
        "stem",
        "wide",
    ]  # none half-written


def test_timm_folder_loads_in_timm_with_the_printed_call(tmp_path, capsys, digits_run, digit_pngs):
    from vitkit.evaluate import load_for_inference

    assert main(["convert", str(digits_run), str(tmp_path / "timm"), "--to", "timm"]) == 0
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    name, args, cfg = config["architecture"], config["model_args"], config["pretrained_cfg"]
    assert name in timm.list_models() and config["label_names"] == [str(i) for i in range(10)]
    overlay = {"file": str(tmp_path / "timm" / "model.safetensors")} | {
        k: cfg[k] for k in ("num_classes", "input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    }
    call = f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict("
    call += ", ".join(f"{k}={v!r}" for k, v in overlay.items()) + ")"
    assert call + "".join(f", {k}={v!r}" for k, v in args.items()) + ")" in out  # what it prints is what works
    classifier = load_for_inference(digits_run)
    x = classifier.preprocess.files(digit_pngs)
    with torch.no_grad():
        expected = classifier.model(x)
        from_name = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **args).eval()
        from_folder = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
        assert torch.allclose(from_name(x), expected, atol=1e-5, rtol=0)
        assert torch.allclose(from_folder(x), expected, atol=1e-5, rtol=0)
    data = timm.data.resolve_data_config({}, model=from_folder)  # the preprocessing travels in pretrained_cfg
    pre = classifier.preprocess
    assert data["input_size"] == (1, 8, 8) and list(data["mean"]) == list(pre.mean) and data["crop_pct"] == 1.0
    assert answers(tmp_path / "timm", digit_pngs) == answers(digits_run, digit_pngs)  # vitkit reads it back


def test_timm_name_is_always_a_name_timm_knows():
    for kw in (dict(), dict(patch_size=4, width=192, num_heads=3), dict(pool="gap", class_token=False)):
        config = vitkit.create_model("vit_tiny_28", depth=1, **kw).config
        assert timm.is_model(vitkit.interop.timm_name(config)), config
    assert vitkit.interop.timm_name(vitkit.create_model("vit_b16").config) == "vit_base_patch16_224"


def test_a_model_without_preprocessing_is_refused_by_predict_unless_one_is_assumed(tmp_path, capsys, digits_run):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(digits_run / "best", bare)
    (bare / "preprocess.json").unlink()
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("L", (8, 8), 128).save(image)
    err = one_line_error(capsys, ["predict", str(bare), str(image)])
    assert err == (
        f"vitkit predict: error: {bare} records no preprocessing (no preprocess.json, preprocessor_config.json or "
        "timm pretrained_cfg); pass --assume-preprocess FILE naming a preprocess.json to use"
    )
    one_line_error(capsys, ["evaluate", str(bare)], "pass --assume-preprocess FILE")
    assumed = ["--assume-preprocess", str(digits_run / "best" / "preprocess.json"), "--json"]
    assert main(["predict", str(bare), str(image), *assumed]) == 0
    with_it = json.loads(capsys.readouterr().out)
    assert main(["predict", str(digits_run), str(image), "--json"]) == 0
    assert with_it[0]["predictions"] == json.loads(capsys.readouterr().out)[0]["predictions"]
    # convert of a bare model writes no preprocess.json and says so
    assert main(["convert", str(bare), str(tmp_path / "copy")]) == 0
    assert "inference needs --assume-preprocess FILE" in capsys.readouterr().out
    assert not (tmp_path / "copy" / "preprocess.json").exists()


# ---------------------------------------------------------------------------- a photo model's crop rule in timm
@pytest.mark.parametrize(("crop_fraction", "interpolation", "levels"), [(1.0, "bilinear", 1), (0.875, "bicubic", 3)])
def test_timm_eval_transform_prepares_photos_as_a_crop_model_does(
    tmp_path, capsys, photo_crops, crop_fraction, interpolation, levels
):
    """A photo-folder model's rule (shorter side, then the centre) written as timm's pretrained_cfg:
    timm's own eval transform (Pillow's resize, torchvision's centre crop) on 300 real photo crops
    of every shape gives vitkit's pixels to within a grey level or three (Pillow's bicubic against
    torchvision's), and the timm model the answers of `vitkit predict`."""
    from conftest import PHOTOS
    from PIL import Image

    from vitkit.evaluate import load_for_inference
    from vitkit.preprocess import Preprocess

    torch.manual_seed(0)
    names = list(PHOTOS)
    shape = dict(image_size=64, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128, pool="cls")
    model = perturbed(vitkit.create_model("vit_tiny_32", num_classes=len(names), class_names=names, **shape))
    pre = Preprocess(64, 3, fit="crop", crop_fraction=crop_fraction, interpolation=interpolation, class_names=names)
    vitkit.save(model, tmp_path / "photos")
    pre.replace(mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.3]).save(tmp_path / "photos")
    assert main(["convert", str(tmp_path / "photos"), str(tmp_path / "timm"), "--to", "timm"]) == 0
    classifier = load_for_inference(tmp_path / "photos")
    timm_model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    data = timm.data.resolve_data_config({}, model=timm_model)
    assert (data["crop_mode"], data["crop_pct"], data["interpolation"]) == ("center", crop_fraction, interpolation)
    transform = timm.data.create_transform(**data)
    theirs = torch.stack([transform(Image.open(f).convert("RGB")) for f in photo_crops])
    ours = classifier.preprocess.files(photo_crops)
    grey_levels = (theirs - ours) * torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1) * 255
    assert grey_levels.abs().max().item() <= levels + 1e-3
    with torch.no_grad():
        timm_logits, our_logits = timm_model(theirs), classifier.model(ours)
    assert (timm_logits - our_logits).abs().max().item() < 0.05
    answers_ = [r["predictions"][0]["class"] for r in answers(tmp_path / "photos", photo_crops)]
    timm_answers = [names[i] for i in timm_logits.argmax(1).tolist()]
    assert len(set(answers_)) >= 5  # a model that answers one class for everything would agree trivially
    assert sum(a == b for a, b in zip(answers_, timm_answers, strict=True)) >= 299
