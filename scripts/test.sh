#!/usr/bin/env bash
# Run vitkit's test suite (sets up .venv first when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/vitkit ] || bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
