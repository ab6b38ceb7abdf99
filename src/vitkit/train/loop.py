"""The training loop, as named phases: start or resume, one epoch, validate, checkpoint, finish.

Every random draw depends only on ``(seed, epoch)``: the data order, the augmentation and the
model's own randomness (stochastic depth, dropout). So a run resumed from the checkpoint of epoch
k computes the losses an uninterrupted run computes. Under torchrun every process walks the same
global batches and trains on its slice of each (:mod:`vitkit.distributed`), so N processes
compute the losses of one process with the same ``--batch-size``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..checkpoint import WEIGHTS_NAME, Model, check_state_dict, read_weights, require_vit
from ..config import ViTConfig
from ..data import ImageDataset, Stream, derive_seed, resolve_source
from ..errors import CheckpointError, ConfigError, DivergedError
from ..evaluate import Evaluation, evaluate_model, evaluate_pretext
from ..factory import create_model, preset_config
from ..model import VisionTransformer, count_params
from ..preprocess import Preprocess
from ..pretext import build_pretext
from ..runtime import attention_path, keep_freed_memory, resolve_device, set_threads, use_bf16
from ..transfer import adapt_head, adapt_input, load_source
from .config import TrainConfig
from .datasets import RunData, StreamedSet, prepare_data, scratch_geometry
from .distill import Distillation, Teacher, load_teacher
from .feed import ArrayFeed, StreamFeed, make_feed
from .finetune import freeze, model_lr_scales
from .lr_grid import search
from .optim import EMA, build_optimizer, param_groups
from .run_folder import EpochMetrics, RunFolder, Summary, TrainingState, new_run_path
from .schedule import SHORT_WARMUP, WarmupCosine, fit_warmup, set_learning_rate
from .step import Classification, Objective, Pretext, TrainStep

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What the phases of one run share: its parts, and the counters that a checkpoint keeps."""

    cfg: TrainConfig
    world: distributed.World
    device: torch.device
    bf16: bool
    folder: RunFolder
    data: RunData
    model: nn.Module  # what trains: a ViT, the CNN reference (--model resnet_fmnist), or a pretext task wrapping a ViT
    step: TrainStep
    schedule: WarmupCosine
    feed: ArrayFeed | StreamFeed
    steps_per_epoch: int
    total_steps: int  # --steps, else epochs x steps_per_epoch
    frozen: list[nn.Module] = field(default_factory=list)  # kept in eval mode while training
    init: dict[str, Any] | None = None  # --init: the source and what was adapted
    teacher: Teacher | None = None  # --teacher: the classifier the student learns from
    # counters, saved in every checkpoint
    epoch: int = 0  # epochs finished
    epoch_step: int = 0  # steps done in epoch `epoch` (a mid-epoch checkpoint, --checkpoint-every)
    steps: int = 0
    train_time: float = 0.0
    best_acc: float = -1.0
    # this process's own bookkeeping
    wall_start: float = field(default_factory=time.perf_counter)
    images_seen: int = 0
    compute_time: float = 0.0
    stopped_by_budget: bool = False
    last_val: Evaluation | None = None
    tensorboard: Any = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept as best/: the EMA's when it is on."""
        return self.step.ema.model if self.step.ema is not None else self.model

    @property
    def network(self) -> VisionTransformer:
        """The ViT that the checkpoints hold: the model, or the encoder a pretext task wraps."""
        return network_of(self.model)

    def evaluate(self, dataset: ImageDataset) -> Evaluation:
        """The evaluated weights on ``dataset``: classified, or pre-training, the pretext loss."""
        score = evaluate_pretext if self.cfg.pretext else evaluate_model
        args = (self.eval_model, dataset, self.data.preprocess, self.cfg.eval_batch_size, self.device, self.bf16)
        return self.world.evaluate(*args, score=score)

    def score(self, val: Evaluation) -> float:
        """What best/ maximises: validation accuracy; pre-training, minus its loss."""
        return -val.loss if self.cfg.pretext else val.top1

    def out_of_time(self) -> bool:
        return bool(self.cfg.time_budget) and self.train_time >= self.cfg.time_budget

    @property
    def epochs(self) -> int:
        """Epochs to run: ``epochs``, or as many as ``--steps`` needs (the last one partial)."""
        return self.cfg.epochs if self.cfg.steps is None else math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def epochs_per_round(self) -> int:
        """Checkpoints and validation come at epoch ends, but at least 20 steps apart: a 50-image
        fine-tuning set makes one-step epochs."""
        return max(1, math.ceil(20 / self.steps_per_epoch))

    def done(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 0) is the run's last."""
        return epoch + 1 >= self.epochs or self.stopped_by_budget or self.steps >= self.total_steps

    def round_end(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs_per_round == 0 or self.done(epoch)

    def state(self) -> TrainingState:
        ema = self.step.ema.state_dict() if self.step.ema is not None else None
        opt = self.step.optimizer.state_dict()
        return TrainingState(
            self.epoch, self.steps, self.train_time, self.best_acc, opt, ema, self.epoch_step, pretext_state(self.model)
        )


def network_of(model: nn.Module) -> VisionTransformer:
    """The ViT inside a pretext wrapper (its ``encoder``), else the model itself."""
    return getattr(model, "encoder", model)


def pretext_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A pretext wrapper's own weights (mask token, prediction head, decoder), which the
    checkpoint's model file (the encoder alone) does not hold: kept in the training state."""
    if network_of(model) is model:
        return None
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    steps: int = 0
    correct: int = 0
    seen: int = 0  # what `correct` counts among: images, or a pretext task's masked patches
    images: int = 0  # all processes' images
    lr: float = 0.0
    seconds: float = 0.0


# ============================================================================ start or resume
def build_model(cfg: TrainConfig, data: RunData) -> Model:
    """The config's preset and overrides, sized to the prepared images and named for their classes."""
    pre = data.preprocess
    overrides = {"image_size": pre.input_size} | dict(cfg.model_overrides)
    if cfg.pretext:  # an encoder without a head: pre-training trains none (vitkit.pretext)
        overrides.update(in_channels=pre.channels, num_classes=0, class_names=None)
    else:
        overrides.update(in_channels=pre.channels, num_classes=len(pre.class_names), class_names=list(pre.class_names))
    if cfg.drop_path is not None:
        overrides["drop_path"] = cfg.drop_path
    if cfg.distill_token:
        if not overrides.get("class_token", getattr(preset_config(cfg.model), "class_token", True)):
            raise ConfigError(
                "--distill-token puts DeiT's distillation token after the class token, and this model has none "
                "(class_token=False): add --set class_token=True"
            )
        overrides["distill_token"] = True
    return create_model(cfg.model, **overrides)


def _model_image_size(cfg: TrainConfig) -> tuple[int, int]:
    size = cfg.model_overrides.get("image_size") or preset_config(cfg.model).image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _choose_attention_path(network: nn.Module, cfg: TrainConfig, device: torch.device, bf16: bool) -> None:
    """The faster attention path for training on ``device`` (:func:`vitkit.runtime.attention_path`),
    unless ``--set fused_attention=...`` or the recipe chose one. A preset's default is SDPA, whose
    CPU backward made `vitkit train --model vit_tiny_28` train at half the explicit path's speed."""
    if not isinstance(network, VisionTransformer) or "fused_attention" in cfg.model_overrides:
        return
    fused, why = attention_path(device, training=True, bf16=bf16)
    network.set_fused_attention(fused)
    log.info("attention: %s (--set fused_attention=%s chooses the other)", why, not fused)


def start(cfg: TrainConfig, resume: bool) -> Run:
    """Build every part of the run, then continue it from its last checkpoint or begin it."""
    world = distributed.current()  # one process, or the torchrun group joined by distributed.session
    set_threads(cfg.threads, world.local_world_size)  # the processes on this machine share its cores
    world.check_batch(cfg.batch_size)
    device = world.device(resolve_device(cfg.device))
    if device.type == "cpu" and keep_freed_memory():
        log.info("malloc: freed memory kept for reuse (steadier and faster CPU steps)")
    bf16 = use_bf16(cfg.precision, device)
    folder = RunFolder(cfg.out)
    network, data, init = _model_and_data(cfg, folder if resume else None)
    _choose_attention_path(network, cfg, device, bf16)
    cfg = _fit_batch(cfg, len(data.train), world.world_size)
    frozen = freeze(network, cfg.freeze)
    if cfg.freeze is not None:
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        log.info("--freeze %s: %s of %s parameters train", cfg.freeze, f"{trainable:,}", f"{network.num_params():,}")
    pre = data.preprocess
    model = build_pretext(cfg.objective, network, pre.mean, pre.std) if cfg.pretext else network
    model.to(device)
    scales = model_lr_scales(network, cfg.layer_decay, cfg.head_lr_mult)
    optimizer = build_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay, scales), cfg.lr, device)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    feed = make_feed(cfg, data, world, device)
    steps_per_epoch = feed.steps_per_epoch
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    schedule = WarmupCosine(
        cfg.lr, cfg.min_lr, max(total, 1), _warmup_steps(cfg, steps_per_epoch, total), cfg.time_budget
    )
    objective, teacher = _objective(cfg, data, model, device)
    step = TrainStep(model, optimizer, device, bf16, clip_grad=cfg.clip_grad, ema=ema, world=world, objective=objective)
    parts = (cfg, world, device, bf16, folder, data, model, step, schedule, feed, steps_per_epoch, total)
    run = Run(*parts, frozen=frozen, init=init, teacher=teacher)
    if cfg.pretext:
        run.best_acc = -math.inf  # best/ maximises minus the pretext loss
    if resume:
        _resume(run)
    else:  # every rank refuses a folder that holds a run; rank 0 makes the folder
        run.folder.start(create=world.is_main)
    world.barrier()  # every rank has checked the folder before rank 0 writes to it
    if world.is_main:
        run.folder.write_config(_run_record(run))
        run.tensorboard = _tensorboard(run)
    step.forward = world.wrap(model)  # DistributedDataParallel under torchrun
    step.forward = torch.compile(step.forward) if cfg.compile else step.forward
    _log_start(run)
    return run


