#!/usr/bin/env bash
# What a session with a lent GPU runs, in one go (device time is short): side by side, the CUDA
# tests and the GPU training recipe; then the GPU timings, alone on the card. PARTS picks what runs.
#
# Learned on an H200 (2026-11-26): four small training processes sharing one GPU ran at only
# ~2,500 img/s each (the GPU time-slices between processes, and each process took 14 CPU threads),
# so replaying the CPU recipes there to pick one is not cheaper than running them on the CPU.
#
#   VITKIT_REVISION=$(git rev-parse HEAD) OUT=/tmp/gpu VITKIT_DATA=/path/with/fashion-mnist \
#       PARTS="train timings" bash benchmarks/gpu_checks.sh
#   PARTS="timings compile" ...   # a second call: eager, then compiled ViT-B/16 timings (under 8 minutes)
#
# Every measurement is a record (benchmarks/record.py: the GPU, the revision given, the command):
# they land in $OUT/records/NAME.jsonl, beside $OUT/gpu_checks.tgz and $OUT/log.txt. Back home,
# `python benchmarks/record.py merge OUT/records` appends them to benchmarks/results/.
set -u
PARTS=" ${PARTS:-train timings} "
OUT=${OUT:-/tmp/gpu-checks}
R=/tmp/gpu-checks-runs
rm -rf "$R" && mkdir -p "$R" "$OUT/records"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export VITKIT_RESULTS="$OUT/records"  # a copy of the tree: the records travel back in $OUT
LOG="$OUT/log.txt"
record() { python benchmarks/record.py run --device cuda "$@"; }  # NAME [options] -- COMMAND
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
say "torch $(python -c 'import torch, timm; print(torch.__version__, "timm", timm.__version__)')"
nvidia-smi > "$R/nvidia-smi.txt" 2>&1

# 1. side by side: tests, the GPU recipes, the CPU-recipe candidates
COMMON=(--device cuda --no-progress --json)
pids=()
if [[ $PARTS == *" train "* ]]; then
record gpu_checks --config part=tests --log "$R/pytest.log" -- timeout 290 python -m pytest -q -p no:cacheprovider \
    tests/test_cuda.py tests/test_model.py tests/test_attention.py tests/test_embed.py & pids+=($!)
train() {  # name, recipe, then vitkit train options
    local name=$1 recipe=$2; shift 2
    record gpu_checks --config part=train --config "recipe=$recipe" --json "$R/$name/summary.json" \
        --log "$R/$name.log" -- timeout 420 python -m vitkit train --out "$R/$name" "${COMMON[@]}" --recipe "$recipe" "$@"
    echo "rc=$?" >> "$R/$name.log"
}
train gpu fmnist-gpu --time-budget "${GPU_BUDGET:-360s}" & pids+=($!)
fi
wait "${pids[@]}"
[ -f "$R/pytest.log" ] && say "pytest: $(tail -n 1 "$R/pytest.log")"
d="$R/gpu"
if [ -d "$d" ]; then
    say "gpu: $(python -c "import json,sys; s=json.load(open(sys.argv[1])); print({k: s.get(k) for k in ('accuracy','epochs_done','wall_time_s','images_per_s','best_val_accuracy')})" "$d/summary.json" 2>&1 | tail -n 1)"
    rm -rf "$d/last" "$d/best"  # weights stay on the device machine: only the figures come back
fi
tar czf "$OUT/gpu_checks.tgz" -C "$R" .
# 2. timings, the GPU to themselves
bench_b16() {  # timeout, file suffix, then extra `vitkit bench` options: ViT-B/16 bf16 inference and training
    local limit=$1 suffix=$2 mode batch; shift 2
    for spec in "infer 512" "train 128"; do
        read -r mode batch <<< "$spec"
        record bench --json "$R/bench_vit_b16_$mode$suffix.json" --config profile=false \
            --config-keys model,params,recipe,overrides,mode,dtype,compile,batch_size,device \
            --log "$R/bench_vit_b16_$mode$suffix.log" -- timeout "$limit" python -m vitkit bench --model vit_b16 \
            --mode "$mode" --batch-size "$batch" --dtype bf16 --device cuda --warmup 5 --repeats 20 "$@" \
            --json "$R/bench_vit_b16_$mode$suffix.json"
        say "bench vit_b16 $mode$suffix rc=$?"; tail -n 6 "$R/bench_vit_b16_$mode$suffix.log" >> "$LOG"
    done
}
if [[ $PARTS == *" timings "* ]]; then
say "vs_timm on cuda"
timeout 150 python benchmarks/vs_timm.py --device cuda --note "lent for one session; nothing else on the GPU" \
    > "$R/vs_timm.log" 2>&1
say "vs_timm rc=$?"; tail -n 25 "$R/vs_timm.log" >> "$LOG"
bench_b16 45 ""
fi

# 3. torch.compile for training and inference (a cold compile of ViT-B/16 takes a minute or so)
if [[ $PARTS == *" compile "* ]]; then
bench_b16 150 _compiled --compile
fi

tar czf "$OUT/gpu_checks.tgz" -C "$R" .
say "done"
