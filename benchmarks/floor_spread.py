"""The run-to-run spread of the accuracies the test suite puts a floor under.

    python benchmarks/floor_spread.py finetune-vitkit --seeds 0-4 --threads 1,2
    python benchmarks/floor_spread.py --list

A floor in a test must hold on any CPU, under any load. The seeds and threads a test runs with are
pinned, and so is the precision (``--precision auto`` is bf16 autocast on CPUs with bf16 units,
fp32 elsewhere), but another CPU still computes the same sums in another order (other SIMD
widths, other kernels), and a small difference early in training grows into a different run: one
that failed a floor on an AMD CPU passed here. Runs with other seeds and thread counts stand in
for those machines. Each case is the training of one test, with the test's own settings except
the seed (of the source's random weights too, where the test makes them), the threads and
``--precision``; each run is one record in ``results/floor_spread.jsonl``, and the script prints
min / mean / max per case and metric.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

# A case: (a temporary folder, seed, threads, precision) -> its metrics, "accuracy" the one with a floor.
Case = Callable[[Path, int, int, str], dict[str, float]]


def _finetune(source: str) -> Case:
    """tests/test_finetune.py::test_every_source_fine_tunes_on_digits_and_evaluates, one source,
    built and fine-tuned by the test's own helpers."""

    def run(tmp: Path, seed: int, threads: int, precision: str) -> dict[str, float]:
        import test_finetune as T

        from vitkit.cli import main

        if source == "vitkit":
            path = T.vitkit_source(tmp, seed, threads, precision)
        else:
            path = {"timm": T.timm_source, "hf": T.hf_source, "npz": T.npz_source}[source](tmp, seed=seed)[1]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(T.fine_tune_argv(path, tmp / "run", seed, threads, precision)) == 0
        return {"accuracy": json.loads((tmp / "run" / "summary.json").read_text())["accuracy"]}

    return run


def _digits(tmp: Path, seed: int, threads: int, precision: str) -> dict[str, float]:
    """The 8 epochs of tests/test_train.py::test_trains_for_real_on_digits, which are also
    tests/test_cli_train.py's run_dir: the accuracy, and how many of the first 12 test digits,
    saved as 32x32 RGB PNGs, ``vitkit predict`` gets right (test_predict_table_and_json)."""
    from conftest import tiny_config
    from PIL import Image

    from vitkit.data import load_dataset
    from vitkit.evaluate import load_for_inference, predict_files
    from vitkit.train import train

    cfg = tiny_config(tmp / "run", epochs=8, crop_padding=0, seed=seed, threads=threads, precision=precision)
    accuracy = train(cfg, progress=False).accuracy
    ds, files = load_dataset("digits", "test"), []
    for i in range(12):
        files.append(tmp / f"{ds.class_names[int(ds.labels[i])]}_{i}.png")
        img = Image.fromarray(ds.images[i, 0].numpy(), "L").resize((32, 32), Image.Resampling.NEAREST)
        img.convert("RGB").save(files[-1])
    results = predict_files(load_for_inference(tmp / "run"), files, 1, 64, "cpu")
    right = sum(r["predictions"][0]["class"] == Path(r["path"]).name.split("_")[0] for r in results)
    return {"accuracy": accuracy, "png_right_of_12": right}


def _first_test_images(run: Path, data: str, count: int) -> float:
    """The share of the first ``count`` test images the run's checkpoint classifies right, as
    tests/test_serve.py scores it (best/, else last/)."""
    import torch

    from vitkit.data import load_dataset
    from vitkit.evaluate import load_for_inference

    classifier = load_for_inference(run)
    test = load_dataset(data, "test").subset(range(count))
    with torch.no_grad():
        guess = classifier.model(classifier.preprocess.normalize(test.images)).argmax(1)
    return (guess == test.labels).float().mean().item()


def _serve_digits(tmp: Path, seed: int, threads: int, precision: str) -> dict[str, float]:
    """tests/test_serve.py::digits_run, scored on the first 60 test images as the test does."""
    from conftest import tiny_config

    from vitkit.train import train

    cfg = tiny_config(tmp / "run", epochs=8, crop_padding=0, warmup_epochs=0.5, seed=seed, threads=threads)
    cfg = dataclasses.replace(cfg, precision=precision)
    train(cfg, progress=False)
    return {"accuracy": _first_test_images(tmp / "run", "digits", 60)}