def _warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total: int) -> int:
    """The warm-up in steps; one longer than the run would end it at the peak rate, never
    decayed (the finetune recipe's 50 steps in a 30-step run), so it is shortened to
    :data:`~vitkit.train.schedule.SHORT_WARMUP` of the run, and the log says so."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * steps_per_epoch)
    short = fit_warmup(warmup, total)
    if short != warmup:
        given = (
            f"--warmup-steps {cfg.warmup_steps}"
            if cfg.warmup_steps is not None
            else (f"--warmup-epochs {cfg.warmup_epochs:g} ({warmup} steps)")
        )
        log.info(
            "%s would fill the whole run of %d steps: warming up for %d instead (%.0f %% of them), so the rate decays",
            given,
            total,
            short,
            100 * SHORT_WARMUP,
        )
    return short


def _objective(
    cfg: TrainConfig, data: RunData, model: nn.Module, device: torch.device
) -> tuple[Objective, Teacher | None]:
    """Cross-entropy on the labels, or with ``--teacher`` the DeiT objective; a student with a
    distillation token then returns both heads' logits while it trains."""
    if cfg.pretext:
        return Pretext(), None
    if cfg.teacher is None:
        return Classification(cfg.label_smoothing), None
    teacher = load_teacher(cfg.teacher, list(data.preprocess.class_names), device)
    if cfg.distill_token:
        if not model.config.distill_token:
            raise ConfigError(
                f"--distill-token: the --init model {cfg.init} has no distillation token; fine-tune a distilled model, "
                "or drop --distill-token to distil into its class head"
            )
        model.set_distilled_training(True)
    objective = Distillation(
        teacher, data.preprocess, cfg.distill, cfg.distill_alpha, cfg.distill_tau, cfg.label_smoothing
    )
    return objective, teacher


