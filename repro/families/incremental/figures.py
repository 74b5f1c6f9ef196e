"""The class-incremental family's figures: the accuracy matrix and the accuracy after each task
(every chapter), and each chapter's own figures, drawn from sweep results.

Every function returns ``(fig, data)`` (``data``: the plotted numbers, JSON-able) with the
setting as a caption. ``results`` is a ``repro.sweep.SweepResult`` or its list of jobs: one
dict per (arm, seed) with ``arm``, ``seed``, ``metrics`` and ``extra`` (``A``, ``acc_after``,
per-task ``extras``…).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ...plots.style import COLORS, annotate_setting, jsonable, new_figure
from .arms.gtep import protocol_table, ranks, score_table, spearman
from .arms.napavq import class_graph
from .memory import extract_features


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


# -- from sweep results --------------------------------------------------------------------------
def jobs_of(results: Any) -> list[dict[str, Any]]:
    """The list of job dicts of a ``SweepResult`` (or the list itself)."""
    return list(getattr(results, "jobs", results))


def labels_of(results: Any, labels: Sequence[str] | None = None) -> list[str]:
    """The given labels, or every arm of the results in order of appearance."""
    return list(labels) if labels is not None else list(dict.fromkeys(j["arm"] for j in jobs_of(results)))


def seen_classes(stream: Any) -> list[int]:
    """Classes seen after each task of a stream."""
    return [stream.seen(t) for t in range(stream.num_tasks)]


def plot_curves(results: Any, stream: Any, setting: str, labels: Sequence[str] | None = None,
                title: str | None = None) -> tuple[Figure, dict]:
    """Accuracy on all seen classes after each task, every arm (mean, min–max over seeds)."""
    jobs = jobs_of(results)
    curves = {label: [j["extra"]["acc_after"] for j in jobs if j["arm"] == label]
              for label in labels_of(jobs, labels)}
    return accuracy_curves(curves, seen_classes(stream), setting, title=title)


def _pad(rows: Sequence[Sequence[float]]) -> np.ndarray:
    T = len(rows)
    A = np.full((T, T), np.nan)
    for t, r in enumerate(rows):
        A[t, : len(r)] = r
    return A


def mean_matrix(results: Any, label: str) -> np.ndarray:
    """A[t, j] averaged over the seeds of one arm (NaN above the diagonal)."""
    return np.mean([_pad(j["extra"]["A"]) for j in jobs_of(results) if j["arm"] == label], axis=0)


def plot_matrices(results: Any, setting: str, labels: Sequence[str] | None = None,
                  title: str = "Accuracy matrix A[t, j], mean over seeds") -> tuple[Figure, dict]:
    """One heatmap per arm side by side (one colour scale, 0–100 %); a single arm falls back to
    :func:`accuracy_matrix_heatmap`."""
    labels = labels_of(results, labels)
    mats = {label: mean_matrix(results, label) for label in labels}
    if len(labels) == 1:
        return accuracy_matrix_heatmap(mats[labels[0]], setting, title=f"{title}: {labels[0]}")
    T = next(iter(mats.values())).shape[0]
    side = max(2.4, 0.42 * T + 1.0)
    fig, axes = new_figure(ncols=len(labels), width=side * len(labels) + 1.0, height=side + 0.9, squeeze=False)
    im = None
    for ax, label in zip(axes[0], labels):
        A = mats[label]
        im = ax.imshow(np.ma.masked_invalid(A), vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for t in range(T):
            for j in range(T):
                if np.isfinite(A[t, j]):
                    ax.text(j, t, f"{A[t, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if A[t, j] < 60 else "black")
        ax.set_xticks(range(T), [str(i + 1) for i in range(T)])
        ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
        ax.set_xlabel("evaluated task j")
        ax.grid(False)
        ax.set_title(label, fontsize=10)
    axes[0][0].set_ylabel("after training task t")
    fig.colorbar(im, ax=list(axes[0]), label="top-1 on task j (%)", shrink=0.85)
    fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"matrices": mats, "setting": setting, "seeds_averaged": True})


# -- chapter 24 (wa): the weights WA corrects, and where the predictions land ---------------------
OLD_COLOR, NEW_COLOR = "#56B4E9", "#CC79A7"  # class groups in the norm bars (not arm colours)


def arm_colors(results: Any) -> dict[str, str]:
    """Colour of each arm: ``C{i}`` by order of appearance, as :func:`plot_curves` draws them."""
    return {m: f"C{i % 10}" for i, m in enumerate(labels_of(results))}


def _records_bias(job: dict[str, Any]) -> bool:
    """Whether a job's learner recorded WA's norms and shares after every task t ≥ 1."""
    return "norm_excess_last" in job["metrics"]


def _last_extra(job: dict[str, Any]) -> dict[str, Any]:
    ex = job["extra"].get("extras") or []
    return ex[-1] if ex else {}


def _recording_arms(results: Any) -> list[str]:
    jobs = jobs_of(results)
    return [m for m in labels_of(jobs) if any(j["arm"] == m and _records_bias(j) for j in jobs)]


def plot_norms(results: Any, seed: int, setting: str, label: str = "wa",
               baseline: str = "replay_kd") -> tuple[Figure, dict]:
    """Left: per-class FC weight norms of ``label`` after the last task, before (wide, light)
    and after (narrow, dark) aligning, old classes and the newest task's in two colours, with
    ``baseline``'s final norms as a grey step line. Right: the new/old mean-norm ratio before
    aligning after each task, every arm that records it (mean over seeds, min–max band)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    jobs = jobs_of(results)
    job = next((j for j in jobs if j["arm"] == label and j["seed"] == seed), None)
    if job is None or not _last_extra(job):
        raise ValueError(f"no {label!r} run with seed {seed} recording weight norms")
    ex = _last_extra(job)
    base = next((j for j in jobs if j["arm"] == baseline and j["seed"] == seed), None)
    nb, na = np.asarray(ex["norms_before"]), np.asarray(ex["norms_after"])
    old, seen = ex["seen_before"], ex["seen"]
    fig, (ax, ax2) = new_figure(ncols=2, width=11.0, height=3.9, gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(seen)
    colors = np.where(x < old, OLD_COLOR, NEW_COLOR)
    ax.bar(x, nb, width=0.9, color=colors, alpha=0.35)
    ax.bar(x, na, width=0.45, color=colors)
    for lo, hi, c in ((0, old, OLD_COLOR), (old, seen, NEW_COLOR)):
        for arr, ls in ((nb, ":"), (na, "-")):
            ax.hlines(arr[lo:hi].mean(), lo - 0.5, hi - 0.5, colors="0.15", linestyles=ls, linewidth=1.1)
    data: dict[str, Any] = {"label": label, "seed": seed, "old": old, "seen": seen, "norms_before": nb,
                            "norms_after": na, "gamma": ex["gamma"]}
    handles = [Patch(color=OLD_COLOR, label=f"old classes (0–{old - 1})"),
               Patch(color=NEW_COLOR, label=f"last task's classes ({old}–{seen - 1})"),
               Patch(color="0.6", alpha=0.35, label="wide, light: before aligning"),
               Patch(color="0.6", label="narrow, dark: after aligning"),
               Line2D([], [], color="0.15", linestyle=":", label="group mean before"),
               Line2D([], [], color="0.15", label="group mean after")]
    top = max(nb.max(), na.max())
    if base is not None and _last_extra(base):
        bn = np.asarray(_last_extra(base)["norms_before"])
        ax.step(x, bn, where="mid", color="0.35", linewidth=1.0)
        handles.append(Line2D([], [], color="0.35", label=f"{baseline}, seed {seed} (never aligned)"))
        data["baseline_norms"] = bn
        top = max(top, bn.max())
    ax.set_ylim(0, top * 1.45)
    ax.legend(handles=handles, loc="upper center", ncol=3, fontsize=7)
    ticks = x if seen <= 25 else x[:: max(1, seen // 20)]
    ax.set_xticks(ticks)
    ax.set_xlabel("class label (stream order)")
    ax.set_ylabel("‖W_c‖₂ of the class's FC row")
    gtxt = f"γ = {ex['gamma']:.3f}" if ex["gamma"] is not None else "not aligned"
    ax.set_title(f"FC weight norms after the last task: {label}, seed {seed} ({gtxt})")
    ax.grid(axis="x", visible=False)
    colors_by_arm = arm_colors(results)
    ratios: dict[str, Any] = {}
    for m in _recording_arms(jobs):
        runs = [j["extra"]["extras"] for j in jobs if j["arm"] == m and _records_bias(j)]
        arr = np.asarray([[e["norm_ratio_before"] for e in ex if "norm_ratio_before" in e] for ex in runs])
        seen_x = [e["seen"] for e in runs[0] if "norm_ratio_before" in e]
        color = colors_by_arm[m]
        ax2.plot(seen_x, arr.mean(0), "o-", color=color, label=m)
        if len(arr) > 1:
            ax2.fill_between(seen_x, arr.min(0), arr.max(0), color=color, alpha=0.2, linewidth=0)
        ratios[m] = {"seen": seen_x, "mean": arr.mean(0), "min": arr.min(0), "max": arr.max(0), "n": len(arr)}
    ax2.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    ax2.set_xlabel("classes seen")
    ax2.set_ylabel("mean ‖W_new‖ / mean ‖W_old‖")
    ax2.set_title("Norm ratio after each task, before aligning")
    ax2.legend()
    data["ratios"] = ratios
    data["setting"] = setting
    annotate_setting(fig, setting)
    return fig, jsonable(data)


def plot_new_share(results: Any, setting: str) -> tuple[Figure, dict]:
    """Share of test predictions (all seen classes) that land in the newest task's classes
    after each task: every recording arm as evaluated (solid), the aligning arms also just
    before aligning (dotted), and the true share (mean over seeds, min–max band)."""
    colors_by_arm = arm_colors(results)
    fig, ax = new_figure(width=7.4, height=3.6)
    data: dict[str, Any] = {}
    truth = None
    jobs = jobs_of(results)
    for m in _recording_arms(jobs):
        runs = [j["extra"]["extras"] for j in jobs if j["arm"] == m and _records_bias(j)]
        extras = [[e for e in ex if e["task"] > 0] for ex in runs]
        seen_x = [e["seen"] for e in extras[0]]
        truth = (seen_x, [e["true_share"] for e in extras[0]])
        color = colors_by_arm[m]
        aligns = any(e["gamma"] is not None for ex in extras for e in ex)
        after = np.asarray([[e["share_after"] for e in ex] for ex in extras])
        ax.plot(seen_x, after.mean(0), "o-", color=color, label=m + (" (after aligning)" if aligns else ""))
        if len(after) > 1:
            ax.fill_between(seen_x, after.min(0), after.max(0), color=color, alpha=0.2, linewidth=0)
        d = {"seen": seen_x, "after": after.mean(0)}
        if aligns:
            before = np.asarray([[e["share_before"] for e in ex] for ex in extras])
            ax.plot(seen_x, before.mean(0), "s:", color=color, alpha=0.8, label=f"{m} before aligning")
            d["before"] = before.mean(0)
        data[m] = d
    if truth is not None:
        ax.plot(truth[0], truth[1], "k--", linewidth=1.0, label="true share")
        data["true_share"] = {"seen": truth[0], "share": truth[1]}
        ax.set_xticks(truth[0])
    ax.set_ylim(0, 100)
    ax.set_xlabel("classes seen")
    ax.set_ylabel("predictions in the newest task's classes (%)")
    ax.set_title("Bias toward the new classes (test images of all seen classes)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    data["setting"] = setting
    annotate_setting(fig, setting)
    return fig, jsonable(data)


# -- chapter 10 (nmc): does the NMC follow the backbone's quality? ------------------------------------
def plot_pretraining(infos: Mapping[Any, Mapping[str, Any]], final: Mapping[str, float], setting: str,
                     ) -> tuple[Figure, dict]:
    """Backbone quality during pretraining, one line per seed's backbone (``infos``: seed →
    backbone facts with their ``history``): its own test accuracy on the pretraining classes
    and the NMC's AIA / last accuracy on the evaluated stream, after every epoch.

    ``final``: other learners' AIA with the final backbones (mean over seeds), drawn as
    horizontal references."""
    seeds = sorted((s for s in infos if infos[s].get("history")), key=int)
    fig, ax = new_figure(width=7.6, height=3.4)
    data: dict[str, Any] = {"seeds": {}}
    series = (("test_acc", "s--", "0.4", "backbone top-1 on its own pretraining classes"),
              ("nmc_aia", "o-", "C0", "NMC AIA on the stream"), ("nmc_last", "^-", "C1", "NMC last on the stream"))
    for i, s in enumerate(seeds):
        hist = infos[s]["history"]
        ep = np.array([h["epoch"] for h in hist])
        d: dict[str, Any] = {"epoch": ep}
        for key, style, color, lab in series:
            if key not in hist[0]:
                continue
            v = np.array([h.get(key, np.nan) for h in hist], dtype=float)
            ax.plot(ep, v, style, color=color, lw=1.2, ms=3.5, alpha=0.85, label=lab if i == 0 else None)
            d["pretrain_test_acc" if key == "test_acc" else key] = v
        data["seeds"][str(s)] = d
    for i, (lab, v) in enumerate(final.items()):
        ax.axhline(v, color=f"C{i + 2}", lw=1.2, ls=":", label=f"{lab}, AIA (mean over seeds)")
    data["references"] = dict(final)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("pretraining epoch" + (" (one line per seed's backbone)" if len(seeds) > 1 else ""))
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Does NMC's accuracy follow the backbone's quality?")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the curves cross the whole panel
    annotate_setting(fig, setting)
    return fig, jsonable(data)


# -- chapter 01 (oca): compatibility matrices, the trade-off, the extra dimensions ------------------
def _pairs_of(results: Any, arm: str) -> list[dict[str, Any]]:
    """The retrieval pairs of each seed's job of ``arm`` (chapter 01)."""
    return [j["extra"]["pairs"] for j in jobs_of(results) if j["arm"] == arm]


def mean_pairs(results: Any, arm: str, key: str = "map") -> dict[str, float]:
    """Mean over seeds of each pair's metric for one arm; old/old from the old model's jobs."""
    rs = _pairs_of(results, arm)
    out = {"old_old": float(np.mean([p["old_old"][key] for p in _pairs_of(results, "old")]))}
    for p in ("new_old", "new_new", "old_new"):
        out[p] = float(np.mean([r[p][key] for r in rs]))
    return out


def plot_compatibility(results: Any, arms: Sequence[str], setting: str, key: str = "map") -> tuple[Figure, dict]:
    """One 2×2 compatibility matrix per arm (rows: query model, columns: gallery model), mean
    over seeds. The old-query/new-gallery cell is not a deployment case and is left blank.
    A green frame marks new/old > old/old (compatible), a red one the opposite."""
    mats = {a: mean_pairs(results, a, key) for a in arms}
    vmax = max(max(v for k, v in m.items() if k != "old_new") for m in mats.values())
    fig, axes = new_figure(ncols=len(arms), width=2.6 * len(arms) + 1.0, height=3.0, squeeze=False)
    im = None
    for ax, arm in zip(axes[0], arms):
        m = mats[arm]
        A = np.array([[m["old_old"], np.nan], [m["new_old"], m["new_new"]]])
        im = ax.imshow(np.ma.masked_invalid(A), vmin=0, vmax=vmax, cmap="viridis")
        for i in range(2):
            for j in range(2):
                if np.isfinite(A[i, j]):
                    ax.text(j, i, f"{A[i, j]:.1f}", ha="center", va="center", fontsize=9,
                            color="white" if A[i, j] < 0.6 * vmax else "black")
        ok = m["new_old"] > m["old_old"]
        ax.add_patch(Rectangle((-0.5, 0.5), 1, 1, fill=False, linewidth=2.5,
                               edgecolor=COLORS[2] if ok else COLORS[1]))
        ax.set_xticks([0, 1], ["old", "new"])
        ax.set_yticks([0, 1], ["old", "new"])
        ax.set_xlabel("gallery model")
        ax.grid(False)
        ax.set_title(arm, fontsize=10)
    axes[0][0].set_ylabel("query model")
    fig.colorbar(im, ax=list(axes[0]), label=f"{'mAP' if key == 'map' else key} (%)", shrink=0.85)
    fig.suptitle(f"Compatibility matrix ({'mAP' if key == 'map' else key}, mean over seeds)")
    annotate_setting(fig, setting)
    return fig, jsonable({"matrices": mats, "metric": key, "setting": setting})


def plot_pairs(results: Any, arms: Sequence[str], setting: str) -> tuple[Figure, dict]:
    """Left: new/old and new/new mAP per arm (bars: mean, dots: seeds), old/old as a line.
    Right: the trade-off, compatibility gain (new/old − old/old) against new/new, per run."""
    fig, (a, b) = new_figure(ncols=2, width=9.6, height=3.6)
    jobs = jobs_of(results)
    olds = {j["seed"]: j["extra"]["pairs"]["old_old"]["map"] for j in jobs if j["arm"] == "old"}
    oo = float(np.mean(list(olds.values())))
    x = np.arange(len(arms))
    data: dict[str, Any] = {"old_old": olds, "arms": {}}
    for j, (pair, label) in enumerate((("new_old", "new/old (old gallery)"), ("new_new", "new/new"))):
        vals = [[p[pair]["map"] for p in _pairs_of(jobs, arm)] for arm in arms]
        a.bar(x + (j - 0.5) * 0.38, [np.mean(v) for v in vals], width=0.36, color=COLORS[j], alpha=0.85, label=label)
        for i, v in enumerate(vals):
            a.scatter(np.full(len(v), x[i] + (j - 0.5) * 0.38), v, color="black", s=10, zorder=3)
    a.axhline(oo, color="0.3", linestyle="--", linewidth=1.2, label="old/old")
    a.set_xticks(x, arms, rotation=15)
    a.set_ylabel("mAP (%)")
    a.set_title("Retrieval per arm")
    a.legend(fontsize=8)
    for i, arm in enumerate(arms):
        rs = [j for j in jobs if j["arm"] == arm]
        gx = [r["extra"]["pairs"]["new_old"]["map"] - olds[r["seed"]] for r in rs]
        gy = [r["extra"]["pairs"]["new_new"]["map"] for r in rs]
        b.scatter(gx, gy, color=COLORS[i % len(COLORS)], s=28, label=arm)
        b.scatter([np.mean(gx)], [np.mean(gy)], color=COLORS[i % len(COLORS)], marker="X", s=80, edgecolor="black")
        data["arms"][arm] = {"gain": gx, "new_new": gy, "seeds": [r["seed"] for r in rs]}
    b.axvline(0, color="0.3", linewidth=1)
    b.set_xlabel("compatibility gain: new/old − old/old (mAP pts)")
    b.set_ylabel("new/new mAP (%)")
    b.set_title("Compatible (right of 0) and good (up)")
    b.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting})


def plot_feature_variance(results: Any, arms: Sequence[str], embed_dim: int, setting: str) -> tuple[Figure, dict]:
    """Per-dimension variance of the retrieval feature f over the test images (mean over
    seeds), for the arms with extra dimensions: are the extra ones used?"""
    jobs = jobs_of(results)
    arms = [a for a in arms if any(j["arm"] == a and j["extra"]["dim"] > embed_dim for j in jobs)]
    fig, ax = new_figure(width=6.4, height=3.2)
    data: dict[str, Any] = {}
    for i, arm in enumerate(arms):
        v = np.mean([j["extra"]["feature_var"] for j in jobs if j["arm"] == arm], axis=0)
        ax.plot(np.arange(len(v)), v, color=COLORS[i % len(COLORS)], label=arm, linewidth=1.2)
        data[arm] = {"variance": v, "old_part_share": float(v[:embed_dim].sum() / v.sum()) if v.sum() > 0 else None}
    ax.axvspan(embed_dim - 0.5, max([len(d["variance"]) for d in data.values()], default=embed_dim) - 0.5,
               color="0.85", alpha=0.6, label="extra dimensions")
    ax.set_xlabel("feature dimension")
    ax.set_ylabel("variance over test images")
    ax.set_title("Does the new model use its extra dimensions?")
    ax.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"arms": data, "embed_dim": embed_dim, "setting": setting})


