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


def loss_surfaces(num_classes: int = 10, steps: int = 41, span: float = 4.0, seed: int = 0,
                  temperature: float = 4.0, tau_t: float = 4.0) -> dict[str, Any]:
    """KD, DIST (inter-class term) and PLD on the plane s = t + a·d1 + b·d2 around a random
    teacher logit vector t (the PLD paper's App. J), label y = argmax t.

    d1, d2 are random orthonormal directions. DIST's intra-class term needs a batch; with one
    sample it is a constant, so only its inter-class (per-sample Pearson) term is drawn.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(1, num_classes, generator=g, dtype=torch.float64) * 2
    q, _ = torch.linalg.qr(torch.randn(num_classes, 2, generator=g, dtype=torch.float64))
    d1, d2 = q[:, 0], q[:, 1]
    y = t.argmax(1)
    grid = np.linspace(-span, span, steps)
    out = {name: np.zeros((steps, steps)) for name in ("KD", "DIST", "PLD")}
    for i, b in enumerate(grid):
        for j, a in enumerate(grid):
            s = t + a * d1 + b * d2
            out["KD"][i, j] = float(D.kd_loss(s, t, temperature))
            out["DIST"][i, j] = float(D.dist_loss(s, t, temperature, beta=1.0, gamma=0.0))
            out["PLD"][i, j] = float(D.pld_loss(s, t, y, tau_t))
    return {"grid": grid.tolist(), "surfaces": {k: v.tolist() for k, v in out.items()},
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


def plot_tau(results: list[dict[str, Any]], taus: Sequence[float], labels: dict[float, str], setting: str):
    """PLD student top-1 against the teacher temperature τ_T, with CE / KD / DIST as lines."""
    fig, ax = new_figure(width=5.0)
    data: dict[str, Any] = {"pld": {}, "reference": {}}
    xs, means = [], []
    for tau in taus:
        vals = [r["top1"] for r in results if r["method"] == labels[tau]]
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
