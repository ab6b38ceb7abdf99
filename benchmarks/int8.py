"""CPU inference of a trained checkpoint: fp32, bf16 (autocast and cast weights), int8 (torchao and
onnxruntime): accuracy on the whole Fashion-MNIST test set and images per second.

Every variant is built by :func:`vitkit.quantize.inference_model`, the code behind
``vitkit evaluate --int8 / --onnx / --precision bf16-weights``. Accuracy and top-1 agreement with
fp32 PyTorch come from one pass over the 10,000 test images; speed from a fixed batch of 256 test
images, all variants' timed repeats interleaved (:func:`vitkit.bench.time_interleaved`) on 2
threads, so that each ratio compares runs under the same load (onnxruntime's threads do not
busy-wait between runs here: in a side measurement, spinning threads took about 15 % from the
PyTorch run that followed, and turning it off cost onnxruntime int8 about 13 %). Extra rows
answer two questions: does onnxruntime's ``quant_pre_process`` help (``onnxruntime int8,
pre-processed``; ``vitkit export --int8`` leaves it out), and what does torchao's int8 gain
once ``torch.compile`` fuses its quantisation ops (``--compile``: compiled fp32 and int8; each
compile takes tens of seconds on 2 cores).

    python benchmarks/int8.py                                   # the main job's model
    python benchmarks/int8.py runs/NAME --compile               # another run, with compiled rows

Prints the table and appends a record to ``benchmarks/results/int8.jsonl``: the checkpoint and the
split that chose it, each variant's accuracy, agreement and speed, and the libraries' versions.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import record
import torch

from vitkit import bench
from vitkit.data import load_dataset
from vitkit.evaluate import load_for_inference
from vitkit.quantize import compare_logits, inference_model
from vitkit.runtime import autocast, keep_freed_memory

DEFAULT_RUN = Path(__file__).resolve().parent.parent / "runs" / "main-20261127-053258"
CPU = torch.device("cpu")

Forward = Callable[[torch.Tensor], torch.Tensor]


def variants(model: torch.nn.Module, threads: int, compile_: bool) -> dict[str, Forward]:
    """Each row's forward: normalised images (B, C, H, W) -> fp32 logits."""
    autocast_model = model

    def bf16_autocast(x: torch.Tensor) -> torch.Tensor:
        with autocast(CPU, True):
            return autocast_model(x).float()

    rows: dict[str, Forward] = {
        "pytorch fp32": model,
        "pytorch bf16 autocast": bf16_autocast,
        "pytorch bf16 weights": inference_model(model, "bf16"),
        "pytorch int8 (torchao)": inference_model(model, "int8"),
        "onnxruntime fp32": inference_model(model, "fp32", "onnxruntime", threads, spin=False),
        "onnxruntime int8": inference_model(model, "int8", "onnxruntime", threads, spin=False),
        "onnxruntime int8, pre-processed": inference_model(
            model, "int8", "onnxruntime", threads, preprocess=True, spin=False
        ),
    }
    if compile_:
        rows["pytorch fp32, compiled"] = bench.compile_model(model)
        rows["pytorch int8 (torchao), compiled"] = bench.compile_model(inference_model(model, "int8"))
    return rows