def _model_and_data(cfg: TrainConfig, resuming: RunFolder | None) -> tuple[Model, RunData, dict | None]:
    """The model, the data and (for --init) the record of the source: a fresh model from the
    preset; the source's, adapted to the data; or, resuming a fine-tuning run, the model and the
    preprocessing its run record describes (the source itself is not needed again)."""
    dataset = resolve_source(cfg.data, cfg.data_dir)
    if cfg.init is None:
        data = prepare_data(cfg, dataset, scratch_geometry(cfg, dataset, _model_image_size(cfg)))
        torch.manual_seed(derive_seed(cfg.seed, Stream.WEIGHTS))  # initial weights
        return build_model(cfg, data), data, None
    if cfg.pad:
        raise ConfigError("--pad is for training from scratch; with --init the source's preprocessing decides")
    if resuming is not None:
        record = resuming.read_record()
        data = prepare_data(cfg, dataset, Preprocess.from_dict(record["preprocess"]), own_statistics=False)
        return VisionTransformer(ViTConfig.from_dict(record["model"])), data, record.get("init")
    source = load_source(cfg.init, cfg.mean, cfg.std)
    require_vit(source.model, "--init (fine-tuning from a checkpoint, for now)", cfg.init)
    log.info("--init %s: %s weights; normalisation: %s", cfg.init, source.fmt, source.normalisation)
    channels = cfg.channels or dataset.native_format[1]
    model, geometry, notes = adapt_input(source, channels, cfg.image_size, cfg.posemb_resample)
    data = prepare_data(cfg, dataset, geometry.replace(dataset=dataset.text), own_statistics=False)
    if source.model.config.num_classes == 0:
        notes.append(
            "the source has no classifier head (a pre-trained encoder; `vitkit pretrain` keeps its task head out)"
        )
    model = adapt_head(model, list(data.preprocess.class_names), cfg.keep_head, notes)
    for note in notes:
        log.info("--init: %s", note)
    init = {"source": cfg.init, "format": source.fmt, "normalisation": source.normalisation, "adapted": notes}
    return model, data, init | {"source_model": source.model.config.to_dict()}


