"""End to end through the CLI: train on digits, evaluate, predict, resume; and the errors."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_ARGS, write_digits
from PIL import Image

from vitkit.cli import main
from vitkit.data import load_dataset
from vitkit.errors import ConfigError

pytestmark = pytest.mark.slow  # these tests train models

TINY = TINY_ARGS
FAST = [
    "--batch-size",
    "32",
    "--crop-padding",
    "0",
    "--lr",
    "2e-3",
    "--label-smoothing",
    "0",
    "--threads",
    "1",
    "--precision",
    "fp32",  # not auto: bf16 on CPUs that have it, and the run would differ by machine
    "--no-progress",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--data", "digits", "--epochs", "8", "--out", str(out), *TINY, *FAST]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """Test digits saved as PNGs in another size and mode than training saw (RGB, 32x32)."""
    folder = tmp_path_factory.mktemp("pngs")
    ds = load_dataset("digits", "test")
    for i in range(12):
        cls = ds.class_names[int(ds.labels[i])]
        (folder / cls).mkdir(exist_ok=True)
        img = Image.fromarray(ds.images[i, 0].numpy(), "L").resize((32, 32), Image.Resampling.NEAREST)
        img.convert("RGB").save(folder / cls / f"{i}.png")
    return folder


def test_train_writes_a_complete_run(run_dir, capsys):
    for name in (
        "train_config.json",
        "metrics.jsonl",
        "summary.json",
        "last/model.safetensors",
        "best/preprocess.json",
    ):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["accuracy"] > 0.5 and summary["epochs_done"] == 8


def test_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--time-budget" in out and "--resume" in out and "(default: 0.001)" in out and "fmnist-10m" in out


def test_recipe_fills_what_the_command_line_leaves_out():
    from vitkit.cli import build_parser
    from vitkit.commands.train import config_from_args

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))

    main_job = cfg()
    assert main_job.data == "fashion-mnist" and main_job.time_budget == 600 and main_job.model_overrides
    assert cfg("--lr", "0.01").lr == 0.01 and cfg("--epochs", "30").time_budget is None
    assert cfg("--model", "vit_small_28").model_overrides == {}
    assert cfg("--data", "digits").model_overrides == {} and cfg("--data", "digits").time_budget is None
    assert cfg("--recipe", "none").model_overrides == {}
    assert cfg("--set", "depth=3").model_overrides["depth"] == 3
    # Python's spelling of a boolean is the boolean, not the (truthy) string "False"
    assert cfg("--set", "fused_attention=False").model_overrides["fused_attention"] is False
    assert cfg("--set", "class_token=true").model_overrides["class_token"] is True
    assert cfg("--set", "register_tokens=4").model_overrides["register_tokens"] == 4


def test_evaluate_through_the_cli(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 359 and result["top1"] > 0.5 and result["top5"] >= result["top1"]
    assert set(result["per_class"]) == {str(i) for i in range(10)}
    assert (run_dir / "eval-test" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", str(run_dir / "last"), "--out", str(run_dir / "ev")]) == 0
    assert "top-1" in capsys.readouterr().out and (run_dir / "ev" / "summary.json").is_file()


def test_evaluate_an_image_folder(run_dir, digit_pngs, capsys):
    """A folder without train/ and test/ that the model never trained on: every image with
    --split all; without it, a one-line refusal (its images could be training images)."""
    argv = ["evaluate", str(run_dir), "--data", str(digit_pngs), "--out", str(run_dir / "evf")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "has no test split of its own" in err and "--split all" in err and err.count("\n") == 1
    assert main([*argv, "--split", "all", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and result["split"] == "all" and result["images_from"].startswith("every image")


def test_predict_table_and_json(run_dir, digit_pngs, capsys):
    files = sorted(digit_pngs.rglob("*.png"))
    assert main(["predict", str(run_dir), str(files[0]), str(digit_pngs), "--json", "--top-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 1 + len(files)
    assert all(len(r["predictions"]) == 3 for r in results)
    assert all(abs(sum(p["probability"] for p in r["predictions"])) <= 1.0 + 1e-6 for r in results)
    right = sum(r["predictions"][0]["class"] == r["path"].split("/")[-2] for r in results[1:])
    assert right >= 6, results  # the model reads the converted PNGs, not noise
    assert main(["predict", str(run_dir / "best"), str(files[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(files[0])) and "%" in line


def test_resume_through_the_cli_continues_to_more_epochs(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "9", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 10))


def test_errors_are_one_line(tmp_path, run_dir, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "unknown dataset" in err and err.count("\n") == 1
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 1
    assert "train_config.json not found" in capsys.readouterr().err

    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "config.json").write_text((run_dir / "best" / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((run_dir / "best" / "model.safetensors").read_bytes()[:100])
    assert main(["evaluate", str(bad), "--data", "digits"]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "truncated" in err and err.count("\n") == 1
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 1
    assert "neither a checkpoint folder" in capsys.readouterr().err

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["predict", str(run_dir), str(broken)]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and err.count("\n") == 1
    assert main(["predict", str(run_dir), str(tmp_path / "nope.png")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_train_on_an_image_folder_with_a_bad_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c, level in (("dark", 30), ("light", 220)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            px = np.clip(rng.normal(level, 20, (10, 10)), 0, 255).astype(np.uint8)
            Image.fromarray(px, "L").save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "dark" / "bad.png").write_bytes(b"nope")
    argv = ["train", "--data", str(tmp_path / "imgs"), "--image-size", "8", "--epochs", "2"]
    argv += ["--out", str(tmp_path / "run"), *TINY, *FAST]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "bad.png" in err and "--skip-bad-images" in err
    assert main([*argv, "--skip-bad-images", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # no test/: a test share of 20 % of each class (2 of 12 dark, 2 of 12 light), scored at the end
    assert summary["eval_split"] == "test share" and summary["eval_images"] == 4


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run on a folder without train/ and test/: 60 real digit images of 3 classes."""
    root = tmp_path_factory.mktemp("folder")
    write_digits(root / "imgs", per_class=20, classes=3, sizes=((8, 8),))
    out = root / "run"
    argv = ["train", "--data", str(root / "imgs"), "--image-size", "8", "--epochs", "3", "--val-fraction", "0.125"]
    assert main([*argv, "--out", str(out), *TINY, *FAST]) == 0
    return out


