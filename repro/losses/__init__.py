"""Losses the papers introduce, as plain functions on tensors (``distillation``: KD, NKD,
USKD, PLD, DIST, BD-KD and the self-KD pieces; ``incremental``: the class-incremental
chapters' losses)."""
from . import distillation, incremental

__all__ = ["distillation", "incremental"]
