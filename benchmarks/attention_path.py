"""Which attention path is faster, by device, mode and token count: the measurements behind
``vitkit.runtime.attention_path``, the rule a training run applies when neither ``--set
fused_attention=...`` nor a recipe chose.

    python benchmarks/attention_path.py            # the four CPU cases below, ~2 minutes

For each case, one model is built twice with the same weights, once on PyTorch's fused SDPA
kernel and once on the written-out path (``VisionTransformer.set_fused_attention``), and the two
steps (``vitkit.bench.make_step``: the training loop's own step, or an inference forward) are
timed interleaved in this process (``time_interleaved``: A B, B A, ...), so that the ratio holds
under a changing load. Appends one record per case to ``benchmarks/results/attention_path.jsonl``.
Run it alone: the images/s are the measurement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import record
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit import create_model  # noqa: E402
from vitkit.bench import make_step, parse_dtype, seeded, speedup, time_interleaved  # noqa: E402
from vitkit.runtime import attention_path, set_threads  # noqa: E402

# (preset, mode, dtype, batch): the main job's token count (7x7 patches + class token = 50) and
# ViT-Ti/16 at 224 px (197 tokens), training and inference
CASES = [
    ("vit_tiny_28", "train", "bf16", 256),
    ("vit_tiny_28", "train", "fp32", 256),
    ("vit_tiny_28", "infer", "bf16", 256),
    ("vit_tiny_28", "infer", "fp32", 256),
    ("vit_ti16", "train", "bf16", 32),
    ("vit_ti16", "infer", "bf16", 32),
    ("vit_ti16", "infer", "fp32", 32),
]


def measure(preset: str, mode: str, dtype: str, batch: int, repeats: int) -> dict:
    """images/s of each path and explicit / fused, in one interleaved run."""
    device = torch.device("cpu")
    steps = {}
    for name, fused in (("fused", True), ("explicit", False)):
        with seeded(0):
            model = create_model(preset)
        model.set_fused_attention(fused)
        c = model.config
        shape = (c.in_channels, *c.image_size)
        steps[name] = make_step(model, mode, parse_dtype(dtype), batch, device, shape, c.num_classes)
    timing = time_interleaved(steps, device, warmup=2, repeats=repeats)
    tokens = c.num_prefix_tokens + (c.image_size[0] // c.patch_size) * (c.image_size[1] // c.patch_size)
    return {
        "tokens": tokens,
        "images_per_s": {k: round(batch / t.median, 1) for k, t in timing.items()},
        "spread": {k: round(t.spread, 3) for k, t in timing.items()},
        "explicit_over_fused": round(speedup(timing["fused"], timing["explicit"]), 3),
        "rule_fused": attention_path(device, training=mode == "train", bf16=dtype == "bf16")[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of each path")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    set_threads(args.threads)
    for preset, mode, dtype, batch in CASES:
        env = record.environment()
        metrics = measure(preset, mode, dtype, batch, args.repeats)
        config = {"model": preset, "mode": mode, "dtype": dtype, "batch_size": batch, "device": "cpu"}
        config |= {"threads": torch.get_num_threads(), "repeats": args.repeats}
        record.append("attention_path", config, metrics, env=env)
        ips = metrics["images_per_s"]
        print(
            f"{preset} {mode} {dtype} b{batch} ({metrics['tokens']} tokens): fused {ips['fused']:.0f}, explicit "
            f"{ips['explicit']:.0f} images/s, explicit/fused {metrics['explicit_over_fused']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