# -- chapter 04 (gcab): feature drift and gate usage ---------------------------------------------------
def drift_table(results: Any, label: str) -> dict[str, np.ndarray]:
    """Mean over seeds of the relative drift D[t, c] of task c's features after task t
    (raw and, for FDC, through the cascade); NaN where c ≥ t."""
    runs = [j["extra"]["extras"] for j in jobs_of(results) if j["arm"] == label]
    T = len(runs[0])
    out = {}
    for kind in ("raw", "compensated"):
        mats = []
        for extras in runs:
            D = np.full((T, T), np.nan)
            for t, ex in enumerate(extras):
                for row in ex.get("drift", []):
                    if kind in row:
                        D[t, row["task"]] = row[kind]
            mats.append(D)
        M = np.array(mats)
        if np.isfinite(M).any():
            with warnings.catch_warnings():  # the upper triangle is all-NaN by definition
                warnings.simplefilter("ignore", RuntimeWarning)
                out[kind] = np.nanmean(M, axis=0)
    return out


def plot_drift_and_masks(results: Any, setting: str, labels: Sequence[str] = ("finetune", "gated", "gcab"),
                         ) -> tuple[Figure, dict]:
    """Left: feature drift of the oldest task (task 1) after each later task, relative
    ‖F_1 − F_t‖/‖F_1‖ on fixed test images — raw for every learner, and through GCAB's
    projector cascade. Right: fraction of the gated block's units each task claims (all and
    new), per learner with gating."""
    fig, (ax, bx) = new_figure(ncols=2, width=10.0, height=3.8)
    data: dict[str, Any] = {"drift_task1": {}, "mask_usage": {}}
    styles = {"finetune": "C0", "gated": "C1", "gcab": "C2"}
    jobs = jobs_of(results)
    for label in labels:
        if not any(j["arm"] == label for j in jobs):
            continue
        D = drift_table(jobs, label)
        T = D["raw"].shape[0]
        xs = np.arange(2, T + 1)
        ax.plot(xs, D["raw"][1:, 0], "-o", color=styles.get(label), label=f"{label}: raw")
        data["drift_task1"][f"{label}_raw"] = D["raw"][1:, 0]
        if "compensated" in D:
            ax.plot(xs, D["compensated"][1:, 0], "--s", color=styles.get(label), label=f"{label}: through cascade")
            data["drift_task1"][f"{label}_compensated"] = D["compensated"][1:, 0]
    T = max((len(j["extra"]["extras"]) for j in jobs), default=1)
    ax.set_xticks(range(2, T + 1))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("after training task t")
    ax.set_ylabel("‖F₁ − F_t‖ / ‖F₁‖ (task-1 features)")
    ax.set_title("Feature drift of task 1, mean over seeds")
    ax.legend(fontsize=8)
    width, k = 0.38, 0
    for label in labels:
        runs = [j["extra"]["extras"] for j in jobs
                if j["arm"] == label and j["extra"]["extras"] and "mask_usage" in j["extra"]["extras"][0]]
        if not runs:
            continue
        T = len(runs[0])
        use = np.mean([[ex["mask_usage"]["m2"] for ex in r] for r in runs], axis=0)
        new = np.mean([[ex["mask_usage"]["m2_new"] for ex in r] for r in runs], axis=0)
        xs = np.arange(1, T + 1) + (k - 0.5) * width
        bx.bar(xs, use, width, color=styles.get(label), alpha=0.35, label=f"{label}: units used")
        bx.bar(xs, new, width, color=styles.get(label), label=f"{label}: newly claimed")
        data["mask_usage"][label] = {"used": use, "new": new}
        k += 1
    bx.set_xticks(range(1, T + 1))
    bx.set_ylim(0, 1.05)
    bx.set_xlabel("task t")
    bx.set_ylabel("fraction of the MLP's hidden units")
    bx.set_title("Gate usage of the class-attention MLP (m2), mean over seeds")
    bx.legend(fontsize=8, ncol=2, loc="upper right")
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting})