def _fit_batch(cfg: TrainConfig, images: int, processes: int) -> TrainConfig:
    """The config with a batch no larger than the training set (a 10-shot set has 50 images)."""
    if cfg.batch_size <= images:
        return cfg
    batch = max(processes, images - images % processes)
    log.info("--batch-size %d is more than the %d training images: using %d", cfg.batch_size, images, batch)
    return dataclasses.replace(cfg, batch_size=batch)


def _resume(run: Run) -> None:
    ckpt = run.folder.find_checkpoint("last")
    if ckpt is None:
        raise FileNotFoundError(f"{run.folder.path} holds no complete last/ checkpoint to resume from")
    state = run.folder.read_state(ckpt)
    weights = read_weights(ckpt / WEIGHTS_NAME)
    try:
        check_state_dict(run.network, weights, source=str(ckpt / WEIGHTS_NAME))
    except CheckpointError as e:
        raise CheckpointError(
            f"{ckpt} holds a different model than {run.folder.config_path} describes ({e}); "
            "resume a run with the checkpoint it wrote"
        ) from None
    run.network.load_state_dict(weights)
    if state.pretext is not None:
        run.model.load_state_dict({f"encoder.{k}": v for k, v in weights.items()} | state.pretext)
    run.step.optimizer.load_state_dict(state.optimizer)
    if run.step.ema is not None and state.ema is not None:
        run.step.ema.load_state_dict(state.ema)
    run.epoch, run.steps, run.train_time, run.best_acc = state.epoch, state.step, state.train_time, state.best_acc
    run.epoch_step = state.epoch_step or 0
    if run.world.is_main:
        run.folder.truncate_metrics(run.epoch)
    within = f" (step {run.epoch_step} of epoch {run.epoch + 1})" if run.epoch_step else ""
    log.info("resuming %s from %s: epoch %d, step %d%s", run.folder.path, ckpt, run.epoch, run.steps, within)


