"""Losses the papers introduce, as plain functions on tensors (``distillation``: KD, NKD,
USKD, PLD, DIST, BD-KD and the self-KD pieces)."""
from . import distillation

__all__ = ["distillation"]
