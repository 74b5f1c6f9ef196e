"""Chapter 30 (TCA)'s figures: accuracy against GFLOPs, condensation masks, per-corruption
accuracy and accuracy along the stream. Each function returns ``(fig, data)``; the caller
passes the setting line (``run.setting(...)``) that is written under the figure."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ...plots.style import OKABE_ITO, annotate_setting, new_figure

METHOD_COLOR = {"source": OKABE_ITO["black"], "cache": OKABE_ITO["sky_blue"], "evit": OKABE_ITO["orange"],
                "tome": OKABE_ITO["bluish_green"], "tca": OKABE_ITO["vermillion"]}
FATE_COLOR = (None, OKABE_ITO["orange"], OKABE_ITO["reddish_purple"])  # kept (no tint), merged, fused
FATE_NAME = ("kept", "merged (coreset)", "fused")


def _per_arm(result: Any, metric: str) -> dict[str, list[float]]:
    """arm → its per-seed values of ``metric`` (a ``repro.sweep.SweepResult``)."""
    return {arm: list(result.per_seed(metric, arm).values()) for arm in result.arms()}


def plot_acc_vs_flops(result: Any, arms: Mapping[str, tuple[str, float]], setting: str) -> tuple[Figure, dict]:
    """Mean accuracy over the corrupted streams against GFLOPs per image, one line per
    reducer across its keep rates R (labelled), source and cache as single points; bars
    span the seeds' min–max."""
    fig, ax = new_figure(width=5.6, height=3.8)
    acc, gfl = _per_arm(result, "acc"), _per_arm(result, "gflops")
    data: dict[str, Any] = {"arms": {}}
    for method in ("evit", "tome", "tca", "source", "cache"):
        labels = sorted((a for a, (m, _) in arms.items() if m == method and a in acc), key=lambda a: -arms[a][1])
        if not labels:
            continue
        xs = [float(np.mean(gfl[a])) for a in labels]
        ys = [float(np.mean(acc[a])) for a in labels]
        lo = [ys[i] - min(acc[a]) for i, a in enumerate(labels)]
        hi = [max(acc[a]) - ys[i] for i, a in enumerate(labels)]
        name = {"source": "source (no TTA)", "cache": "cache only (TDA-like)"}.get(method, method.upper()
                                                                                if method != "tome" else "ToMe")
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o" if method != "source" else "s", capsize=2,
                    color=METHOD_COLOR[method], label=name, linestyle="-" if len(xs) > 1 else "none")
        if method in ("evit", "tome", "tca"):
            for a, x, y in zip(labels, xs, ys):
                ax.annotate(f"R {arms[a][1]:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=METHOD_COLOR[method])
        for a, x, y in zip(labels, xs, ys):
            data["arms"][a] = {"method": method, "keep": arms[a][1], "gflops": x, "acc_mean": y,
                               "acc_per_seed": acc[a]}
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("accuracy on the corrupted streams (%)")
    ax.set_title("Accuracy against compute")
    ax.legend(loc="best")
    annotate_setting(fig, setting)
    return fig, data


def plot_condensation_masks(images: np.ndarray, fates: Mapping[int, np.ndarray], patch_size: int, keep: float,
                            setting: str) -> tuple[Figure, dict]:
    """Each sample image (row) and, per condensation block (column), what TCA did with each
    patch: untinted = still its own token, orange = inside a coreset-merged token, purple =
    fused into the attention-weighted token (cumulative over blocks).

    images: uint8 [n, 3, S, S]; fates: block → int [n, P] (``tca.condensation_fates``).
    """
    blocks = sorted(fates)
    n = len(images)
    fig, axes = new_figure(ncols=1 + len(blocks), nrows=n, width=1.6 * (1 + len(blocks)) + 0.4, height=1.6 * n + 0.6,
                           squeeze=False)
    side = images.shape[-1]
    g = side // patch_size
    for r in range(n):
        img = np.asarray(images[r]).transpose(1, 2, 0)
        for c in range(1 + len(blocks)):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c == 0:
                if r == 0:
                    ax.set_title("image")
                continue
            fate = np.asarray(fates[blocks[c - 1]][r]).reshape(g, g)
            overlay = np.zeros((g, g, 4))
            for code, colour in enumerate(FATE_COLOR):
                if colour is None:
                    continue
                rgb = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
                overlay[fate == code] = [*rgb, 0.45]
            ax.imshow(overlay, extent=(-0.5, side - 0.5, side - 0.5, -0.5), interpolation="nearest")
            if r == 0:
                ax.set_title(f"after block {blocks[c - 1]}")
    fig.suptitle(f"TCA condensation at R {keep:g}\nuntinted: own token · orange: merged · purple: fused")
    annotate_setting(fig, setting)
    data = {"keep": keep, "blocks": blocks, "fates": {str(b): np.asarray(f).tolist() for b, f in fates.items()},
            "codes": {"0": FATE_NAME[0], "1": FATE_NAME[1], "2": FATE_NAME[2]}}
    return fig, data


def plot_per_corruption(result: Any, corruptions: Sequence[str], setting: str,
                        arms: Sequence[str] = ("source", "cache", "tca")) -> tuple[Figure, dict]:
    """Grouped bars: accuracy per corruption stream for ``arms`` (mean over seeds; ticks:
    min–max)."""
    fig, ax = new_figure(width=max(4.2, 1.1 * len(corruptions) + 2.0), height=3.4)
    arms = [a for a in arms if a in result.arms()]
    width = 0.8 / max(1, len(arms))
    data: dict[str, Any] = {}
    x = np.arange(len(corruptions))
    for k, arm in enumerate(arms):
        vals = [list(result.per_seed(f"acc_{c}", arm).values()) for c in corruptions]
        mean = np.array([np.mean(v) for v in vals])
        err = np.array([[m - min(v) for m, v in zip(mean, vals)], [max(v) - m for m, v in zip(mean, vals)]])
        method = arm.split("_")[0]
        ax.bar(x + (k - (len(arms) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
               color=METHOD_COLOR.get(method, None), label=arm)
        data[arm] = {c: v for c, v in zip(corruptions, vals)}
    ax.set_xticks(x)
    ax.set_xticklabels([c.replace("_", " ") for c in corruptions], rotation=20, ha="right")
    ax.set_ylabel("stream accuracy (%)")
    ax.set_title("Accuracy per corruption")
    ax.legend(loc="best")
    annotate_setting(fig, setting)
    return fig, data


def plot_stream_curves(result: Any, setting: str, arms: Sequence[str] = ("source", "cache", "tca")) -> tuple[Figure, dict]:
    """Cumulative accuracy along the stream (mean over corruptions and seeds) for ``arms``;
    dotted lines mark where TCA's anchors switched on (every class holding ≥ 2 entries)."""
    fig, ax = new_figure(width=5.2, height=3.4)
    data: dict[str, Any] = {}
    anchor_marks: list[int] = []
    for arm in arms:
        jobs = result.of(arm)
        if not jobs:
            continue
        curves = [c for j in jobs for c in j["extra"]["curves"].values()]
        pos = curves[0][0]
        mean = np.mean([c[1] for c in curves], axis=0)
        method = arm.split("_")[0]
        ax.plot(pos, mean, color=METHOD_COLOR.get(method), label=arm)
        data[arm] = {"position": list(pos), "cum_acc": mean.tolist()}
        if method == "tca":
            anchor_marks += [a for j in jobs for a in j["extra"]["anchor_on"].values() if a is not None]
    for a in sorted(set(anchor_marks)):
        ax.axvline(a, color=METHOD_COLOR["tca"], linestyle=":", linewidth=0.8)
    data["anchor_on"] = anchor_marks
    ax.set_xlabel("stream position (images seen)")
    ax.set_ylabel("cumulative accuracy (%)")
    ax.set_title("Online accuracy along the stream" + ("" if anchor_marks else " (anchors never switched on)"))
    ax.legend(loc="best")
    annotate_setting(fig, setting)
    return fig, data