def _run_record(run: Run) -> dict[str, Any]:
    """``train_config.json``: everything needed to rebuild the run, and facts about its data."""
    data = run.data
    return {
        "train": run.cfg.to_dict(),
        "model": run.network.config.to_dict(),
        "preprocess": data.preprocess.to_dict(),
        "data": {"held": _held(data), "split": data.split},
        "steps_per_epoch": run.steps_per_epoch,
        "device": str(run.device),
        "bf16": run.bf16,
        "threads": torch.get_num_threads(),
        "processes": run.world.world_size,
        "init": run.init,
        "teacher": _teacher_record(run.teacher),
    }


def _teacher_record(teacher: Teacher | None) -> dict[str, Any] | None:
    """What the student learnt from: the source, its size and how it saw the images."""
    if teacher is None:
        return None
    return {"source": teacher.name, "params": teacher.params(), "preprocess": teacher.preprocess.to_dict()}


def _held(data: RunData) -> str:
    """Where the training pixels are: streamed, in the disk cache, or in memory."""
    if isinstance(data.train, StreamedSet):
        return "stream"
    return "cache" if data.train.mapped else "memory"


def _log_start(run: Run) -> None:
    data = run.data
    val = f"choosing on {len(data.val)} held out of the training images" if data.val else "holding none out"
    test = f"scoring {len(data.test)} test images at the end" if data.test else "a trial: no test images"
    if run.cfg.pretext:
        test = f"{run.cfg.objective} pre-training: no labels, no test images"
    if run.teacher is not None:
        cfg = run.cfg
        how = f"soft at tau {cfg.distill_tau:g}" if cfg.distill == "soft" else "hard"
        token = ", into a distillation token's own head" if cfg.distill_token else ""
        log.info(
            "distilling from --teacher %s (%.2f M params; %s, alpha %g%s)",
            run.teacher.name,
            run.teacher.params() / 1e6,
            how,
            cfg.distill_alpha,
            token,
        )
    log.info("input %s", data.preprocess.describe())
    log.info(
        "training %s on %d %s images, %s, %s; %s, %s, %d thread(s)",
        model_text(run.cfg.model, run.cfg.model_overrides, run.network, run.cfg.init),
        len(data.train),
        data.source.name,
        val,
        test,
        run.device,
        "bf16 autocast" if run.bf16 else "fp32",
        torch.get_num_threads(),
    )


def model_text(preset: str, overrides: dict[str, Any], network: nn.Module, init: str | None = None) -> str:
    """The model's real name: ``vit_tiny_28 with stem=conv, depth=4, ... (1.03 M params; the
    preset as listed: 1.80 M)``. The preset's name alone read as the 1.80 M model `vitkit
    presets` lists, while the recipe's changes (and ``--set``'s) made it 1.03 M. A fine-tuned
    model is the one ``--init`` named, whatever preset the recipe lists."""
    params = f"{network.num_params() / 1e6:.2f} M params"
    if init:
        return f"the model of --init {init} ({params})"
    if not overrides or not isinstance(network, VisionTransformer):
        return f"{preset} ({params})"
    changes = ", ".join(f"{k}={v}" for k, v in overrides.items())
    listed = count_params(preset_config(preset)) / 1e6
    return f"{preset} with {changes} ({params}; the preset as listed: {listed:.2f} M)"


