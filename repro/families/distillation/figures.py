"""The distillation family's standard figures, drawn from sweep results.

Arm labels are identifiers (``pld_tau4``); ``names`` maps them to the display names the
figures show (``PLD τ=4``). Each function returns (figure, JSON-able data) for ``run.figure``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ... import metrics
from ...plots.curves import bar_with_errors, training_curves
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import SweepResult


def _name(names: Mapping[str, str] | None, label: str) -> str:
    return (names or {}).get(label, label)


def plot_top1(result: SweepResult, labels: Sequence[str], teacher_acc: float | None, setting: str,
              names: Mapping[str, str] | None = None):
    """Student top-1 per arm: bars (mean), dots (seeds), ±1 std; the teacher as a line."""
    fig, data = bar_with_errors({_name(names, m): list(result.per_seed("top1", m).values()) for m in labels},
                                "student test top-1 (%)", setting, title="Distillation methods under one protocol")
    if teacher_acc is not None:
        ax = fig.axes[0]
        ax.axhline(teacher_acc, color="0.3", linestyle=":", linewidth=1.2)
        ax.text(ax.get_xlim()[1], teacher_acc, " teacher", va="center", ha="left", fontsize=8, color="0.3")
        data["teacher_acc"] = teacher_acc
    return fig, data


def plot_gains(rows: list[dict[str, Any]], setting: str, names: Mapping[str, str] | None = None):
    """Paired gain over CE with its 95% CI, one row per arm (a forest plot); rows from
    ``tables.summary``."""
    rows = [r for r in rows if r["gain_mean"] is not None]
    rows = sorted(rows, key=lambda r: r["gain_mean"])
    fig, ax = new_figure(width=5.2, height=0.45 * len(rows) + 1.4)
    for i, r in enumerate(rows):
        lo, hi = r["gain_ci"]
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [i, i], color="C0", linewidth=2)
        ax.plot(r["gain_mean"], i, "o", color="C0")
    ax.axvline(0, color="0.3", linewidth=1)
    ax.set_yticks(range(len(rows)), [_name(names, r["arm"]) for r in rows])
    ax.set_xlabel("top-1 gain over CE, same seed (pts); line = 95% CI")
    ax.set_title("Which methods beat the plain student?")
    annotate_setting(fig, setting)
    return fig, jsonable({"rows": [{k: r[k] for k in ("arm", "gain_mean", "gain_ci", "n")} for r in rows],
                          "setting": setting})


def plot_cost(result: SweepResult, labels: Sequence[str], setting: str, names: Mapping[str, str] | None = None):
    """Top-1 against training seconds per run (left) and ECE against top-1 (right), one dot per run."""
    fig, (a, b) = new_figure(ncols=2)
    pts = {}
    for i, m in enumerate(labels):
        runs = result.of(m)
        x = [r["train_s"] for r in runs]
        y = [r["metrics"]["top1"] for r in runs]
        e = [r["metrics"]["ece"] for r in runs]
        a.plot(x, y, "o", color=f"C{i % 10}", label=_name(names, m))
        b.plot(y, e, "o", color=f"C{i % 10}", label=_name(names, m))
        pts[m] = {"train_s": x, "top1": y, "ece": e}
    a.set_xscale("log")
    a.set_xlabel("training seconds per run (log)")
    a.set_ylabel("student test top-1 (%)")
    a.set_title("Accuracy vs cost")
    b.set_xlabel("student test top-1 (%)")
    b.set_ylabel("ECE (%, 15 bins)")
    b.set_title("Calibration vs accuracy")
    a.legend(fontsize=7, ncols=2)
    annotate_setting(fig, setting)
    return fig, jsonable({"runs": pts, "setting": setting})


def histories(result: SweepResult, labels: Sequence[str], names: Mapping[str, str] | None = None
              ) -> dict[str, list[list[dict[str, float]]]]:
    """Display name → the per-epoch histories of the arm's seeds (for ``plots.curves.training_curves``)."""
    return {_name(names, m): [r["extra"]["history"] for r in result.of(m)] for m in labels}