# -- chapter 07 (napavq): features, coding vectors and their neighbour graph ------------------------
@torch.no_grad()
def pca_2d(x: torch.Tensor, fit_on: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project rows of ``x`` on the two leading principal axes of ``fit_on`` (default ``x``);
    returns (projection [N, 2], mean, axes [D, 2])."""
    ref = (x if fit_on is None else fit_on).double()
    mu = ref.mean(0)
    _, _, Vh = torch.linalg.svd(ref - mu, full_matrices=False)
    axes = Vh[:2].T
    return ((x.double() - mu) @ axes).float(), mu, axes


@torch.no_grad()
def plot_neighbourhood(model: Any, stream: Any, setting: str, max_classes: int = 20,
                       per_class: int = 30, device: torch.device | str = "cpu",
                       title: str = "What NAPA-VQ learns: features, coding vectors and their neighbour graph",
                       ) -> tuple[Figure, dict]:
    """Left: a 2-D PCA of L2-normalised test features (dots) of the first ``max_classes``
    classes and their rotation-0 CVs (stars), with the CV graph's edges between them (line
    width ∝ edge strength). Right: the class graph (edges between rotation-0 CVs) of every
    class, ordered by task."""
    R = model.rotations
    C = stream.num_classes
    shown = min(max_classes, C)
    idx = stream.test_indices(range(stream.num_tasks))
    y = stream.data.y_test[idx]
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(shown)])
    feats = F.normalize(extract_features(model, stream.data.x_test[idx[keep]], device), dim=1)
    ys = y[keep]
    cv0 = F.normalize(model.cv.vectors().detach().float().cpu()[::R][:shown], dim=1)
    P, mu, axes = pca_2d(torch.cat([feats, cv0]), fit_on=feats)
    pf, pc = P[: len(feats)], P[len(feats):]
    E_all = class_graph(model.cv.edges, C, R)
    E = E_all[:shown, :shown]
    fig, (ax, ax2) = new_figure(ncols=2, width=10.0, height=4.4)
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"]
    # tab20 comes in light/dark pairs: take the ten dark ones first so neighbours differ
    cmap = lambda c: tab20([*range(0, 20, 2), *range(1, 20, 2)][c % 20])
    for c in range(shown):
        m = ys == c
        ax.scatter(pf[m, 0], pf[m, 1], s=6, color=cmap(c % 20), alpha=0.45, linewidths=0)
    for i in range(shown):
        for j in range(i + 1, shown):
            if E[i, j] > 0:
                ax.plot(pc[[i, j], 0], pc[[i, j], 1], color="0.25", lw=0.4 + 1.6 * float(E[i, j]), alpha=0.7, zorder=2)
    ax.scatter(pc[:, 0], pc[:, 1], marker="*", s=110, c=[cmap(c % 20) for c in range(shown)], edgecolors="black",
               linewidths=0.6, zorder=3)
    for c in range(shown):
        ax.annotate(str(c), pc[c].tolist(), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"classes 0–{shown - 1}: test features (dots), CVs (★), edges", fontsize=9)
    im = ax2.imshow(E_all.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    bounds = np.cumsum([len(t) for t in stream.tasks])[:-1] - 0.5
    for b in bounds:
        ax2.axhline(b, color="tab:red", lw=0.5)
        ax2.axvline(b, color="tab:red", lw=0.5)
    ax2.grid(False)
    ax2.set_xlabel("class (label, in task order)")
    ax2.set_ylabel("class")
    ax2.set_title("edge strength between rotation-0 CVs (red: task boundaries)", fontsize=9)
    fig.colorbar(im, ax=ax2, shrink=0.8, label="edge strength")
    fig.suptitle(title)
    annotate_setting(fig, setting)
    deg = (E_all > 0).sum(1).float()
    same_task = [(stream.task_of(i) == stream.task_of(j)) for i in range(C) for j in range(C) if i < j and E_all[i, j] > 0]
    data = {"class_graph": E_all, "pca_cvs": pc, "pca_features_mean": pf.mean(0), "shown_classes": shown,
            "mean_degree": float(deg.mean()), "edges": int((E_all > 0).sum()) // 2,
            "fraction_edges_within_task": float(np.mean(same_task)) if same_task else float("nan"),
            "setting": setting}
    return fig, jsonable(data)


# -- chapter 02 (gtep): the two protocols, the search's transfer, the chosen configurations --------
def plot_protocols(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str], setting: str) -> tuple[Figure, dict]:
    """Key figure. Left: each algorithm's AIA on D^E under the usual protocol (tuned on D^E's
    test) and under GTEP (tuned on D^HT), mean with per-seed dots; the drop is the optimistic
    bias. Right: the algorithms' ranks (1 = best, by mean AIA) under each protocol."""
    table = protocol_table(rows, algorithms, "aia")
    fig, (ax, axr) = new_figure(ncols=2, width=8.6, height=3.6)
    usual = {m: float(np.mean(list(table[m]["usual"].values()))) for m in algorithms}
    gtep = {m: float(np.mean(list(table[m]["gtep"].values()))) for m in algorithms}
    ru, rg = ranks(usual), ranks(gtep)
    for i, m in enumerate(algorithms):
        c = f"C{i % 10}"
        t = table[m]
        ax.plot([0, 1], [usual[m], gtep[m]], "o-", color=c, label=m, zorder=3)
        for s in t["usual"]:
            ax.plot([0, 1], [t["usual"][s], t["gtep"][s]], "-", color=c, alpha=0.3, linewidth=0.8)
            ax.plot([0, 1], [t["usual"][s], t["gtep"][s]], ".", color=c, alpha=0.5)
        axr.plot([0, 1], [ru[m], rg[m]], "o-", color=c, linewidth=2.2, markersize=8)
        # algorithms tied at a rank get their labels stacked, not printed on top of each other
        for x, r, ha in ((-0.06, ru, "right"), (1.06, rg, "left")):
            tied = [k for k in algorithms if r[k] == r[m]]
            dy = 0.16 * (tied.index(m) - (len(tied) - 1) / 2)
            axr.text(x, r[m] + dy, m, ha=ha, va="center", color=c, fontsize=8)
    for a in (ax, axr):
        a.set_xticks([0, 1], ["usual\n(tuned on $D^{E}$ test)", "two-phase\n(tuned on $D^{HT}$)"])
        a.set_xlim(-0.45, 1.45)
    ax.set_ylabel("AIA on $D^{E}$ (%)")
    ax.set_title("Reported score on the evaluation stream")
    ax.legend(loc="best")
    n = len(algorithms)
    axr.set_yticks(range(1, n + 1))
    axr.set_ylim(n + 0.5, 0.5)
    axr.set_ylabel("rank (1 = best mean AIA)")
    axr.set_title("Ranking of the algorithms")
    axr.grid(False)
    annotate_setting(fig, setting)
    return fig, jsonable({"usual_mean": usual, "gtep_mean": gtep, "rank_usual": ru, "rank_gtep": rg,
                          "per_seed": {m: {"usual": table[m]["usual"], "gtep": table[m]["gtep"]} for m in algorithms},
                          "setting": setting})