@torch.inference_mode()
def all_logits(forward: Forward, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of every image, in batches of ``batch_size`` (the last one full size too, padded, so a
    compiled model sees one shape)."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        short = batch_size - x.shape[0]
        if short:
            x = torch.cat([x, x[:1].expand(short, *x.shape[1:])])
        out.append(forward(x).float()[: batch_size - short])
    return torch.cat(out)


def timed(rows: dict[str, Forward], batch: torch.Tensor, repeats: int) -> dict[str, bench.Timing]:
    def step(forward: Forward) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                forward(batch)

        return run

    return bench.time_interleaved({name: step(f) for name, f in rows.items()}, CPU, warmup=2, repeats=repeats)


def onnx_sizes(model: torch.nn.Module, tmp: Path) -> dict[str, int]:
    """Bytes of the fp32 and int8 graphs, as ``vitkit export`` writes them."""
    from vitkit.export import export_onnx
    from vitkit.quantize import export_onnx_int8

    return {
        "fp32": export_onnx(model, tmp / "fp32.onnx").stat().st_size,
        "int8": export_onnx_int8(model, tmp / "int8.onnx").stat().st_size,
    }


def versions() -> dict[str, str]:
    """The libraries each variant runs on (torch's is the record's)."""
    import torchao

    return {
        "python": platform.python_version(),
        "torchao": torchao.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }


def table(rows: dict[str, dict]) -> str:
    head = f"{'variant':<34} {'top-1':>7} {'delta':>7} {'agree':>7} {'img/s':>8} {'x fp32':>7} {'x autocast':>10} {'spread':>7}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(
            f"{name:<34} {r['accuracy']:>7.2%} {r['accuracy_delta_points']:>+7.2f} {r['top1_agreement']:>7.2%} "
            f"{r['images_per_s']:>8.0f} {r['speedup_vs_fp32']:>7.2f} {r['speedup_vs_bf16_autocast']:>10.2f} "
            f"{r['spread']:>7.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", default=str(DEFAULT_RUN), help="run folder or checkpoint folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="add torch.compile'd fp32 and torchao int8 rows")
    args = p.parse_args()

    env = record.environment()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as vitkit's commands do on a CPU
    classifier = load_for_inference(args.run)
    model, pre = classifier.model.eval(), classifier.preprocess
    ds = load_dataset(pre.dataset or "fashion-mnist", "test", None, pre, class_names=pre.class_names)
    images, labels = pre.normalize(ds.images), ds.labels

    start = time.perf_counter()
    rows = variants(model, args.threads, args.compile)
    logits = {name: all_logits(f, images, args.batch_size) for name, f in rows.items()}
    timings = timed(rows, images[: args.batch_size], args.repeats)
    reference = logits["pytorch fp32"]
    results = {}
    for name in rows:
        a = compare_logits(reference, logits[name], labels)
        results[name] = {
            "accuracy": round(a.candidate_accuracy, 4),
            "accuracy_delta_points": round(100 * (a.candidate_accuracy - a.reference_accuracy), 2),
            "top1_agreement": round(a.top1_agreement, 4),
            "max_abs_logit_diff": round(a.max_abs_diff, 5),
            "relative_logit_diff": round(a.relative_diff, 4),
            "images_per_s": round(args.batch_size / timings[name].median, 1),
            "spread": round(timings[name].spread, 3),
            "speedup_vs_fp32": round(bench.speedup(timings["pytorch fp32"], timings[name]), 3),
            "speedup_vs_bf16_autocast": round(bench.speedup(timings["pytorch bf16 autocast"], timings[name]), 3),
            "seconds_per_batch": [round(s, 5) for s in timings[name].seconds],
        }

    with tempfile.TemporaryDirectory() as tmp:
        sizes = onnx_sizes(model, Path(tmp))
    print(table(results))
    c = model.config
    checkpoint = Path(classifier.checkpoint)
    config = {
        "checkpoint": str(checkpoint),
        "model": f"stem {c.stem!r}, width {c.width}, depth {c.depth}, {c.grid_size[0] * c.grid_size[1]} tokens; "
        "int8 covers the Linear layers (qkv, proj, MLP, head), not the conv stem or attention's two products",
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "test_images": int(images.shape[0]),
        "compile": args.compile,
        "versions": versions(),
        "scored_on": "test",
        "best_chosen_on": record.best_chosen_on(checkpoint.parent) if checkpoint.name == "best" else None,
    }
    metrics = {"variants": results, "onnx_bytes": sizes, "wall_s": round(time.perf_counter() - start, 1)}
    load_end = [round(v, 2) for v in os.getloadavg()]
    record.append("int8", config, metrics, env=env, load_end=load_end)
    print(f"load average at start {env['load']}; appended to {record.RESULTS / 'int8.jsonl'}")


if __name__ == "__main__":
    main()
