"""Choosing the learning rate from a grid, as the paper did for every transfer run (App. B.1.1).

The paper held out 2 % of each downstream training set, fine-tuned once per rate of a small grid
and kept the rate that did best on the held-out part, never looking at the test split. Here:

- each rate gets a short trial from the same start (the caller's to run), trained on the run's
  training share and scored on its validation share: the one hold-out rule of
  :mod:`vitkit.data.splits`, the very images the full run then chooses ``best/`` on. A trial
  never loads the test split;
- :func:`choose` keeps the rate with the best held-out accuracy (ties: the lower held-out loss),
  and says which rule decided.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DivergedError
from ..files import read_json_object
from .config import TrainConfig
from .run_folder import RunFolder, Summary

log = logging.getLogger(__name__)

TRIAL_SHARE = 0.1  # of the budget, for each rate's trial
TRIALS_AT_MOST = 0.5  # of the budget, for all the trials together


@dataclass
class Trial:
    """One rate's short run: its held-out accuracy and loss (None without a held-out part), its
    final training loss (NaN when it diverged)."""

    lr: float
    steps: int
    train_loss: float
    val_top1: float | None = None
    val_loss: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def choose(trials: list[Trial]) -> Trial:
    """The best trial: highest held-out accuracy, then lowest held-out loss; without held-out
    scores, the lowest final training loss. Diverged trials (non-finite loss) never win; when
    every trial diverged there is nothing to choose, and the user must pick smaller rates."""
    if not trials:
        raise ConfigError("the learning-rate grid is empty")
    finite = [t for t in trials if math.isfinite(t.train_loss)]
    if not finite:
        rates = ", ".join(f"{t.lr:g}" for t in trials)
        low = min(t.lr for t in trials)
        smaller = ",".join(f"{low / 10**k:g}" for k in (1, 2, 3))
        raise DivergedError(
            f"--lr-grid: every rate diverged ({rates}): the training loss of each trial became NaN or infinite; "
            f"try smaller rates, e.g. --lr-grid {smaller}, or a longer warm-up (--warmup-steps)"
        )
    if all(t.val_top1 is not None for t in finite):
        return max(finite, key=lambda t: (t.val_top1, -(t.val_loss if t.val_loss is not None else math.inf)))
    return min(finite, key=lambda t: t.train_loss)


def parse_grid(text: str | list[float]) -> list[float]:
    """``0.001,0.003`` -> [0.001, 0.003]; an error for an empty grid or a rate that is not positive."""
    rates = [float(t) for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    if not rates or any(not r > 0 for r in rates):
        raise ConfigError(f"--lr-grid needs positive learning rates, e.g. 0.001,0.003,0.01; got {text!r}")
    return rates


def search(cfg: TrainConfig, train: Callable[[TrainConfig], Summary]) -> tuple[TrainConfig, dict[str, Any]]:
    """Run a short trial of every rate of ``cfg.lr_grid`` with ``train``, each in its own folder
    under ``OUT/lr-grid/`` and from the same start; return the config of the full run (the best
    rate, the budget the trials left) and the grid's record for ``summary.json``.

    Each trial gets a tenth of the budget (less when the grid has more than five rates: the
    trials never take more than half), with the warm-up shortened in proportion. A trial that
    finished in an earlier start is read back, not trained again.
    """
    rates = parse_grid(cfg.lr_grid or [])
    if cfg.steps is None and not cfg.time_budget:
        raise ConfigError("--lr-grid shares one budget between the trials and the run: give --steps or --time-budget")
    if cfg.steps == 0:
        raise ConfigError("--lr-grid with --steps 0: there is nothing to train; give --steps N")
    if cfg.val_fraction <= 0:
        raise ConfigError("--lr-grid chooses the rate on the validation share: give --val-fraction > 0 (e.g. 0.02)")
    share = min(TRIAL_SHARE, TRIALS_AT_MOST / len(rates))
    trials, rules = zip(*(_trial(cfg, rate, share, train) for rate in rates), strict=True)
    trials = list(trials)
    best = choose(trials)
    how = rules[0]  # every trial holds out the same images (same seed, same data)
    log.info("--lr-grid: chose %g by %s (%s)", best.lr, how, ", ".join(_describe(t) for t in trials))
    full = dataclasses.replace(cfg, lr=best.lr, lr_grid=None)
    if cfg.steps is not None:
        full = dataclasses.replace(full, steps=max(1, cfg.steps - sum(t.steps for t in trials)))
    if cfg.time_budget:
        spent = sum(t.seconds for t in trials)
        full = dataclasses.replace(full, time_budget=max(1.0, cfg.time_budget - spent))
    record = {
        "rates": rates,
        "chosen": best.lr,
        "chosen_by": how,
        "trial_share": share,
        "trials": [t.to_dict() for t in trials],
        "full_run": {"steps": full.steps, "time_budget": full.time_budget},
    }
    return full, record


def _trial_config(cfg: TrainConfig, rate: float, share: float) -> TrainConfig:
    warmup = None if cfg.warmup_steps is None else round(cfg.warmup_steps * share)
    return dataclasses.replace(
        cfg,
        out=str(Path(cfg.out) / "lr-grid" / f"lr={rate:g}"),
        lr=rate,
        lr_grid=None,
        trial=True,
        steps=None if cfg.steps is None else max(1, round(share * cfg.steps)),
        time_budget=None if not cfg.time_budget else share * cfg.time_budget,
        warmup_steps=warmup,
        eval_every=0,
    )


def _trial(cfg: TrainConfig, rate: float, share: float, train: Callable[[TrainConfig], Summary]) -> tuple[Trial, str]:
    """One rate's trial (trained now, or read back), and the rule its run record says it was
    scored by."""
    trial_cfg = _trial_config(cfg, rate, share)
    folder = RunFolder(trial_cfg.out)
    summary_path = folder.path / "summary.json"
    summary = None
    if summary_path.is_file():
        summary = read_json_object(summary_path, "trial summary")
        log.info("--lr-grid: lr %g was tried in an earlier start (%s)", rate, folder.path)
    else:
        log.info("--lr-grid: trying lr %g in %s", rate, folder.path)
        try:
            summary = train(trial_cfg).to_dict()
        except DivergedError as e:
            log.warning("--lr-grid: lr %g diverged (%s)", rate, e)
    split = folder.read_record()["data"]["split"]
    rule = (
        f"held-out accuracy on the {split['counts']['val']} images of the validation share "
        f"({split['rule']['val_fraction']:.0%} of each class, at least one; ties: the lower held-out loss)"
    )
    if summary is None:
        return Trial(rate, trial_cfg.steps or 0, math.nan), rule
    metrics = folder.read_metrics()
    train_loss = metrics[-1]["train_loss"] if metrics else math.nan
    trial = Trial(rate, summary["steps"], train_loss, summary["accuracy"], summary["loss"])
    trial.seconds = summary["train_time_s"]
    return trial, rule


def _describe(t: Trial) -> str:
    if not math.isfinite(t.train_loss):
        return f"{t.lr:g}: diverged"
    if t.val_top1 is None:
        return f"{t.lr:g}: train loss {t.train_loss:.4f}"
    return f"{t.lr:g}: {t.val_top1:.2%} held out"