def plot_reliability_grid(probs_by_label: dict[str, tuple[torch.Tensor, torch.Tensor]], setting: str,
                          n_bins: int = 15, title: str = "Reliability of the students"):
    """One reliability diagram per label (accuracy vs confidence per bin, ECE in the corner)."""
    labels = list(probs_by_label)
    fig, axes = new_figure(ncols=len(labels), width=3.0 * len(labels) + 0.6, height=3.4, squeeze=False)
    data: dict[str, Any] = {}
    for ax, label in zip(axes[0], labels):
        probs, y = probs_by_label[label]
        b = metrics.reliability_bins(probs, y, n_bins)
        edges, count = b["edges"], b["count"]
        centers = (edges[:-1] + edges[1:]) / 2
        ok = count > 0
        acc, conf = np.nan_to_num(b["accuracy"]), np.nan_to_num(b["confidence"])
        ax.bar(centers[ok], acc[ok], width=edges[1] - edges[0], color="C0", edgecolor="white", linewidth=0.5)
        ax.bar(centers[ok], (conf - acc)[ok], bottom=acc[ok], width=edges[1] - edges[0], color="C1", alpha=0.35,
               edgecolor="C1", linewidth=0.5)
        ax.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}: ECE {100 * b['ece']:.1f}%")
        ax.set_xlabel("confidence")
        data[label] = {"edges": edges.tolist(), "accuracy": b["accuracy"].tolist(),
                       "confidence": b["confidence"].tolist(), "count": count.tolist(), "ece": b["ece"]}
    axes[0][0].set_ylabel("accuracy (blue) · gap to confidence (orange)")
    fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"diagrams": data, "n_bins": n_bins, "setting": setting})

def plot_non_target(masses: dict[str, np.ndarray], setting: str):
    """Histograms of 1 − p_y for the teacher and the students."""
    fig, ax = new_figure(width=5.4)
    bins = np.linspace(0, 1, 26)
    for i, (label, m) in enumerate(masses.items()):
        ax.hist(m, bins=bins, histtype="step", linewidth=1.6, color=f"C{i}",
                label=f"{label} (mean {np.mean(m):.2f})")
    ax.set_xlabel("non-target probability 1 − p_y on a test image")
    ax.set_ylabel("test images")
    ax.set_title("How much probability lands outside the true class")
    ax.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({k: {"mean": float(np.mean(v)), "hist": np.histogram(v, bins)[0]} for k, v in masses.items()}
                         | {"bins": bins, "setting": setting})


