"""TrainConfig, the named recipes, and durations: everything that defines a training run.

The model's own config lives in :class:`~vitkit.config.ViTConfig`; this is the rest (data, the
optimiser and its schedule, augmentation, the run's clock and folder). It is saved as JSON in the
run folder, so ``--resume`` rebuilds exactly the same run.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import from_known_fields
from ..data import DATA_MODES, AugmentConfig, SplitRule
from ..data.splits import TEST_FRACTION, VAL_FRACTION
from ..embed import POSEMB_RESAMPLE
from ..errors import ConfigError
from ..preprocess import FITS
from ..runtime import PRECISIONS

OPTIMIZERS = ("adamw", "sgd")
OBJECTIVES = ("classify", "mpp", "mae")  # the labels; masked patch prediction (ViT App. B.1.2); MAE

# The TrainConfig fields whose `vitkit train` flag is not the field's name in dashes.
_FLAGS = {"ema_decay": "--ema", "model_overrides": "--set", "overrides": "--set"}


# The least value of each numeric field that has one (the others are checked below, with their rule).
_LEAST = dict(
    epochs=1,
    batch_size=1,
    accum_steps=1,
    eval_batch_size=1,
    eval_every=0,
    loader_workers=0,
    warmup_epochs=0,
    weight_decay=0,
    clip_grad=0,
)


def flag(name: str) -> str:
    """The ``vitkit train`` flag of TrainConfig field ``name``: ``time_budget`` -> ``--time-budget``.
    Errors name flags, the words the user typed."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass
class TrainConfig:
    """Everything that defines a training run (the model's own config lives in ViTConfig).

    Each field is one ``vitkit train`` flag of the same name (``lr`` is ``--lr``,
    ``model_overrides`` is ``--set``); the comment beside each field in the source says what it
    means, and ``vitkit train --help`` prints the same. A run folder records the config as
    ``train_config.json`` (:meth:`to_dict`, :meth:`from_dict`), so a run can be resumed or
    repeated exactly. Start from a named set of values with ``TrainConfig(**RECIPES[name])``.

    Raises:
        ConfigError: when a value is out of range or two values contradict each other (say,
            ``epochs=0``, an unknown ``precision``, or fine-tuning options without ``init``),
            naming the value and what to give instead.
    """

    data: str = "fashion-mnist"  # fashion-mnist | mnist | cifar10 | digits | image folder | CSV
    data_dir: str | None = None
    val_fraction: float = VAL_FRACTION  # held out of the training images to choose on (best/, --lr-grid); 0: none
    test_fraction: float = TEST_FRACTION  # a folder or CSV without test/: the share held out to score at the end
    image_size: int | None = None  # resize images; None: the dataset's size (folders: the model's)
    pad: int = 0  # zero border added around every image (after resizing), e.g. 2 turns 28x28 into 32x32
    crop_fraction: float = 1.0  # < 1: shorter side to image_size / this, then the centre (0.875: ImageNet's 256 -> 224)
    fit: str | None = None  # stretch | crop (the shorter side, then the centre); None: crop when crop_fraction < 1
    channels: int | None = None  # 1 or 3; None: the dataset's
    skip_bad_images: bool = False
    data_mode: str = "auto"  # auto | memory | cache | stream: where the pixels are held (vitkit.data.choose_mode)
    cache_dir: str | None = None  # the disk cache's folder; None: images/ under the vitkit cache
    loader_workers: int | None = None  # streaming: DataLoader processes that decode; None: the cores, at most 8
    classes: list[str] | None = None  # train on these classes only (names, or indices into the dataset's)
    per_class: int | None = None  # a seeded subset of this many training images per class (few-shot)
    limit_train: int | None = None  # a seeded subset of the training images (smoke tests)
    limit_val: int | None = None
    mean: list[float] | None = None  # normalisation; None: the training images' own (--init: the source's)
    std: list[float] | None = None
    model: str = "vit_tiny_28"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from these weights (vitkit, timm, HF, .npz, hf-hub:ORG/NAME), not from random
    keep_head: bool = False  # --init: keep the source's head (its classes must be the data's)
    posemb_resample: str = "bicubic"  # --init at another size: bicubic (timm's), or bilinear (the official code's)
    freeze: str | None = None  # "embed", "backbone", or N: the embedding and the first N blocks
    objective: str = "classify"  # classify (the labels) | mpp | mae: self-supervised pre-training (vitkit pretrain)
    teacher: str | None = None  # distil from this classifier (DeiT): a vitkit run or checkpoint, timm:NAME=FILE
    distill: str = "hard"  # hard: the teacher's top class (DeiT's best); soft: its distribution at distill_tau
    distill_alpha: float = 0.5  # the distillation term's weight; the labels' is 1 - alpha
    distill_tau: float = 1.0  # soft distillation's temperature
    distill_token: bool = False  # DeiT's distillation token and second head (inference averages the heads)
    epochs: int = 30
    steps: int | None = None  # optimiser steps in all (instead of epochs); 0: adapt and evaluate only
    batch_size: int = 128
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9)
    lr: float = 1e-3
    lr_grid: list[float] | None = None  # choose lr: a short trial of each on a held-out 2 %, then the full run
    trial: bool = False  # an --lr-grid trial: scored at its end on the validation share; the test split unread
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise learning-rate decay (BEiT): block i of L gets decay^(L+1-i)
    head_lr_mult: float = 1.0  # the head's learning rate times this
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None  # instead of warmup_epochs
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max global gradient norm (0: off)
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimiser step
    drop_path: float | None = None  # stochastic depth; None: the model config's
    ema_decay: float = 0.0  # EMA of the weights (0: off); evaluation and best/ then use the EMA
    precision: str = "auto"  # auto | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    time_budget: float | None = None  # seconds of training; the cosine then follows the clock too
    budget_clock: str = "wall"  # "wall", or "cpu": process CPU time / threads (a shared machine's fair share)
    crop_padding: int | None = None  # None: 1/8 of the image side (4 px at 28-32 px, 1 px at 8 px)
    crop_scale: float | None = None  # RandomResizedCrop's smallest area fraction, e.g. 0.08 (None: pad and crop)
    hflip: bool | None = None  # None: on, except for mnist and digits
    erase_prob: float = 0.0
    auto_augment: str = "none"
    randaugment_ops: int = 2  # RandAugment: operations per image (torchvision's default)
    randaugment_magnitude: int = 9  # RandAugment: their strength, of 31 bins (torchvision's default)
    mixup: float = 0.0
    cutmix: float = 0.0
    eval_batch_size: int = 512
    eval_every: int = 1  # validate every this many epochs (0: only after the last); best/ follows
    checkpoint_every: int = 0  # also write last/ every this many steps, mid-epoch (0: at epoch ends only)
    threads: int | None = None  # CPU threads; None: the cores this process may use
    compile: bool = False
    out: str | None = None  # the run folder; None: a new runs/<data>-<UTC time> (vitkit.train.run_folder.new_run_path)

    def __post_init__(self) -> None:
        # The messages name each field by its `vitkit train` flag (:func:`flag`): the command
        # line is where most configs come from, and a Python user reads --time-budget as time_budget.
        for name, least in _LEAST.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise ConfigError(f"{flag(name)} {value:g} must be >= {least}")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ConfigError(f"--drop-path {self.drop_path:g} must be in [0, 1), e.g. 0.1")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: choose auto, bf16 or fp32")
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr:g} must be > 0")
        if self.min_lr < 0:
            raise ConfigError(f"--min-lr {self.min_lr:g} must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing {self.label_smoothing:g} must be in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema {self.ema_decay:g} must be in [0, 1), e.g. 0.999 (0: off)")
        if self.budget_clock not in ("wall", "cpu"):
            raise ConfigError(f"--budget-clock {self.budget_clock}: choose wall or cpu")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget {self.time_budget:g} must be > 0 seconds, e.g. 600, 10m, 1h")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: give at least 1")
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"--channels {self.channels}: choose 1 (grayscale) or 3 (RGB)")
        if self.image_size is not None and self.image_size < 1 or self.pad < 0:
            raise ConfigError(f"--image-size {self.image_size} must be >= 1 and --pad {self.pad} >= 0")
        if self.fit not in (None, *FITS):
            raise ConfigError(f"--fit {self.fit}: choose {' or '.join(FITS)}")
        if self.fit == "stretch" and self.crop_fraction < 1:
            raise ConfigError(
                f"--crop-fraction {self.crop_fraction:g} cuts a centre, which --fit stretch has not: drop one"
            )
        if not 0 < self.crop_fraction <= 1:
            raise ConfigError(f"--crop-fraction {self.crop_fraction} must be in (0, 1], e.g. 0.875 (256 -> 224)")
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every {self.checkpoint_every}: give a number of steps >= 0")
        if self.data_mode not in DATA_MODES:
            raise ConfigError(f"--data-mode {self.data_mode!r}: choose one of {', '.join(DATA_MODES)}")
        self.split_rule()  # validates the fractions
        self._check_finetuning()
        self.augment_config()  # validates the augmentation fields

    def _check_finetuning(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer}: choose {' or '.join(OPTIMIZERS)}")
        if self.freeze is not None and self.freeze not in ("embed", "backbone") and not str(self.freeze).isdigit():
            raise ConfigError(
                f"--freeze {self.freeze}: choose embed (the patch embedding), backbone (all but the head: a "
                "linear probe), or a number N (the embedding and the first N blocks)"
            )
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer-decay {self.layer_decay} must be in (0, 1], e.g. 0.75")
        if self.head_lr_mult <= 0:
            raise ConfigError(f"--head-lr-mult {self.head_lr_mult} must be > 0")
        for name in ("steps", "warmup_steps", "per_class"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "per_class" else 0):
                raise ConfigError(f"{flag(name)} {value} must be >= {1 if name == 'per_class' else 0}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give --mean and --std together")
        if self.posemb_resample not in POSEMB_RESAMPLE:
            raise ConfigError(f"--posemb-resample {self.posemb_resample}: choose one of {', '.join(POSEMB_RESAMPLE)}")
        if self.keep_head and not self.init:
            raise ConfigError("--keep-head keeps the head of the --init weights; give --init too")
        self._check_distillation()
        self._check_pretext()

    @property
    def pretext(self) -> bool:
        """A self-supervised run (``vitkit pretrain``): the labels are never read, nor the test images."""
        return self.objective != "classify"

    @property
    def reads_test(self) -> bool:
        """Whether the run loads its test images, to score them once at the end: not a --trial
        (scored on its validation share) and not pre-training (which has no score on test)."""
        return not (self.trial or self.pretext)

    def _check_pretext(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective {self.objective!r}: choose {' or '.join(OBJECTIVES[1:])}")
        if not self.pretext:
            return
        given = {
            "--init": self.init,
            "--teacher": self.teacher,
            "--freeze": self.freeze,
            "--layer-decay": self.layer_decay,
            "--lr-grid": self.lr_grid,
            "--keep-head": self.keep_head,
            "--mixup": self.mixup,
            "--cutmix": self.cutmix,
        }
        if self.val_fraction == 0:
            raise ConfigError(
                "--val-fraction 0: pre-training chooses best/ by its loss on a held-out share of the images; give a "
                "share, e.g. 0.02"
            )
        wrong = [flag for flag, value in given.items() if value]
        if wrong:
            raise ConfigError(
                f"{', '.join(wrong)}: not for pre-training (--objective {self.objective}), which learns from the "
                "images alone; use them when fine-tuning the result with `vitkit train --init RUN`"
            )

    def _check_distillation(self) -> None:
        if self.distill not in ("hard", "soft"):
            raise ConfigError(f"--distill {self.distill!r}: choose hard (the teacher's top class) or soft")
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"--distill-alpha {self.distill_alpha} must be in [0, 1]")
        if self.distill_tau <= 0:
            raise ConfigError(f"--distill-tau {self.distill_tau} must be > 0")
        if self.distill_token and not self.teacher:
            raise ConfigError("--distill-token adds a head that learns from a teacher; give --teacher too")

    def split_rule(self) -> SplitRule:
        """How the run's images are divided into train, validation and test (:mod:`vitkit.data.splits`)."""
        return SplitRule(self.val_fraction, self.test_fraction)

    def augment_config(self, image_size: tuple[int, int] = (32, 32), mirror_symmetric: bool = True) -> AugmentConfig:
        """The augmentation for images of ``image_size``, with the automatic choices made (no
        flips by default for data that is not ``mirror_symmetric``: digits)."""
        hflip = self.hflip if self.hflip is not None else mirror_symmetric
        pad = self.crop_padding if self.crop_padding is not None else round(min(image_size) / 8)
        if self.crop_scale is not None:
            pad = 0  # the random-resized crop replaces the pad-and-crop
        return AugmentConfig(
            pad,
            hflip,
            self.erase_prob,
            self.auto_augment,
            8,
            self.mixup,
            self.cutmix,
            crop_scale=self.crop_scale,
            randaugment_ops=self.randaugment_ops,
            randaugment_magnitude=self.randaugment_magnitude,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_known_fields(cls, d)


# The CPU recipes' model: the paper's hybrid (sec. 3.1). 28x28 images zero-padded to 32x32, a conv
# stem of three stages (32 -> 64 -> 128 channels), each three 3x3 convs (the first stride 2, the
# other two stride 1), down to a 4x4 grid of 1x1 "patches", then a ViT of width 128 (2 heads of 64,
# MLP 256) and depth 4 over 16 tokens, mean-pooled (1.03 M parameters). In 10 minutes on 2 cores a
# ViT here underfits: a deeper conv stem (more locality before the tokens) and a narrower,
# shallower transformer's extra epochs are worth more than width (`benchmarks/recipe_search.py`,
# its results in benchmarks/results/recipe_search.jsonl, which began from width 192, depth 6 and
# one conv a stage).
_CPU_HYBRID = dict(
    stem="conv",
    patch_size=8,
    stem_channels=32,
    stem_convs=3,
    width=128,
    depth=4,
    num_heads=2,
    mlp_dim=256,
    pool="gap",
    class_token=False,
    fused_attention=False,  # on a CPU the explicit path trains faster than SDPA at 16 tokens
)
# What the two CPU recipes share: optimiser, schedule shape, augmentation, padding.
_CPU_COMMON = dict(
    data="fashion-mnist",
    model="vit_tiny_28",
    model_overrides=_CPU_HYBRID,
    pad=2,
    batch_size=256,
    lr=2e-3,
    min_lr=0.0,
    weight_decay=0.05,
    label_smoothing=0.1,
    crop_padding=2,
    eval_every=5,
)

# The plain ViT of the data-hunger study (docs/data-hunger.md): the main job's Transformer (width
# 128, 2 heads of 64, MLP 256, depth 4, mean-pooled) with the paper's linear patch embedding in place
# of the conv stem: 4x4 patches of the unpadded 28x28 image, 49 tokens, no convolution anywhere.
_CPU_PLAIN = dict(_CPU_HYBRID, stem="patch", patch_size=4)
for _key in ("stem_channels", "stem_convs"):
    _CPU_PLAIN.pop(_key)

# Named sets of TrainConfig values; `vitkit train` starts from "fmnist-10m" on Fashion-MNIST. Their
# measured accuracies are in docs/results.md, from benchmarks/results/train_fmnist.jsonl.
RECIPES: dict[str, dict[str, Any]] = {
    # The main job: 10 minutes on 2 CPU cores. epochs is an upper bound: the budget ends the run,
    # and the cosine follows the clock.
    # Flip is its only augmentation (crop_padding=0: in so few epochs the random crop's
    # regularisation costs more than it gives).
    "fmnist-10m": dict(_CPU_COMMON, crop_padding=0, epochs=30, warmup_epochs=0.5, time_budget=600.0),
    # The CNN reference (vitkit.cnn's resnet_fmnist) for the same 10 minutes: the teacher that
    # fmnist-10m-plain distils from. AdamW at 2e-3, crop and flip, as benchmarks/cnn_reference.py.
    "fmnist-10m-cnn": dict(
        data="fashion-mnist",
        model="resnet_fmnist",
        model_overrides={},
        batch_size=256,
        lr=2e-3,
        min_lr=0.0,
        weight_decay=0.05,
        warmup_epochs=0.5,
        label_smoothing=0.1,
        crop_padding=2,
        epochs=30,
        eval_every=5,
        time_budget=600.0,
    ),
    # A plain ViT (no convolution) for the 10 minutes, distilled from the CNN above (DeiT's hard
    # distillation into the one head): train the teacher first, `vitkit train --recipe fmnist-10m-cnn
    # --out runs/cnn-reference`; `--teacher none` trains the same ViT without it.
    "fmnist-10m-plain": dict(
        _CPU_COMMON,
        model_overrides=_CPU_PLAIN,
        pad=0,
        crop_padding=0,
        epochs=30,
        warmup_epochs=0.5,
        time_budget=600.0,
        teacher="runs/cnn-reference",
        distill="hard",
    ),
    # The hour-long CPU recipe: the main job's model for about six times as long, with the crop and
    # random erasing against the over-fitting that more epochs bring. 58 minutes of training leave
    # room for the evaluations and the final test within the hour.
    "fmnist-60m": dict(_CPU_COMMON, epochs=150, warmup_epochs=2.0, erase_prob=0.25, time_budget=3480.0),
    # The paper's fine-tuning (sec. 3.2, app. B.1.1; google-research/vision_transformer's configs):
    # SGD with momentum 0.9, no weight decay, global gradient clipping at 1, linear warm-up then
    # cosine, counted in steps, batch 512, learning rate 0.003 (the paper picks it from 0.001-0.03 on
    # held-out data). `vitkit train --init` starts from it; the from-scratch recipes do not apply.
    "finetune": dict(
        optimizer="sgd",
        lr=3e-3,
        min_lr=0.0,
        weight_decay=0.0,
        clip_grad=1.0,
        batch_size=512,
        steps=500,
        warmup_steps=50,
        label_smoothing=0.0,
        eval_every=0,
    ),
    # Plain ViT-S/16 on ImageNet-1k, 76.5 % top-1 after 90 epochs: Beyer, Zhai and Kolesnikov 2022,
    # "Better plain ViT baselines for ImageNet-1k" (arXiv 2205.01580), as in big_vision's
    # configs/vit_s16_i1k.py. Global average pooling; fixed 2-D sin-cos position embeddings; a
    # pre-logits layer of the model's width (big_vision's rep_size=True); batch 1024 for 90 epochs;
    # Adam (0.9, 0.999) at 0.001 with decoupled weight decay 0.0001 on the weight matrices (torch's
    # AdamW multiplies weight_decay by the learning rate: 0.1 x 0.001), 10,000 linear warm-up steps
    # then cosine to 0; global gradient clipping at 1; Inception crop at 224 px (5-100 % of the
    # area), flip, RandAugment with 2 operations at magnitude 10, MixUp with Beta(0.2, 0.2) and no
    # CutMix; no label smoothing, dropout or stochastic depth; pixels scaled to [-1, 1]. Evaluation
    # scales the shorter side to 256 and cuts the centre 224. Give --data (a folder with train/ and
    # test/, or its shards); on fewer than 1024 images' worth of memory, --batch-size with
    # --accum-steps keeps the batch.
    "imagenet-s16": dict(
        model="vit_s16",
        model_overrides=dict(pool="gap", class_token=False, posemb="sincos2d", representation_size=384, drop_path=0.0),
        image_size=224,
        crop_fraction=0.875,
        channels=3,
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
        epochs=90,
        batch_size=1024,
        optimizer="adamw",
        lr=1e-3,
        min_lr=0.0,
        weight_decay=0.1,
        warmup_steps=10_000,
        clip_grad=1.0,
        label_smoothing=0.0,
        crop_scale=0.05,
        hflip=True,
        auto_augment="randaugment",
        randaugment_ops=2,
        randaugment_magnitude=10,
        mixup=0.2,
        cutmix=0.0,
        checkpoint_every=1000,
    ),
    # A GPU recipe: a wider model, more epochs, stronger augmentation, EMA.
    "fmnist-gpu": dict(
        data="fashion-mnist",
        model="vit_small_28",
        model_overrides=dict(stem="conv", pool="gap", class_token=False),
        epochs=200,
        batch_size=256,
        lr=1e-3,
        weight_decay=0.05,
        warmup_epochs=5.0,
        label_smoothing=0.1,
        erase_prob=0.25,
        drop_path=0.1,
        ema_decay=0.9998,
        mixup=0.2,
        cutmix=1.0,
    ),
}
"""The named recipes: ``{name: TrainConfig fields}``, what ``vitkit train --recipe NAME`` starts from.

Flags given on the command line (or keywords given to ``TrainConfig``) win over a recipe's
values. ``fmnist-10m`` is the main job (10 minutes on 2 CPU cores), ``fmnist-60m`` the hour-long
one, ``fmnist-10m-cnn`` the CNN reference that ``fmnist-10m-plain`` distils from, ``finetune``
the starting point for ``--init``, ``fmnist-gpu`` a GPU recipe. Their measured accuracies are in
the results page, generated from the records.
"""


# An image folder trained from scratch without --model or --image-size (photos of any size): its
# median shorter side, clipped to 32-224 px (CIFAR's size to the paper's), shorter side resized and
# the centre cut, so no photo is stretched. The smallest preset (vit_tiny_32: width 192, depth 6)
# with the smallest patch that keeps the grid at most 14 a side: ViT-B/16's 196 tokens at 224 px,
# the most the paper trains on, and at 32 px the presets' own 8x8 grid of 4-px patches.
FOLDER_SIZES = (32, 224)
FOLDER_PATCHES = (4, 8, 16)
FOLDER_GRID = 14
FOLDER_MODEL = "vit_tiny_32"


def folder_defaults(side: int) -> dict[str, Any]:
    """The TrainConfig values that fit images whose median shorter side is ``side`` px: the
    input size (rounded to the patch grid), the resize rule, the model and its patch size."""
    lo, hi = FOLDER_SIZES
    clipped = min(max(side, lo), hi)
    patch = next(p for p in FOLDER_PATCHES if clipped <= FOLDER_GRID * p)
    size = min(max(round(clipped / patch) * patch, lo), hi)
    return dict(model=FOLDER_MODEL, image_size=size, fit="crop", model_overrides={"patch_size": patch})


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"600"``, ``"600s"``, ``"10m"``, ``"1h30m"``, ``"1.5h"``."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", s)
    if not s or not parts or not any(parts.groups()):
        raise ConfigError(f"cannot read the duration {text!r}; write e.g. 600, 600s, 10m, 1h30m")
    h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + sec
