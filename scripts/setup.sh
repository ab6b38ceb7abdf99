#!/usr/bin/env bash
# Set up vitkit on a fresh machine: a virtual environment in .venv with the project and its dev
# and docs extras, plus the Fashion-MNIST files from Debian's package when apt is available. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# PyTorch first, pinned to the releases this kind of machine keeps on disk (x86_64 CUDA build that
# also runs on the CPU); pyproject only asks for torch>=2.4, so any newer install works too.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  if [ "$(uname -m)" = "x86_64" ]; then
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
      || .venv/bin/python -m pip install -q "torch>=2.4" torchvision
  else
    .venv/bin/python -m pip install -q "torch>=2.4" torchvision
  fi
fi
.venv/bin/python -m pip install -q -e ".[dev,docs]"
# Real data: Fashion-MNIST's IDX files from Debian (vitkit also reads --data-dir or VITKIT_DATA).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
    || echo "setup: could not install dataset-fashion-mnist; pass --data-dir to vitkit train" >&2
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