def _tensorboard(run: Run):  # noqa: ANN202 - a SummaryWriter, when tensorboard is installed
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # metrics.jsonl only
        return None
    return SummaryWriter(str(run.folder.path / "tensorboard"))


# ============================================================================ one epoch
def _step_seconds(run: Run, t0: float, c0: float) -> float:
    """The step's time on the budget's clock, the same on every process (they stop together)."""
    dt = time.perf_counter() - t0
    if run.cfg.budget_clock == "cpu":  # what the step would take with the cores to itself
        dt = min(dt, (time.process_time() - c0) / torch.get_num_threads())
    if run.world.active:
        (dt,) = run.world.mean_all([dt])
    return dt


def train_epoch(run: Run, epoch: int, progress: bool) -> EpochStats:
    """One pass over the training set (or what is left of the time budget, or of an epoch that a
    mid-epoch checkpoint began)."""
    cfg, stats = run.cfg, EpochStats()
    run.model.train()
    for module in run.frozen:  # frozen: no dropout, no BatchNorm statistics updates
        module.eval()
    first = run.epoch_step if epoch == run.epoch else 0
    bar = _progress_bar(run.steps_per_epoch, _epoch_name(run, epoch), progress and run.world.is_main)
    bar.update(first)
    start = time.perf_counter()
    batches = run.feed.epoch(epoch, first)
    for s in range(first, run.steps_per_epoch):
        t0, c0 = time.perf_counter(), time.process_time()  # the clock counts reading the batch too
        micro_batches = next(batches)
        # stochastic depth, dropout: seeded per step (and rank: each its own draws for its slice)
        torch.manual_seed(derive_seed(cfg.seed, Stream.STEP, epoch, s, *([run.world.rank] if run.world.active else [])))
        stats.lr = run.schedule(run.steps, run.train_time)
        set_learning_rate(run.step.optimizer, stats.lr)
        result = run.step(micro_batches)
        if not result.finite:
            bar.close()
            raise DivergedError(
                f"the loss became {result.loss} at epoch {epoch + 1}, step {run.steps + 1} (lr {stats.lr:.2e}); "
                f"training stopped and the last good checkpoint stays in {run.folder.path / 'last'}. "
                "Lower --lr, raise --warmup-epochs, or use --precision fp32"
            )
        dt = _step_seconds(run, t0, c0)
        run.steps, run.train_time, run.compute_time = run.steps + 1, run.train_time + dt, run.compute_time + dt
        run.images_seen += cfg.batch_size * cfg.accum_steps
        stats.images += cfg.batch_size * cfg.accum_steps
        stats.loss_sum, stats.steps = stats.loss_sum + result.loss, stats.steps + 1
        stats.correct, stats.seen = stats.correct + result.correct, stats.seen + result.seen
        _show_progress(bar, stats, start, progress and (s % 10 == 0 or s == run.steps_per_epoch - 1))
        if cfg.checkpoint_every and run.steps % cfg.checkpoint_every == 0 and s + 1 < run.steps_per_epoch:
            run.epoch_step = s + 1
            save_checkpoints(run, improved=False)  # mid-epoch: last/ only
        if run.out_of_time():
            run.stopped_by_budget = True
        if run.stopped_by_budget or run.steps >= run.total_steps:
            break
    bar.close()
    batches.close()  # a stream's loader workers end here, not when collected
    stats.seconds = time.perf_counter() - start
    if run.world.active:
        stats.correct, stats.seen = (round(v) for v in run.world.sum_all([stats.correct, stats.seen]))
    return stats


def _progress_bar(total: int, desc: str, enabled: bool):  # noqa: ANN202 - a tqdm bar
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="step", leave=False, disable=not enabled, file=sys.stderr, dynamic_ncols=True
    )


