"""Chapter 15 (PLD): the list-wise loss's landscape, τ_T sensitivity and CE ↔ PLD interpolation.

The arms themselves (CE, KD, DIST, PLD) are in ``repro.methods.distill``; this module holds the
chapter's own analyses and figures.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..losses import distillation as D
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import dry_run
from . import kd_compare
from .large_batch import interpolation

# The fixed-teacher baselines every PLD run is compared with, under their registry defaults
# (KD: CE 0.1 + KL 0.9 at T 4; DIST: CE + β 2, γ 2 at τ 4).
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {"CE": ("ce", {}), "KD": ("kd", {}), "DIST": ("dist", {})}


def pld_label(tau_t: float) -> str:
    """The label of the PLD arm trained at teacher temperature ``tau_t`` (e.g. "PLD τ=4")."""
    return f"PLD τ={tau_t:g}"


def arm_plan(tau_ts: Sequence[float], claim_tau_t: float) -> tuple[dict[str, tuple[str, dict[str, Any]]], str]:
    """The chapter's arms — CE, KD, DIST and one PLD per τ_T — with full, validated
    hyper-parameters, and the label of the PLD arm the claims judge.

    Raises ``ValueError`` before any training for an empty or repeated τ_T list, a claim τ_T
    that is not trained, or a non-positive temperature (via ``distill.arm_hyperparameters``).
    """
    taus = [float(t) for t in tau_ts]
    if not taus:
        raise ValueError("tau_ts must list at least one PLD teacher temperature")
    if len({pld_label(t) for t in taus}) != len(taus):
        raise ValueError(f"tau_ts must not repeat: {list(tau_ts)}")
    if float(claim_tau_t) not in taus:
        raise ValueError(f"claim_tau_t={claim_tau_t} must be one of tau_ts={list(tau_ts)}")
    arms = {**BASELINES, **{pld_label(t): ("pld", {"tau_t": t}) for t in taus}}
    return kd_compare.check_arms(arms), pld_label(float(claim_tau_t))


def seed_effects(results: list[dict[str, Any]], head: str) -> dict[int, dict[str, float]]:
    """Per seed: the judged PLD arm's top-1 and its paired differences with KD, DIST and CE
    (the metrics the claims read), plus every arm's top-1 and training seconds (``top1_<label>``,
    ``train_s_<label>``)."""
    top = kd_compare.per_seed(results, "top1")
    secs = kd_compare.per_seed(results, "train_s") if all("train_s" in r for r in results) else {}
    for label in (head, "KD", "DIST", "CE"):
        if label not in top:
            raise ValueError(f"no results for arm {label!r}; have {sorted(top)}")
    out = {}
    for seed, v in top[head].items():
        missing = [m for m in ("KD", "DIST", "CE") if seed not in top[m]]
        if missing:
            raise ValueError(f"seed {seed} has no {missing} run to pair with {head}")
        out[seed] = {"top1_pld": v, "pld_minus_kd": v - top["KD"][seed],
                     "pld_minus_dist": v - top["DIST"][seed], "pld_minus_ce": v - top["CE"][seed],
                     **{f"top1_{label}": by[seed] for label, by in top.items() if seed in by},
                     **{f"train_s_{label}": by[seed] for label, by in secs.items() if seed in by}}
    return out


def loss_surfaces(num_classes: int = 10, steps: int = 41, span: float = 4.0, seed: int = 0,
                  temperature: float = 4.0, tau_t: float = 4.0,
                  directions: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """KD, DIST (inter-class term) and PLD on the plane s = t + a·d1 + b·d2 around a random
    teacher logit vector t (the PLD paper's App. J), label y = argmax t.

    d1, d2 are random orthonormal directions unless ``directions`` gives them. DIST's
    intra-class term needs a batch; with one sample it is a constant, so only its inter-class
    (per-sample Pearson) term is drawn. Rows of each surface run over b, columns over a.
    """
    if num_classes < 2 or steps < 2 or span <= 0:
        raise ValueError(f"need num_classes ≥ 2, steps ≥ 2 and span > 0; got {num_classes}, {steps}, {span}")
    D.check_temperature("temperature", temperature)
    D.check_temperature("tau_t", tau_t)
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(1, num_classes, generator=g, dtype=torch.float64) * 2
    if directions is None:
        q, _ = torch.linalg.qr(torch.randn(num_classes, 2, generator=g, dtype=torch.float64))
        d1, d2 = q[:, 0], q[:, 1]
    else:
        d1, d2 = (torch.as_tensor(d, dtype=torch.float64).flatten() for d in directions)
        if d1.numel() != num_classes or d2.numel() != num_classes:
            raise ValueError(f"directions must have {num_classes} entries each")
    y = t.argmax(1)
    steps = min(steps, 3) if dry_run() else steps  # a dry run: a 3 × 3 plane
    grid = np.linspace(-span, span, steps)
    out = {name: np.zeros((steps, steps)) for name in ("KD", "DIST", "PLD")}
    for i, b in enumerate(grid):
        for j, a in enumerate(grid):
            s = t + a * d1 + b * d2
            out["KD"][i, j] = float(D.kd_loss(s, t, temperature))
            out["DIST"][i, j] = float(D.dist_loss(s, t, temperature, beta=1.0, gamma=0.0))
            out["PLD"][i, j] = float(D.pld_loss(s, t, y, tau_t))
    return {"grid": grid.tolist(), "surfaces": {k: v.tolist() for k, v in out.items()},
            "teacher": t[0].tolist(), "label": int(y), "d1": d1.tolist(), "d2": d2.tolist(),
            "num_classes": num_classes, "temperature": temperature, "tau_t": tau_t, "seed": seed}


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


def plot_tau(results: list[dict[str, Any]], taus: Sequence[float], setting: str):
    """PLD student top-1 against the teacher temperature τ_T, with CE / KD / DIST as lines."""
    fig, ax = new_figure(width=5.0)
    data: dict[str, Any] = {"pld": {}, "reference": {}}
    xs, means = [], []
    for tau in sorted(taus):
        vals = [r["top1"] for r in results if r["method"] == pld_label(tau)]
        if not vals:
            raise ValueError(f"no results for {pld_label(tau)!r}")
        ax.plot([tau] * len(vals), vals, "o", color="C0", alpha=0.5)
        xs.append(tau)
        means.append(float(np.mean(vals)))
        data["pld"][str(tau)] = vals
    ax.plot(xs, means, "-", color="C0", label="PLD (mean, dots = seeds)")
    for i, name in enumerate(("CE", "KD", "DIST")):
        vals = [r["top1"] for r in results if r["method"] == name]
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


def interpolation_grid(points: int, samples: int) -> tuple[list[float], int]:
    """The α values (``points`` from −0.5 to 1.5, so 0 and 1 are on the grid for odd ``points``
    ≥ 5) and the images per split of the CE ↔ PLD interpolation.

    In a dry run (``REPRO_DRY_RUN``) it shrinks to 3 points and 64 images, as every other
    evaluation shrinks to one batch there: the dry run checks the code path, not the curve.
    """
    if points < 2:
        raise ValueError(f"landscape_points must be ≥ 2, got {points}")
    if samples < 0:
        raise ValueError(f"landscape_samples must be ≥ 0 (0: all), got {samples}")
    if dry_run():
        points, samples = 3, 64
    return np.linspace(-0.5, 1.5, points).tolist(), samples


def interpolate_students(model_a: torch.nn.Module, model_b: torch.nn.Module, data: Any, points: int,
                         samples: int, device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """Train and test loss and top-1 along θ(α) = (1 − α)·θ_a + α·θ_b, the batch-norm running
    statistics re-estimated on the training subset at every α (``large_batch.interpolation``):
    the stored statistics belong to the end points only, and interpolating them is meaningless
    off [0, 1]."""
    alphas, n = interpolation_grid(points, samples)
    return interpolation(model_a, model_b, data, alphas, n, device, bn="recalibrate")


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
