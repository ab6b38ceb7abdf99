#!/usr/bin/env bash
# The six experiments of docs/experiments.md, in two queues of one CPU thread each (the two cores
# of the machine), about 75 minutes in all. Each script skips the runs already recorded in
# docs/experiments/*.json, so running this again after a stop continues where it stopped;
# `--fresh` (passed on to every script) starts over.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p docs/experiments
run() { "$PY" "benchmarks/experiments/$1.py" --threads 1 "${@:2}"; }
(run posemb "$@" && run patch_size "$@" && run registers "$@") > docs/experiments/queue1.log 2>&1 &
(run pooling "$@" && run data_efficiency "$@" && run attention_distance "$@") > docs/experiments/queue2.log 2>&1 &
rc=0
wait %1 || rc=1
wait %2 || rc=1
[ $rc = 0 ] || { echo "an experiment failed: see docs/experiments/queue*.log"; exit 1; }
echo "done: docs/experiments/*.json and *.png"
