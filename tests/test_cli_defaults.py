"""Defaults that fit the data: a photo folder's size and model, the run folder's name, a warm-up
that fits the run, a time budget's log line, probe shots that fit the smallest class."""

from __future__ import annotations

import json
import logging
import re

from conftest import tiny_config, write_digits
from PIL import Image

import vitkit
from vitkit import distributed
from vitkit.cli import main
from vitkit.data import resolve_source
from vitkit.train import train
from vitkit.train.config import folder_defaults
from vitkit.train.run_folder import new_run_path
from vitkit.train.schedule import fit_warmup

# (width, height) of the crops: shorter sides 48, 80, 72, 90, 72, 56 in every class
CROPS = ((64, 48), (80, 120), (96, 72), (120, 90), (72, 100), (56, 84))


def photo_folder(root):  # noqa: ANN001, ANN201 - a Path
    """scikit-image's sample photos cut into crops of the sizes above, one class per photo, some
    saved as grayscale (mixed modes), as ``root/CLASS/i.png|jpg``."""
    import skimage.data

    for name in ("chelsea", "coffee", "rocket"):
        photo = Image.fromarray(getattr(skimage.data, name)())
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(CROPS):
            crop = photo.crop((10 * i, 10 * i, 10 * i + w, 10 * i + h))
            crop = crop.convert("L") if i == 3 else crop
            crop.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_folder_defaults_by_hand():
    # the patch keeps the grid at most 14 a side; the size is rounded to it and clipped to 32-224
    assert folder_defaults(20)["image_size"] == 32 and folder_defaults(20)["model_overrides"] == {"patch_size": 4}
    assert folder_defaults(56)["image_size"] == 56 and folder_defaults(56)["model_overrides"] == {"patch_size": 4}
    assert folder_defaults(60)["image_size"] == 64 and folder_defaults(60)["model_overrides"] == {"patch_size": 8}
    assert folder_defaults(150)["image_size"] == 144 and folder_defaults(150)["model_overrides"] == {"patch_size": 16}
    assert folder_defaults(427) == dict(
        model="vit_tiny_32", image_size=224, fit="crop", model_overrides={"patch_size": 16}
    )


def test_a_photo_folder_trains_at_its_median_size_with_the_aspect_kept(tmp_path, caplog):
    photos = photo_folder(tmp_path / "photos")
    assert resolve_source(str(photos)).median_side == 72  # 18 shorter sides: three each of 48, 56, 80, 90; six 72
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    argv = ["train", "--data", str(photos), "--epochs", "1", "--batch-size", "8", "--threads", "1"]
    assert main([*argv, "--precision", "fp32", "--no-progress", "--out", str(run)]) == 0
    record = json.loads((run / "train_config.json").read_text())
    assert record["preprocess"]["image_size"] == [72, 72] and record["preprocess"]["fit"] == "crop"
    assert record["model"]["patch_size"] == 8 and record["model"]["width"] == 192 and record["model"]["depth"] == 6
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "photos: median shorter side 72 px (up to 300 files' headers) -> 72 px, shorter side resized and the centre "
        "cut; vit_tiny_32 with 8-px patches (a 9x9 grid). --image-size, --fit and --model choose otherwise"
    ) in messages
    assert "input 72x72 px, 3 channel(s): shorter side to 72 px, centre 72x72 cut (aspect kept)" in messages
    params = vitkit.load(run / "last").num_params()
    line = next(m for m in messages if m.startswith("training "))
    assert line.startswith(
        f"training vit_tiny_32 with patch_size=8 ({params / 1e6:.2f} M params; the preset as listed:"
    )


def test_a_model_or_size_given_keeps_the_old_rule(tmp_path):
    photos = photo_folder(tmp_path / "photos")
    run = tmp_path / "run"
    argv = ["train", "--data", str(photos), "--image-size", "28", "--epochs", "1", "--threads", "1"]
    assert main([*argv, "--no-progress", "--out", str(run)]) == 0
    record = json.loads((run / "train_config.json").read_text())
    assert record["preprocess"]["fit"] == "stretch" and record["train"]["model"] == "vit_tiny_28"