def _show_progress(bar, stats: EpochStats, start: float, postfix: bool) -> None:  # noqa: ANN001
    bar.update(1)
    if postfix:
        bar.set_postfix(
            loss=f"{stats.loss_sum / stats.steps:.4f}",
            acc=f"{stats.correct / max(stats.seen, 1):.3f}",
            lr=f"{stats.lr:.2e}",
            img_s=f"{stats.images / max(time.perf_counter() - start, 1e-9):.0f}",
        )


# ============================================================================ validate, record, checkpoint
def validate(run: Run, epoch: int) -> Evaluation | None:
    """The validation set, after the last epoch and every ``eval_every`` epochs (it costs wall
    time on a small CPU); None in the epochs between."""
    cfg, rounds = run.cfg, (epoch + 1) // run.epochs_per_round
    every = cfg.eval_every > 0 and run.round_end(epoch) and rounds % cfg.eval_every == 0
    if run.data.val is None or (not run.done(epoch) and not every):
        return None
    return run.evaluate(run.data.val)


def record_epoch(run: Run, epoch: int, stats: EpochStats, val: Evaluation | None) -> EpochMetrics:
    """The epoch's line in metrics.jsonl (and TensorBoard), and its line in the log."""
    metrics = EpochMetrics(
        epoch=epoch + 1,
        step=run.steps,
        train_loss=stats.loss_sum / max(stats.steps, 1),
        train_acc=stats.correct / max(stats.seen, 1),
        val_loss=val.loss if val else None,
        val_acc=val.top1 if val else None,
        val_top5=val.top5 if val else None,
        lr=stats.lr,
        images_per_s=stats.images / max(stats.seconds, 1e-9),
        epoch_time=stats.seconds,
        train_time=run.train_time,
        partial_epoch=stats.steps < run.steps_per_epoch,
    )
    if run.world.is_main:
        run.folder.append_metrics(metrics)
    if run.tensorboard is not None:
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
            if getattr(metrics, k) is not None:
                run.tensorboard.add_scalar(k, getattr(metrics, k), epoch + 1)
    if not run.round_end(epoch):
        return metrics
    if run.cfg.objective == "mae":  # a regression: its loss is all there is to show
        val_loss = "-" if metrics.val_loss is None else f"{metrics.val_loss:.4f}"
        scores = f"val loss {val_loss}"
    else:
        val_text = "-" if metrics.val_acc is None else f"{metrics.val_acc:.4f}"
        scores = f"train acc {metrics.train_acc:.4f}  val acc {val_text}"
    log.info(
        f"{_epoch_name(run, epoch)}  loss {metrics.train_loss:.4f}  {scores}  lr {stats.lr:.2e}  "
        f"{metrics.images_per_s:.0f} img/s  ({stats.seconds:.0f}s){_budget_text(run, epoch)}"
    )
    return metrics


def _epoch_name(run: Run, epoch: int) -> str:
    """``epoch 3/30``; under a time budget ``epoch 3``: the budget, not the epoch count, ends the
    run (the main job's log once counted to 16/30 and stopped)."""
    return f"epoch {epoch + 1}" if run.cfg.time_budget else f"epoch {epoch + 1}/{run.epochs}"


