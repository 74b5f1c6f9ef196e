"""The accuracy matrix and the numbers the class-incremental chapters report, one definition each.

``A[t, j]`` is the top-1 accuracy (%) on the test images of task j's classes, predicting over
*every class seen so far*, after training task t (defined for j ≤ t; NaN above the diagonal).
With ``n_j`` test images in task j:

* accuracy after task t:      acc_t = Σ_{j≤t} n_j·A[t, j] / Σ_{j≤t} n_j   (all seen classes)
* average incremental acc.:   AIA = (1/T)·Σ_t acc_t                       (Rebuffi et al., iCaRL)
* last accuracy:              acc_{T−1}
* forgetting of task j < T−1: f_j = max_{t<T−1} A[t, j] − A[T−1, j]; average forgetting is the
  mean of f_j over j < T−1 (Chaudhry et al., 2018)
* old / new after task t ≥ 1: the n-weighted mean of A[t, j] over j < t, and A[t, t].
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AccuracyMatrix:
    """A[t, j] filled one row per task, with the test-set size of each task."""

    task_sizes: Sequence[int]
    rows: list[list[float]] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    def add_row(self, accuracies: Sequence[float]) -> None:
        """Append row t = len(rows): accuracies on tasks 0..t."""
        t = len(self.rows)
        if len(accuracies) != t + 1:
            raise ValueError(f"row {t} needs {t + 1} task accuracies, got {len(accuracies)}")
        if t >= self.num_tasks:
            raise ValueError(f"all {self.num_tasks} rows are filled")
        self.rows.append([float(a) for a in accuracies])

    @property
    def A(self) -> np.ndarray:
        """[T_done, T] with NaN where j > t."""
        out = np.full((len(self.rows), self.num_tasks), np.nan)
        for t, r in enumerate(self.rows):
            out[t, : t + 1] = r
        return out

    def acc_after(self) -> list[float]:
        """acc_t for every finished task t (all seen classes, weighted by test images)."""
        n = np.asarray(self.task_sizes, dtype=float)
        return [float(np.dot(n[: t + 1], r) / n[: t + 1].sum()) for t, r in enumerate(self.rows)]

    def average_incremental(self) -> float:
        accs = self.acc_after()
        return float(np.mean(accs)) if accs else float("nan")

    def last(self) -> float:
        accs = self.acc_after()
        return accs[-1] if accs else float("nan")

    def forgetting(self) -> float:
        """Mean over j < T−1 of (best earlier accuracy on j) − (final accuracy on j)."""
        A = self.A
        T = len(self.rows)
        if T < 2:
            return float("nan")
        return float(np.mean([np.nanmax(A[: T - 1, j]) - A[T - 1, j] for j in range(T - 1)]))

    def old_new(self) -> list[tuple[float, float]]:
        """(old, new) accuracy after each task t ≥ 1."""
        n = np.asarray(self.task_sizes, dtype=float)
        out = []
        for t, r in enumerate(self.rows):
            if t == 0:
                continue
            old = float(np.dot(n[:t], r[:t]) / n[:t].sum())
            out.append((old, r[t]))
        return out

    def summary(self) -> dict[str, float]:
        """AIA, last, forgetting, and the final old/new split."""
        on = self.old_new()
        return {"aia": self.average_incremental(), "last": self.last(), "forgetting": self.forgetting(),
                "old_last": on[-1][0] if on else float("nan"), "new_last": on[-1][1] if on else float("nan")}

    def state_dict(self) -> dict:
        return {"task_sizes": list(self.task_sizes), "rows": self.rows}

    @classmethod
    def from_state(cls, state: dict) -> "AccuracyMatrix":
        return cls(state["task_sizes"], [list(r) for r in state["rows"]])
