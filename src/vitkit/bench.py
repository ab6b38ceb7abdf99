"""Speed measurement: timed repeats, FLOP counts, this device's peak matmul rate, and MFU.

Model FLOPs utilisation (MFU, Chowdhery et al. 2022, app. B) is the FLOP rate a model achieves
divided by the rate the hardware could deliver. Both numbers come from the same run here:

- the model's FLOPs are counted analytically from its config (:meth:`ViTConfig.flops`, matmuls
  and attention), checked against ``torch.utils.flop_counter`` by :func:`counted_flops`, and a
  training step is taken as 3x the forward (the backward computes two products per forward one);
- the peak is *measured*, not read from a datasheet: :func:`peak_matmul_flops` times a large
  square matmul in the benchmark's dtype and keeps the best of a few tries.

Timings interleave the candidates (:func:`time_interleaved`): on a machine shared with other jobs
the load changes from second to second, and alternating A, B, A, B ... exposes both to the same
load, so their *ratio* is stable even when absolute numbers are not.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import ViTConfig
from .errors import ConfigError
from .runtime import autocast, synchronize
from .train.optim import adamw, param_groups
from .train.step import TrainStep

MODES = ("train", "infer")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (grad of inputs and of weights: two matmuls each)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {tuple(DTYPES)}")
    return DTYPES[name]


# ----------------------------------------------------------------------------- FLOPs
def model_flops(config: ViTConfig, mode: str) -> int:
    """FLOPs of one image: the analytic forward count, times 3 for a training step."""
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {MODES}")
    forward = config.flops()
    return forward * (TRAIN_FLOPS_PER_FORWARD if mode == "train" else 1)


def counted_flops(config: ViTConfig) -> int:
    """Forward FLOPs of one image as ``torch.utils.flop_counter`` counts them.

    The model is built and run on the meta device (shapes only, no memory, no arithmetic), with
    the explicit attention path, because the counter sees nothing inside CPU SDPA.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .model import VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(config.replace(fused_attention=False)).eval()
        x = torch.empty(1, config.in_channels, *config.image_size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- peak matmul probe
def peak_probes(
    device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 3, min_seconds: float = 0.5
) -> list[float]:
    """The FLOP/s of each of ``repeats`` tries of a large square matmul in ``dtype`` on ``device``.

    Each try runs back-to-back products until ``min_seconds`` have passed, checking the clock
    every ~50 ms of work. Sizes: 4096 on CPU, 8192 on GPU (large enough that the kernel runs at
    its steady rate). On a CPU the tries differ by tens of percent (frequency, other work), so
    :func:`peak_matmul_flops` keeps the best and ``vitkit bench`` reports the spread.
    """
    size = size or (8192 if device.type == "cuda" else 4096)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3
    rates = []
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: library initialisation, kernel selection
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)  # a first estimate of the time of one product
        synchronize(device)
        chunk = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))  # products per clock check
        for _ in range(repeats):
            count, start = 0, time.perf_counter()
            while True:
                for _ in range(chunk):
                    torch.mm(a, b)
                synchronize(device)
                count += chunk
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            rates.append(count * flops / elapsed)
    return rates


def peak_matmul_flops(
    device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 3, min_seconds: float = 0.5
) -> float:
    """The best FLOP/s of :func:`peak_probes`: the try least disturbed by other work."""
    return max(peak_probes(device, dtype, size, repeats, min_seconds))


# ----------------------------------------------------------------------------- one step of work
def make_step(
    model: nn.Module,
    mode: str,
    dtype: torch.dtype,
    batch_size: int,
    device: torch.device,
    image_shape: tuple[int, int, int],
    num_classes: int,
    lr: float = 1e-4,
    seed: int = 0,
) -> Callable[[], None]:
    """A function that runs one step on a fixed random batch.

    ``infer``: the forward under ``torch.inference_mode`` (no autograd bookkeeping).
    ``train``: :class:`vitkit.train.TrainStep`, the step ``vitkit train`` takes (forward, loss,
    backward, gradient clipping at 1, fused AdamW), so that the figures are the training loop's.
    Works for any model that maps (B, C, H, W) to (B, classes), so timm's and vitkit's models run
    through exactly the same code.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {MODES}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *image_shape, generator=g).to(device)
    y = torch.randint(0, max(num_classes, 1), (batch_size,), generator=g).to(device)
    bf16 = dtype == torch.bfloat16

    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast(device, bf16):
                model(x)

        return infer

    model.train()
    step = TrainStep(model, adamw(param_groups(model, 0.05), lr, device), device, bf16, clip_grad=1.0)

    def train() -> None:
        step([(x, y)])

    return train


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds per step of each timed repeat; the median is the figure, the spread its noise."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(slowest - fastest) / median: 0.05 means the repeats lie within 5 % of each other."""
        return (max(self.seconds) - min(self.seconds)) / self.median


