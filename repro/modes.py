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
CPU_PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_CPU_PRECISION = "auto"
#: CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: without them bf16 is emulated and slow.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX; read from /proc/cpuinfo,
    False where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(fl in flags for fl in BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def cpu_precision() -> str:
    """How training and evaluation run on the CPU (``fp32`` or ``bf16``), from
    ``REPRO_CPU_PRECISION``.

    ``auto`` (the default): ``bf16`` on a CPU with native bf16 (AVX512-BF16 or AMX), where it
    trains the book's CNNs 2–2.3× faster with accuracy unchanged within noise (``repro bench``,
    ``results/precision_check.json``), else ``fp32``. ``fp32``: float32 and NCHW tensors,
    whatever a ``TrainConfig`` asks for. ``bf16``: the CPU follows ``TrainConfig.bf16`` /
    ``channels_last`` as CUDA always does. Any other value raises ``ValueError``.
    """
    value = os.environ.get(CPU_PRECISION_ENV, "").strip().lower() or DEFAULT_CPU_PRECISION
    if value not in CPU_PRECISIONS:
        raise ValueError(f"{CPU_PRECISION_ENV}={os.environ[CPU_PRECISION_ENV]!r}: expected one of "
                         f"{', '.join(CPU_PRECISIONS)} (unset means {DEFAULT_CPU_PRECISION})")
    if value == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return value