def _budget_text(run: Run, epoch: int) -> str:
    """Under a time budget: its time spent and left, and the epochs that fit in what is left at
    the pace so far (at most the epochs still planned)."""
    budget = run.cfg.time_budget
    if not budget:
        return ""
    left = max(0.0, budget - run.train_time)
    more = min(int(left // max(run.train_time / (epoch + 1), 1e-9)), run.epochs - epoch - 1)
    return f"  [{run.train_time:.0f}s of the {budget:.0f}s budget, {left:.0f}s left: about {more} more epoch(s)]"


def save_checkpoints(run: Run, improved: bool) -> None:
    """last/ with the training state after every round of epochs; best/ when validation improved."""
    if run.world.is_main:
        run.folder.save_checkpoint("last", run.network, run.data.preprocess, run.state())
        if improved:
            run.folder.save_checkpoint("best", network_of(run.eval_model), run.data.preprocess)
    run.world.barrier()  # no rank races ahead of a checkpoint it may have to resume from


# ============================================================================ finish
def finish(run: Run, grid: dict[str, Any] | None = None) -> Summary:
    """Score the final weights (the EMA's when on) on the test images (an --lr-grid trial: the
    validation share), and write summary.json."""
    if run.folder.find_checkpoint("last") is None:
        raise CheckpointError(f"{run.folder.path}: no epoch finished, nothing to evaluate")
    data, cfg = run.data, run.cfg
    if run.last_val is not None and data.final is data.val:
        result = run.last_val  # the last epoch was just evaluated on this very set
    else:
        result = run.evaluate(data.final)
    summary = Summary(
        data=cfg.data,
        model=cfg.model,
        params=run.network.num_params(),
        epochs_done=run.folder.epochs_done(),
        steps=run.steps,
        stopped_by_time_budget=run.stopped_by_budget,
        budget_clock=cfg.budget_clock,
        train_time_s=round(run.train_time, 1),
        wall_time_s=round(time.perf_counter() - run.wall_start, 1),
        images_per_s=round(run.images_seen / max(run.compute_time, 1e-9), 1),
        eval_split=data.final_split,
        eval_images=result.images,
        accuracy=result.top1,
        top5=result.top5,
        loss=result.loss,
        best_val_accuracy=-1.0 if cfg.pretext else run.best_acc,
        device=str(run.device),
        bf16=run.bf16,
        threads=torch.get_num_threads(),
        processes=run.world.world_size,
        checkpoint=str(run.folder.path / "last"),
        lr=cfg.lr,
        lr_grid=grid,
        objective=cfg.objective,
        best_val_loss=-run.best_acc if cfg.pretext else None,
    )
    if run.world.is_main:
        run.folder.write_summary(summary)
    return summary


# ============================================================================ the run
def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Summary:
    """Train (or, with ``resume``, continue) the run in ``cfg.out``; returns its summary.

    Ends with an evaluation on the test images (the dataset's test split, or a share held out of it),
    written to ``summary.json``. With ``cfg.lr_grid``, short trials choose the learning rate
    first (:func:`vitkit.train.lr_grid.search`) and the run spends what is left of the budget.
    """
    grid = None
    if cfg.out is None:
        source = resolve_source(cfg.data, cfg.data_dir)
        name = Path(source.name).stem if source.kind == "csv" else source.name
        cfg = dataclasses.replace(cfg, out=str(new_run_path(name, distributed.current())))
        log.info("the run goes to %s (--out chooses)", cfg.out)
    if cfg.lr_grid and not resume:
        cfg, grid = search(cfg, lambda trial: train(trial, progress=progress))
    run = start(cfg, resume)
    if run.total_steps == 0:  # --steps 0: the adapted model as it is, evaluated
        save_checkpoints(run, improved=run.data.val is not None)
    for epoch in range(run.epoch, run.epochs):
        if run.out_of_time() or run.steps >= run.total_steps:
            run.stopped_by_budget = run.out_of_time()
            break
        stats = train_epoch(run, epoch, progress)
        val = validate(run, epoch)
        run.last_val = val
        improved = val is not None and run.score(val) > run.best_acc
        run.best_acc = max(run.best_acc, run.score(val)) if val is not None else run.best_acc
        run.epoch, run.epoch_step = epoch + 1, 0
        record_epoch(run, epoch, stats, val)
        if run.round_end(epoch) or improved:
            save_checkpoints(run, improved)
        if run.stopped_by_budget:
            log.info("time budget of %.0fs reached after %.0fs of training", cfg.time_budget, run.train_time)
            break
    if run.tensorboard is not None:
        run.tensorboard.close()
    return finish(run, grid)