def time_interleaved(
    steps: dict[str, Callable[[], None]], device: torch.device, warmup: int = 2, repeats: int = 5
) -> dict[str, Timing]:
    """Run each step ``warmup`` times, then ``repeats`` rounds of one timed run of each, in turn.

    Odd rounds go in reverse order (A B, B A, A B, ...), so that a drift in the machine's load
    or clock during a round does not favour whichever step always comes first.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    synchronize(device)
    timings = {name: Timing() for name in steps}
    for r in range(repeats):
        order = list(steps.items())
        for name, step in order[::-1] if r % 2 else order:
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            timings[name].seconds.append(time.perf_counter() - start)
    return timings


def speedup(baseline: Timing, candidate: Timing) -> float:
    """How many times faster ``candidate`` is: the median over rounds of baseline / candidate
    seconds. Pairing the two runs of each round cancels load that lasts the round."""
    return statistics.median(b / c for b, c in zip(baseline.seconds, candidate.seconds, strict=True))


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Fixed initial weights, without changing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass
class Result:
    """One benchmark case's figures; ``to_dict`` is what the JSON files keep."""

    images_per_s: float
    spread: float
    tflops: float  # achieved, model FLOPs per second / 1e12
    peak_tflops: float  # measured matmul peak of this device and dtype
    seconds: list[float]

    @property
    def mfu(self) -> float:
        return self.tflops / self.peak_tflops

    def to_dict(self) -> dict:
        return dict(
            images_per_s=round(self.images_per_s, 2),
            spread=round(self.spread, 3),
            tflops=round(self.tflops, 4),
            mfu=round(self.mfu, 4),
            seconds=[round(s, 5) for s in self.seconds],
        )


def result(timing: Timing, batch_size: int, flops_per_image: int, peak_flops: float) -> Result:
    images_per_s = batch_size / timing.median
    return Result(
        images_per_s=images_per_s,
        spread=timing.spread,
        tflops=images_per_s * flops_per_image / 1e12,
        peak_tflops=peak_flops / 1e12,
        seconds=timing.seconds,
    )


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` with the default Inductor backend. Compiled code is cached on disk by
    torch (its default Inductor cache), so the next process skips most of the compile time."""
    return torch.compile(model)


# ----------------------------------------------------------------------------- where the time goes
# Operator name patterns (torch.profiler's aten names, searched in order) -> the kind of work.
# A step's self time summed by kind says what a faster step must attack: matmuls are the work the
# FLOP count measures; the rest is overhead around them.
OP_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimiser and clipping", ("adam", "sgd", "foreach", "vector_norm", "clip")),
    ("attention (SDPA)", ("attention",)),
    ("matmul", ("mm", "linear", "matmul", "baddbmm")),
    ("convolution", ("conv",)),
    ("dtype casts and copies", ("copy_", "_to_copy", "clone", "contiguous")),
    ("normalisation", ("layer_norm", "batch_norm")),
    ("activation", ("gelu", "relu", "threshold", "silu")),
    ("softmax and loss", ("softmax", "log_softmax", "nll", "cross_entropy")),
    ("elementwise and reductions", ("add", "mul", "div", "sub", "sum", "mean", "where", "fill", "neg")),
)


def op_kind(name: str) -> str:
    """The kind of work an aten operator name does (:data:`OP_KINDS`), or "other"."""
    name = name.lower()
    for kind, patterns in OP_KINDS:
        if any(p in name for p in patterns):
            return kind
    return "other"


@dataclass
class Profile:
    """Self time of one step by kind of work and by operator (seconds per step)."""

    by_kind: dict[str, float]
    top_ops: list[tuple[str, float, int]]  # (operator, seconds per step, calls per step)
    seconds_per_step: float

    def table(self) -> str:
        total = sum(self.by_kind.values())
        lines = [f"{'kind of work':<40} {'ms/step':>8} {'share':>6}"]
        for kind, s in sorted(self.by_kind.items(), key=lambda kv: -kv[1]):
            lines.append(f"{kind:<40} {1e3 * s:>8.2f} {100 * s / total:>5.1f}%")
        lines.append(f"{'operator':<40} {'ms/step':>8} {'calls':>6}")
        lines += [f"{name:<40} {1e3 * s:>8.2f} {calls:>6}" for name, s, calls in self.top_ops]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "seconds_per_step": self.seconds_per_step,
            "ms_per_step_by_kind": {k: round(1e3 * v, 3) for k, v in self.by_kind.items()},
            "top_ops": [{"op": n, "ms_per_step": round(1e3 * s, 3), "calls_per_step": c} for n, s, c in self.top_ops],
        }


def profile_step(step: Callable[[], None], device: torch.device, steps: int = 10, top: int = 12) -> Profile:
    """Run ``step`` ``steps`` times under torch.profiler and sum the operators' self time by kind.

    Only aten operators count (``aten::``), each with its *self* time, so nothing is counted
    twice; what is left between them (Python, autograd's engine; on a GPU, the device idle) is the
    gap between their sum and the step's wall time. The profiler's own cost lands there too.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    wall = (time.perf_counter() - start) / steps
    by_kind: dict[str, float] = {}
    ops = []
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        seconds = (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
        seconds /= steps
        kind = op_kind(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        ops.append((event.key, seconds, event.count // steps))
    ops.sort(key=lambda o: -o[1])
    by_kind["between operators (Python, autograd)"] = max(wall - sum(by_kind.values()), 0.0)
    return Profile(by_kind, ops[:top], wall)
