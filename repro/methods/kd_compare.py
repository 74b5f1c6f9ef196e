"""Distillation under one protocol: every method of the family on the same pair, data, schedule
and seeds, with accuracy, calibration and cost per run.

``run_methods`` trains each (method, seed) through the arm registry of
``repro.methods.distill``; ``summary`` turns the per-run results into the chapter's table;
the ``plot_*`` functions draw its figures.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics
from ..metrics import mean_ci
from ..plots.curves import bar_with_errors
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import predict
from . import distill


def check_methods(methods: Sequence[str], hyper: dict[str, dict[str, Any]] | None = None) -> dict[str, dict]:
    """Each method's hyper-parameters (defaults + ``hyper``); unknown names fail before training."""
    if "ce" not in methods:
        raise ValueError("the comparison needs the 'ce' baseline in methods")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat: {list(methods)}")
    hyper = hyper or {}
    unknown = set(hyper) - set(methods)
    if unknown:
        raise ValueError(f"hyper-parameters given for methods not run: {sorted(unknown)}")
    return {m: distill.arm_hyperparameters(m, hyper.get(m)) for m in methods}


def evaluate_student(model: torch.nn.Module, test) -> dict[str, float]:
    """Top-1 (%), ECE (%, 15 bins), NLL and mean confidence of a trained student on ``test``."""
    logits, y = predict(model, test)
    probs = logits.softmax(1)
    return {"top1": metrics.top1(logits, y), "ece": 100 * metrics.ece(probs, y, n_bins=15),
            "nll": F.cross_entropy(logits, y).item(), "confidence": 100 * probs.max(1).values.mean().item()}


