#!/usr/bin/env bash
# Create .venv with repro and all its extras. Idempotent: re-running only fills gaps.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import repro, timm, papermill, jupyter_book, nbval" 2>/dev/null; then
  echo "installing repro into .venv (torch pinned by constraints.txt; a few minutes the first time)"
  .venv/bin/pip install -q -c constraints.txt -e '.[all]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import repro, timm, papermill, jupyter_book, nbval"
fi
