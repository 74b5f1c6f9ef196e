"""Class-incremental learning: one protocol for chapters 01 oca, 02 gtep, 04 gcab, 07 napavq,
10 nmc and 24 wa.

- ``stream``: class orders, scenarios and the task stream over CIFAR-100 (labels are positions
  in the class order, so task t owns a contiguous block of labels);
- ``memory``: exemplar memory with a fixed total budget (herding or random), or none;
- ``metrics``: the accuracy matrix A[t, j] and everything read from it (average incremental
  accuracy, last accuracy, forgetting, old/new split), one definition each;
- ``learners``: ``IncrementalConfig`` (what every learner arm's config extends), the
  ``Learner`` base class and the incremental loop ``run_stream``;
- ``protocol``: the stream and configs from a chapter's parameters, and sweeps of labelled
  arms over seeds (``repro.sweep``), plus the glue of chapters that need more than a stream;
- ``arms/``: one module per method, each registering its arms (``baselines``: fine-tuning,
  replay, replay + KD, joint training);
- ``figures``: the accuracy matrix and accuracy-after-each-task figures, and each chapter's own;
- ``tables``: the summary table and each chapter's own.
"""
from .learners import IncrementalConfig, Learner, StreamResult, run_stream
from .memory import ExemplarMemory, class_means, extract_features, herding_order
from .metrics import AccuracyMatrix
from .stream import Stream, check_tasks, make_stream, parse_scenario

__all__ = ["AccuracyMatrix", "ExemplarMemory", "IncrementalConfig", "Learner", "Stream", "StreamResult",
           "check_tasks", "class_means", "extract_features", "herding_order", "make_stream", "parse_scenario",
           "run_stream"]
