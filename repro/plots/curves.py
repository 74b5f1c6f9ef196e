"""Training curves and per-seed bar charts."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .style import annotate_setting, jsonable, new_figure

History = list[dict[str, Any]]

# Axis labels for the trainer's history keys (repro.train): accuracies are in percent.
_LABELS = {
    "epoch": "epoch",
    "step": "step",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "train_acc": "train accuracy (%)",
    "test_acc": "test accuracy (%)",
    "images_per_s": "images / s",
    "lr": "learning rate",
    "epoch_s": "seconds / epoch",
}


def axis_label(key: str) -> str:
    """A readable axis label for a history key."""
    return _LABELS.get(key, key.replace("_", " "))


def _runs(h: Sequence[Any]) -> list[History]:
    """One history, or a list of histories (seeds), as a list of histories."""
    if len(h) > 0 and isinstance(h[0], Mapping):
        return [list(h)]
    return [list(r) for r in h]


def _series(history: History, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) over the epochs of one training history that have both keys with finite values."""
    xs, ys = [], []
    for i, row in enumerate(history):
        xv = row.get(x, i if x == "index" else None)
        yv = row.get(y)
        if xv is None or yv is None:
            continue
        xv, yv = float(xv), float(yv)
        if np.isfinite(xv) and np.isfinite(yv):
            xs.append(xv)
            ys.append(yv)
    return np.asarray(xs), np.asarray(ys)


def _aggregate(runs: list[History], x: str, y: str) -> dict[str, Any] | None:
    """Mean and min–max over seeds at the x values that every seed has."""
    series = [_series(r, x, y) for r in runs]
    series = [s for s in series if s[0].size]
    if not series:
        return None
    common = sorted(set(series[0][0].tolist()).intersection(*[set(s[0].tolist()) for s in series[1:]]))
    if not common:
        return None
    lookups = [dict(zip(sx.tolist(), sy.tolist())) for sx, sy in series]
    stack = np.array([[m[c] for c in common] for m in lookups])  # [seeds, len(common)]
    return {"x": common, "mean": stack.mean(0).tolist(), "min": stack.min(0).tolist(),
            "max": stack.max(0).tolist(), "n": int(stack.shape[0])}


def training_curves(histories: Mapping[str, Sequence[Any]], x: str = "epoch",
                    ys: Sequence[str] = ("train_loss", "test_acc"), *, setting: str | None,
                    title: str | None = None, logy: Sequence[str] = ()) -> tuple[Figure, dict]:
    """One panel per metric in ``ys`` against ``x``, one line per label.

    Args:
        histories: ``label -> history`` or ``label -> [history per seed]``; a history is a
            list of per-epoch dicts (``epoch, step, train_loss, train_acc, test_loss,
            test_acc, images_per_s``…). With several seeds the line is the mean and the
            shaded band the min–max, over the x values that every seed logged.
        x: history key for the horizontal axis (``"epoch"`` or ``"step"``).
        ys: history keys to plot, one panel each.
        setting: caption stating the experimental setting (required; ``""`` to omit).
        title: figure title.
        logy: keys whose panel uses a log y-axis.

    Returns:
        ``(fig, data)``; ``data["series"][y][label] = {x, mean, min, max, n}``.
    """
    ys = list(ys)
    fig, axes = new_figure(ncols=len(ys), squeeze=False)
    series: dict[str, dict[str, Any]] = {}
    for ax, y in zip(axes[0], ys):
        series[y] = {}
        for i, (label, h) in enumerate(histories.items()):
            agg = _aggregate(_runs(h), x, y)
            if agg is None:
                continue
            series[y][label] = agg
            color = f"C{i % 10}"
            name = label if agg["n"] == 1 else f"{label} (n={agg['n']})"
            # markers when there are too few epochs for a line to show (smoke runs)
            ax.plot(agg["x"], agg["mean"], color=color, label=name, marker="o" if len(agg["x"]) < 4 else None)
            if agg["n"] > 1:
                ax.fill_between(agg["x"], agg["min"], agg["max"], color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel(axis_label(x))
        ax.set_ylabel(axis_label(y))
        if y in logy:
            ax.set_yscale("log")
        if series[y]:
            ax.legend()
    if title:
        fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"x": x, "ys": ys, "series": series, "setting": setting, "title": title,
                          "band": "min-max over seeds"})


def bar_with_errors(values: Mapping[str, Sequence[float]], ylabel: str, setting: str | None,
                    title: str | None = None, ylim: tuple[float, float] | None = None) -> tuple[Figure, dict]:
    """Mean bars with one dot per seed and ±1 std error bars (``ddof=1``; 0 for one seed).

    Args:
        values: ``label -> per-seed values``.
        ylabel: y-axis label (with unit).
        setting: caption stating the experimental setting (required; ``""`` to omit).

    Returns:
        ``(fig, data)``; ``data["bars"][label] = {values, mean, std, n}``.
    """
    labels = list(values)
    fig, ax = new_figure(width=max(3.2, 0.9 * len(labels) + 1.6))
    bars: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    for i, label in enumerate(labels):
        v = np.asarray([float(a) for a in values[label]], dtype=np.float64)
        mean = float(v.mean()) if v.size else float("nan")
        std = float(v.std(ddof=1)) if v.size > 1 else 0.0
        bars[label] = {"values": v.tolist(), "mean": mean, "std": std, "n": int(v.size)}
        color = f"C{i % 10}"
        ax.bar(i, mean, width=0.65, color=color, alpha=0.55, edgecolor=color)
        ax.errorbar(i, mean, yerr=std, color="0.15", capsize=4, linewidth=1.2)
        jitter = rng.uniform(-0.15, 0.15, v.size) if v.size > 1 else np.zeros(v.size)
        ax.scatter(i + jitter, v, s=14, color="0.1", zorder=3)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)
    if ylim is not None:
        ax.set_ylim(*ylim)
        if ylim[0] != 0:  # a bar axis that does not start at 0 says so
            ax.set_ylabel(f"{ylabel} (axis starts at {ylim[0]:g})")
    if title:
        ax.set_title(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"ylabel": ylabel, "bars": bars, "error": "±1 std (ddof=1)",
                          "setting": setting, "title": title})