def plot_soft_labels(examples: list[dict[str, Any]], class_names: list[str], setting: str):
    """Teacher's non-target distribution vs USKD's Zipf labels, classes sorted by the teacher."""
    fig, axes = new_figure(ncols=len(examples), width=3.6 * len(examples), height=3.2, squeeze=False)
    for ax, ex in zip(axes[0], examples):
        t, z = np.asarray(ex["teacher"]), np.asarray(ex["zipf"])
        order = [c for c in np.argsort(-t) if c != ex["label"]]
        k = np.arange(len(order))
        ax.bar(k - 0.2, t[order], width=0.4, color="C0", label="teacher (non-target, normalised)")
        ax.bar(k + 0.2, z[order], width=0.4, color="C1", label="USKD Zipf labels")
        ax.set_xticks(k, [class_names[c][:8] for c in order], rotation=90, fontsize=6)
        ax.set_title(f"true class: {class_names[ex['label']]}", fontsize=9)
    axes[0][0].set_ylabel("probability over the other classes")
    axes[0][0].legend(fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({"examples": examples, "setting": setting})


def plot_surfaces(surf: dict[str, Any], setting: str):
    """Filled contours of each loss on the plane, the teacher's logits at the centre (+)."""
    grid = np.asarray(surf["grid"])
    fig, axes = new_figure(ncols=3, width=11.0, height=3.5)
    for ax, (name, z) in zip(axes, surf["surfaces"].items()):
        z = np.asarray(z)
        cs = ax.contourf(grid, grid, z, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, shrink=0.85)
        i, j = np.unravel_index(np.argmin(z), z.shape)
        ax.plot(0, 0, "w+", markersize=10, markeredgewidth=2)
        ax.plot(grid[j], grid[i], "rx", markersize=8, markeredgewidth=2)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("a (direction d1)")
        ax.grid(False)
    axes[0].set_ylabel("b (direction d2)")
    fig.suptitle(f"Loss around a random teacher logit vector (C = {surf['num_classes']}; + teacher, × minimum)")
    annotate_setting(fig, setting)
    return fig, jsonable(surf)


def plot_tau(result: SweepResult, taus: Sequence[float], claim_tau_t: float, setting: str):
    """PLD student top-1 against the teacher temperature τ_T, with CE / KD / DIST as lines
    (arm labels as ``arms.kd.pld_plan`` gives them)."""
    from .arms.kd import pld_label

    fig, ax = new_figure(width=5.0)
    data: dict[str, Any] = {"pld": {}, "reference": {}}
    xs, means = [], []
    for tau in sorted(taus):
        vals = list(result.per_seed("top1", pld_label(tau, claim_tau_t)).values())
        if not vals:
            raise ValueError(f"no results for {pld_label(tau, claim_tau_t)!r}")
        ax.plot([tau] * len(vals), vals, "o", color="C0", alpha=0.5)
        xs.append(tau)
        means.append(float(np.mean(vals)))
        data["pld"][str(tau)] = vals
    ax.plot(xs, means, "-", color="C0", label="PLD (mean, dots = seeds)")
    for i, name in enumerate(("CE", "KD", "DIST")):
        vals = list(result.per_seed("top1", name.lower()).values())
        if vals:
            ax.axhline(float(np.mean(vals)), color=f"C{i + 1}", linestyle="--", linewidth=1.2, label=f"{name} (mean)")
            data["reference"][name] = vals
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(taus), [f"{t:g}" for t in taus])
    ax.set_xlabel("teacher temperature τ_T")
    ax.set_ylabel("student test top-1 (%)")
    ax.set_title("PLD's one knob: the teacher temperature")
    ax.legend(fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting})


