#!/usr/bin/env bash
# The main job on a fresh machine: set up, train a small ViT on Fashion-MNIST for 10 minutes on the
# CPU (recipe fmnist-10m), evaluate it on the 10,000 test images, and print the accuracy.
# The run folder (checkpoints, metrics, confusion matrix) is runs/main-DATE, or $RUN; extra
# arguments go to `vitkit train` (e.g. --threads 2, --time-budget 5m).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/vitkit ] || bash scripts/setup.sh
RUN=${RUN:-runs/main-$(date -u +%Y%m%d-%H%M%S)}
.venv/bin/vitkit train --recipe fmnist-10m --out "$RUN" "$@"
.venv/bin/vitkit evaluate "$RUN/last" --data fashion-mnist --out "$RUN/eval-test"
echo "main: checkpoint $RUN/last, confusion matrix $RUN/eval-test/confusion.png"