def check_arms(arms: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """label → (arm, overrides) to label → (arm, full hyper-parameters); bad names fail here."""
    return {label: (arm, distill.arm_hyperparameters(arm, over)) for label, (arm, over) in arms.items()}


def run_arms(run, data, teacher, arms: dict[str, tuple[str, dict[str, Any]]], seeds: Sequence[int],
             keep_models: bool = False) -> list[dict[str, Any]]:
    """Train every (seed, labelled arm) on the protocol's setup; one result dict per run.

    ``arms``: label → (arm name, hyper-parameters), e.g. {"PLD τ=4": ("pld", {"tau_t": 4.0})}.
    With ``keep_models`` each result also holds the trained model under "model" (not JSON).
    """
    out = []
    for seed in seeds:
        for label, (arm, hp) in arms.items():
            setup = distill.protocol_setup(run, data, seed, teacher)
            t0 = time.time()
            res = distill.train_arm(arm, setup, **hp)
            ev = evaluate_student(res.model, setup.test)
            row = {"method": label, "arm": arm, "seed": seed, **ev, "train_s": res.train_seconds,
                   "wall_s": time.time() - t0, "train_images": res.train_images,
                   "images_per_s": res.images_per_s, "history": res.history,
                   "resumed": res.resumed_from_epoch is not None,
                   **({"extra": res.extra} if res.extra else {})}
            if keep_models:
                row["model"] = res.model
            out.append(row)
    return out


def jsonable_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results without trained models, for the record."""
    return [{k: v for k, v in r.items() if k != "model"} for r in results]


def run_methods(run, data, teacher, methods: Sequence[str], hyper: dict[str, dict[str, Any]],
                seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Train every (seed, method) with the given hyper-parameters (labels = arm names)."""
    return run_arms(run, data, teacher, {m: (m, hyper[m]) for m in methods}, seeds)


def per_seed(results: list[dict[str, Any]], key: str) -> dict[str, dict[int, float]]:
    """method → seed → value."""
    table: dict[str, dict[int, float]] = {}
    for r in results:
        table.setdefault(r["method"], {})[r["seed"]] = r[key]
    return table


def gains_over(results: list[dict[str, Any]], base: str = "ce", key: str = "top1") -> dict[str, dict[int, float]]:
    """method → seed → value minus the ``base`` method's value of the same seed (paired)."""
    top = per_seed(results, key)
    return {m: {s: v - top[base][s] for s, v in by.items() if s in top[base]} for m, by in top.items() if m != base}


def gains_over_ce(results: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """method → seed → top-1 minus the CE student's top-1 of the same seed (paired)."""
    return gains_over(results, "ce")


def summary(results: list[dict[str, Any]], methods: Sequence[str], base: str = "ce") -> list[dict[str, Any]]:
    """One row per method: top-1 mean/std/95% CI, paired gain over ``base``, ECE, cost per run."""
    gains = gains_over(results, base)
    rows = []
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        top = mean_ci([r["top1"] for r in runs])
        g = mean_ci(list(gains[m].values())) if m in gains else None
        rows.append({"method": m, "n": top["n"], "top1_mean": top["mean"], "top1_std": top["std"],
                     "top1_ci": [top["ci_low"], top["ci_high"]],
                     "gain_mean": None if g is None else g["mean"],
                     "gain_ci": None if g is None else [g["ci_low"], g["ci_high"]],
                     "ece_mean": float(np.mean([r["ece"] for r in runs])),
                     "train_s_mean": float(np.mean([r["train_s"] for r in runs])),
                     "images_per_s": float(np.mean([r["images_per_s"] for r in runs]))})
    return rows


def summary_markdown(rows: list[dict[str, Any]], base: str = "CE") -> str:
    """The comparison table as Markdown, best top-1 first."""
    lines = [f"| method | top-1 % (mean ± std) | 95% CI | gain over {base} (paired, 95% CI) | ECE % | train s / run | img/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: -r["top1_mean"]):
        gain = "—" if r["gain_mean"] is None else (f"{r['gain_mean']:+.2f} [{r['gain_ci'][0]:+.2f}, "
                                                   f"{r['gain_ci'][1]:+.2f}]")
        lines.append(f"| {r['method']} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} (n={r['n']}) | "
                     f"[{r['top1_ci'][0]:.2f}, {r['top1_ci'][1]:.2f}] | {gain} | {r['ece_mean']:.2f} | "
                     f"{r['train_s_mean']:.1f} | {r['images_per_s']:,.0f} |")
    return "\n".join(lines)


def plot_top1(results: list[dict[str, Any]], methods: Sequence[str], teacher_acc: float | None,
              setting: str):
    """Student top-1 per method: bars (mean), dots (seeds), ±1 std; the teacher as a line."""
    top = per_seed(results, "top1")
    fig, data = bar_with_errors({m: list(top[m].values()) for m in methods}, "student test top-1 (%)",
                                setting, title="Distillation methods under one protocol")
    if teacher_acc is not None:
        ax = fig.axes[0]
        ax.axhline(teacher_acc, color="0.3", linestyle=":", linewidth=1.2)
        ax.text(ax.get_xlim()[1], teacher_acc, " teacher", va="center", ha="left", fontsize=8, color="0.3")
        data["teacher_acc"] = teacher_acc
    return fig, data


def plot_gains(rows: list[dict[str, Any]], setting: str):
    """Paired gain over CE with its 95% CI, one row per method (a forest plot)."""
    rows = [r for r in rows if r["gain_mean"] is not None]
    rows = sorted(rows, key=lambda r: r["gain_mean"])
    fig, ax = new_figure(width=5.2, height=0.45 * len(rows) + 1.4)
    for i, r in enumerate(rows):
        lo, hi = r["gain_ci"]
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [i, i], color="C0", linewidth=2)
        ax.plot(r["gain_mean"], i, "o", color="C0")
    ax.axvline(0, color="0.3", linewidth=1)
    ax.set_yticks(range(len(rows)), [r["method"] for r in rows])
    ax.set_xlabel("top-1 gain over CE, same seed (pts); line = 95% CI")
    ax.set_title("Which methods beat the plain student?")
    annotate_setting(fig, setting)
    return fig, jsonable({"rows": [{k: r[k] for k in ("method", "gain_mean", "gain_ci", "n")} for r in rows],
                          "setting": setting})


def plot_cost(results: list[dict[str, Any]], methods: Sequence[str], setting: str):
    """Top-1 against training seconds per run (left) and ECE against top-1 (right), one dot per run."""
    fig, (a, b) = new_figure(ncols=2)
    pts = {}
    for i, m in enumerate(methods):
        runs = [r for r in results if r["method"] == m]
        x = [r["train_s"] for r in runs]
        y = [r["top1"] for r in runs]
        e = [r["ece"] for r in runs]
        a.plot(x, y, "o", color=f"C{i % 10}", label=m)
        b.plot(y, e, "o", color=f"C{i % 10}", label=m)
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


@torch.no_grad()
def test_probs(model: torch.nn.Module, test) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities [N, C] and labels [N] of a trained student on ``test``."""
    logits, y = predict(model, test)
    return logits.softmax(1), y


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
