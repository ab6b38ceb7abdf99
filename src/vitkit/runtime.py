"""Where and how the arithmetic runs: the device, the precision, the CPU threads.

Each of these is decided here and nowhere else, so ``train``, ``evaluate``, ``predict``,
``bench`` and the benchmarks resolve ``--device auto`` and ``--precision auto`` the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

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
    """Settings that only make things faster: on a CPU, :func:`keep_freed_memory`; on a GPU, cuDNN
    autotuning and TF32 for fp32 matmuls where the GPU has it (for benchmarks: TF32 changes fp32
    results in their last digits)."""
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory PyTorch frees, instead of returning it to the system.

    A CPU training step allocates and frees the same few hundred megabytes of activations every
    time. With glibc's defaults, large blocks come from fresh ``mmap`` pages and freed memory at
    the top of the heap is handed back, so every step pays page faults and zeroing again, and how
    much it pays depends on the order of its allocations. Serving every block up to 32 MiB from
    the heap and trimming it only above 1 GiB removes both (PyTorch's CPU performance guide
    recommends jemalloc or tcmalloc for the same reason); the cost is that the process keeps its
    peak memory. Returns whether the settings took (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        settings = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 64 * 2**20))
        return all(libc.mallopt(key, value) == 1 for key, value in settings)
    except (OSError, AttributeError):  # not glibc (musl, ...): its allocator as it is
        return False


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


def attention_path(device: torch.device, training: bool, bf16: bool) -> tuple[bool, str]:
    """(whether to use PyTorch's fused SDPA kernel, why) for a model that did not choose its path.

    Measured (``benchmarks/attention_path.py``: interleaved, the same weights and batch; records in
    ``benchmarks/results/attention_path.jsonl``; Intel Xeon, 2 cores): on a CPU, SDPA's backward
    under bf16 autocast is the slow part. Training in bf16 ran 1.4-2.0x as fast on the explicit
    path (1.56x at 50 tokens, 28-px inputs and patch 4; 1.39x at 197, ViT-Ti/16 at 224 px); in
    fp32 the two trained level (SDPA ahead in paired rounds, 0.89); inference ran 1.05-1.11x as
    fast through SDPA. A GPU runs SDPA's flash and memory-efficient kernels."""
    if device.type != "cpu":
        return True, f"fused SDPA on {device.type}"
    if training and bf16:
        return False, "the explicit path: training under bf16 on a CPU, where SDPA's backward is slower"
    return (
        True,
        f"fused SDPA: {'training in fp32' if training else 'inference'} on a CPU, where it is as fast or faster",
    )


# ----------------------------------------------------------------------------- threads
def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not all the machine has; where the
    OS has no affinity call (macOS, Windows), all of them. The one place that counts cores:
    ``os.cpu_count`` alone over-counts under ``taskset`` or a container's CPU set."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU time of this process's cores, in clock ticks, read at one moment.

    ``busy`` counts every tick not idle, including steal (time a hypervisor gave to another
    guest); ``own`` counts the ticks of this job's own processes, which are not contention.
    """

    busy: int
    total: int
    own: int


def threads_from_samples(before: CpuSample, after: CpuSample, cores: int, processes: int = 1) -> tuple[int, str]:
    """The threads each of ``processes`` processes should use on ``cores`` cores, given two CPU
    samples a short window apart, and why.

    An OpenMP thread whose sibling is descheduled waits for it at every barrier, so on a busy
    machine more threads can be many times slower than fewer (the README has the figures). Each
    core that other programs kept busy for at least half the window is left to them; an idle
    machine gets all its cores, as PyTorch's own default would.
    """
    share = cores // max(processes, 1) or 1
    window = after.total - before.total
    if window <= 0:
        return share, f"all {cores} core(s) (no CPU time passed between the samples)"
    others = max(0, (after.busy - before.busy) - (after.own - before.own))
    busy_cores = others / window * cores
    free = cores - min(cores - 1, int(busy_cores + 0.5))
    threads = max(1, free // max(processes, 1))
    if free == cores:
        return threads, f"all {cores} core(s){_per_process(processes)}; other programs used {busy_cores:.2f} core(s)"
    return threads, (
        f"{free} of {cores} core(s){_per_process(processes)}: other programs kept {busy_cores:.2f} core(s) busy, "
        "and threads that wait for a descheduled sibling are slower than fewer threads; pass --threads to override"
    )


def _per_process(processes: int) -> str:
    return f" shared by {processes} processes" if processes > 1 else ""


def sample_cpu(cpus: Iterable[int], own_pids: Iterable[int], stat: Path = Path("/proc/stat")) -> CpuSample | None:
    """Read /proc/stat's lines for ``cpus`` and the CPU time of ``own_pids`` (None off Linux)."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    try:
        for line in stat.read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in wanted:
                user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
                busy += user + nice + system + irq + softirq + steal
                total += user + nice + system + idle + iowait + irq + softirq + steal
    except (OSError, ValueError):
        return None
    return CpuSample(busy, total, sum(_process_ticks(p) for p in set(own_pids)))


def _process_ticks(pid: int) -> int:
    """utime + stime of one process (0 once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (name) ": state is field 3
    return int(fields[11]) + int(fields[12])


def _job_pids(processes: int) -> set[int]:
    """This process, its children, and under torchrun (several processes per machine) the other
    workers, which torchrun starts as this process's siblings."""
    pids = {os.getpid(), *_children(os.getpid())}
    if processes > 1:
        pids |= _children(os.getppid())
    return pids


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids |= {int(k) for k in (task / "children").read_text().split()}
    except OSError:
        pass
    return kids


def default_threads(processes: int = 1, window: float = 0.5) -> tuple[int, str]:
    """Threads per process for ``processes`` vitkit processes on this machine: the cores this
    process may use, less those other programs keep busy, measured over ``window`` seconds."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity, no /proc/stat
        cores = available_cores()
        return max(1, cores // processes), f"all {cores} core(s)"
    before = sample_cpu(cpus, _job_pids(processes))
    time.sleep(window)
    after = sample_cpu(cpus, _job_pids(processes))
    if before is None or after is None:
        return max(1, len(cpus) // processes), f"all {len(cpus)} core(s) (/proc/stat unreadable)"
    return threads_from_samples(before, after, len(cpus), processes)


def set_threads(requested: int | None, processes: int = 1) -> int:
    """Set torch's CPU threads: ``requested``, or :func:`default_threads`; logs the choice."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads {requested}: give at least 1")
        torch.set_num_threads(requested)
        return requested
    threads, reason = default_threads(processes)
    torch.set_num_threads(threads)
    log.info("CPU threads: %d per process (%s)", threads, reason)
    return threads


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes of memory this process may fill: the kernel's ``MemAvailable``, or the limit of its
    memory cgroup (v1 ``memory.limit_in_bytes``, v2 ``memory.max``) when that is lower."""
    available = 1 << 62
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return min(available, _cgroup_limit(cgroup_root))


def _cgroup_limit(root: Path) -> int:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return 1 << 62
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2
            candidates = [root / rel / "memory.max"]
        elif "memory" in controllers.split(","):
            candidates = [root / "memory" / rel / "memory.limit_in_bytes"]
        else:
            continue
        for file in candidates:
            try:
                text = file.read_text().strip()
            except OSError:
                continue
            if text.isdigit():
                return int(text)
    return 1 << 62
