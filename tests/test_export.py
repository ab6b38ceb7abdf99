"""ONNX export, checked with onnxruntime against PyTorch on the same images."""

import copy

import pytest
import torch
from conftest import perturbed

from vitkit import create_model
from vitkit.cli import main
from vitkit.export import check_onnx, export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def model_for_export(**kw):
    torch.manual_seed(0)
    return perturbed(create_model("vit_tiny_32", depth=2, patch_size=8, **kw))


@pytest.mark.parametrize("kw", [dict(), dict(pool="gap", class_token=False, posemb="sincos2d")], ids=["cls", "gap"])
def test_export_matches_pytorch_for_two_batch_sizes(tmp_path, kw):
    model = model_for_export(**kw)
    path = export_onnx(model, tmp_path / "model.onnx", batch_size=2)
    assert check_onnx(model, path, batch_sizes=(1, 4)) < 1e-4
    assert model.blocks[0].attn.fused  # the export's explicit attention path was switched back


@pytest.mark.parametrize("kw", [dict(), dict(distill_token=True)], ids=["cls", "distilled"])
def test_dynamic_image_size_export_resamples_like_pytorch(tmp_path, kw):
    model = model_for_export(**kw)  # distilled: two prefix tokens with their rows, the mean of two heads
    path = export_onnx(model, tmp_path / "model.onnx", dynamic_image_size=True)
    for size in [(32, 32), (48, 48), (64, 40), (16, 16)]:  # native, larger, non-square, smaller
        assert check_onnx(model, path, batch_sizes=(1, 2), image_size=size) < 1e-4


def test_export_command_prints_the_difference(tmp_path, capsys):
    import vitkit

    vitkit.save(model_for_export(), tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "m.onnx"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "max |onnxruntime - pytorch| =" in out and "(ok)" in out
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_int8_export_needs_real_images_to_check_on(tmp_path, capsys):
    """--int8 writes only the int8 graph (a third of the fp32 size); its --check needs a dataset,
    which a bare checkpoint does not record: a one-line error says to pass --check-data."""
    import vitkit

    vitkit.save(model_for_export(), tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "fp32.onnx")]) == 0
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "int8.onnx"), "--int8", "--check"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]  # after the no-preprocessing warning
    assert len(errors) == 1 and "--check-data" in errors[0]
    assert (tmp_path / "int8.onnx").stat().st_size < 0.4 * (tmp_path / "fp32.onnx").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "fp32.onnx", "int8.onnx"]


def test_int8_export_of_a_dynamic_image_size_graph(tmp_path):
    from vitkit.export import OnnxModel
    from vitkit.quantize import agreement_on, export_onnx_int8

    model = model_for_export()
    path = export_onnx_int8(model, tmp_path / "int8.onnx", dynamic_image_size=True)
    images = torch.randn(4, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    reference = copy.copy(model)
    reference.config = model.config.replace(dynamic_image_size=True)
    a = agreement_on(reference, OnnxModel(path), images)
    assert 1e-4 < a.max_abs_diff and a.relative_diff < 0.25, a


def test_export_takes_a_run_folder(tmp_path, capsys):
    """`vitkit export RUN model.onnx`, as the README writes it: the run's best/ is exported."""
    import vitkit
    from vitkit.export import OnnxModel

    model = model_for_export()
    vitkit.save(model, tmp_path / "run" / "best")
    vitkit.save(model_for_export(pool="gap"), tmp_path / "run" / "last")  # not the one to export
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "m.onnx"), "--check"]) == 0
    assert "(ok)" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (OnnxModel(tmp_path / "m.onnx")(x) - model(x)).abs().max().item() < 1e-4
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "n.onnx")]) == 1
    assert "nothing does not exist; give a run folder" in capsys.readouterr().err


def test_export_and_convert_help_is_plain_text(capsys):
    """No reST markup shows through, and every option says what it does."""
    import re

    from vitkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("export", "convert"):
        text = sub[name].format_help()
        assert "``" not in text and not re.search(r":(mod|func|class):", text), text
        assert all(a.help for a in sub[name]._actions), name


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_every_export_carries_its_preprocessing_and_class_names(tmp_path, capsys, int8):
    """The ONNX file says how to prepare an image and what each logit is, as onnxruntime reads its
    metadata: preprocess.json's JSON (at the exported size, its zero border kept in proportion)
    and the class names; a model that records no preprocessing is exported with a warning."""
    import json

    import vitkit
    from vitkit.export import read_metadata
    from vitkit.preprocess import Preprocess

    model = model_for_export(num_classes=3)
    folder = tmp_path / "ck"
    vitkit.save(model, folder)
    pre = Preprocess((28, 28), 3, mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7), pad=2, class_names=["a", "b", "c"])
    pre.save(folder)
    flags = ["--int8"] if int8 else []
    assert main(["export", str(folder), str(tmp_path / "m.onnx"), *flags]) == 0
    meta = read_metadata(tmp_path / "m.onnx")
    assert Preprocess.from_dict(json.loads(meta["preprocess"])) == pre
    assert json.loads(meta["class_names"]) == ["a", "b", "c"]
    assert main(["export", str(folder), str(tmp_path / "big.onnx"), "--image-size", "64", *flags]) == 0
    big = Preprocess.from_dict(json.loads(read_metadata(tmp_path / "big.onnx")["preprocess"]))
    assert big.input_size == (64, 64) and big.pad == 4 and big.image_size == (56, 56)
    (folder / "preprocess.json").unlink()
    capsys.readouterr()
    assert main(["export", str(folder), str(tmp_path / "bare.onnx"), *flags]) == 0
    assert "records no preprocessing" in capsys.readouterr().err
    assert "preprocess" not in read_metadata(tmp_path / "bare.onnx")
