"""The training family's figures, drawn from sweep results (``SweepResult`` or the per-job
dicts of a chapter's ``runs(result)``), in the book's style. Each returns ``(fig, data)``
for ``run.figure``.

* multi-sample dropout (35): :func:`plot_msd_curves`, :func:`plot_msd_final_error`,
  :func:`plot_msd_epoch_time` (and the generic :func:`plot_vs_m`);
* hard-batch selection (36): :func:`plot_hb_accuracy_vs_updates`, :func:`plot_hb_selection`,
  :func:`plot_hb_per_class_change`;
* large batches, Ghost BN (41): :func:`plot_gbn_distance_and_accuracy`,
  :func:`plot_gbn_error_vs_updates`, :func:`plot_gbn_interpolation`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import math

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ...plots import training_curves
from ...plots.style import annotate_setting, jsonable, new_figure
from .arms.ghostbn import LABELS as GBN_LABELS
from .arms.ghostbn import distance_fit
from .arms.hardbatch import SETTINGS as HB_SETTINGS

# -- multi-sample dropout (chapter 35) -------------------------------------------------------


def plot_msd_curves(arms: Sequence[Mapping[str, Any]], setting: str, loss_epoch: int | None = None):
    """Key figure: train loss and test error vs epoch, one line per arm (mean, min–max band).

    A dotted vertical line marks ``loss_epoch``, where the acceleration claim is read.
    """
    labels = list(dict.fromkeys(a["label"] for a in arms))
    hist = {lab: [a["history"] for a in arms if a["label"] == lab] for lab in labels}
    fig, data = training_curves(hist, x="epoch", ys=("train_loss", "test_err"), setting=setting,
                                title="Multi-sample dropout: train loss and test error by number of samples M")
    fig.axes[1].set_ylabel("test error (%)")
    refs = {lab for lab in labels if lab == "no dropout" or "lr ×" in lab}
    for ax in fig.axes:  # reference arms dashed, so the M = … lines stand out
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for line in ax.get_lines():
            if line.get_label().split(" (n=")[0] in refs:
                line.set_linestyle("--")
        if ax.get_legend() is not None:
            ax.legend()
    if loss_epoch is not None:
        fig.axes[0].axvline(loss_epoch, color="0.5", linestyle=":", linewidth=1)
        data["loss_epoch"] = loss_epoch
    return fig, data


def plot_vs_m(per_m: Mapping[int, Sequence[float]], ylabel: str, setting: str, title: str,
              refs: Mapping[str, Sequence[float]] | None = None,
              hollow: Mapping[int, Sequence[float]] | None = None, hollow_label: str = "",
              hline: tuple[float, str] | None = None):
    """A metric against M (log₂ axis): one dot per seed, the mean as a line.

    per_m: ``M → per-seed values``; refs: ``label → per-seed values`` of arms without an M
    (drawn as dashed horizontal lines at their mean); hollow: a second measurement per M
    drawn as hollow markers (e.g. the training jobs' own epoch times); hline: ``(y, label)``
    of a threshold line. Returns ``(fig, data)``.
    """
    fig, ax = new_figure(width=4.6, height=3.3)
    ms = sorted(per_m)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    means = [float(np.mean(per_m[m])) for m in ms]
    ax.plot(ms, means, color="C0", marker="o", label="mean over seeds", zorder=2)
    for m in ms:
        v = np.asarray(per_m[m], dtype=float)
        ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, v.size), v, s=16, color="0.15", zorder=3,
                   label="one seed" if m == ms[0] else None)
    if hollow:
        for m in sorted(hollow):
            v = np.asarray(hollow[m], dtype=float)
            ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, v.size), v, s=22, facecolors="none",
                       edgecolors="C1", zorder=3, label=hollow_label if m == min(hollow) else None)
    for i, (lab, v) in enumerate((refs or {}).items()):
        ax.axhline(float(np.mean(v)), color=f"C{i + 2}", linestyle="--", linewidth=1.2, label=f"{lab} (mean)")
    if hline is not None:
        ax.axhline(hline[0], color="C3", linestyle=":", linewidth=1.2, label=hline[1])
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.minorticks_off()
    ax.set_xlabel("dropout samples per image, M")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    annotate_setting(fig, setting)
    data = {"per_m": {str(m): list(per_m[m]) for m in ms}, "mean": dict(zip(map(str, ms), means)),
            "refs": {k: list(v) for k, v in (refs or {}).items()},
            "hollow": {str(m): list(v) for m, v in (hollow or {}).items()}, "hollow_label": hollow_label,
            "hline": list(hline) if hline else None, "ylabel": ylabel, "title": title, "setting": setting}
    return fig, jsonable(data)


def plot_msd_final_error(arms: Sequence[Mapping[str, Any]], samples: Sequence[int], setting: str):
    """Final test error against M, one dot per seed; reference arms as dashed lines."""
    main = [a for a in arms if a["dropout"] > 0 and a["lr_scale"] == 1.0 and a["M"] in samples]
    per_m = {m: [a["final_test_err"] for a in main if a["M"] == m] for m in samples}
    refs: dict[str, list[float]] = {}
    for a in arms:
        if a not in main:
            refs.setdefault(a["label"], []).append(a["final_test_err"])
    return plot_vs_m(per_m, "final test error (%)", setting, "Final test error vs number of dropout samples",
                     refs=refs)


def plot_msd_epoch_time(bench: Mapping[int, Mapping[int, float]], steps_per_epoch: int,
                    arms: Sequence[Mapping[str, Any]], samples: Sequence[int], setting: str,
                    overhead_limit: float = 10.0):
    """Cost of M, two panels: seconds per training epoch (left, log scale) and the extra time
    relative to the baseline M (right, %, with the ``overhead_limit`` line).

    bench: ``seed → {M: seconds per step}`` from ``step_time_benchmark`` (filled dots, one per
    seed; epoch time = step time × ``steps_per_epoch``); arms: the training jobs, whose
    median epoch times are drawn as hollow markers. Each seed's overhead is taken against
    that seed's own baseline measurement. Returns ``(fig, data)``.
    """
    ms = sorted(samples)
    m0 = 1 if 1 in ms else ms[0]
    seeds = sorted(bench)
    jobs = {(a["seed"], a["M"]): a["epoch_s"] for a in arms
            if a["dropout"] > 0 and a["lr_scale"] == 1.0 and a["M"] in ms}
    bench_s = {m: [bench[s][m] * steps_per_epoch for s in seeds] for m in ms}
    job_s = {m: [jobs[s, m] for s in seeds if (s, m) in jobs] for m in ms}
    bench_pct = {m: [100 * (bench[s][m] / bench[s][m0] - 1) for s in seeds] for m in ms}
    job_pct = {m: [100 * (jobs[s, m] / jobs[s, m0] - 1) for s in seeds if (s, m) in jobs and (s, m0) in jobs]
               for m in ms}
    fig, axes = new_figure(ncols=2, width=8.6, height=3.3)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    for ax, (b, j) in zip(axes, ((bench_s, job_s), (bench_pct, job_pct))):
        ax.plot(ms, [float(np.mean(b[m])) for m in ms], color="C0", marker="o",
                label="benchmark, mean over seeds", zorder=2)
        for k, m in enumerate(ms):
            ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, len(b[m])), b[m], s=16, color="0.15", zorder=3,
                       label="benchmark, one seed" if k == 0 else None)
            ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, len(j[m])), j[m], s=22, facecolors="none",
                       edgecolors="C1", zorder=3, label="training job (median epoch)" if k == 0 else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.minorticks_off()
        ax.set_xlabel("dropout samples per image, M")
    # log scale: the benchmark and the jobs can differ by an order of magnitude on a busy machine
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].set_ylabel("seconds per training epoch")
    # The overhead panel is scaled to the benchmark and the limit; a training job far outside
    # (load on a shared machine changes between jobs) is drawn as ▲ at the top with its value.
    allb = [v for m in ms for v in bench_pct[m]]
    top = max(4 * overhead_limit, 1.3 * max(allb))
    bottom = min(-overhead_limit, 1.3 * min(allb))
    for m in ms:
        for side, out in (("top", [v for v in job_pct[m] if v > top]), ("bottom", [v for v in job_pct[m] if v < bottom])):
            if not out:
                continue
            y = top if side == "top" else bottom
            axes[1].scatter([m], [y], marker="^" if side == "top" else "v", s=26, color="C1", zorder=4, clip_on=False)
            axes[1].annotate("job: " + ", ".join(f"{v:+.0f} %" for v in out), (m, y), textcoords="offset points",
                             xytext=(-8, -12 if side == "top" else 6), ha="right", fontsize=7, color="C1")
    axes[1].set_ylim(bottom, top)
    axes[0].set_title("Time per epoch")
    axes[1].axhline(overhead_limit, color="C3", linestyle=":", linewidth=1.2, label=f"{overhead_limit:g} % limit")
    axes[1].axhline(0, color="0.5", linewidth=0.8)
    axes[1].set_ylabel(f"extra time vs M = {m0} (%)")
    axes[1].set_title("Overhead")
    axes[1].legend()
    fig.suptitle("Cost of multi-sample dropout: training time vs M")
    annotate_setting(fig, setting)
    data = {"seeds": seeds, "steps_per_epoch": steps_per_epoch, "baseline_M": m0,
            "bench_epoch_s": {str(m): v for m, v in bench_s.items()},
            "job_epoch_s": {str(m): v for m, v in job_s.items()},
            "bench_overhead_pct": {str(m): v for m, v in bench_pct.items()},
            "job_overhead_pct": {str(m): v for m, v in job_pct.items()},
            "overhead_limit": overhead_limit, "setting": setting}
    return fig, jsonable(data)


# -- hard-batch selection (chapter 36) --------------------------------------------------------
# ``arms``: the per-job dicts of ``repro.families.training.arms.hardbatch.runs(result)``.


def _hb_by(arms: Sequence[Mapping[str, Any]], setting: str, delta: float) -> list[Mapping[str, Any]]:
    return [a for a in arms if a["setting"] == setting and a["delta"] == delta]


def plot_hb_accuracy_vs_updates(arms: Sequence[Mapping[str, Any]], settings: Sequence[str],
                             deltas: Sequence[float], setting_caption: str, frac: float = 0.9):
    """Key figure: test top-1 vs number of updates, one panel per setting, one line per δ
    (mean over seeds, band = min–max). A dotted line marks ``frac`` × the δ = 1 final accuracy."""

    fig, axes = new_figure(ncols=len(settings), squeeze=False, sharey=True)
    data: dict[str, Any] = {"band": "min-max over seeds", "series": {}}
    low = math.inf  # the lowest accuracy after update 0: the y-axis starts just below it
    for ax, setting in zip(axes[0], settings):
        data["series"][setting] = {}
        for i, delta in enumerate(sorted(deltas, reverse=True)):
            runs = _hb_by(arms, setting, delta)
            if not runs:
                continue
            x = np.asarray(runs[0]["steps"])
            y = np.asarray([r["test_acc"] for r in runs])  # [seeds, evals]
            color = f"C{i % 10}"
            label = f"δ = {delta:g}" + (" (baseline)" if delta == 1.0 else "")
            ax.plot(x, y.mean(0), color=color, marker="o", markersize=2.5, label=label)
            if len(runs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.2, linewidth=0)
            low = min(low, float(y[:, 1:].min()) if y.shape[1] > 1 else float(y.min()))
            data["series"][setting][f"{delta:g}"] = {"x": x.tolist(), "mean": y.mean(0).tolist(),
                                                    "min": y.min(0).tolist(), "max": y.max(0).tolist(),
                                                    "n": len(runs)}
        base = _hb_by(arms, setting, 1.0)
        if base:
            level = frac * float(np.mean([b["final_acc"] for b in base]))
            ax.axhline(level, color="0.5", linestyle=":", linewidth=1,
                       label=f"{frac:.0%} of baseline final")
        ax.set_title(HB_SETTINGS[setting].label)
        ax.set_xlabel("number of updates (SGD steps)")
        ax.legend(loc="lower right")
    axes[0][0].set_ylabel("test top-1 accuracy (%)")
    if math.isfinite(low):  # zoom on the comparison; the curves start from update 0 below
        axes[0][0].set_ylim(bottom=max(0.0, low - 3.0))
    annotate_setting(fig, setting_caption)
    return fig, data


def plot_hb_selection(arms: Sequence[Mapping[str, Any]], settings: Sequence[str], delta: float,
                   setting_caption: str):
    """(a) how many updates each batch position received (pass 1 included), all seeds pooled;
    (b) mean recorded loss of the selected vs the unselected batches at each round's start."""

    fig, (ax1, ax2) = new_figure(ncols=2)
    data: dict[str, Any] = {"delta": delta, "counts": {}, "rounds": {}}
    for i, setting in enumerate(settings):
        runs = _hb_by(arms, setting, delta)
        if not runs:
            continue
        color = f"C{i % 10}"
        counts = np.concatenate([np.asarray(r["counts"]) for r in runs])
        bins = np.arange(counts.min(), counts.max() + 2) - 0.5
        ax1.hist(counts, bins=bins, histtype="step", linewidth=1.6, color=color,
                 label=HB_SETTINGS[setting].label.split(":")[0])
        data["counts"][setting] = counts.tolist()
        r = runs[0]["rounds"]
        if r:
            x = [d["round"] for d in r]
            ax2.plot(x, [d["mean_selected"] for d in r], color=color,
                     label=f"{HB_SETTINGS[setting].label.split(':')[0]}: selected")
            ax2.plot(x, [d["mean_unselected"] for d in r], color=color, linestyle="--",
                     label=f"{HB_SETTINGS[setting].label.split(':')[0]}: not selected")
            data["rounds"][setting] = r
    budget = runs[0]["steps"][-1] / runs[0]["num_batches"] if runs else float("nan")
    ax1.axvline(budget, color="0.5", linestyle=":", linewidth=1, label=f"δ = 1 (every batch: {budget:g})")
    ax1.set_xlabel(f"updates on a batch (δ = {delta:g}, pass 1 included)")
    ax1.set_ylabel("number of batches")
    ax1.legend()
    ax2.set_xlabel(f"round (seed {runs[0]['seed'] if runs else '—'})")
    ax2.set_ylabel("mean recorded batch loss at selection")
    ax2.legend()
    annotate_setting(fig, setting_caption)
    return fig, data


def plot_hb_per_class_change(arms: Sequence[Mapping[str, Any]], settings: Sequence[str], delta: float,
                          class_names: Sequence[str], setting_caption: str):
    """Per-class test accuracy of δ minus that of δ = 1 (mean over seeds), one panel per
    setting, classes sorted from hardest to easiest.

    Difficulty is the mean per-class accuracy of the *two* arms, not the baseline's alone:
    sorting by the baseline would make its unlucky classes look "hard" and gain by
    regression to the mean, while (a + b) / 2 is uncorrelated with a − b when the two arms
    are equally noisy (the Bland–Altman ordering)."""

    k = len(class_names)
    fig, axes = new_figure(ncols=1, nrows=len(settings), squeeze=False,
                           width=max(7.0, 0.12 * k + 2.0), height=2.9 * len(settings))
    data: dict[str, Any] = {"delta": delta, "settings": {}}
    step = 1 if k <= 40 else 5  # label every class, or every fifth of many
    for ax, setting in zip(axes[:, 0], settings):
        base = np.mean([r["per_class_acc"] for r in _hb_by(arms, setting, 1.0)], axis=0)  # [K]
        arm = np.mean([r["per_class_acc"] for r in _hb_by(arms, setting, delta)], axis=0)
        level = (base + arm) / 2
        order = np.argsort(level, kind="stable")  # hardest class first
        diff = (arm - base)[order]
        ax.bar(np.arange(k), diff, color=["C2" if d >= 0 else "C1" for d in diff], width=0.8)
        ax.axhline(0, color="0.3", linewidth=0.8)
        names = [class_names[i] for i in order]
        ax.set_xticks(np.arange(k)[::step], names[::step], rotation=90, fontsize=7)
        ax.set_ylabel("Δ top-1 (pts)")
        ax.set_title(HB_SETTINGS[setting].label, loc="left")
        ax.grid(axis="x", visible=False)
        data["settings"][setting] = {"classes": names, "baseline_acc": base[order].tolist(),
                                     "mean_acc_both": level[order].tolist(), "change": diff.tolist()}
    axes[-1, 0].set_xlabel(f"class, from hardest to easiest (mean per-class test accuracy of δ = 1 and δ = {delta:g})")
    fig.suptitle(f"Per-class test accuracy: δ = {delta:g} minus δ = 1 (mean over seeds)")
    annotate_setting(fig, setting_caption)
    return fig, data


# -- large batches, Ghost BN (chapter 41) ------------------------------------------------------
# ``results``: ``label → per-seed dicts`` of ``repro.families.training.arms.ghostbn.runs(result)``.


def plot_gbn_interpolation(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], setting: str):
    """Loss (log scale) and accuracy along θ(α) = (1 − α)·θ_SB + α·θ_other.

    curves: ``label → {"train": interpolate_1d result, "test": ...}``; solid = train,
    dashed = test, one colour per endpoint model.
    """

    fig, (ax_l, ax_a) = new_figure(ncols=2, width=9.0, height=3.4)
    data: dict[str, Any] = {"curves": {}, "setting": setting}
    for i, (label, by_split) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for split, style in (("train", "-"), ("test", "--")):
            r = by_split[split]
            ax_l.plot(r["alpha"], r["loss"], style, color=color, marker="o", markersize=2.5,
                      label=f"{label} · {split}")
            ax_a.plot(r["alpha"], r["acc"], style, color=color, marker="o", markersize=2.5,
                      label=f"{label} · {split}")
            data["curves"][f"{label} · {split}"] = {k: list(r[k]) for k in ("alpha", "loss", "acc")}
            data["curves"][f"{label} · {split}"]["n_samples"] = r["n_samples"]
    for ax in (ax_l, ax_a):
        for endpoint in (0.0, 1.0):
            ax.axvline(endpoint, color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel(r"$\alpha$   ($\theta = (1-\alpha)\,\theta_{SB} + \alpha\,\theta_{other}$)")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("cross-entropy loss (log scale)")
    ax_a.set_ylabel("top-1 accuracy (%)")
    ax_a.legend(fontsize=7)
    fig.suptitle("Loss landscape between the small-batch (α = 0) and large-batch (α = 1) solutions")
    annotate_setting(fig, setting)
    return fig, data


def _gbn_series(runs: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """x shared by the seeds (their logs have the same grid) and y stacked [seeds, points]."""
    n = min(len(r[x]) for r in runs)
    return np.asarray(runs[0][x][:n], dtype=float), np.asarray([r[y][:n] for r in runs], dtype=float)


def plot_gbn_distance_and_accuracy(results: Mapping[str, Sequence[Mapping[str, Any]]], setting: str,
                               fit_arm: str = "LB"):
    """Key figure. Left: ‖w_t − w_0‖ against the number of updates on a log axis, one line
    per arm (mean over seeds, band = min–max), with the log-t fit of ``fit_arm`` over its
    initial phase (dashed, black). Right: final test top-1 per arm, bars = mean, dots = seeds."""

    fig, (ax_d, ax_b) = new_figure(ncols=2, width=9.4, height=3.6, gridspec_kw={"width_ratios": [1.5, 1]})
    data: dict[str, Any] = {"distance": {}, "accuracy": {}, "band": "min-max over seeds", "setting": setting}
    for i, (arm, runs) in enumerate(results.items()):
        color = f"C{i % 10}"
        x, y = _gbn_series(runs, "dist_steps", "dist")
        if x.size:
            ax_d.plot(x, y.mean(0), color=color, label=f"{GBN_LABELS[arm]} (B={runs[0]['batch_size']})")
            if len(runs) > 1:
                ax_d.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.2, linewidth=0)
            drop = runs[0]["first_drop_update"]
            if drop < runs[0]["updates"]:
                ax_d.plot([drop], [np.interp(drop, x, y.mean(0))], marker="v", color=color, markersize=5)
            data["distance"][arm] = {"updates": x.tolist(), "mean": y.mean(0).tolist(),
                                     "min": y.min(0).tolist(), "max": y.max(0).tolist(),
                                     "first_lr_drop": drop}
        accs = [r["final_acc"] for r in runs]
        ax_b.bar(i, np.mean(accs), width=0.65, color=color, alpha=0.55, edgecolor=color)
        ax_b.scatter(i + np.linspace(-0.12, 0.12, len(accs)) if len(accs) > 1 else [i], accs,
                     s=14, color="0.1", zorder=3)
        data["accuracy"][arm] = {"per_seed": accs, "mean": float(np.mean(accs))}
    if fit_arm in results:
        fits = []
        for r in results[fit_arm]:
            try:
                fits.append(distance_fit(r))
            except ValueError:
                pass
        if fits:
            a = float(np.mean([f["intercept"] for f in fits]))
            k = float(np.mean([f["slope_per_decade"] for f in fits]))
            t = np.geomspace(fits[0]["t_min"], fits[0]["t_max"], 50)
            r2 = np.mean([f["r2_log"] for f in fits])
            ax_d.plot(t, a + k * np.log10(t), "k--", linewidth=1.1,
                      label=f"{GBN_LABELS[fit_arm]}: a + k·log t fit (R² {r2:.3f})")
            data["fit"] = {"arm": fit_arm, "intercept": a, "slope_per_decade": k, "r2_log": float(r2),
                           "t_min": fits[0]["t_min"], "t_max": fits[0]["t_max"]}
    ax_d.set_xscale("log")
    ax_d.set_xlabel("number of updates (log scale)")
    ax_d.set_ylabel(r"$\|w_t - w_0\|_2$ (all parameters)")
    ax_d.set_title("Distance from initialisation (▼ = first LR drop)")
    ax_d.legend(fontsize=7)
    ax_b.set_xticks(range(len(results)), [GBN_LABELS[a] for a in results])
    ax_b.set_ylabel("final test top-1 (%)")
    ax_b.set_title("Final accuracy (bars: mean, dots: seeds)")
    ax_b.grid(axis="x", visible=False)
    ax_b.set_ylim(bottom=0.0)  # bars start at 0: their heights compare
    annotate_setting(fig, setting)
    return fig, data


def plot_gbn_error_vs_updates(results: Mapping[str, Sequence[Mapping[str, Any]]], arms: Sequence[str],
                          setting: str):
    """Test error (%) against the number of updates for ``arms`` (mean over seeds, band =
    min–max; evaluations after every epoch). With regime adaptation the large batch takes as
    many updates as the small one, and its curve should end where SB's ends."""

    fig, ax = new_figure(width=5.6, height=3.6)
    data: dict[str, Any] = {"series": {}, "band": "min-max over seeds", "setting": setting}
    for i, arm in enumerate(results):
        if arm not in {a.replace("+", "_") for a in arms}:  # labels, or Table 1's names
            continue
        runs = results[arm]
        color = f"C{i % 10}"
        hx = [{"step": [h["step"] for h in r["history"]], "err": [h["test_err"] for h in r["history"]]}
              for r in runs]
        x, y = _gbn_series(hx, "step", "err")
        ax.plot(x, y.mean(0), color=color, marker="o", markersize=3,
                label=f"{GBN_LABELS[arm]} (B={runs[0]['batch_size']}, {runs[0]['epochs']} ep)")
        if len(runs) > 1:
            ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.2, linewidth=0)
        data["series"][arm] = {"updates": x.tolist(), "mean": y.mean(0).tolist(),
                               "min": y.min(0).tolist(), "max": y.max(0).tolist()}
    ax.set_xlabel("number of updates (SGD steps)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Test error vs updates (evaluated after every epoch)")
    ax.legend()
    annotate_setting(fig, setting)
    return fig, data
