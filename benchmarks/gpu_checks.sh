#!/usr/bin/env bash
# What a session with a lent GPU runs, in one go (device time is short): side by side, the CUDA
# tests, the GPU training recipe and the CPU recipe candidates replayed on the GPU (same recipe,
# the epochs that 60 minutes on 2 CPU cores give: their accuracy predicts the CPU run's, in minutes
# instead of hours); then the GPU timings, alone on the card. PARTS picks what runs.
#
#   OUT=/tmp/gpu VITKIT_DATA=/path/with/fashion-mnist PARTS="train timings" bash benchmarks/gpu_checks.sh
#
# Everything lands in $OUT/gpu_checks.tgz and $OUT/log.txt.
set -u
PARTS=" ${PARTS:-train timings} "
OUT=${OUT:-/tmp/gpu-checks}
R=/tmp/gpu-checks-runs
rm -rf "$R" && mkdir -p "$R" "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
vk() { python -m vitkit "$@"; }

say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
say "torch $(python -c 'import torch, timm; print(torch.__version__, "timm", timm.__version__)')"
nvidia-smi > "$R/nvidia-smi.txt" 2>&1

# 1. side by side: tests, the GPU recipes, the CPU-recipe candidates
COMMON=(--device cuda --no-progress --json)
pids=()
if [[ $PARTS == *" train "* ]]; then
timeout 290 python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py tests/test_attention.py \
    tests/test_embed.py > "$R/pytest.log" 2>&1 & pids+=($!)
train() {  # name, then vitkit train options
    local name=$1; shift
    timeout 420 python -m vitkit train --out "$R/$name" "${COMMON[@]}" "$@" > "$R/$name.log" 2>&1
    echo "rc=$?" >> "$R/$name.log"
}
train gpu-hybrid8 --recipe fmnist-gpu --pad 2 --mixup 0 --cutmix 0 --time-budget 300s & pids+=($!)
train cpu60-base --recipe fmnist-60m --epochs 116 & pids+=($!)
train cpu60-depth8 --recipe fmnist-60m --set depth=8 --epochs 92 & pids+=($!)
train cpu60-reg --recipe fmnist-60m --drop-path 0.1 --ema 0.9998 --epochs 116 & pids+=($!)
fi
wait "${pids[@]}"
say "pytest: $(tail -n 1 "$R/pytest.log")"
for d in "$R"/gpu-* "$R"/cpu60-*; do
    [ -d "$d" ] || continue
    say "$(basename "$d"): $(python -c "import json,sys; s=json.load(open(sys.argv[1])); print({k: s.get(k) for k in ('accuracy','epochs_done','wall_time_s','images_per_s','best_val_accuracy')})" "$d/summary.json" 2>&1 | tail -n 1)"
    cp "$d/metrics.jsonl" "$R/$(basename "$d").metrics.jsonl" 2>/dev/null
    rm -rf "$d/last" "$d/best"  # weights stay on the device machine: only the figures come back
done
tar czf "$OUT/gpu_checks.tgz" -C "$R" .
# 2. timings, the GPU to themselves
[[ $PARTS == *" timings "* ]] || { say "done"; exit 0; }
say "vs_timm on cuda"
timeout 150 python benchmarks/vs_timm.py --device cuda --out "$R/vs_timm-cuda.json" \
    --note "H200 lent for one session; nothing else on the GPU" > "$R/vs_timm.log" 2>&1
say "vs_timm rc=$?"; tail -n 25 "$R/vs_timm.log" >> "$LOG"
for spec in "infer 512" "train 128"; do
    set -- $spec
    timeout 45 python -m vitkit bench --model vit_b16 --mode "$1" --batch-size "$2" --dtype bf16 --device cuda \
        --warmup 5 --repeats 20 --json "$R/bench_vit_b16_$1.json" > "$R/bench_vit_b16_$1.log" 2>&1
    say "bench vit_b16 $1 rc=$?"; tail -n 6 "$R/bench_vit_b16_$1.log" >> "$LOG"
done

tar czf "$OUT/gpu_checks.tgz" -C "$R" .
say "done"
