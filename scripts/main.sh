#!/usr/bin/env bash
# The main job on a fresh machine: set up, then show the presets and classify a real image.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/vitkit ] || bash scripts/setup.sh
.venv/bin/vitkit presets
.venv/bin/python - <<'PY'
import gzip
import numpy as np
import torch
import vitkit

with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
model = vitkit.create_model("vit_tiny_28").eval()
x = torch.from_numpy(images[:4].copy()).float() / 255
logits, attention = model(x, return_attention=True)
print("logits", tuple(logits.shape), "attention per layer", tuple(attention[0].shape))
PY