def plot_transfer(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str], setting: str) -> tuple[Figure, dict]:
    """Every sampled configuration's AIA on D^HT (x) against D^E (y), mean over seeds (bars:
    min–max over seeds). The star is GTEP's H* (rightmost point), the ring the usual choice
    (topmost point); ρ is Spearman's rank correlation of the means."""
    table = protocol_table(rows, algorithms, "aia")
    fig, axes = new_figure(ncols=len(algorithms), width=3.3 * len(algorithms) + 0.4, height=3.5, squeeze=False)
    data: dict[str, Any] = {}
    for i, (ax, m) in enumerate(zip(axes[0], algorithms)):
        c = f"C{i % 10}"
        ht, ev = score_table(rows, "tuning", m), score_table(rows, "evaluation", m)
        cs = sorted(ht)
        x = np.array([np.mean(list(ht[k].values())) for k in cs])
        y = np.array([np.mean(list(ev[k].values())) for k in cs])
        xerr = np.array([[x[j] - min(ht[k].values()), max(ht[k].values()) - x[j]] for j, k in enumerate(cs)]).T
        yerr = np.array([[y[j] - min(ev[k].values()), max(ev[k].values()) - y[j]] for j, k in enumerate(cs)]).T
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=c, alpha=0.75, elinewidth=0.7, capsize=0)
        g, u = cs.index(table[m]["gtep_config"]), cs.index(table[m]["usual_config"])
        ax.plot(x[g], y[g], "*", color="k", markersize=13, label="$H^*$ (two-phase pick)", zorder=4)
        ax.plot(x[u], y[u], "o", markerfacecolor="none", markeredgecolor="k", markersize=13,
                markeredgewidth=1.4, label="usual pick", zorder=4)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        pad = 0.05 * (hi - lo + 1e-9)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ":", color="0.5", linewidth=0.9, label="y = x")
        rho = spearman(x, y)
        ax.set_title(f"{m}: ρ = {rho:.2f}" if np.isfinite(rho) else f"{m}: ρ undefined", fontsize=10)
        ax.set_xlabel("AIA on $D^{HT}$, tuning (%)")
        data[m] = {"configs": cs, "tuning_mean": x, "evaluation_mean": y, "spearman_rho": rho,
                   "gtep_config": table[m]["gtep_config"], "usual_config": table[m]["usual_config"]}
    axes[0][0].set_ylabel("AIA on $D^{E}$, evaluation (%)")
    axes[0][0].legend(loc="best", fontsize=7)
    fig.suptitle("Does a configuration's score on $D^{HT}$ predict its score on $D^{E}$?")
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting, "bars": "min-max over seeds"})