def _serve_fashion(tmp: Path, seed: int, threads: int, precision: str) -> dict[str, float]:
    """tests/test_serve.py::fashion_run, scored on the first 60 test images as the test does."""
    from vitkit.train import TrainConfig, train

    small = dict(width=64, depth=2, num_heads=2, mlp_dim=128, stem="conv", stem_channels=16, pool="gap")
    cfg = TrainConfig(
        out=str(tmp / "run"), seed=seed, threads=threads, label_smoothing=0.0, warmup_epochs=0.5, precision=precision,
        data="fashion-mnist", model="vit_tiny_28", model_overrides=small | dict(class_token=False), epochs=4,
        batch_size=64, lr=3e-3, limit_train=5000, limit_val=500,
    )  # fmt: skip
    train(cfg, progress=False)
    return {"accuracy": _first_test_images(tmp / "run", "fashion-mnist", 60)}


def _stream(tmp: Path, seed: int, threads: int, precision: str) -> dict[str, float]:
    """tests/test_stream_train.py::test_trains_from_streamed_shards_and_scores_the_test_shards."""
    from conftest import write_digits
    from test_stream_train import config

    from vitkit.data.shards import write_split_shards
    from vitkit.train import train

    write_digits(tmp / "digits" / "train", 30, classes=4)
    write_digits(tmp / "digits" / "test", 10, classes=4, offset=30)
    write_split_shards(tmp / "digits", tmp / "shards", shard_size=8000)
    cfg = config(tmp / "shards", tmp / "run", seed=seed, threads=threads, precision=precision)
    return {"accuracy": train(cfg, progress=False).accuracy}


def _lr_grid(tmp: Path, seed: int, threads: int, precision: str) -> dict[str, float]:
    """tests/test_lr_grid.py::test_the_grid_picks_the_rate_that_learns: the full run's accuracy
    (asserted 1.0), the held-out loss of lr 1e-2 (asserted < 0.3), and the rate chosen (1e-2)."""
    from test_lr_grid import _dark_and_light

    from vitkit.cli import main

    _dark_and_light(tmp / "data")
    args = ["train", "--data", str(tmp / "data"), "--image-size", "8", "--val-fraction", "0.25"]
    args += ["--set", "width=32", "--set", "depth=1", "--set", "num_heads=2", "--set", "mlp_dim=64"]
    args += ["--set", "patch_size=2", "--batch-size", "16", "--threads", str(threads), "--warmup-steps", "2"]
    args += ["--lr-grid", "1e-9,1e-2,1e4", "--steps", "100", "--out", str(tmp / "grid"), "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--seed", str(seed), "--precision", precision]) == 0
    summary = json.loads((tmp / "grid" / "summary.json").read_text())
    good = summary["lr_grid"]["trials"][1]
    return {"accuracy": summary["accuracy"], "good_val_loss": good["val_loss"], "chosen": summary["lr_grid"]["chosen"]}


CASES: dict[str, tuple[Case, str]] = {
    **{f"finetune-{s}": (_finetune(s), "test_finetune.py, 120 steps") for s in ("timm", "hf", "npz", "vitkit")},
    "digits": (_digits, "test_train.py and test_cli_train.py, 8 epochs; predict on 12 PNGs"),
    "serve-digits": (_serve_digits, "test_serve.py digits_run, first 60 test images"),
    "serve-fashion": (_serve_fashion, "test_serve.py fashion_run, first 60 test images"),
    "stream": (_stream, "test_stream_train.py, 150 steps"),
    "lr-grid": (_lr_grid, "test_lr_grid.py, 3 trials of 10 steps and 70 more"),
}


def _ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases", nargs="*", help="which cases (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases")
    p.add_argument("--seeds", type=_ints, default=_ints("0-4"), help="e.g. 0-4")
    p.add_argument("--threads", type=_ints, default=[1, 2], help="e.g. 1,2")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | auto")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{name}: {what}" for name, (_, what) in CASES.items()))
        return 0
    import os

    os.environ.setdefault("VITKIT_CACHE", tempfile.mkdtemp(prefix="vitkit-spread-cache-"))
    for name in args.cases or list(CASES):
        fn, what = CASES[name]
        scores: dict[str, list[float]] = {}
        for threads in args.threads:
            for seed in args.seeds:
                env = record.environment()
                with tempfile.TemporaryDirectory() as tmp:
                    metrics = fn(Path(tmp), seed, threads, args.precision)
                config = {"case": name, "test": what, "seed": seed, "threads": threads, "precision": args.precision}
                record.append("floor_spread", config, metrics, env=env)
                for key, value in metrics.items():
                    scores.setdefault(key, []).append(value)
                shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                print(f"{name} seed {seed} threads {threads} {args.precision}: {shown}", flush=True)
        for key, values in scores.items():
            mean, sd = statistics.mean(values), statistics.pstdev(values)
            print(
                f"{name} {key}: min {min(values):.4g} mean {mean:.4g} max {max(values):.4g} sd {sd:.3g} "
                f"(n={len(values)}, {args.precision})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
