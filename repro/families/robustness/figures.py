"""The robustness family's two standard figures, in the book's style; each returns
``(fig, data)`` for ``run.figure`` and shows the experimental ``setting`` under the plot.

* :func:`plot_robust_vs_eps` — robust accuracy against ε, one line per model (mean over
  seeds, min–max band), ε ticks as k/255;
* :func:`plot_clean_vs_robust` — clean against robust accuracy across arms: one dot per seed,
  the mean as a larger marker with min–max bars, both axes from 0, and the line robust = clean
  (robust accuracy as the suite counts it never exceeds clean accuracy).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import ParameterError
from ...plots.style import COLORS, annotate_setting, jsonable, new_figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Legends move out of the axes, to the right, above this many entries.
_INSIDE_LEGEND = 4


def eps_label(eps: float) -> str:
    """ε as the book writes it: "0", "8/255", "0.5/255"."""
    k = float(eps) * 255
    if abs(k - round(k)) < 1e-6:
        k = round(k)
    return "0" if k == 0 else f"{k:g}/255"


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, min, max, count and values of a point's seeds (NaNs ignored); ParameterError if empty."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise ParameterError("a point or curve has no values")
    return {"values": v.tolist(), "mean": float(np.nanmean(v)), "min": float(np.nanmin(v)),
            "max": float(np.nanmax(v)), "n": int(v.size)}


def _thin_labels(positions: Sequence[float], labels: Sequence[str], span_in: float,
                 min_gap_in: float = 0.42) -> list[str]:
    """Tick labels with those that would collide left blank (the tick stays)."""
    lo, hi = min(positions), max(positions)
    scale = span_in / (hi - lo) if hi > lo else 0.0
    out, last = [], None
    for p, lab in zip(positions, labels):
        if last is None or (p - last) * scale >= min_gap_in:
            out.append(lab)
            last = p
        else:
            out.append("")
    return out


def _legend(fig, ax, n: int) -> None:
    if n > _INSIDE_LEGEND:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
    else:
        ax.legend(loc="best")


def plot_robust_vs_eps(curves: Mapping[str, Mapping[float, Sequence[float]]], setting: str,
                       attack: str = "PGD", norm: str = "Linf", title: str | None = None):
    """Robust accuracy (%) against ε, one line per model.

    curves: ``model label → {ε: [accuracy per seed]}`` with ε in [0, 1] pixel units (ε = 0 is
    clean accuracy); the line is the mean over seeds, the band the min–max. attack: named in
    the y label (e.g. "PGD-20", "AutoAttack"); norm: "Linf" writes ε as k/255 ticks, "L2" as
    plain numbers. Returns ``(fig, data)``; ``data["curves"][label]`` holds ``eps``,
    ``eps_255``, ``mean``, ``min``, ``max``, ``per_seed`` and ``n`` per ε.
    """
    if not curves:
        raise ParameterError("no curves to plot")
    if norm not in ("Linf", "L2"):
        raise ParameterError(f"unknown norm {norm!r}: 'Linf' or 'L2'")
    many = len(curves) > _INSIDE_LEGEND
    width, height = (6.2 if many else 4.6), 3.3
    fig, ax = new_figure(width=width, height=height)
    unit = 255.0 if norm == "Linf" else 1.0
    out: dict[str, Any] = {}
    all_eps: set[float] = set()
    for i, (label, per_eps) in enumerate(curves.items()):
        eps = sorted(float(e) for e in per_eps)
        if not eps:
            raise ParameterError(f"curve {label!r} has no ε values")
        by = {float(e): v for e, v in per_eps.items()}
        stats = [spread(by[e]) for e in eps]
        xs = [e * unit for e in eps]
        color = COLORS[i % len(COLORS)]
        n = max(s["n"] for s in stats)
        ax.plot(xs, [s["mean"] for s in stats], marker=MARKERS[i % len(MARKERS)], color=color,
                label=f"{label} (n={n})" if n > 1 else str(label), zorder=3)
        if n > 1:
            ax.fill_between(xs, [s["min"] for s in stats], [s["max"] for s in stats], color=color, alpha=0.2,
                            linewidth=0, zorder=2)
        all_eps.update(eps)
        out[str(label)] = {"eps": eps, "eps_255": [e * 255 for e in eps], "mean": [s["mean"] for s in stats],
                           "min": [s["min"] for s in stats], "max": [s["max"] for s in stats],
                           "per_seed": [s["values"] for s in stats], "n": [s["n"] for s in stats]}
    ticks = sorted(all_eps)
    pos = [e * unit for e in ticks]
    names = [eps_label(e) if norm == "Linf" else f"{e:g}" for e in ticks]
    ax.set_xticks(pos, _thin_labels(pos, names, span_in=width - (2.6 if many else 1.0)))
    ax.set_xlabel("ε (L∞, pixels in [0, 1])" if norm == "Linf" else "ε (L2, pixels in [0, 1])")
    ax.set_ylabel(f"robust accuracy under {attack} (%)" if attack else "robust accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Robust accuracy vs ε")
    _legend(fig, ax, len(curves))
    annotate_setting(fig, setting)
    data = {"curves": out, "eps": ticks, "attack": attack, "norm": norm, "band": "min-max over seeds",
            "setting": setting}
    return fig, jsonable(data)


def plot_clean_vs_robust(points: Sequence[Mapping[str, Any]], setting: str, attack: str = "PGD",
                         title: str | None = None):
    """Clean against robust accuracy (%) across arms.

    points: ``[{"label", "clean": [per seed], "robust": [per seed]}]``, the two lists paired by
    seed. One small dot per seed, the mean as a larger marker with min–max bars on both axes;
    both axes start at 0, and a dotted line marks robust = clean. Returns ``(fig, data)``;
    ``data["points"]`` holds per arm ``label``, ``clean`` and ``robust`` (each ``values``,
    ``mean``, ``min``, ``max``, ``n``).
    """
    if not points:
        raise ParameterError("no points to plot")
    entries = len(points) + 1  # the arms and the robust = clean line
    fig, ax = new_figure(width=6.2 if entries > _INSIDE_LEGEND else 4.6, height=3.6)
    out = []
    top_x = top_y = 0.0
    for i, p in enumerate(points):
        label = str(p["label"])
        clean, robust = spread(p["clean"]), spread(p["robust"])
        if clean["n"] != robust["n"]:
            raise ParameterError(f"{label!r}: {clean['n']} clean but {robust['n']} robust values (one per seed each)")
        color, marker = COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]
        # clip_on=False: an arm at 0% robust accuracy sits on the axis, drawn whole
        ax.scatter(clean["values"], robust["values"], s=14, color=color, alpha=0.5, linewidths=0, zorder=3,
                   clip_on=False)
        bars = ax.errorbar(clean["mean"], robust["mean"],
                    xerr=[[clean["mean"] - clean["min"]], [clean["max"] - clean["mean"]]],
                    yerr=[[robust["mean"] - robust["min"]], [robust["max"] - robust["mean"]]],
                    fmt=marker, color=color, markersize=7, markeredgecolor="white", markeredgewidth=0.6,
                    capsize=2.5, elinewidth=1.0, zorder=4,
                    label=f"{label} (n={clean['n']})" if clean["n"] > 1 else label)
        for artist in bars.get_children():
            artist.set_clip_on(False)
        top_x, top_y = max(top_x, clean["max"]), max(top_y, robust["max"])
        out.append({"label": label, "clean": clean, "robust": robust})
    xmax = min(100.0, max(top_x * 1.1, 1.0))
    ymax = min(100.0, max(top_y * 1.15, 1.0))
    lim = min(xmax, ymax)
    ax.plot([0, lim], [0, lim], linestyle=":", color="0.5", linewidth=1, label="robust = clean", zorder=1)
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy under {attack} (%)" if attack else "robust accuracy (%)")
    ax.set_title(title or "Clean vs robust accuracy")
    _legend(fig, ax, entries)
    annotate_setting(fig, setting)
    data = {"points": out, "attack": attack, "bars": "min-max over seeds", "setting": setting}
    return fig, jsonable(data)
