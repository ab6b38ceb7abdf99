"""Training: from a TrainConfig to a run folder of checkpoints, metrics and a summary.

- :mod:`~vitkit.train.config`: TrainConfig, the named recipes;
- :mod:`~vitkit.train.datasets`: the run's train/validation/test sets and their Preprocess;
- :mod:`~vitkit.train.schedule`: warm-up then cosine, with per-group learning-rate scales;
- :mod:`~vitkit.train.optim`: parameter groups, AdamW, the EMA of the weights;
- :mod:`~vitkit.train.step`: the one training step everything calls;
- :mod:`~vitkit.train.run_folder`: checkpoints, training state, metrics, summary on disk;
- :mod:`~vitkit.train.loop`: the loop, as named phases.
"""

from ..errors import DivergedError
from .config import RECIPES, TrainConfig, parse_duration
from .loop import build_model, train
from .optim import EMA, adamw, param_groups
from .run_folder import RunFolder, Summary, load_run_config, read_metrics
from .schedule import WarmupCosine, set_learning_rate
from .step import StepResult, TrainStep

__all__ = [
    "EMA",
    "RECIPES",
    "DivergedError",
    "RunFolder",
    "StepResult",
    "Summary",
    "TrainConfig",
    "TrainStep",
    "WarmupCosine",
    "adamw",
    "build_model",
    "load_run_config",
    "param_groups",
    "parse_duration",
    "read_metrics",
    "set_learning_rate",
    "train",
]
