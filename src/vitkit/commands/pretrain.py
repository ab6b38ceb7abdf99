"""``vitkit pretrain``: self-supervised pre-training on images without their labels (:mod:`vitkit.pretext`).

The paper's answer to data hunger at small scale is its own preliminary masked patch prediction
(sec. 4.6, App. B.1.2); MAE (He et al. 2021) is its successor. Both learn from the images alone,
so every unlabelled image helps, and ``vitkit train --init RUN`` then fine-tunes the encoder on
the few labelled ones. The run is a ``vitkit train`` run in every other way: the same options,
run folder, resume, time budget, progress and training step; ``best/`` is chosen by the pretext
loss on the held-out share of the images, and the test images are never read.
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..train import load_run_config
from ..train.config import OBJECTIVES
from . import train


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train a ViT on images without their labels: masked patch prediction (the paper's) or MAE",
        description="Pre-train a ViT without labels, then fine-tune it with `vitkit train --init RUN`. mpp: corrupt "
        "half the patch embeddings and predict each one's 3-bit mean colour (ViT paper, App. B.1.2); mae: hide 75 %% "
        "of the patches and reconstruct their pixels (He et al. 2021). The run folder holds last/ and best/ (by the "
        "pretext loss on a held-out share of the images) as ordinary headless checkpoints; the test images are never "
        "read. Options are those of `vitkit train`.",
    )
    p.add_argument("--objective", choices=OBJECTIVES[1:], help="the self-supervised task (a --resume: the run's own)")
    train.add_options(p, skip=("distillation",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resume is None and args.objective is None:
        raise ConfigError("--objective: choose mpp (masked patch prediction, the paper's) or mae")
    if args.resume is not None and load_run_config(args.resume).objective == "classify":
        raise ConfigError(f"--resume {args.resume} is a classifier's run; continue it with `vitkit train --resume`")
    return train.run(args)