def plot_chosen_curves(rows: Sequence[Mapping[str, Any]], streams: Mapping[str, Any],
                       algorithms: Sequence[str], setting: str) -> tuple[Figure, dict]:
    """Accuracy on all seen classes after each task for the chosen configurations: H* on
    D^HT (phase 1, dashed), H* on D^E (the two-phase result, solid) and the usual pick on D^E
    (dotted); mean over seeds, band min–max."""
    table = protocol_table(rows, algorithms, "aia")
    ev = streams["evaluation"]
    x = np.array([ev.seen(t) for t in range(ev.num_tasks)])
    fig, axes = new_figure(ncols=len(algorithms), width=3.3 * len(algorithms) + 0.4, height=3.4,
                           squeeze=False, sharey=True)
    data: dict[str, Any] = {}
    for i, (ax, m) in enumerate(zip(axes[0], algorithms)):
        t = table[m]
        lines = {"H* on $D^{HT}$ (phase 1)": ("tuning", t["gtep_config"], "--", "0.45"),
                 "H* on $D^{E}$ (two-phase)": ("evaluation", t["gtep_config"], "-", f"C{i % 10}"),
                 "usual pick on $D^{E}$": ("evaluation", t["usual_config"], ":", "k")}
        data[m] = {}
        for label, (phase, cfg, ls, c) in lines.items():
            arr = np.array([r["acc_after"] for r in rows
                            if (r["phase"], r["method"], r["config"]) == (phase, m, cfg)], dtype=float)
            mean = arr.mean(0)
            ax.plot(x[: len(mean)], mean, ls, marker="o", color=c, label=label)
            if len(arr) > 1:
                ax.fill_between(x[: len(mean)], arr.min(0), arr.max(0), color=c, alpha=0.15, linewidth=0)
            data[m][label] = {"config": cfg, "mean": mean, "min": arr.min(0), "max": arr.max(0), "n": len(arr)}
        ax.set_title(m, fontsize=10)
        ax.set_xticks(x)
        ax.set_xlabel("classes seen")
    axes[0][0].set_ylabel("top-1 on all seen classes (%)")
    axes[0][-1].legend(loc="best", fontsize=7)
    fig.suptitle("Accuracy after each task of the chosen configurations")
    annotate_setting(fig, setting)
    return fig, jsonable({"seen_classes": x, "curves": data, "setting": setting, "band": "min-max over seeds"})
