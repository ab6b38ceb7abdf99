"""Where and how the arithmetic runs: the device, the precision, the CPU threads.

Each of these is decided here and nowhere else, so ``train``, ``evaluate``, ``predict``,
``bench`` and the benchmarks resolve ``--device auto`` and ``--precision auto`` the same way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")


# ----------------------------------------------------------------------------- device
def resolve_device(name: str | None = "auto") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"auto"`` (``None``): CUDA when present."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not supported; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers the work it claims to."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_device(device: torch.device) -> None:
    """Settings that only make things faster: cuDNN autotuning and TF32 for fp32 matmuls on GPUs
    that have it. Nothing to do on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ----------------------------------------------------------------------------- precision
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (``auto``, ``bf16``, ``fp32``) means bf16 autocast on ``device``:
    ``auto`` picks it where the hardware computes in bf16 natively."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: choose auto, bf16 or fp32")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` (matmuls in bf16, reductions in fp32), or a no-op for fp32."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- threads
def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