def plot_interpolation(curve: dict[str, dict[str, Any]], setting: str, a: str = "CE", b: str = "PLD"):
    """Loss and top-1 along θ(α) = (1 − α)·θ_a + α·θ_b; solid train, dashed test."""
    fig, (ax_l, ax_a) = new_figure(ncols=2, width=9.0, height=3.4)
    for split, style in (("train", "-"), ("test", "--")):
        r = curve[split]
        ax_l.plot(r["alpha"], r["loss"], style, marker="o", markersize=2.5, color="C0", label=split)
        ax_a.plot(r["alpha"], r["acc"], style, marker="o", markersize=2.5, color="C0", label=split)
    for ax in (ax_l, ax_a):
        for e in (0.0, 1.0):
            ax.axvline(e, color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel(rf"$\alpha$   ($\theta = (1-\alpha)\,\theta_{{{a}}} + \alpha\,\theta_{{{b}}}$)")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("cross-entropy (log scale)")
    ax_a.set_ylabel("top-1 accuracy (%)")
    ax_a.legend()
    fig.suptitle(f"Between the {a} student (α = 0) and the {b} student (α = 1), same seed and initialisation")
    annotate_setting(fig, setting)
    return fig, jsonable({"curve": curve, "setting": setting})


def plot_reliability_counts(probs_by_label: dict[str, tuple[torch.Tensor, torch.Tensor]], setting: str,
                     n_bins: int = 15, title: str = "Reliability of the student"):
    """One reliability diagram per arm (accuracy vs confidence per bin; ECE with its bin count
    in the panel title) with the bin counts beneath, drawn like ``repro.plots.reliability``."""
    labels = list(probs_by_label)
    fig, axes = new_figure(ncols=len(labels), nrows=2, width=3.0 * len(labels) + 0.6, height=4.4,
                           squeeze=False, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    data: dict[str, Any] = {}
    for j, label in enumerate(labels):
        ax, ax_n = axes[0][j], axes[1][j]
        probs, y = probs_by_label[label]
        b = metrics.reliability_bins(probs, y, n_bins)
        edges, count = b["edges"], b["count"]
        centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        ok = count > 0
        acc, conf = np.nan_to_num(b["accuracy"]), np.nan_to_num(b["confidence"])
        ax.bar(centers[ok], acc[ok], width=width, color="C0", edgecolor="white", linewidth=0.5, label="accuracy")
        ax.bar(centers[ok], (conf - acc)[ok], bottom=acc[ok], width=width, color="C1", alpha=0.35,
               edgecolor="C1", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}: ECE {100 * b['ece']:.2f}% ({n_bins} bins)", fontsize=10)
        ax_n.bar(centers, count, width=width, color="0.55", edgecolor="white", linewidth=0.5)
        ax_n.set_xlabel("confidence (max probability)")
        data[label] = {"edges": edges.tolist(), "accuracy": b["accuracy"].tolist(),
                       "confidence": b["confidence"].tolist(), "count": count.tolist(), "ece": b["ece"]}
    axes[0][0].set_ylabel("accuracy")
    axes[1][0].set_ylabel("count")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"diagrams": data, "n_bins": n_bins, "setting": setting})


def plot_accuracy_ece(result: SweepResult, labels: Sequence[str], setting: str, names: Mapping[str, str] | None = None):
    """Left: ECE against top-1, one dot per run (students filled, online teachers hollow).
    Right: mean confidence against top-1; above the diagonal = over-confident."""
    fig, (a, b) = new_figure(ncols=2, width=9.0)
    pts: dict[str, Any] = {}
    for i, label in enumerate(labels):
        runs = result.of(label)
        c = f"C{i % 10}"
        st = {k: [r["metrics"][k] for r in runs] for k in ("top1", "ece", "confidence")}
        label = _name(names, label)
        a.plot(st["top1"], st["ece"], "o", color=c, label=f"{label} student")
        b.plot(st["top1"], st["confidence"], "o", color=c, label=f"{label} student")
        pts[label] = {"seeds": [r["seed"] for r in runs], "student": st}
        teach = [r["metrics"] for r in runs if "teacher_top1" in r["metrics"]]
        if teach:
            tt = {k: [t[f"teacher_{k}"] for t in teach] for k in ("top1", "ece", "confidence")}
            a.plot(tt["top1"], tt["ece"], "o", mfc="none", color=c, label=f"{label} teacher")
            b.plot(tt["top1"], tt["confidence"], "o", mfc="none", color=c)
            pts[label]["teacher"] = tt
    a.set_xlabel("test top-1 (%)")
    a.set_ylabel("ECE (%, 15 bins)")
    a.set_title("Calibration vs accuracy, every run")
    a.legend(fontsize=7)
    lo, hi = b.get_xlim()
    lo, hi = min(lo, b.get_ylim()[0]), max(hi, b.get_ylim()[1])
    b.plot([lo, hi], [lo, hi], "--", color="0.4", linewidth=1)
    b.set_xlabel("test top-1 (%)")
    b.set_ylabel("mean confidence (%)")
    b.set_title("Over-confident above the diagonal")
    annotate_setting(fig, setting)
    return fig, jsonable({"runs": pts, "setting": setting})