def test_the_run_folder_is_named_after_the_data_and_the_time(tmp_path, monkeypatch):
    monkeypatch.setattr("time.time", lambda: 1_800_000_000.0)  # 2027-01-15 08:00:00 UTC
    world = distributed.World()
    first = new_run_path("digits", world, root=tmp_path)
    assert first == tmp_path / "digits-20270115-080000"
    first.mkdir()
    assert new_run_path("digits", world, root=tmp_path) == tmp_path / "digits-20270115-080000-2"
    (tmp_path / "digits-20270115-080000-2").mkdir()
    assert new_run_path("digits", world, root=tmp_path) == tmp_path / "digits-20270115-080000-3"
    assert new_run_path("my photos", world, root=tmp_path).name == "my-photos-20270115-080000"


def test_fit_warmup_by_hand():
    assert fit_warmup(50, 500) == 50  # fits: kept
    assert fit_warmup(50, 30) == 3 and fit_warmup(30, 30) == 3  # 10 % of the run
    assert fit_warmup(50, 4) == 1 and fit_warmup(5, 0) == 0


def test_a_short_fine_tuning_warms_up_briefly_and_cools_down(one_epoch_digits_run, tmp_path, monkeypatch, caplog):
    """The finetune recipe's 50 warm-up steps in a 30-step run: 3 steps, and the last rate near
    zero (it ended at 30/50 of the peak, still warming up); no --out: runs/digits-<time>."""
    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--init", str(one_epoch_digits_run), "--data", "digits", "--steps", "30", "--freeze", "embed"]
    assert main([*argv, "--limit-train", "512", "--threads", "1", "--precision", "fp32", "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"digits-\d{8}-\d{6}", run.name)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "--warmup-steps 50 would fill the whole run of 30 steps: warming up for 3 instead (10 % of them), so the rate decays"
    ) in messages
    model = vitkit.load(run / "last")
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for p in model.patch_embed.parameters())
    assert f"--freeze embed: {total - embed:,} of {total:,} parameters train" in messages
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 30 and last["lr"] < 0.01 * 3e-3  # the finetune recipe's peak, 0.003


def test_a_time_budget_logs_time_left_not_epochs_it_will_not_reach(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train(tiny_config(tmp_path / "run", epochs=50, time_budget=1.0, precision="fp32"), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert lines and not any("/50" in line for line in lines)
    assert all(re.search(r"  \[\d+s of the 1s budget, \d+s left: about \d+ more epoch\(s\)\]$", line) for line in lines)


def test_probe_clips_its_default_shots_to_the_smallest_class(one_epoch_digits_run, tmp_path, capsys):
    folder = tmp_path / "few"
    write_digits(folder / "train", per_class=7, classes=3, sizes=((8, 8),))
    write_digits(folder / "test", per_class=4, classes=3, offset=7, sizes=((8, 8),))
    args = ["probe", str(one_epoch_digits_run), "--data", str(folder), "--classes", "0,1,2", "--seeds", "1"]
    assert main([*args, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "vitkit probe: --shots 1,5,7, not the default 1,5,10,25: class '0' has 7 training images" in err
    record = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert [r["shots"] for r in record["summary"]] == [1, 5, 7]


def test_embed_and_explain_write_beside_the_checkpoint_without_out(one_epoch_digits_run, tmp_path, capsys):
    images = write_digits(tmp_path / "images", per_class=1, classes=2, sizes=((8, 8),))
    assert main(["embed", str(one_epoch_digits_run), "--data", "digits", "--split", "test"]) == 0
    checkpoint_parent = one_epoch_digits_run  # the run folder: its best/ is the checkpoint
    assert (checkpoint_parent / "embed-digits-test.safetensors").is_file()
    assert main(["embed", str(one_epoch_digits_run), str(images)]) == 0
    assert (checkpoint_parent / "embed-images.safetensors").is_file()
    assert main(["explain", str(one_epoch_digits_run), str(images / "0" / "0_00.png"), "--components", "2"]) == 0
    assert (checkpoint_parent / "explain" / "rollout.png").is_file()
