"""Reliability diagram (calibration) with the ECE of ``repro.metrics``."""
from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..metrics import reliability_bins
from .style import annotate_setting, jsonable, new_figure


def reliability_diagram(probs: Any, labels: Any, n_bins: int = 15, *, setting: str | None,
                        title: str | None = None) -> tuple[Figure, dict]:
    """Accuracy against confidence per equal-width bin, with a count histogram beneath.

    Args:
        probs: ``[N, C]`` predicted probabilities (not logits).
        labels: ``[N]`` integer labels.
        n_bins: bins on [0, 1], as in ``repro.metrics.reliability_bins``.
        setting: caption stating the experimental setting (required; ``""`` to omit).

    Returns:
        ``(fig, data)``; data has ``edges, confidence, accuracy, count`` (empty bins: null)
        and ``ece`` (fraction).
    """
    b = reliability_bins(probs, labels, n_bins)
    edges, count = b["edges"], b["count"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.nan_to_num(b["accuracy"], nan=0.0)
    conf = np.nan_to_num(b["confidence"], nan=0.0)
    nonempty = count > 0
    fig, (ax, ax_n) = new_figure(nrows=2, width=3.9, height=4.4, sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[nonempty], acc[nonempty], width=width, color="C0", edgecolor="white",
           linewidth=0.5, label="accuracy")
    # The gap bars show where the confidence sits relative to the accuracy in each bin.
    ax.bar(centers[nonempty], (conf - acc)[nonempty], bottom=acc[nonempty], width=width,
           color="C1", alpha=0.35, edgecolor="C1", linewidth=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.text(0.04, 0.95, f"ECE = {b['ece'] * 100:.2f}%  ({n_bins} bins)", transform=ax.transAxes,
            va="top", ha="left", fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.8", "boxstyle": "round,pad=0.3"})
    # Over-confident models (the usual case) leave the upper-left triangle empty.
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.89), frameon=True, framealpha=0.9,
              edgecolor="none")
    ax_n.bar(centers, count, width=width, color="0.55", edgecolor="white", linewidth=0.5)
    ax_n.set_xlabel("confidence (max probability)")
    ax_n.set_ylabel("count")
    if title:
        ax.set_title(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"edges": edges.tolist(), "confidence": b["confidence"].tolist(),
                          "accuracy": b["accuracy"].tolist(), "count": count.tolist(), "ece": b["ece"],
                          "n_bins": n_bins, "setting": setting, "title": title})
