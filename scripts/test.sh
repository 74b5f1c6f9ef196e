#!/usr/bin/env bash
# The whole test suite, with its own set-up: creates .venv if needed (torch/torchvision
# pinned by constraints.txt), then runs unit tests, notebook smoke runs (papermill),
# nbval over the notebooks, and the book build + browser checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
.venv/bin/python -m pytest -q -ra "$@"
