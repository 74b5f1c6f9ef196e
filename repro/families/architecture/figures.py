"""The architecture family's figures, drawn from sweep results and trained models. Every
function returns ``(fig, data)`` and writes ``setting`` under the figure (``run.setting``).

* :func:`accuracy_curves`: test top-1 (and train loss) per epoch, one line per arm, mean over
  seeds with a min–max band (the family's standard figure);
* :func:`cost_scatter`: top-1 against parameters and against forward FLOPs (the family
  figure), one point per arm with min–max bars over seeds;
* :func:`rollout_grid`: attention rollout of every arm on the same test images;
* :func:`spectral_filter_maps`: |W| of each spectral block over spatial frequency (33);
* :func:`trace_curves`: a learned quantity per epoch (CRReLU's ε per block, 20; gate
  quantiles, 19; learned densities, 23);
* :func:`gate_histograms`: the final gate openings σ(θ) per arm (19);
* :func:`activation_shapes`: an activation and its derivative for several ε (20);
* :func:`sweep_curve`: top-1 against a swept setting (density, α…).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ...plots import training_curves
from ...plots.attention import attention_rollout
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import SweepResult


def _title(result: SweepResult, arm: str) -> str:
    jobs = result.of(arm)
    return jobs[0]["extra"].get("title") or arm if jobs else arm


def histories(result: SweepResult, arms: Sequence[str] | None = None) -> dict[str, list[list[dict]]]:
    """``arm title → [history per seed]`` for :func:`repro.plots.training_curves`."""
    return {_title(result, a): [j["extra"]["history"] for j in result.of(a)] for a in (arms or result.arms())}


def accuracy_curves(result: SweepResult, setting: str, arms: Sequence[str] | None = None,
                    title: str | None = None) -> tuple[Figure, dict]:
    """Train loss and test top-1 per epoch, one line per arm (mean, min–max band over seeds)."""
    return training_curves(histories(result, arms), ys=("train_loss", "test_acc"), setting=setting, title=title)


def _mean_range(v: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=float)
    return float(a.mean()), float(a.min()), float(a.max())


def cost_scatter(result: SweepResult, setting: str, arms: Sequence[str] | None = None,
                 metric: str = "top1") -> tuple[Figure, dict]:
    """Top-1 against parameters (left) and forward MFLOPs per image (right); one marker per
    arm at its mean over seeds, bars from the lowest to the highest seed."""
    arms = list(arms or result.arms())
    fig, axes = new_figure(ncols=2, width=7.2, height=3.3, sharey=True)
    points = []
    for i, arm in enumerate(arms):
        acc = list(result.per_seed(metric, arm).values())
        if not acc:
            continue
        m, lo, hi = _mean_range(acc)
        p = float(np.mean(list(result.per_seed("params", arm).values())))
        f = float(np.mean(list(result.per_seed("mflops", arm).values())))
        name = _title(result, arm)
        points.append({"arm": arm, "title": name, "params": p, "mflops": f, "mean": m, "min": lo, "max": hi,
                       "per_seed": acc})
        for ax, x in zip(axes, (p / 1e3, f)):
            ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="o", color=f"C{i % 10}", capsize=3,
                        label=name)
    axes[0].set_xlabel("parameters (thousands)")
    axes[1].set_xlabel("forward MFLOPs per image")
    axes[0].set_ylabel("test top-1 (%)")
    if points:
        axes[0].legend(loc="best")
    annotate_setting(fig, setting)
    return fig, jsonable({"metric": metric, "points": points, "setting": setting, "bars": "min-max over seeds"})


def _overlay(ax: Any, image: np.ndarray, heat: np.ndarray | None, label: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if heat is None:
        ax.imshow(image, interpolation="nearest")
    else:
        H, W = image.shape[:2]
        ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(heat, cmap="inferno", alpha=0.6, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
    if label:
        ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")


def rollout_maps(maps: Sequence[torch.Tensor], index: int, grid: tuple[int, int], prefix: int) -> np.ndarray:
    """The rollout map of image ``index`` over the patch grid: the class token's row with a
    class token (``prefix`` = 1), else the mean over every token's row (mean-pooled models);
    normalised to sum to 1."""
    r = attention_rollout([m[index] for m in maps])
    row = r[0] if prefix else r.mean(0)
    heat = row[prefix:].reshape(grid)
    return heat / heat.sum() if heat.sum() > 0 else heat


def rollout_grid(rows: Mapping[str, Sequence[np.ndarray]], images01: torch.Tensor, setting: str,
                 title: str | None = None) -> tuple[Figure, dict]:
    """One row of images, then one row per arm with its rollout map over each image.

    rows: ``arm title → [heat map [h, w] per image]`` (:func:`rollout_maps`);
    images01: ``[K, 3, S, S]`` float in [0, 1] (the un-normalised test images)."""
    k = len(images01)
    imgs = [images01[i].permute(1, 2, 0).cpu().numpy().clip(0, 1) for i in range(k)]
    nrows = 1 + len(rows)
    cell = min(1.0, 6.2 / k)
    fig, axes = new_figure(ncols=k, nrows=nrows, width=cell * k + 1.3, height=cell * nrows + 0.5, squeeze=False)
    for j in range(k):
        _overlay(axes[0][j], imgs[j], None, "image" if j == 0 else None)
    for i, (name, heats) in enumerate(rows.items(), start=1):
        for j in range(k):
            _overlay(axes[i][j], imgs[j], np.asarray(heats[j]), name if j == 0 else None)
    if title:
        fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"rows": {n: [np.asarray(h) for h in hs] for n, hs in rows.items()}, "images": k,
                          "setting": setting, "title": title})


def spectral_filter_maps(filters: Mapping[str, Sequence[torch.Tensor]], setting: str) -> tuple[Figure, dict]:
    """|W| (mean over channels) of each spectral block, rows = arms (≤ 3 blocks a row shown:
    the first three), columns = blocks; vertical axis the row frequency (centred), horizontal
    the non-negative column frequency."""
    arms = [a for a, fs in filters.items() if len(fs)]
    if not arms:
        raise ValueError("no spectral filters to draw")
    ncols = min(3, max(len(filters[a]) for a in arms))
    fig, axes = new_figure(ncols=ncols, nrows=len(arms), width=2.3 * ncols + 0.8, height=2.0 * len(arms) + 0.5,
                           squeeze=False)
    data: dict[str, list] = {}
    for i, a in enumerate(arms):
        data[a] = []
        for j in range(ncols):
            ax = axes[i][j]
            ax.grid(False)
            if j >= len(filters[a]):
                ax.set_visible(False)
                continue
            w = filters[a][j].numpy()
            w = np.fft.fftshift(w, axes=0)  # zero row frequency in the middle
            h = w.shape[0]
            im = ax.imshow(w, cmap="viridis", origin="lower", aspect="auto",
                           extent=(-0.5, w.shape[1] - 0.5, -(h // 2) - 0.5, h - h // 2 - 0.5))
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{a}: block {j}", fontsize=9)
            if j == 0:
                ax.set_ylabel("row frequency")
            if i == len(arms) - 1:
                ax.set_xlabel("column frequency")
            data[a].append(w)
    annotate_setting(fig, setting)
    return fig, jsonable({"filters": data, "setting": setting, "shift": "row frequency fft-shifted"})


def trace_curves(result: SweepResult, keys: Sequence[str], setting: str, ylabel: str,
                 arms: Sequence[str] | None = None, names: Mapping[str, str] | None = None,
                 title: str | None = None) -> tuple[Figure, dict]:
    """History keys (``eps_0``…, ``gate_q50``…) per epoch, one panel per arm (≤ 3), one line
    per key: mean over seeds with a min–max band."""
    arms = [a for a in (arms or result.arms()) if any(k in result.of(a)[0]["extra"]["history"][-1] for k in keys)]
    if not arms:
        raise ValueError(f"no arm logged any of {list(keys)}")
    ncols = min(3, len(arms))
    nrows = math.ceil(len(arms) / ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=min(7.4, 2.6 * ncols + 0.6), height=2.7 * nrows + 0.3,
                           squeeze=False, sharey=True)
    series: dict[str, dict] = {}
    for n, arm in enumerate(arms):
        ax = axes[n // ncols][n % ncols]
        series[arm] = {}
        for c, key in enumerate(keys):
            runs = [[(h["epoch"], h[key]) for h in j["extra"]["history"] if key in h] for j in result.of(arm)]
            runs = [r for r in runs if r]
            if not runs:
                continue
            ep = [e for e, _ in runs[0]]
            vals = np.array([[v for _, v in r][:len(ep)] for r in runs])
            m = vals.mean(0)
            ax.plot(ep, m, color=f"C{c % 10}", label=(names or {}).get(key, key), marker="o" if len(ep) < 4 else None)
            if len(runs) > 1:
                ax.fill_between(ep, vals.min(0), vals.max(0), color=f"C{c % 10}", alpha=0.2, linewidth=0)
            series[arm][key] = {"epoch": ep, "mean": m, "min": vals.min(0), "max": vals.max(0), "n": len(runs)}
        ax.set_title(_title(result, arm), fontsize=9)
        ax.set_xlabel("epoch")
        if n % ncols == 0:
            ax.set_ylabel(ylabel)
    for n in range(len(arms), nrows * ncols):
        axes[n // ncols][n % ncols].set_visible(False)
    axes[0][0].legend(fontsize=8, ncol=1 if len(keys) <= 4 else 2)
    if title:
        fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"keys": list(keys), "series": series, "setting": setting, "band": "min-max over seeds"})


def gate_histograms(result: SweepResult, setting: str, arms: Sequence[str] | None = None,
                    bins: int = 20) -> tuple[Figure, dict]:
    """Final gate openings σ(θ) of every gate, pooled over seeds, one histogram per arm
    (density, shared bins on [0, 1]); the dotted line marks the initial 0.5."""
    arms = [a for a in (arms or result.arms()) if result.of(a)[0]["extra"]["structure"]["gates"]]
    if not arms:
        raise ValueError("no arm has gates")
    fig, ax = new_figure(width=4.6, height=3.0)
    edges = np.linspace(0, 1, bins + 1)
    data = {}
    for i, a in enumerate(arms):
        vals = np.concatenate([np.concatenate([np.asarray(g) for g in j["extra"]["structure"]["gates"]])
                               for j in result.of(a)])
        hist, _ = np.histogram(vals, bins=edges, density=True)
        ax.stairs(hist, edges, color=f"C{i % 10}", label=f"{_title(result, a)} (n={len(vals)})", linewidth=1.6)
        data[a] = {"hist": hist, "n": int(len(vals)), "mean": float(vals.mean()), "sd": float(vals.std())}
    ax.axvline(0.5, color="0.4", linestyle=":", linewidth=1)
    ax.set_xlabel("gate opening σ(θ)")
    ax.set_ylabel("density")
    ax.legend()
    annotate_setting(fig, setting)
    return fig, jsonable({"edges": edges, "arms": data, "setting": setting})


def activation_shapes(functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], setting: str,
                      lo: float = -4.0, hi: float = 4.0) -> tuple[Figure, dict]:
    """Each activation (left) and its derivative (right, by autograd) on [lo, hi]."""
    x = torch.linspace(lo, hi, 401, dtype=torch.float64, requires_grad=True)
    fig, axes = new_figure(ncols=2, width=7.2, height=3.0)
    data = {"x": x.detach().numpy(), "f": {}, "df": {}}
    for i, (name, fn) in enumerate(functions.items()):
        y = fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        axes[0].plot(data["x"], y.detach().numpy(), color=f"C{i % 10}", label=name)
        axes[1].plot(data["x"], g.numpy(), color=f"C{i % 10}", label=name)
        data["f"][name], data["df"][name] = y.detach().numpy(), g.numpy()
    axes[0].set_ylabel("f(x)")
    axes[1].set_ylabel("f′(x)")
    for ax in axes:
        ax.set_xlabel("x")
    axes[0].legend()
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting})


def sweep_curve(points: Mapping[float, Sequence[float]], setting: str, xlabel: str,
                references: Mapping[str, Sequence[float]] | None = None,
                ylabel: str = "test top-1 (%)") -> tuple[Figure, dict]:
    """Top-1 against a swept value: dots per seed, the mean as a line; ``references`` (e.g. a
    control arm) as dashed horizontal lines at their means with a min–max band."""
    xs = sorted(points)
    fig, ax = new_figure(width=4.8, height=3.1)
    means = [float(np.mean(points[x])) for x in xs]
    for x in xs:
        ax.scatter([x] * len(points[x]), points[x], color="C0", alpha=0.5, s=14)
    ax.plot(xs, means, color="C0", marker="o", label="mean over seeds")
    for i, (name, vals) in enumerate((references or {}).items(), start=1):
        m, lo, hi = _mean_range(vals)
        ax.axhline(m, color=f"C{i % 10}", linestyle="--", label=name)
        ax.axhspan(lo, hi, color=f"C{i % 10}", alpha=0.12, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    annotate_setting(fig, setting)
    return fig, jsonable({"x": xs, "per_seed": [list(points[x]) for x in xs], "mean": means,
                          "references": {k: list(v) for k, v in (references or {}).items()}, "setting": setting})
