"""The class-incremental figures every chapter of the family uses."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import annotate_setting, jsonable, new_figure


def accuracy_matrix_heatmap(A: Any, setting: str | None, title: str | None = None,
                            task_labels: Sequence[str] | None = None) -> tuple[Figure, dict]:
    """Heatmap of A[t, j] (%): rows = after training task t, columns = evaluated task j.

    The upper triangle (tasks not yet seen) stays blank; every cell shows its value.
    """
    A = np.asarray(A, dtype=float)
    T = A.shape[1]
    fig, ax = new_figure(width=max(3.6, 0.55 * T + 1.8), height=max(3.0, 0.5 * A.shape[0] + 1.4))
    im = ax.imshow(np.ma.masked_invalid(A), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for t in range(A.shape[0]):
        for j in range(T):
            if np.isfinite(A[t, j]):
                ax.text(j, t, f"{A[t, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if A[t, j] < 60 else "black")
    labels = list(task_labels) if task_labels else [str(i + 1) for i in range(T)]
    ax.set_xticks(range(T), labels)
    ax.set_yticks(range(A.shape[0]), labels[: A.shape[0]])
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task t")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="top-1 on task j (%)", shrink=0.85)
    ax.set_title(title or "Accuracy matrix A[t, j]")
    annotate_setting(fig, setting)
    return fig, jsonable({"A": A, "setting": setting, "title": title})


def accuracy_curves(curves: Mapping[str, Sequence[Sequence[float]]], seen_classes: Sequence[int],
                    setting: str | None, title: str | None = None) -> tuple[Figure, dict]:
    """Accuracy on all seen classes after each task, one line per learner (mean over seeds,
    band min–max). ``curves[name]`` is a list of per-seed lists acc_0..acc_{T−1}."""
    fig, ax = new_figure(width=5.2)
    data: dict[str, Any] = {}
    x = np.asarray(seen_classes)
    for i, (name, runs) in enumerate(curves.items()):
        arr = np.asarray(runs, dtype=float)
        if arr.ndim == 1:
            arr = arr[None]
        mean = arr.mean(0)
        color = f"C{i % 10}"
        ax.plot(x[: arr.shape[1]], mean, "o-", color=color,
                label=f"{name} (n={arr.shape[0]})" if arr.shape[0] > 1 else name)
        if arr.shape[0] > 1:
            ax.fill_between(x[: arr.shape[1]], arr.min(0), arr.max(0), color=color, alpha=0.2, linewidth=0)
        data[name] = {"mean": mean, "min": arr.min(0), "max": arr.max(0), "n": arr.shape[0]}
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 on all seen classes (%)")
    ax.set_xticks(x)
    ax.legend()
    ax.set_title(title or "Accuracy after each task")
    annotate_setting(fig, setting)
    return fig, jsonable({"seen_classes": x, "curves": data, "setting": setting, "band": "min-max over seeds"})
