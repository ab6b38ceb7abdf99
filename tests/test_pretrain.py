"""vitkit pretrain: masked patch prediction and MAE through the training loop, on digits without
their labels; the result fine-tunes, probes and embeds as an ordinary checkpoint; a run killed
mid-checkpoint resumes to the losses of an uninterrupted one."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import KILLED_IN_EPOCH_2_CHECKPOINT, TINY, TINY_ARGS

import vitkit
from vitkit.cli import main
from vitkit.train import TrainConfig, train
from vitkit.train.run_folder import RunFolder, read_metrics

pytestmark = pytest.mark.slow

FAST = ["--batch-size", "64", "--threads", "1", "--precision", "fp32", "--no-progress"]


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_pretraining_writes_headless_checkpoints_that_fine_tune(objective, tmp_path, capsys):
    run = tmp_path / "pre"
    argv = ["pretrain", "--objective", objective, "--data", "digits", "--epochs", "2", "--out", str(run)]
    assert main([*argv, *TINY_ARGS, *FAST]) == 0
    assert f"{objective} pre-training: held-out loss" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objective"] == objective and summary["eval_split"] == "validation"
    assert summary["best_val_loss"] is not None and summary["best_val_loss"] <= summary["loss"] + 1e-9
    record = json.loads((run / "train_config.json").read_text())
    assert record["data"]["split"]["counts"]["test"] == 0  # the test images were never loaded
    for name in ("best", "last"):
        model = vitkit.load(run / name)
        assert model.config.num_classes == 0 and isinstance(model.head, torch.nn.Identity)
    rows = read_metrics(run)
    assert len(rows) == 2 and rows[-1]["val_loss"] is not None
    assert main(["pretrain", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0  # its own objective
    assert len(read_metrics(run)) == 3

    out = tmp_path / "fine"
    assert main(["train", "--init", str(run), "--data", "digits", "--steps", "3", "--out", str(out), *FAST]) == 0
    assert "no classifier head" in json.dumps(json.loads((out / "train_config.json").read_text())["init"])
    assert main(["embed", str(run), "--data", "digits", "--out", str(tmp_path / "e.npz")]) == 0


def test_pretraining_options_that_need_labels_are_refused(tmp_path, capsys):
    assert main(["pretrain", "--data", "digits", "--out", str(tmp_path / "r"), *FAST]) == 1
    assert "--objective" in capsys.readouterr().err
    for extra in (["--mixup", "0.8"], ["--init", str(tmp_path)], ["--val-fraction", "0"]):
        argv = ["pretrain", "--objective", "mpp", "--data", "digits", "--out", str(tmp_path / "r"), *extra, *FAST]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err and extra[0] in err
    assert not (tmp_path / "r").exists()


def test_mae_refuses_a_conv_stem_in_one_line(tmp_path, capsys):
    argv = ["pretrain", "--objective", "mae", "--data", "digits", "--out", str(tmp_path / "r"), *FAST]
    assert main([*argv, *TINY_ARGS, "--set", "stem=conv"]) == 1
    assert "stem" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_pretraining_resumes_after_sigkill_with_the_same_losses(objective, tmp_path):
    kw = dict(data="digits", objective=objective, epochs=3, batch_size=64, threads=1, precision="fp32")
    kw |= dict(model_overrides=dict(TINY), lr=2e-3)
    reference = tmp_path / "reference"
    train(TrainConfig(**kw, out=str(reference)), progress=False)
    killed = tmp_path / "killed"
    cfg = TrainConfig(**kw, out=str(killed))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILLED_IN_EPOCH_2_CHECKPOINT, json.dumps(cfg.to_dict())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -9, proc.stderr
    assert RunFolder.read_state(RunFolder(killed).find_checkpoint("last")).epoch == 1
    train(RunFolder(killed).read_train_config(), resume=True, progress=False)
    rows = [(r["epoch"], r["train_loss"], r["val_loss"]) for r in read_metrics(killed)]
    assert rows == [(r["epoch"], r["train_loss"], r["val_loss"]) for r in read_metrics(reference)] and len(rows) == 3
    a, b = vitkit.load(killed / "last"), vitkit.load(reference / "last")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
