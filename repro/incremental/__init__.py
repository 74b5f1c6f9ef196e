"""Class-incremental learning: one protocol for the family.

- ``stream``: class orders, scenarios and the task stream over CIFAR-100 (labels are positions
  in the class order, so task t owns a contiguous block of labels);
- ``memory``: exemplar memory with a fixed total budget (herding or random), or none;
- ``metrics``: the accuracy matrix A[t, j] and everything read from it (average incremental
  accuracy, last accuracy, forgetting, old/new split), one definition each;
- ``learners``: the incremental loop and the shared baselines (fine-tuning, replay, replay + KD,
  joint training).
"""
from .memory import ExemplarMemory, herding_order
from .metrics import AccuracyMatrix
from .stream import Stream, check_tasks, make_stream

__all__ = ["AccuracyMatrix", "ExemplarMemory", "Stream", "check_tasks", "herding_order", "make_stream"]