def _split(run):
    return json.loads((run / "train_config.json").read_text())["data"]["split"]


def test_evaluate_a_folder_run_scores_the_test_share_it_held_out(folder_run, tmp_path, capsys):
    """It scored all 60 images (54 of them training images) and called that the test split."""
    split = _split(folder_run)
    assert split["counts"] == {"train": 42, "val": 6, "test": 12}  # 4 of 20 a class, then 2 of the 16 left
    assert main(["evaluate", str(folder_run), "--json", "--out", str(tmp_path / "ev")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and "test share its run held out" in result["images_from"]
    summary = json.loads((folder_run / "summary.json").read_text())
    assert summary["eval_split"] == "test share" and result["top1"] == summary["accuracy"]  # the same 12 images
    assert main(["evaluate", str(folder_run), "--split", "val", "--json", "--out", str(tmp_path / "v")]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6
    bare = tmp_path / "bare"  # the same weights, outside their run folder: nothing says what was held out
    shutil.copytree(folder_run / "last", bare)
    assert main(["evaluate", str(bare), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "cannot say which of its images were held out" in err and err.count("\n") == 1


def test_probe_a_folder_run_scores_its_test_share_and_its_results_outlive_a_later_checkpoint(folder_run, capsys):
    """The probe drew its test images with its own seed and share (training images among them),
    and wrote probe-*/ inside the checkpoint folder, which the next checkpoint swap deleted."""
    run = folder_run.parent / "probed"
    shutil.copytree(folder_run, run)
    assert main(["probe", str(run), "--shots", "1,5", "--seeds", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["test_images"] == _split(run)["counts"]["test"] == 12
    assert "test share its run held out" in record["test"]
    probe = run / "probe-imgs" / "probe.json"
    assert probe.is_file() and not any((run / "best").glob("probe-*"))
    assert main(["train", "--resume", str(run), "--epochs", "4", "--no-progress"]) == 0  # swaps best/, last/
    assert json.loads(probe.read_text()) == record


def _copy(run_dir, folder):
    shutil.copytree(run_dir, folder)
    return folder


def test_resume_refuses_an_option_that_would_change_the_run(run_dir, tmp_path, capsys):
    """On --resume every option but a few was silently ignored: now one that would change what the
    weights compute is refused in one line naming it, and the run folder is left as it was."""
    copy = _copy(run_dir, tmp_path / "copy")
    before = (copy / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(copy), "--epochs", "9", "--lr", "0.01"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitkit train: error: --resume") and "--lr 0.01" in err[0], err
    assert (copy / "metrics.jsonl").read_text() == before

    from vitkit.cli import build_parser
    from vitkit.commands.train import resume_config

    def refused(*argv: str) -> str:
        with pytest.raises(ConfigError) as e:
            resume_config(build_parser().parse_args(["train", "--resume", str(copy), *argv]))
        return str(e.value)

    for argv in (
        ["--model", "vit_small_28"],
        ["--data", "mnist"],
        ["--set", "depth=3"],
        ["--recipe", "none"],
        ["--seed", "1"],
        ["--batch-size", "16"],
        ["--mixup", "0.2"],
        ["--hflip"],
        ["--precision", "bf16"],
        ["--out", str(tmp_path / "elsewhere")],
    ):
        assert argv[0] in refused(*argv), argv
    assert "--lr 0.01" in refused("--lr", "0.01", "--seed", "1") and "--seed 1" in refused(
        "--lr", "0.01", "--seed", "1"
    )
    # the run's own values are no change: the command that started it may be repeated with --resume
    same = resume_config(build_parser().parse_args(["train", "--resume", str(copy), "--data", "digits", *TINY, *FAST]))
    saved = json.loads((copy / "train_config.json").read_text())["train"]
    assert same.to_dict() == saved | {"out": str(copy)}


def test_resume_applies_and_validates_the_options_that_may_change(run_dir, tmp_path, capsys):
    copy = _copy(run_dir, tmp_path / "copy")
    for argv, flag in (
        (["--epochs", "0"], "--epochs 0"),
        (["--time-budget", "0"], "--time-budget 0"),
        (["--checkpoint-every", "-1"], "--checkpoint-every"),
    ):
        assert main(["train", "--resume", str(copy), *argv]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err
    argv = ["train", "--resume", str(copy), "--epochs", "9", "--eval-batch-size", "100", "--eval-every", "2"]
    assert main([*argv, "--checkpoint-every", "1000", "--device", "cpu", "--no-progress"]) == 0
    saved = json.loads((copy / "train_config.json").read_text())["train"]
    assert (saved["epochs"], saved["eval_batch_size"], saved["eval_every"], saved["checkpoint_every"]) == (
        9,
        100,
        2,
        1000,
    )
    assert saved["device"] == "cpu" and saved["out"] == str(copy)
