"""``vitkit bench``: images/s, achieved TFLOP/s and MFU of one model, mode and dtype."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .. import bench
from ..config import ViTConfig, get_config
from ..errors import ConfigError
from ..files import atomic_write_json
from ..model import VisionTransformer
from ..preprocess import Preprocess
from ..runtime import configure_device, resolve_device
from ..train.config import RECIPES
from . import HelpFormatter, add_device
from .train import add_set_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        formatter_class=HelpFormatter,
        help="measure speed: images/s, TFLOP/s and MFU against this device's measured matmul peak",
        description=(
            "Time a training step (forward, backward, AdamW) or an inference forward on random data, "
            "after a warm-up, and report the median with its spread. MFU divides the achieved FLOP rate "
            "(FLOPs counted from the config) by the peak matmul rate measured in the same run."
        ),
    )
    p.add_argument("--model", default=None, help="preset name, e.g. vit_b16, ViT-S/16, vit_tiny_28 (default: vit_b16)")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="the model a training recipe builds, at the size its data arrive (fmnist-10m: the main job's)",
    )
    add_set_flag(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per timed step")
    p.add_argument(
        "--mode", choices=bench.MODES, default="infer", help="infer: a forward pass; train: forward, backward and AdamW"
    )
    p.add_argument("--dtype", choices=tuple(bench.DTYPES), default="bf16", help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (cached by torch)")
    add_device(p)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=5, help="timed steps")
    p.add_argument("--peak-size", type=int, default=None, help="matmul size of the peak probe (4096 CPU, 8192 GPU)")
    p.add_argument(
        "--profile", action="store_true", help="also profile the step: time by kind of work and the slowest operators"
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    p.set_defaults(func=run)


def bench_config(model: str | None, recipe: str | None, overrides: dict[str, Any]) -> ViTConfig:
    """The model to time: a preset, or the one a recipe trains (its model and overrides, at the
    image size and channels its data arrive with: Fashion-MNIST's 28 px plus the recipe's pad)."""
    if recipe is None:
        return get_config(model or "vit_b16", **overrides)
    r = RECIPES[recipe]
    base = get_config(model or r.get("model", "vit_b16"))
    channels = r.get("channels") or base.in_channels
    pre = Preprocess(r.get("image_size") or base.image_size, channels, pad=r.get("pad", 0))
    fields = dict(image_size=pre.input_size, in_channels=channels)
    return base.replace(**(fields | r.get("model_overrides", {}) | overrides))


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--batch-size and --repeats must be >= 1 and --warmup >= 0")
    device = resolve_device(args.device)
    dtype = bench.parse_dtype(args.dtype)
    configure_device(device)
    config = bench_config(args.model, args.recipe, dict(args.overrides))
    name = args.model or args.recipe or "vit_b16"
    analytic = config.flops()
    counted = bench.counted_flops(config)
    with bench.seeded(0):
        model = VisionTransformer(config).to(device)
    if args.compile:
        model = bench.compile_model(model)
    step = bench.make_step(
        model, args.mode, dtype, args.batch_size, device, (config.in_channels, *config.image_size), config.num_classes
    )
    where = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    compiled = " compiled" if args.compile else ""
    print(f"{name} {args.mode} {args.dtype}{compiled}, batch {args.batch_size}, on {device.type} ({where})")
    print(
        f"forward GFLOPs/image: {analytic / 1e9:.3f} counted from the config, {counted / 1e9:.3f} by "
        f"torch.utils.flop_counter ({100 * (analytic - counted) / counted:+.2f} %)"
    )
    probes = bench.peak_probes(device, dtype, size=args.peak_size)  # before the steps and after them:
    timing = bench.time_interleaved({"model": step}, device, warmup=args.warmup, repeats=args.repeats)["model"]
    probes += bench.peak_probes(device, dtype, size=args.peak_size)  # a drift in the machine shows
    peak = max(probes)
    res = bench.result(timing, args.batch_size, bench.model_flops(config, args.mode), peak)
    print(f"images/s: {res.images_per_s:.1f} (median of {args.repeats}, spread {100 * res.spread:.1f} %)")
    print(
        f"achieved: {res.tflops:.3f} TFLOP/s; peak {args.dtype} matmul measured now: {res.peak_tflops:.3f} TFLOP/s, "
        f"the best of {len(probes)} probes (half before the steps, half after) from {min(probes) / 1e12:.3f} "
        f"(spread {100 * (peak - min(probes)) / peak:.0f} %)"
    )
    print(f"MFU: {100 * res.mfu:.1f} % of the best probe, {100 * res.tflops * 1e12 / min(probes):.1f} % of the worst")
    profile = bench.profile_step(step, device) if args.profile else None
    if profile is not None:
        print(profile.table())
    if args.json:
        record = dict(
            model=name,
            params=sum(p.numel() for p in model.parameters()),
            recipe=args.recipe,
            overrides=dict(args.overrides),
            mode=args.mode,
            dtype=args.dtype,
            compile=args.compile,
            batch_size=args.batch_size,
            device=device.type,
            gflops_forward=analytic / 1e9,
            gflops_counted=counted / 1e9,
            peak_tflops=round(res.peak_tflops, 4),
            peak_probes_tflops=[round(p / 1e12, 4) for p in probes],
            peak_spread=round((peak - min(probes)) / peak, 3),
            **res.to_dict(),
        )
        if profile is not None:
            record["profile"] = profile.to_dict()
        atomic_write_json(args.json, record)
    return 0
