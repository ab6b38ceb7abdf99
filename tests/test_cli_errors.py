"""Mistakes on the command line, each answered in one line in the user's words: the command's
short usage and its error, with a did-you-mean; the flag a wrong value came through, not a
config field; warnings as one line; help without noise."""

from __future__ import annotations

import argparse
import re
import socket

import pytest
from conftest import write_digits

from vitkit.cli import build_parser, main


def _error_lines(capsys, argv: list[str]) -> list[str]:
    """stderr of a command that argparse refuses (exit status 2), as lines."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_a_misspelled_option_is_named_by_its_command_with_a_suggestion(capsys):
    assert _error_lines(capsys, ["predict", "RUN", "a.png", "--topk", "3"]) == [
        "usage: vitkit predict [options] RUN_OR_CHECKPOINT IMAGE_OR_FOLDER [...]  (--help lists every option)",
        "vitkit predict: error: unrecognized argument --topk; did you mean --top-k?",
    ]
    assert _error_lines(capsys, ["evaluate", "RUN", "--splt=test"])[1] == (
        "vitkit evaluate: error: unrecognized argument --splt; did you mean --split?"
    )
    # nothing close: no guess
    assert _error_lines(capsys, ["presets", "--zzzzzz"])[1] == "vitkit presets: error: unrecognized argument --zzzzzz"


def test_a_bad_value_is_two_lines_not_the_whole_usage(capsys):
    assert _error_lines(capsys, ["train", "--lr", "abc"]) == [
        "usage: vitkit train [options]  (--help lists every option)",
        "vitkit train: error: argument --lr: invalid float value: 'abc'",
    ]
    assert _error_lines(capsys, ["bench", "--mode", "trian"])[1] == (
        "vitkit bench: error: argument --mode: invalid choice: 'trian' (choose from 'train', 'infer'); "
        "did you mean train?"
    )
    assert _error_lines(capsys, ["predict", "RUN", "a.png", "--batch-size", "0"])[1] == (
        "vitkit predict: error: argument --batch-size: expected a whole number >= 1, got '0'"
    )
    lines = _error_lines(capsys, ["evalute", "RUN"])
    assert len(lines) == 2 and lines[1].startswith("vitkit: error: argument COMMAND: invalid choice: 'evalute'")
    assert lines[1].endswith("; did you mean evaluate?")


def test_config_errors_name_the_flag(tmp_path, capsys):
    run = str(tmp_path / "run")
    cases = {
        ("--time-budget", "0"): "--time-budget 0 must be > 0 seconds, e.g. 600, 10m, 1h",
        ("--ema", "1.5"): "--ema 1.5 must be in [0, 1), e.g. 0.999 (0: off)",
        ("--steps", "-1"): "--steps -1 must be >= 0",
        ("--mixup", "-1"): "--mixup -1 must be >= 0 (0: off)",
        ("--optimizer", "lion"): "--optimizer lion: choose adamw or sgd",
        ("--warmup-epochs", "-1"): "--warmup-epochs -1 must be >= 0",
        ("--drop-path", "1.5"): "--drop-path 1.5 must be in [0, 1), e.g. 0.1",
        ("--channels", "2"): "--channels 2: choose 1 (grayscale) or 3 (RGB)",
        # reaches the model: 30 px is no multiple of the preset's patch of 4
        ("--image-size", "30"): "an input of 30x30 px does not divide into patches of 4 px: give --image-size (plus "
        "twice --pad) a multiple of 4, e.g. 28 or 32, or pad each image up to one with --set "
        "dynamic_image_size=True (Python: image_size=, dynamic_image_size=True)",
    }
    for (flag, value), message in cases.items():
        assert main(["train", "--data", "digits", "--threads", "1", "--out", run, flag, value]) == 1, flag
        assert capsys.readouterr().err.splitlines()[-1] == f"vitkit train: error: {message}"
    assert not (tmp_path / "run").exists()


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# Engineer "art" rewrites these two commands' help in the same release (#33 parts 1-2).


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_help_has_text_for_every_option_and_no_noise(command):
    parser = _subparsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"vitkit {command} {action.option_strings or action.dest}: no help"
        text = formatter._expand_help(action)
        assert "(default: None)" not in text and text.count("(default:") <= 1, (command, text)
    text = parser.format_help()
    markup = "``" in text or re.search(r":(func|class|meth|mod):", text)
    assert not markup, command


def test_predict_skips_a_bad_image_with_one_warning_line(one_epoch_digits_run, tmp_path, capsys):
    images = write_digits(tmp_path / "images", per_class=2, classes=2, sizes=((8, 8),))
    bad = images / "1" / "notes.png"
    bad.write_text("not a picture")
    reason = f"{bad}: cannot read the image (UnidentifiedImageError: not an image format Pillow knows)"
    assert main(["predict", str(one_epoch_digits_run), str(images)]) == 1
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"vitkit predict: error: {reason} (pass --skip-bad-images to leave such files out)"]
    assert main(["predict", str(one_epoch_digits_run), str(images), "--skip-bad-images"]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"vitkit predict: warning: skipping {reason}"]
    assert len(out.out.splitlines()) == 4 and "notes.png" not in out.out


def test_serve_on_a_busy_port_says_so_before_announcing_a_url(one_epoch_digits_run, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", str(one_epoch_digits_run), "--port", str(port)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        f"vitkit serve: error: --port {port}: 127.0.0.1:{port} is already in use; stop what holds it, or pick "
        f"another, e.g. --port {port + 1}"
    ]
