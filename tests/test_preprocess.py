"""Preprocess: the one way an image becomes a model input, checked against Pillow and timm."""

import json

import numpy as np
import pytest
import torch
from conftest import sample_photo
from PIL import Image

import vitkit
from vitkit.errors import CheckpointError, ConfigError
from vitkit.images import convert_channels, decode_image
from vitkit.preprocess import PREPROCESS_NAME, Preprocess


def test_stretch_and_luma_match_pillow_within_one_grey_level():
    photo = sample_photo()
    ours = Preprocess((40, 60), channels=1).pixels(decode_image(photo))
    with Image.open(photo) as img:
        ref = np.asarray(img.convert("L").resize((60, 40), Image.Resampling.BILINEAR), dtype=np.float32)
    diff = (ours[0].float() - torch.from_numpy(ref)).abs()
    assert ours.shape == (1, 40, 60) and ours.dtype == torch.uint8
    assert diff.max() <= 1 and diff.mean() < 0.05


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_crop_rule_matches_timms_evaluation_transform(interpolation):
    timm_data = pytest.importorskip("timm.data")
    photo = sample_photo()
    transform = timm_data.create_transform(
        input_size=(3, 224, 224), crop_pct=0.875, interpolation=interpolation, mean=(0, 0, 0), std=(1, 1, 1)
    )
    with Image.open(photo) as img:
        ref = transform(img.convert("RGB")) * 255  # shorter side 256, centre 224, through Pillow
    pre = Preprocess((224, 224), channels=3, fit="crop", crop_fraction=0.875, interpolation=interpolation)
    ours = pre.pixels(decode_image(photo)).float()
    assert ours.shape == ref.shape == (3, 224, 224)
    assert (ours - ref).abs().max() <= 1.0 + 1e-4 and (ours - ref).abs().mean() < 0.05


def test_pixels_convert_resize_then_pad_and_normalise():
    pre = Preprocess((28, 28), channels=1, pad=2, mean=[0.25], std=[0.5])
    rgb = torch.full((3, 56, 84), 100, dtype=torch.uint8)
    x = pre.pixels(rgb)
    assert x.shape == (1, 32, 32) and pre.input_size == (32, 32)
    assert x[0, 2:30, 2:30].eq(100).all() and x[0, :2].eq(0).all() and x[0, :, -2:].eq(0).all()
    assert torch.allclose(pre(rgb)[0, 5, 5], torch.tensor((100 / 255 - 0.25) / 0.5))
    assert convert_channels(torch.full((1, 2, 2), 9, dtype=torch.uint8), 3).shape == (3, 2, 2)
    assert pre.keeps((28, 28), 1) is False and Preprocess((28, 28), channels=1).keeps((28, 28), 1)


def test_round_trip_and_the_first_format_still_loads(tmp_path):
    model = vitkit.create_model("vit_tiny_28", image_size=32, depth=1)
    pre = Preprocess((28, 28), 1, pad=2, mean=[0.3], std=[0.35], class_names=list("abcdefghij"), dataset="x")
    pre.save(tmp_path)
    assert Preprocess.load(tmp_path, model.config) == pre
    # version 1 kept the padded size as image_size and named the interpolation "resize"
    old = {"image_size": [32, 32], "channels": 1, "mean": [0.3], "std": [0.35], "class_names": list("abcdefghij")}
    (tmp_path / PREPROCESS_NAME).write_text(json.dumps(old | {"dataset": "x", "resize": "bilinear", "pad": 2}))
    assert Preprocess.load(tmp_path, model.config) == pre
    # a partial first-format file: the rest came from the model
    (tmp_path / PREPROCESS_NAME).write_text(json.dumps({"mean": [0.3], "std": [0.35]}))
    partial = Preprocess.load(tmp_path, model.config)
    assert partial.input_size == (32, 32) and partial.pad == 0 and partial.mean == (0.3,)


def test_a_preprocess_that_does_not_fit_the_model_is_a_clear_error(tmp_path):
    model = vitkit.create_model("vit_tiny_28", depth=1)
    Preprocess((28, 28), channels=3).save(tmp_path)
    with pytest.raises(CheckpointError, match="3 channel.* model takes 1"):
        Preprocess.load(tmp_path, model.config)
    Preprocess((28, 28), channels=1, pad=2).save(tmp_path)
    with pytest.raises(CheckpointError, match=r"makes \(32, 32\) images, but the model takes \(28, 28\)"):
        Preprocess.load(tmp_path, model.config)
    (tmp_path / PREPROCESS_NAME).unlink()
    with pytest.raises(CheckpointError, match="has no preprocess.json: it does not say how its images were prepared"):
        Preprocess.load(tmp_path, model.config)  # no guess at the normalisation
    with pytest.raises(ConfigError, match="fit='squash'"):
        Preprocess((28, 28), channels=1, fit="squash")
    with pytest.raises(ConfigError, match="mean/std have 2/1 entries for 1 channel"):
        Preprocess((28, 28), channels=1, mean=[0.1, 0.2])


def test_a_resized_model_keeps_its_border_in_proportion():
    pre = Preprocess((28, 28), channels=1, pad=2, mean=[0.3], std=[0.35])
    assert pre.at_input_size((64, 64)).image_size == (56, 56) and pre.at_input_size((64, 64)).pad == 4
    assert pre.at_input_size((32, 32)) is pre
    assert Preprocess((8, 8), channels=1).at_input_size((16, 24)).input_size == (16, 24)
