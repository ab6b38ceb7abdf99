"""The run folder: everything a training run writes, and how it is read back to resume.

::

    train_config.json   the resolved TrainConfig, the model config, the Preprocess, data facts
    metrics.jsonl       one EpochMetrics per line
    last/  best/        vitkit.save folders + preprocess.json (+ training_state.pt in last/)
    summary.json        the Summary: final accuracy, times, throughput

Every file is written atomically, and a checkpoint folder is built beside its place and swapped
in, so a kill at any moment leaves a complete checkpoint to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..checkpoint import CONFIG_NAME, Model, save
from ..errors import CheckpointError, ConfigError
from ..evaluate import RUN_CONFIG_NAME, SUMMARY_NAME
from ..files import atomic_write, atomic_write_json, find_complete, read_json_object, write_folder
from ..preprocess import Preprocess
from .config import TrainConfig

METRICS_NAME = "metrics.jsonl"
STATE_NAME = "training_state.pt"


@dataclass
class TrainingState:
    """Where a run stands after an epoch, or part-way through one: what ``--resume`` needs
    besides the weights."""

    epoch: int  # epochs finished
    step: int
    train_time: float
    best_acc: float
    optimizer: dict[str, Any]
    ema: dict[str, Any] | None = None
    epoch_step: int | None = 0  # steps done in the next epoch (a mid-epoch checkpoint); None: older files
    pretext: dict[str, Any] | None = None  # pre-training: the task's own weights (mask token, head, decoder)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EpochMetrics:
    """One line of ``metrics.jsonl``. The validation fields are None in epochs that skip it."""

    epoch: int
    step: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    val_top5: float | None
    lr: float
    images_per_s: float
    epoch_time: float
    train_time: float
    partial_epoch: bool


@dataclass
class Summary:
    """``summary.json``: the final evaluation of a run and what it cost."""

    data: str
    model: str
    params: int
    epochs_done: int
    steps: int
    stopped_by_time_budget: bool
    budget_clock: str
    train_time_s: float
    wall_time_s: float
    images_per_s: float
    eval_split: str
    eval_images: int
    accuracy: float
    top5: float
    loss: float
    best_val_accuracy: float
    device: str
    bf16: bool
    threads: int
    processes: int
    checkpoint: str
    lr: float = 0.0
    lr_grid: dict[str, Any] | None = None  # --lr-grid: every rate's trial and the one chosen
    objective: str = "classify"  # pre-training (mpp, mae): accuracy and loss are the pretext task's
    best_val_loss: float | None = None  # pre-training: the held-out pretext loss best/ was chosen by

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RUNS = "runs"  # where a run without --out goes: runs/<data>-<UTC time>


def new_run_path(data_name: str, world: distributed.World, root: str | os.PathLike = RUNS) -> Path:
    """A run folder nothing has used: ``runs/<data>-<UTC YYYYmmdd-HHMMSS>``, or with ``-2``,
    ``-3``, ... when that is taken. One fixed default (``runs/fmnist``) made a second run
    refuse to start, and named every dataset fmnist. Under torchrun every process gets rank 0's
    answer (its clock, its look at the disk)."""
    now = world.sum_all([time.time() if world.is_main else 0.0])[0]
    base = (
        Path(root) / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', data_name)}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"
    )
    n = 1
    if world.is_main:
        while (base if n == 1 else base.with_name(f"{base.name}-{n}")).exists():
            n += 1
    n = round(world.sum_all([n if world.is_main else 0])[0])
    return base if n == 1 else base.with_name(f"{base.name}-{n}")


def _write_training_state(path: Path, state: TrainingState) -> None:
    atomic_write(path, lambda f: torch.save(state.to_dict(), f))


class RunFolder:
    """A run's folder on disk: its config, metrics, checkpoints and summary."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / RUN_CONFIG_NAME

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    # ------------------------------------------------------------------ checkpoints
    def find_checkpoint(self, name: str = "last") -> Path | None:
        """The complete ``name`` checkpoint (``last`` also needs its training state), or the
        previous one a kill left behind."""
        return find_complete(self.path / name, CONFIG_NAME, also=STATE_NAME if name == "last" else None)

    def save_checkpoint(
        self, name: str, model: Model, preprocess: Preprocess, state: TrainingState | None = None
    ) -> Path:
        """Write ``name`` as a whole (:func:`vitkit.files.write_folder`): built beside its place,
        then swapped in, so a kill at any moment leaves one complete checkpoint."""
        with write_folder(self.path / name) as tmp:
            save(model, tmp)
            preprocess.save(tmp)
            if state is not None:
                _write_training_state(tmp / STATE_NAME, state)
        return self.path / name

    @staticmethod
    def read_state(checkpoint: Path) -> TrainingState:
        try:
            state = torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True)
            return TrainingState(**{f.name: state.get(f.name) for f in dataclasses.fields(TrainingState)})
        except Exception as e:
            raise CheckpointError(
                f"{checkpoint / STATE_NAME}: cannot read the training state ({e}); the checkpoint is corrupt"
            ) from None

    # ------------------------------------------------------------------ config
    def start(self, create: bool = True) -> None:
        """Check that the folder holds no run yet, and (``create``) make it for a new one."""
        if self.find_checkpoint("last") is not None:
            raise ConfigError(
                f"{self.path} already holds a run; continue it with --resume {self.path}, or pick a new --out"
            )
        if not create:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path.unlink(missing_ok=True)

    def write_config(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, record)

    def read_record(self) -> dict[str, Any]:
        """The whole ``train_config.json``: the TrainConfig, the model config, the Preprocess, ..."""
        if not self.config_path.is_file():
            raise FileNotFoundError(
                f"{self.config_path} not found: --resume needs a run folder written by `vitkit train`"
            )
        return read_json_object(self.config_path, "run settings")

    def read_train_config(self) -> TrainConfig:
        record = self.read_record()
        try:
            return TrainConfig.from_dict(record["train"])
        except (KeyError, TypeError, ConfigError) as e:
            raise ConfigError(f"{self.config_path} is not a vitkit run config ({e})") from None

    # ------------------------------------------------------------------ metrics and summary
    def append_metrics(self, metrics: EpochMetrics) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(dataclasses.asdict(metrics)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics lines, up to a line cut by a kill."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop the lines a killed run wrote after its last complete checkpoint."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epochs_done]
        atomic_write(self.metrics_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))

    def epochs_done(self) -> int:
        rows = self.read_metrics()
        return rows[-1]["epoch"] if rows else 0

    def write_summary(self, summary: Summary) -> None:
        atomic_write_json(self.path / SUMMARY_NAME, summary.to_dict())


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The metrics of a run folder, one dict per epoch."""
    return RunFolder(run_dir).read_metrics()


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig a run folder was started with."""
    return RunFolder(run_dir).read_train_config()
