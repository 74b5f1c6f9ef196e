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


CPU_PRECISION_ENV = "REPRO_CPU_PRECISION"
#: The values ``REPRO_CPU_PRECISION`` takes; unset or empty means :data:`DEFAULT_CPU_PRECISION`.
CPU_PRECISIONS = ("fp32", "bf16")
DEFAULT_CPU_PRECISION = "fp32"


def cpu_precision() -> str:
    """How training and evaluation run on the CPU, from ``REPRO_CPU_PRECISION``.

    ``fp32`` (the default): float32 and NCHW tensors, whatever a ``TrainConfig`` asks for.
    ``bf16``: the CPU follows ``TrainConfig.bf16`` / ``channels_last`` (both on by default) as
    CUDA always does: bf16 autocast and channels_last memory, fast on CPUs with AVX512-BF16 or
    AMX. Any other value raises ``ValueError`` naming the allowed ones.
    """
    value = os.environ.get(CPU_PRECISION_ENV, "").strip().lower() or DEFAULT_CPU_PRECISION
    if value not in CPU_PRECISIONS:
        raise ValueError(f"{CPU_PRECISION_ENV}={os.environ[CPU_PRECISION_ENV]!r}: expected one of "
                         f"{', '.join(CPU_PRECISIONS)} (unset means {DEFAULT_CPU_PRECISION})")
    return value
