#!/usr/bin/env bash
# The whole test suite, with its own set-up: creates .venv if needed (torch/torchvision
# pinned by constraints.txt), then runs the unit tests, every notebook at the smoke tier
# (papermill), the book build + browser check, and nbval over the notebook sources.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
.venv/bin/python -m pytest -q -ra "$@"
# nbval executes the sources as they are; REPRO_TIER picks the smoke tier for them and the
# run folders, checkpoints and teachers go to a scratch folder.
REPRO_TIER=smoke REPRO_RUNS="$scratch/runs" REPRO_CHECKPOINTS="$scratch/ckpt" REPRO_TEACHERS="$scratch/teachers" \
  .venv/bin/python -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider notebooks