def _hist_density(counts: Sequence[int], edges: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    return c / max(c.sum(), 1.0) / np.diff(edges)


def plot_balance(result: SweepResult, labels: Sequence[str], setting: str, window: int = 20,
                 first_epoch_for: Sequence[str] = ("dml", "bdkd"), names: Mapping[str, str] | None = None):
    """Left: per-sample entropy gap H_S − H_T seen by the loss in the last training epoch of
    each labelled arm (and the first epoch, dotted, for ``first_epoch_for``). Right: mean reverse-KL weight w_R per step (smoothed) for the BD-KD
    arms, and for DML the weight BD-KD's rule would give (dotted: not applied)."""
    fig, (a, b) = new_figure(ncols=2, width=9.6)
    data: dict[str, Any] = {}
    lo, hi = np.inf, -np.inf
    for i, label in enumerate(labels):
        runs = [r for r in result.of(label) if "balance" in r.get("extra", {})]
        if not runs:
            continue
        first_epoch = label in first_epoch_for
        label = _name(names, label)
        c = f"C{i % 10}"
        edges = np.asarray(runs[0]["extra"]["balance"]["edges"])
        data[label] = {}
        if edges.size:
            ep = sorted(int(e) for e in runs[0]["extra"]["balance"]["hist"])
            # the first epoch only for DML and BD-KD (the rest would crowd the panel)
            shown = [(ep[-1], "-")] + ([(ep[0], ":")] if len(ep) > 1 and first_epoch else [])
            for e, style in shown:
                # pooled over seeds: the same epochs are exported for every seed of an arm
                counts = np.sum([r["extra"]["balance"]["hist"][str(e)] for r in runs], axis=0)
                dens = _hist_density(counts, edges)
                a.stairs(dens, edges, color=c, linestyle=style, label=f"{label}, epoch {e + 1}")
                nz = np.nonzero(counts)[0]
                if nz.size:
                    lo, hi = min(lo, edges[nz[0]]), max(hi, edges[nz[-1] + 1])
                data[label][f"epoch_{e + 1}"] = {"counts": counts.tolist(), "edges": edges.tolist()}
        for r in runs:
            wr = np.asarray(r["extra"]["balance"]["w_reverse"], dtype=float)
            k = max(1, min(window, wr.size // 5))
            smooth = np.convolve(wr, np.ones(k) / k, mode="valid")
            b.plot(np.arange(smooth.size) + k, smooth, color=c, linestyle=":" if r["extra"].get("arm") == "dml" else "-",
                   alpha=0.8, label=f"{label}" + (" (not applied)" if r["extra"].get("arm") == "dml" else "") if r is runs[0] else None)
        data[label]["mean_w_reverse"] = {str(r["seed"]): float(np.mean(r["extra"]["balance"]["w_reverse"]))
                                         for r in runs}
    if np.isfinite(lo):
        pad = 0.05 * (hi - lo)
        a.set_xlim(lo - pad, hi + pad)
    a.axvline(0, color="0.4", linewidth=1)
    a.set_xlabel("per-sample H(p_S) − H(p_T) at τ (nats)")
    a.set_ylabel("density (training batches, seeds pooled)")
    a.set_title("Entropy gap: student less sure → right of 0")
    a.legend(fontsize=7)
    b.axhline(0.5, color="0.4", linewidth=1, linestyle=":")
    b.set_ylim(0, 1)
    b.set_xlabel("training step")
    b.set_ylabel("batch-mean reverse-KL weight w_R")
    b.set_title("Share of the mode-seeking (reverse) KL")
    b.legend(fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({"arms": data, "window": window, "setting": setting})


def plot_online_curves(result: SweepResult, labels: Sequence[str], setting: str, names: Mapping[str, str] | None = None):
    """Student (left) and online teacher (right) test top-1 per epoch; mean and min–max over seeds."""
    hist = histories(result, labels, names)
    fig, data = training_curves(hist, ys=("test_acc", "teacher_acc"), setting=setting,
                                title="Student (left) and online teacher (right) during training")
    fig.axes[0].set_ylabel("student test top-1 (%)")
    fig.axes[1].set_ylabel("online teacher test top-1 (%)")
    return fig, data


def plot_time_curves(result: SweepResult, labels: Sequence[str], setting: str, names: Mapping[str, str] | None = None):
    """Test accuracy against cumulative training seconds (left) and against epochs (right)."""
    fig, (a, b) = new_figure(ncols=2, width=9.0)
    data: dict[str, Any] = {}
    for i, label in enumerate(labels):
        first = min(x["seed"] for x in result.jobs)
        for r in result.of(label):
            hist = r["extra"]["history"]
            t = np.cumsum([h["epoch_s"] for h in hist])
            acc = [h["test_acc"] for h in hist]
            ep = [h["epoch"] for h in hist]
            kw = {"color": f"C{i}", "marker": "o", "markersize": 3, "alpha": 0.85,
                  "label": _name(names, label) if r["seed"] == first else None}
            a.plot(t, acc, **kw)
            b.plot(ep, acc, **kw)
            data[f"{_name(names, label)} s{r['seed']}"] = {"seconds": t, "epoch": ep, "test_acc": acc}
    a.set_xlabel("cumulative training seconds")
    b.set_xlabel("epoch")
    for ax in (a, b):
        ax.set_ylabel("student test top-1 (%)")
    a.set_title("Accuracy for the time spent")
    b.set_title("Accuracy per epoch")
    a.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"runs": data, "setting": setting})


def plot_views(images: torch.Tensor, store, index: int, class_names: list[str], setting: str,
               n: int = 4):
    """One training image and ``n`` of its stored views, each with its top-3 teacher labels."""
    from .arms.reinforce import apply_views

    fig, axes = new_figure(ncols=n + 1, width=2.1 * (n + 1), height=2.6)
    img = images[index:index + 1]
    views = [img] + [apply_views(img, store.params[index, v:v + 1], store.pad) for v in range(min(n, store.params.shape[1]))]
    info = []
    for j, (ax, v) in enumerate(zip(axes, views)):
        ax.imshow(v[0].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        if j == 0:
            ax.set_title("original", fontsize=8)
            continue
        ids, ps = store.ids[index, j - 1][:3].tolist(), store.probs[index, j - 1][:3].float().tolist()
        ax.set_title("\n".join(f"{class_names[c][:12]} {p:.2f}" for c, p in zip(ids, ps)), fontsize=7)
        info.append({"params": store.params[index, j - 1].tolist(), "top3": list(zip(ids, ps))})
    annotate_setting(fig, setting)
    return fig, jsonable({"index": index, "views": info, "setting": setting})


def plot_corruptions(acc: dict[str, dict[int, dict[str, float]]], setting: str):
    from .analysis import CORRUPTIONS

    """Mean top-1 per corruption for each arm (dots = seeds)."""
    fig, ax = new_figure(width=6.0)
    labels = list(acc)
    width = 0.8 / len(labels)
    data = {}
    for i, label in enumerate(labels):
        per = acc[label]
        means = [np.mean([per[s][k] for s in per]) for k in CORRUPTIONS]
        xs = np.arange(len(CORRUPTIONS)) + (i - (len(labels) - 1) / 2) * width
        ax.bar(xs, means, width=width, color=f"C{i}", alpha=0.7, label=label)
        for s in per:
            ax.plot(xs, [per[s][k] for k in CORRUPTIONS], ".", color="0.2", markersize=3)
        data[label] = {k: m for k, m in zip(CORRUPTIONS, means)}
    ax.set_xticks(range(len(CORRUPTIONS)), [c.replace("_", " ") for c in CORRUPTIONS])
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy under synthetic corruptions (severity ≈ 3)")
    ax.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"means": data, "setting": setting})
