"""ROC curves for OOD detection (in-distribution = positive class)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from matplotlib.figure import Figure

from ..metrics import auroc, fpr_at_tpr, roc_curve
from .style import annotate_setting, jsonable, new_figure


def _thin(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Drop points inside horizontal/vertical runs (lossless for a staircase), then cap.

    A ROC curve over 10k + 10k scores has ~20k points, mostly collinear steps; keeping
    only the corners leaves the drawn curve unchanged and keeps the saved JSON small.
    """
    if fpr.size <= 2:
        return fpr, tpr
    keep = np.ones(fpr.size, dtype=bool)
    same_f = np.isclose(fpr[:-2], fpr[1:-1]) & np.isclose(fpr[1:-1], fpr[2:])
    same_t = np.isclose(tpr[:-2], tpr[1:-1]) & np.isclose(tpr[1:-1], tpr[2:])
    keep[1:-1] = ~(same_f | same_t)
    fpr, tpr = fpr[keep], tpr[keep]
    if fpr.size > max_points:  # very mixed scores: an even subsample is visually identical
        idx = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return fpr, tpr


def roc_plot(curves: Mapping[str, tuple[Any, Any]], setting: str | None,
             title: str | None = None) -> tuple[Figure, dict]:
    """ROC curves, one per detector, with AUROC (and FPR@95) in the legend.

    Args:
        curves: ``label -> (scores_in [N_in], scores_out [N_out])``; higher score = more
            in-distribution (see ``repro.metrics.roc_curve``).
        setting: caption stating the experimental setting (required; ``""`` to omit).

    Returns:
        ``(fig, data)``; ``data["curves"][label] = {fpr, tpr, auroc, fpr95}`` (the curve
        reduced to its corners, see ``_thin``).
    """
    fig, ax = new_figure(width=4.0, height=3.8)
    out: dict[str, Any] = {}
    for i, (label, (s_in, s_out)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve(s_in, s_out)
        fpr, tpr = _thin(fpr, tpr)
        a, f95 = auroc(s_in, s_out), fpr_at_tpr(s_in, s_out, 0.95)
        ax.plot(fpr, tpr, color=f"C{i % 10}", label=f"{label} (AUROC {a:.3f}, FPR@95 {f95:.2f})")
        out[label] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auroc": a, "fpr95": f95}
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.axhline(0.95, color="0.75", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (OOD accepted)")
    ax.set_ylabel("true-positive rate (in-dist. accepted)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"curves": out, "positive": "in-distribution", "setting": setting, "title": title})


def roc_panels(panels: Mapping[str, Mapping[str, tuple[Any, Any]]], setting: str | None,
               ncols: int | None = None, xlabel: str = "false-positive rate (OOD accepted)",
               ylabel: str = "true-positive rate (in-dist. accepted)") -> tuple[Figure, dict]:
    """ROC curves in one panel per key of ``panels`` (an OOD set, a corruption severity…),
    the curves of each panel overlaid with their AUROC in the legend.

    Args:
        panels: ``panel title -> label -> (scores_pos [N_pos], scores_neg [N_neg])``; higher
            score = more likely positive.
        setting: caption stating the experimental setting.

    Returns:
        ``(fig, data)``; ``data["panels"][title][label] = {fpr, tpr, auroc}``.
    """
    n = max(1, len(panels))
    ncols = min(ncols or 3, n, 3)  # the book's text column holds three readable panels a row
    nrows = -(-n // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=2.6 * ncols + 0.4, height=2.6 * nrows + 0.6)
    axes = np.atleast_1d(axes).reshape(-1)
    out: dict[str, Any] = {}
    for ax, (title, curves) in zip(axes, panels.items()):
        out[title] = {}
        for i, (label, (s_pos, s_neg)) in enumerate(curves.items()):
            fpr, tpr, _ = roc_curve(s_pos, s_neg)
            fpr, tpr = _thin(fpr, tpr, max_points=600)
            a = auroc(s_pos, s_neg)
            ax.plot(fpr, tpr, color=f"C{i % 10}", linewidth=1.2, label=f"{label} ({a:.3f})")
            out[title][label] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auroc": a}
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.legend(loc="lower right", title="AUROC", fontsize="small", title_fontsize="small",
                  handlelength=1.0, borderpad=0.3, labelspacing=0.2, frameon=True, framealpha=0.85,
                  edgecolor="none")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(ylabel)
    for ax in axes[(nrows - 1) * ncols:]:
        ax.set_xlabel(xlabel)
    annotate_setting(fig, setting)
    return fig, jsonable({"panels": out, "setting": setting})
