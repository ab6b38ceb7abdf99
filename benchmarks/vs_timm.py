"""vitkit against timm: the same architecture, the same step, timed in one process.

For each case (model, mode, batch) both libraries' models run through the same step function
(:func:`vitkit.bench.make_step`: random batch, autocast dtype, AdamW for training), and their
timed repeats are interleaved in one loop with fp32 and bf16 side by side, so every ratio in
the table, including "vitkit's fastest mode over timm's fp32", comes from one interleaved run.
timm runs with its defaults (fused attention on) and, on a CPU, also with the explicit attention
path (``fused_attn=False``), so that "timm at its best" is its fastest eager variant of the case.

    python benchmarks/vs_timm.py                       # the full CPU table (about 10 minutes)
    python benchmarks/vs_timm.py --cases vit_tiny_28   # only the cases whose name contains this
    python benchmarks/vs_timm.py --compile --cases vit_tiny_28:train   # add torch.compile'd runs
                                                       # (both attention paths, both libraries)
    python benchmarks/vs_timm.py --device cuda         # on a GPU

Prints the table and appends a record to ``benchmarks/results/vs_timm.jsonl`` (the device, CPU or
GPU, is the record's): every case's rows, the peak probes, and each case's fastest variants.
"""

from __future__ import annotations

import argparse
import os
import time

import record
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vitkit
from vitkit import bench
from vitkit.config import get_config
from vitkit.interop.timm import timm_kwargs
from vitkit.runtime import configure_device, resolve_device

