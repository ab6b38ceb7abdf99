"""Several processes, one model: the glue between :func:`vitkit.train.train` and PyTorch DDP.

``torchrun`` (PyTorch's own launcher, ``python -m torch.distributed.run``) starts the processes,
runs the rendezvous, watches the workers and tears the job down when one dies; this module only
joins the process group it describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and gives the training loop the few things it needs:

- the split of every global micro-batch into ``world_size`` equal contiguous slices, so a run
  with N processes sees exactly the images, augmentations and mean loss of a one-process run
  with the same ``--batch-size`` (DDP averages the gradients of equal slices, which is the
  gradient of the mean over the whole batch);
- a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper and its ``no_sync`` for the
  gradient-accumulation steps;
- sums of metrics across processes, the rank-0 gate for files and logs, and a split evaluation.

Outside ``torchrun`` everything here is a no-op: :class:`World` has one process and rank 0.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .data import ImageDataset
from .errors import ConfigError, DistributedError
from .evaluate import Evaluation, evaluate_model
from .preprocess import Preprocess

log = logging.getLogger(__name__)

TIMEOUT_ENV = "VITKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0  # the rendezvous and every collective; a dead peer ends the job after this at worst


def env_world_size() -> int:
    """The number of processes torchrun (or the user) announced in ``WORLD_SIZE``; 1 without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def default_timeout() -> float:
    """Seconds for the rendezvous and each collective: ``$VITKIT_DIST_TIMEOUT`` or 600."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r}: give a number of seconds, e.g. 60") from None
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r}: the timeout must be > 0 seconds")
    return value


def backend_for(device: str) -> str:
    """NCCL when the processes train on CUDA, gloo on the CPU (NCCL has no CPU tensors)."""
    if device == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@dataclass
class World:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine
    ddp: torch.nn.parallel.DistributedDataParallel | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (config, metrics, checkpoints, summary) and logs progress."""
        return self.rank == 0

    # ------------------------------------------------------------------ set-up
    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` when several processes share a machine."""
        if self.active and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda":
            if device.index is None:  # set_device needs an index: the current GPU
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        return device

    def check_batch(self, batch_size: int) -> int:
        """The per-process slice of a ``batch_size`` micro-batch; the slices must be equal for the
        averaged gradients to be the gradient of the batch mean."""
        if batch_size % self.world_size:
            lower = batch_size - batch_size % self.world_size
            raise ConfigError(
                f"--batch-size {batch_size} is the global micro-batch and must split evenly over "
                f"{self.world_size} processes: use --batch-size {lower or self.world_size} or "
                f"{lower + self.world_size}, or another number of processes"
            )
        return batch_size // self.world_size

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (which also copies rank 0's weights to all ranks)."""
        if not self.active:
            return model
        device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
        self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return self.ddp

    def no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` on the accumulation steps that are not the last: their gradients stay
        local and the last backward all-reduces the sum once."""
        if skip and self.ddp is not None:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ data
    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (first dimension)."""
        if not self.active:
            return batch
        size = self.check_batch(batch.shape[0])
        return batch[self.rank * size : (self.rank + 1) * size]

    # ------------------------------------------------------------------ collectives
    def sum_all(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over all processes (float64 on the CPU for gloo, the device for NCCL)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def mean_all(self, values: Sequence[float]) -> list[float]:
        """Element-wise means over all processes; the same numbers on every rank, so decisions taken
        from them (a diverged loss, a spent time budget) are taken by all ranks together."""
        return [v / self.world_size for v in self.sum_all(values)]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        return (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        model: torch.nn.Module,
        dataset: ImageDataset,
        preprocess: Preprocess,
        batch_size: int = 512,
        device: str | torch.device = "cpu",
        bf16: bool = False,
        score: Callable[..., Evaluation] = evaluate_model,
    ) -> Evaluation:
        """``score`` (:func:`vitkit.evaluate.evaluate_model`, or ``evaluate_pretext``) on a strided
        1/world of ``dataset`` per rank, its counts added up: the same result as one process."""
        if not self.active:
            return score(model, dataset, preprocess, batch_size, device, bf16)
        part = dataset.subset(torch.arange(self.rank, len(dataset), self.world_size))
        return score(model, part, preprocess, batch_size, device, bf16, reduce=self.sum_all)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def current() -> World:
    """The world this process belongs to: the initialised process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), local)


@contextlib.contextmanager
def session(device: str = "auto", timeout: float | None = None) -> Iterator[World]:
    """Join the process group torchrun describes for the length of the ``with`` block.

    Without ``WORLD_SIZE`` > 1 (a plain ``vitkit train``) nothing is joined. ``timeout`` (seconds;
    default ``$VITKIT_DIST_TIMEOUT`` or 600) bounds the wait for the rendezvous and every
    collective, so an unreachable ``MASTER_ADDR`` or a dead peer ends in a :class:`DistributedError`
    instead of a hang.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        yield current()
        return
    timeout = default_timeout() if timeout is None else timeout
    backend = backend_for(device)
    rank, world = int(os.environ.get("RANK", "0")), env_world_size()
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except (dist.DistError, RuntimeError, TimeoutError) as e:
        raise DistributedError(
            f"rank {rank} of {world} could not join the process group at {where} within {timeout:.0f}s "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Check that rank 0 runs and that "
            "MASTER_ADDR/MASTER_PORT (torchrun: --rdzv-endpoint) can be reached from here"
        ) from None
    log.info("process group: %d processes, backend %s, rendezvous %s", world, backend, where)
    try:
        yield current()
        # Every process reaches the end before any tears the group down: a process that destroyed
        # its gloo group while a peer was still finishing (rank 0 writing summary.json) died at
        # exit, now and then, with "terminate called without an active exception" (SIGABRT).
        dist.barrier()
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        raise DistributedError(
            f"rank {rank} of {world} lost the other processes ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); one of them stopped or was killed. "
            "Continue the run from its last checkpoint with --resume RUN"
        ) from None
    finally:
        dist.destroy_process_group()


def _lost_peer(error: RuntimeError) -> bool:
    """A failed collective: torch's DistError, or the plain RuntimeError gloo raises from C++ when a
    peer's socket closes ("Connection reset by peer" from ``gloo/transport``)."""
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        k in text for k in ("gloo/", "NCCL", "Connection reset", "Connection closed")
    )
