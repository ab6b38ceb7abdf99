import argparse
import subprocess
import sys

import torch
from PIL import Image

import vitkit
from vitkit import __version__
from vitkit.cli import build_parser, main


def test_presets_table(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "vit_b16" in out and "86,567,656" in out and "35.13" in out


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "vitkit", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "vitkit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "presets" in out.stdout


def _commands_with_device() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, p in sub.choices.items() if any("--device" in a.option_strings for a in p._actions)}


def test_every_device_option_goes_through_resolve_device(tmp_path, capsys):
    """Each command that takes ``--device`` resolves it with runtime.resolve_device, so ``auto``
    means the same everywhere and a bad name is one line naming the flag (explain once passed the
    string to ``model.to``). A new command with ``--device`` must be added here."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "ck"
    vitkit.save(vitkit.create_model("vit_tiny_28", depth=1, width=16, num_heads=2, mlp_dim=32), checkpoint)
    image = tmp_path / "a.png"
    Image.new("L", (28, 28), 128).save(image)
    ck, img = str(checkpoint), str(image)
    arguments = {
        "bench": ["--model", "vit_tiny_28", "--batch-size", "2"],
        "embed": [ck, img, "--out", str(tmp_path / "e.npz")],
        "evaluate": [ck, "--data", "digits"],
        "explain": [ck, img, "--out", str(tmp_path / "explain")],
        "predict": [ck, img],
        "probe": [ck, "--data", "digits"],
        "train": ["--data", "digits", "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "run")],
        "pretrain": ["--objective", "mpp", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "pre")],
    }
    assert _commands_with_device() == set(arguments)
    for command, args in arguments.items():
        capsys.readouterr()
        assert main([command, *args, "--device", "tpu"]) == 1, command
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"vitkit {command}: error: --device 'tpu' is not a device; use auto, cpu, cuda or cuda:N"