# (preset, mode, batch, repeats): the cases, each the median of 5 interleaved rounds.
CASES = [
    ("vit_tiny_28", "train", 256, 5),
    ("vit_tiny_28", "infer", 256, 5),
    ("vit_ti16", "infer", 64, 5),
    ("vit_ti16", "train", 32, 5),
    ("vit_s16", "infer", 64, 5),
    ("vit_s16", "train", 32, 5),
    ("vit_b16", "infer", 16, 5),
]
# On a GPU the CPU batches leave it idle: batches that fill it, and more repeats (steps are short).
GPU_CASES = [
    ("vit_tiny_28", "train", 1024, 20),
    ("vit_ti16", "train", 256, 20),
    ("vit_s16", "train", 256, 15),
    ("vit_s16", "infer", 512, 15),
    ("vit_b16", "train", 128, 15),
    ("vit_b16", "infer", 512, 15),
]
TIMM_NAMES = {"vit_ti16": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224", "vit_b16": "vit_base_patch16_224"}


def timm_model(preset: str) -> torch.nn.Module:
    """timm's model of the same architecture (same parameter count, same FLOPs)."""
    if preset == "vit_tiny_28":  # no timm name for it: the interop's mapping of the config
        return TimmViT(**timm_kwargs(get_config(preset)))
    return timm.create_model(TIMM_NAMES[preset])


def run_case(preset, mode, batch, repeats, dtypes, compile_, device, peak):
    config = get_config(preset)
    flops = bench.model_flops(config, mode)
    image_shape = (config.in_channels, *config.image_size)
    steps, fused = {}, None
    variants = [(dt, False) for dt in dtypes] + ([(dt, True) for dt in dtypes] if compile_ else [])
    for dtype, compiled in variants:
        for lib in ("timm", "vitkit"):
            with bench.seeded(0):
                model = timm_model(preset) if lib == "timm" else vitkit.create_model(preset)
            if lib == "timm":
                fused = all(b.attn.fused_attn for b in model.blocks)
            model = model.to(device)
            if compiled:
                model = bench.compile_model(model)
            key = f"{lib}/{dtype}{'/compiled' if compiled else ''}"
            steps[key] = bench.make_step(
                model, mode, bench.DTYPES[dtype], batch, device, image_shape, config.num_classes
            )
    if device.type == "cpu":
        # The explicit attention path, in both libraries (timm: every block's fused_attn=False):
        # vitkit's CPU training recipes use it, since torch's CPU flash-attention backward is the
        # slowest kernel of a small ViT's step; timm at its best may be either. Same rounds.
        # With --compile, both libraries' explicit-attention models compiled too.
        explicit = [(dt, lib, c) for dt in dtypes for lib in ("vitkit", "timm") for c in (False, True)[: 1 + compile_]]
        for dtype, lib, compiled in explicit:
            with bench.seeded(0):
                model = vitkit.create_model(preset, fused_attention=False) if lib == "vitkit" else timm_model(preset)
            for block in getattr(model, "blocks", []) if lib == "timm" else []:
                block.attn.fused_attn = False
            model = bench.compile_model(model.to(device)) if compiled else model.to(device)
            steps[f"{lib}/{dtype}/explicit{'/compiled' if compiled else ''}"] = bench.make_step(
                model, mode, bench.DTYPES[dtype], batch, device, image_shape, config.num_classes
            )
    start = time.perf_counter()
    if compile_:  # compile (or load from torch's cache) before the timed loop, and say how long it took
        for key, step in steps.items():
            if key.endswith("compiled"):
                t = time.perf_counter()
                step()
                print(f"  {preset} {mode} {key}: first (compiling) step {time.perf_counter() - t:.0f} s", flush=True)
    timings = bench.time_interleaved(steps, device, warmup=1, repeats=repeats)
    rows = []
    for dtype, compiled in variants:
        suffix = f"/{dtype}{'/compiled' if compiled else ''}"
        t_timm, t_vitkit = timings["timm" + suffix], timings["vitkit" + suffix]
        r_timm = bench.result(t_timm, batch, flops, peak[dtype])
        r_vitkit = bench.result(t_vitkit, batch, flops, peak[dtype])
        rows.append(
            dict(
                model=preset,
                mode=mode,
                batch_size=batch,
                dtype=dtype,
                compiled=compiled,
                timm=r_timm.to_dict(),
                vitkit=r_vitkit.to_dict(),
                ratio=round(r_vitkit.images_per_s / r_timm.images_per_s, 3),  # of the medians
                ratio_paired=round(bench.speedup(t_timm, t_vitkit), 3),  # median of per-round ratios
            )
        )

    # vitkit's fastest variant against timm's fp32 and against timm at its best (its fastest eager
    # variant: any dtype, fused or explicit attention), from the same interleaved rounds
    def fastest(lib: str, compiled: bool | None = None) -> str | None:
        """The key of ``lib``'s fastest variant (only compiled, or only eager, unless None)."""
        keys = [k for k in timings if k.startswith(f"{lib}/") and compiled in (None, k.endswith("compiled"))]
        return min(keys, key=lambda k: timings[k].median) if keys else None

    best, timm_best = fastest("vitkit"), fastest("timm", compiled=False)
    extra = dict(vitkit_fastest=best, vitkit_fastest_images_per_s=round(batch / timings[best].median, 2))
    if "timm/fp32" in timings:
        extra |= dict(
            vitkit_fastest_vs_timm_fp32=round(bench.speedup(timings["timm/fp32"], timings[best]), 3),
            timm_fp32_images_per_s=round(batch / timings["timm/fp32"].median, 2),
        )
    extra |= dict(
        timm_best_eager=timm_best,
        timm_best_eager_images_per_s=round(batch / timings[timm_best].median, 2),
        vitkit_fastest_vs_timm_best_eager=round(bench.speedup(timings[timm_best], timings[best]), 3),
        images_per_s={k: round(batch / t.median, 2) for k, t in timings.items()},
    )
    timm_c, vitkit_c = fastest("timm", compiled=True), fastest("vitkit", compiled=True)
    if timm_c and vitkit_c:  # both libraries compiled, each at its best
        extra |= dict(
            timm_best_compiled=timm_c,
            vitkit_best_compiled=vitkit_c,
            vitkit_vs_timm_both_compiled=round(bench.speedup(timings[timm_c], timings[vitkit_c]), 3),
        )
    for key in timings:
        if "/explicit" in key:  # the explicit-attention variants, against the same-dtype, same-compile SDPA one
            sdpa = key.replace("/explicit", "")
            extra[f"{key}_vs_sdpa"] = round(bench.speedup(timings[sdpa], timings[key]), 3)
    print(f"  ({preset} {mode}: {time.perf_counter() - start:.0f} s)", flush=True)
    return rows, extra, fused


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'case':<24} {'dtype':<13} {'timm img/s':>10} {'vitkit img/s':>12} {'timm MFU':>8} {'vitkit MFU':>10} "
        f"{'vitkit/timm':>11} {'paired':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        case = f"{r['model']} {r['mode']} b{r['batch_size']}"
        dtype = r["dtype"] + (" compiled" if r["compiled"] else "")
        print(
            f"{case:<24} {dtype:<13} {r['timm']['images_per_s']:>10.1f} {r['vitkit']['images_per_s']:>12.1f} "
            f"{100 * r['timm']['mfu']:>7.1f}% {100 * r['vitkit']['mfu']:>9.1f}% {r['ratio']:>10.2f}x "
            f"{r['ratio_paired']:>5.2f}x"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--cases", default="", help="run only cases whose 'preset:mode' contains this text")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models (both libraries)")
    p.add_argument("--repeats-scale", type=float, default=1.0, help="multiply every case's repeat count")
    p.add_argument("--note", default="", help="free text kept in the record, e.g. that the machine was shared")
    args = p.parse_args()

    device = resolve_device(args.device)
    configure_device(device)
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        bench.parse_dtype(d)
    cases = [c for c in (GPU_CASES if device.type == "cuda" else CASES) if args.cases in f"{c[0]}:{c[1]}"]
    if not cases:
        raise SystemExit(f"no case matches --cases {args.cases!r}")
    env = record.environment(device.type)
    # The peak is probed before and after the cases; the best of the two is the least disturbed.
    peak = {d: bench.peak_matmul_flops(device, bench.DTYPES[d]) for d in dtypes}
    print("peak matmul TFLOP/s (first probe):", {d: round(v / 1e12, 3) for d, v in peak.items()}, flush=True)
    rows, fastest, fused = [], {}, {}
    for preset, mode, batch, repeats in cases:
        n = max(2, round(repeats * args.repeats_scale))
        case_rows, extra, fused[preset] = run_case(preset, mode, batch, n, dtypes, args.compile, device, peak)
        rows += case_rows
        if extra:
            fastest[f"{preset}:{mode}"] = extra
    peak_end = {d: bench.peak_matmul_flops(device, bench.DTYPES[d]) for d in dtypes}
    peak_best = {d: max(peak[d], peak_end[d]) for d in dtypes}
    for r in rows:  # MFU against the best probe of the run
        for lib in ("timm", "vitkit"):
            r[lib]["mfu"] = round(r[lib]["tflops"] / (peak_best[r["dtype"]] / 1e12), 4)

    print()
    print_table(rows)
    print("ratio: of the median img/s; paired: median over rounds of timm time / vitkit time (same round).")
    for k, v in fastest.items():
        print(
            f"{k}: vitkit's fastest ({v['vitkit_fastest']}) is {v.get('vitkit_fastest_vs_timm_fp32', 0):.2f}x timm fp32 "
            f"(0: not run) and {v['vitkit_fastest_vs_timm_best_eager']:.2f}x timm at its best ({v['timm_best_eager']}, "
            f"{v['timm_best_eager_images_per_s']:.0f} img/s)"
        )
        if "timm_best_compiled" in v:
            print(
                f"{k}: both compiled, each at its best: vitkit ({v['vitkit_best_compiled']}) "
                f"{v['vitkit_vs_timm_both_compiled']:.2f}x timm ({v['timm_best_compiled']})"
            )
        print(f"{k}: img/s of every variant: {v['images_per_s']}")

    config = dict(
        cases=[f"{c[0]}:{c[1]}" for c in cases],
        dtypes=dtypes,
        compile=args.compile,
        repeats_scale=args.repeats_scale,
        note=args.note,
        versions=dict(timm=timm.__version__, vitkit=vitkit.__version__),
    )
    metrics = dict(
        timm_fused_attention=fused,
        peak_tflops={d: dict(start=round(peak[d] / 1e12, 4), end=round(peak_end[d] / 1e12, 4)) for d in dtypes},
        cases=rows,
        fastest_vs_timm_fp32=fastest,
    )
    record.append("vs_timm", config, metrics, env=env, load_end=[round(x, 2) for x in os.getloadavg()])
    print(f"appended to {record.RESULTS / 'vs_timm.jsonl'}")


if __name__ == "__main__":
    main()
