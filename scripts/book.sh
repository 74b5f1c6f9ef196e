#!/usr/bin/env bash
# Build the HTML book from the stored executed chapters and records (never trains).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/repro book
