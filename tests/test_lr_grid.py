"""Choosing the learning rate from a grid: the choice, and a run whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import TINY_ARGS, tiny_config

from vitkit.cli import main
from vitkit.errors import ConfigError, DivergedError
from vitkit.train import train
from vitkit.train.lr_grid import Trial, choose, parse_grid


def test_choose_prefers_held_out_accuracy_then_loss_and_skips_diverged_rates():
    trials = [
        Trial(1e-3, 10, 0.5, 0.80, 0.7),
        Trial(3e-3, 10, 0.4, 0.90, 0.6),
        Trial(1e-2, 10, 0.3, 0.90, 0.5),  # ties on accuracy, lower held-out loss: wins
        Trial(3e-2, 10, math.nan),
    ]
    assert choose(trials).lr == 1e-2
    no_held_out = [Trial(1e-3, 10, 0.5), Trial(3e-3, 10, 0.2), Trial(1e-2, 10, math.inf)]
    assert choose(no_held_out).lr == 3e-3  # the lowest training loss
    with pytest.raises(DivergedError, match="every rate"):
        choose([Trial(1.0, 10, math.nan)])


def test_parse_grid_refuses_an_empty_or_non_positive_grid():
    assert parse_grid("0.001, 0.003") == [0.001, 0.003]
    for bad in ("", "0.01,0", "-1"):
        with pytest.raises(ConfigError, match="positive learning rates"):
            parse_grid(bad)


def test_the_grid_needs_a_budget(tmp_path):
    with pytest.raises(ConfigError, match="--steps or --time-budget"):
        train(tiny_config(tmp_path / "r", lr_grid=[1e-3, 1e-2]), progress=False)


def _dark_and_light(root) -> None:
    """Two classes anyone can tell apart: dark and light 8x8 images, 40 of each, with noise."""
    from PIL import Image

    g = np.random.default_rng(0)
    for name, base in (("dark", 40), ("light", 200)):
        (root / name).mkdir(parents=True)
        for i in range(40):
            pixels = np.clip(base + g.normal(0, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_the_grid_picks_the_rate_that_learns(tmp_path):
    """A case whose answer is known: at 1e-9 the model stays where it started (a zero head: the
    uniform prediction, loss ln 2; AdamW's first steps still tilt it the right way, so both rates
    score every held-out image and the held-out loss decides), 1e-2 learns dark against light in
    a few steps, 1e4 diverges."""
    data, out = tmp_path / "data", tmp_path / "grid"
    _dark_and_light(data)
    args = ["train", "--data", str(data), "--image-size", "8", "--val-fraction", "0.25"]
    args += ["--set", "width=32", "--set", "depth=1", "--set", "num_heads=2", "--set", "mlp_dim=64"]
    args += ["--set", "patch_size=2", "--batch-size", "16", "--threads", "1", "--warmup-steps", "2"]
    args += ["--lr-grid", "1e-9,1e-2,1e4", "--steps", "100", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    grid = summary["lr_grid"]
    assert grid["chosen"] == 1e-2 and summary["lr"] == 1e-2
    tiny, good, huge = grid["trials"]
    assert [t["lr"] for t in grid["trials"]] == [1e-9, 1e-2, 1e4]
    assert tiny["steps"] == good["steps"] == 10  # a tenth of the 100 steps each
    assert tiny["val_top1"] == good["val_top1"] == 1.0
    assert tiny["val_loss"] == pytest.approx(math.log(2), abs=5e-3) and good["val_loss"] < 0.3  # barely moved
    assert math.isnan(huge["train_loss"])  # diverged
    assert summary["steps"] == 100 - 10 - 10 - huge["steps"]  # the rest of the budget
    assert "held-out accuracy on the 16 images of the validation share" in grid["chosen_by"]
    # 40 images a class: a test share of 8 each (20 %), then a quarter of the 32 left for validation.
    # The trials trained and were scored on the very shares the full run uses; none read the test share
    record = json.loads((out / "lr-grid" / "lr=0.01" / "train_config.json").read_text())
    assert record["data"]["split"]["counts"] == {"train": 48, "val": 16, "test": 0}
    assert record["train"]["trial"] is True
    full = json.loads((out / "train_config.json").read_text())["data"]["split"]
    assert full["counts"] == {"train": 48, "val": 16, "test": 16} and full["test_from"] == "a held-out share"
    assert summary["eval_split"] == "test share" and summary["eval_images"] == 16
    assert summary["accuracy"] == 1.0  # the full run, scored once on the 16 test images


def test_a_grid_where_every_rate_diverges_is_one_line_naming_the_rates(tmp_path, capsys):
    """Rates of 1e6 and 1e8 make the loss of the tiny ViT on digits NaN within a few steps: the
    command says which rates diverged and what to try, in one line, and exits 1 (it used to end in
    a FloatingPointError's traceback)."""
    args = ["train", "--data", "digits", *TINY_ARGS, "--threads", "1", "--batch-size", "32", "--warmup-steps", "0"]
    args += ["--lr-grid", "1e6,1e8", "--steps", "40", "--out", str(tmp_path / "grid"), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitkit train: error: --lr-grid")
    assert "1e+06, 1e+08" in err[0] and "diverged" in err[0] and "smaller" in err[0]
