"""Process-wide run modes set by environment variables (inherited by a notebook's kernel).

Kept apart from the trainer so the CLI can read them without importing torch.
"""
from __future__ import annotations

import os

DRY_RUN_ENV = "REPRO_DRY_RUN"
FRESH_ENV = "REPRO_FRESH"


def _on(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def dry_run() -> bool:
    """True when ``REPRO_DRY_RUN`` is set (not 0): every ``fit`` takes one step and every
    evaluation one batch, with no checkpoints — a check that a tier's code path runs at all
    (e.g. the gpu tier on a CPU), never a result."""
    return _on(DRY_RUN_ENV)


def fresh() -> bool:
    """True when ``REPRO_FRESH`` is set (``repro run --fresh``): runs ignore the checkpoints of
    earlier runs and retrain everything (an independent replication)."""
    return _on(FRESH_ENV)
