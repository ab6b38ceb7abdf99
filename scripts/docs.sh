#!/usr/bin/env bash
# Build the documentation site into site/ (mkdocs.yml): strict (a warning, such as a dead link or a
# missing image, fails the build), offline, in seconds. The tutorials are not run here: the test
# suite runs them (tests/test_tutorials.py) and the pages show the outputs it saved in
# docs/tutorials/outputs/. Extra arguments go to `mkdocs build`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mkdocs ] || bash scripts/setup.sh
export NO_MKDOCS_2_WARNING=1  # Material's notice about its successor, printed on every build
.venv/bin/mkdocs build --strict --site-dir site "$@"
echo "docs: open file://$PWD/site/index.html (or: .venv/bin/mkdocs serve)"
