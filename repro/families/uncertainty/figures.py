"""The uncertainty family's figures: quantities against corruption severity, set-size
histograms, score histograms (ID vs OOD) and AUROC per detector and model. ROC panels are
``repro.plots.roc.roc_panels``; every figure states its setting."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...plots.style import annotate_setting, jsonable, new_figure


def plot_vs_severity(panels: Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]], setting: str,
                     guides: Mapping[str, float] | None = None):
    """One panel per quantity (``title → corruption → severity → per-seed values``): a line per
    corruption through the mean over seeds, a band over the seeds' min–max, and optional
    horizontal guides (``title → y``, e.g. the target coverage 1 − α)."""
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=2.6 * ncols + 0.4, height=2.4 * nrows + 0.6)
    axes = np.atleast_1d(axes).reshape(-1)
    out: dict[str, Any] = {}
    for ax, (title, per_c) in zip(axes, panels.items()):
        out[title] = {}
        for i, (c, per_k) in enumerate(per_c.items()):
            ks = sorted(per_k)
            vals = [np.asarray(per_k[k], float) for k in ks]
            mean = np.array([np.nanmean(v) for v in vals])
            ax.plot(ks, mean, marker="o", color=f"C{i}", label=c.replace("_", " "))
            if max(len(v) for v in vals) > 1:
                ax.fill_between(ks, [np.nanmin(v) for v in vals], [np.nanmax(v) for v in vals], color=f"C{i}", alpha=0.2)
            out[title][c] = {"severity": ks, "mean": mean.tolist(), "seeds": [v.tolist() for v in vals]}
        if guides and title in guides:
            ax.axhline(guides[title], color="0.3", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("severity")
        ax.set_xticks(sorted({k for per_k in per_c.values() for k in per_k}))
    spare = axes[len(panels):]
    for ax in spare:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(spare):  # the legend goes in the first empty cell of the grid
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(handles, labels, loc="center", title="corruption")
    else:
        axes[0].legend(loc="best", fontsize="small")
    annotate_setting(fig, setting)
    return fig, jsonable({"panels": out, "guides": dict(guides or {}), "setting": setting})


def plot_set_size_hist(sizes: Mapping[str, np.ndarray], setting: str, num_classes: int):
    """Histograms of prediction-set sizes, one step line per set (clean, severities…)."""
    fig, ax = new_figure(width=5.0, height=3.2)
    bins = np.arange(0, num_classes + 2) - 0.5
    out = {}
    for i, (name, s) in enumerate(sizes.items()):
        h, _ = np.histogram(np.asarray(s), bins=bins)
        frac = h / max(1, h.sum())
        ax.step(np.arange(0, num_classes + 1), frac, where="mid", color=f"C{i}", label=name.replace("_", " "))
        out[name] = frac.tolist()
    ax.set_xlabel("prediction-set size (classes)")
    ax.set_ylabel("fraction of test images")
    ax.set_xlim(-0.5, min(num_classes, max(int(np.max(s)) for s in sizes.values()) + 1) + 0.5)
    ax.legend(fontsize="small")
    annotate_setting(fig, setting)
    return fig, jsonable({"fractions": out, "setting": setting})


def plot_score_hist(scores: Mapping[str, Mapping[str, np.ndarray]], setting: str, ind: str = "test"):
    """Score histograms, one panel per model (``model → set → scores``): the in-distribution
    set filled, each OOD set as a line."""
    fig, axes = new_figure(ncols=len(scores), width=2.0 * len(scores) + 1.6, height=2.8)
    axes = np.atleast_1d(axes)
    out: dict[str, Any] = {}
    for ax, (model, per_set) in zip(axes, scores.items()):
        allv = np.concatenate([np.asarray(v) for v in per_set.values()])
        lo, hi = np.percentile(allv, [0.5, 99.5])
        bins = np.linspace(lo, hi, 41)
        out[model] = {}
        for i, (name, v) in enumerate(per_set.items()):
            h, _ = np.histogram(np.clip(v, lo, hi), bins=bins, density=True)
            centres = (bins[:-1] + bins[1:]) / 2
            if name == ind:
                ax.fill_between(centres, h, step="mid", color="0.7", label="in-distribution")
            else:
                ax.step(centres, h, where="mid", color=f"C{i}", label=name.replace("_", " "))
            out[model][name] = h.tolist()
        ax.set_title(model)
        ax.set_xlabel("score")
        ax.set_yticks([])
    axes[0].set_ylabel("density (higher score: in-dist.)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    annotate_setting(fig, setting)
    return fig, jsonable({"histograms": out, "setting": setting})


def plot_auroc_bars(summary: Mapping[str, Mapping[str, Mapping[str, float]]], spread: Mapping[str, Mapping[str, Sequence[float]]],
                    setting: str, metric: str = "mean AUROC over OOD sets (%)"):
    """Grouped bars: one group per detector, one bar per model (``model → detector → {'mean':
    value}``), with each seed's value as a dot (``spread[model][detector]``)."""
    models = list(summary)
    dets = list(next(iter(summary.values())))
    fig, ax = new_figure(width=min(7.4, 1.0 + 0.55 * len(dets) * max(1, len(models))), height=3.2)
    w = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        xs = np.arange(len(dets)) + (i - (len(models) - 1) / 2) * w
        ax.bar(xs, [summary[m][d].get("mean", np.nan) for d in dets], width=w, color=f"C{i}", alpha=0.8, label=m)
        for x, d in zip(xs, dets):
            vals = spread.get(m, {}).get(d, [])
            ax.plot([x] * len(vals), vals, "k.", markersize=3)
    ax.set_xticks(np.arange(len(dets)), dets)
    ax.axhline(50, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_ylabel(metric)
    ax.legend(title="model", fontsize="small")
    annotate_setting(fig, setting)
    return fig, jsonable({"summary": summary, "seeds": spread, "setting": setting})
