"""Chapter 23, weighted convolution (Cammarasana & Patanè, "Optimal Weighted Convolution for
Classification and Denosing", arXiv 2505.24558): the same VGG-like CNN with every 3×3
convolution applying V = W ⊙ Φ, for a sweep of the density ``den``.

Φ = α αᵀ with α = [d, 1, d] (``repro.layers.weighted_conv``); d = 1 is the standard
convolution. The networks are ``repro.models.wconv_net``'s (``wconv_vgg4`` at the cpu tier,
``wconv_vgg11_bn`` above it), built as their plain-convolution twin first, so for one seed
every arm starts from the same W and sees the same batches. Arms (:func:`arm_configs`),
labelled by identifiers, all with the family's recipe:

* ``den_{d}`` for each d of ``params["dens"]`` (:func:`label`: ``den_0p7``, ``den_1``…);
  ``den_1`` is the standard-convolution reference;
* ``learnable``: one trainable d per layer, starting at ``params["learnable_init"]``, on the
  main AdamW (the paper gives d its own AdamW at lr 1e-2; the family's ``standard`` arm has
  one optimiser, so this is a stated deviation);
* ``init_only``: plain convolutions whose initial weight is W ⊙ Φ(:data:`PREREGISTERED`):
  the same function at initialisation as ``den_0p7``, trained without the reparametrisation
  (the card's control that separates the init effect from the optimisation effect).

:data:`PREREGISTERED` = 0.7, the README's example for 3×3 kernels, is the headline density
the claims name. It was fixed before any run: picking the best d of the sweep after seeing
test accuracy would tune on the test set.

:data:`CPU_BF16` turns on bf16 autocast with channels_last on the CPU for every arm: an
interleaved benchmark of ``wconv_vgg4`` at 16 px, batch 128, on the development CPU
(2 cores, AVX512-BF16, shared with other jobs, load 4–5) trained at a median 710 / best
1 240 images/s in bf16 + channels_last against 612 / 749 in fp32, and evaluated at 8 800
against 1 760 images/s; in a cpu-tier job (20 classes × 250 images) an epoch trained at
1 840–1 970 images/s in bf16 against at best 1 135 in fp32 (about 2.9 s an epoch in bf16).

The chapter's own probes and figure: :func:`density_maps` (Φ of each swept d),
:func:`tap_profile` (RMS of the applied kernel V per tap, relative to the centre) with
:func:`profile_table` and :func:`metrics_by_seed` (logged, not judged).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from ... import models
from ...errors import ParameterError
from ...layers.weighted_conv import WeightedConv2d, density_matrix
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from .protocol import ArchConfig, arch_config, build_model

#: the headline density, registered before any run (the official README's example for 3×3)
PREREGISTERED = 0.7
#: the standard convolution
STANDARD = 1.0
#: the networks this chapter sweeps (repro.models.wconv_net)
MODELS = ("wconv_vgg4", "wconv_vgg11_bn")
#: bf16 autocast + channels_last on the CPU (measured faster for wconv_vgg4; module docstring)
CPU_BF16 = True


def label(den: float) -> str:
    """The arm label of a density: ``den_0p7``, ``den_1``, ``den_1p5`` (``.`` → ``p``)."""
    return "den_" + f"{float(den):g}".replace(".", "p").replace("-", "m")


def title(den: float) -> str:
    """Display name: ``d = 0.7``, ``d = 1 (standard conv)``."""
    return f"d = {float(den):g}" + (" (standard conv)" if float(den) == STANDARD else "")


def check_model(model: str) -> None:
    """``model`` must be one of :data:`MODELS` (ParameterError otherwise)."""
    if model not in MODELS:
        raise ParameterError(f"wconv sweeps the density of a weighted-convolution network; {model!r} is not one "
                             f"(use {' or '.join(MODELS)})")
    if model not in models.available():
        raise ParameterError(f"unknown model {model!r}; available: {', '.join(models.available())}")


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ParameterError(f"{name} must be finite numbers > 0, got {v!r}")
    return float(v)


def arm_dens(params: Mapping[str, Any]) -> dict[str, float]:
    """``label → d`` of the swept arms, in increasing d. A d that is not a finite number > 0,
    two d with the same label, or a set lacking 1.0 (the standard convolution) or
    :data:`PREREGISTERED` (the arms the claims compare) → ParameterError."""
    dens = [_positive("dens", d) for d in params["dens"]]
    labels = [label(d) for d in dens]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"dens repeat: {list(params['dens'])}")
    need = [d for d in (PREREGISTERED, STANDARD) if label(d) not in labels]
    if need:
        raise ParameterError(f"dens must include {PREREGISTERED} (the pre-registered density) and {STANDARD:g} "
                             f"(the standard convolution), which the claims compare; missing {need}")
    return {label(d): d for d in sorted(dens)}


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``label → ("standard", config)``: one arm per d of ``params["dens"]``, then
    ``learnable`` (start ``params["learnable_init"]``) and ``init_only`` (at
    :data:`PREREGISTERED`), all on ``params["model"]`` with the family's recipe and
    :data:`CPU_BF16`. Bad dens (:func:`arm_dens`), a bad start or another network →
    ParameterError."""
    model = params["model"]
    check_model(model)
    start = _positive("learnable_init", params["learnable_init"])

    def cfg(name: str, **kw: Any) -> ArchConfig:
        return arch_config(params, model, title=name, model_kw=kw, cpu_bf16=CPU_BF16)

    out = {lab: ("standard", cfg(title(d), den=d)) for lab, d in arm_dens(params).items()}
    out["learnable"] = ("standard", cfg(f"learnable d (start {start:g})", den=start, learnable_den=True))
    out["init_only"] = ("standard", cfg(f"init-only Φ({PREREGISTERED:g})", den=PREREGISTERED, init_only=True))
    return out


def sweep_points(result: SweepResult, params: Mapping[str, Any], metric: str = "top1") -> dict[float, list[float]]:
    """d → per-seed ``metric`` of the swept arms (for ``figures.sweep_curve``)."""
    return {d: list(result.per_seed(metric, lab).values()) for lab, d in arm_dens(params).items()
            if result.per_seed(metric, lab)}


def references(result: SweepResult, metric: str = "top1") -> dict[str, list[float]]:
    """The horizontal references of the sweep figure: the standard convolution, the
    init-only control and the learnable arm (those that were trained)."""
    names = {label(STANDARD): "d = 1 (standard conv)", "init_only": f"init-only Φ({PREREGISTERED:g})",
             "learnable": "learnable d"}
    return {n: list(result.per_seed(metric, a).values()) for a, n in names.items() if result.per_seed(metric, a)}


# -- Φ --------------------------------------------------------------------------------------
def phi(den: float) -> np.ndarray:
    """Φ [3, 3] of one density (float64)."""
    return density_matrix(torch.tensor([float(den)], dtype=torch.float64)).numpy()


def density_maps(dens: Sequence[float], setting: str) -> tuple[Figure, dict]:
    """Φ of each density as a 3×3 heat map with its values written in, ≤ 3 panels a row
    (2 for four), one shared colour scale from 0 to the largest entry."""
    dens = sorted(float(d) for d in dens)
    if not dens:
        raise ValueError("no density to draw")
    n = len(dens)
    ncols = 2 if n == 4 else min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=1.9 * ncols + 1.0, height=1.9 * nrows + 0.5,
                           squeeze=False)
    vmax = max(1.0, max(d * d for d in dens))
    mats = {}
    im = None
    for k, d in enumerate(dens):
        ax = axes[k // ncols][k % ncols]
        m = phi(d)
        mats[f"{d:g}"] = m
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax)
        for i in range(3):
            for j in range(3):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if m[i, j] < 0.6 * vmax else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(title(d), fontsize=9)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="Φ (tap weight)")
    annotate_setting(fig, setting)
    return fig, jsonable({"dens": dens, "phi": mats, "setting": setting, "alpha": "[d, 1, d]"})


# -- the applied kernel per tap ---------------------------------------------------------------
@torch.no_grad()
def tap_profile(model: nn.Module) -> np.ndarray:
    """RMS over output and input channels of the kernel each 3×3 convolution applies
    (V = W ⊙ Φ for a weighted one, W for a plain one), divided by its centre tap's, averaged
    over the layers: a [3, 3] array (centre 1). Kaiming init gives ≈ 1 everywhere for
    W; a weighted layer at init gives ≈ Φ."""
    maps = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            v = m.effective_weight() if isinstance(m, WeightedConv2d) else m.weight
            rms = v.detach().float().cpu().pow(2).mean(dim=(0, 1)).sqrt()
            maps.append((rms / rms[1, 1]).numpy())
    if not maps:
        raise ValueError("the model has no 3×3 convolution")
    return np.mean(maps, axis=0)


def _edge_corner(p: np.ndarray) -> tuple[float, float]:
    edge = float(np.mean([p[0, 1], p[1, 0], p[1, 2], p[2, 1]]))
    corner = float(np.mean([p[0, 0], p[0, 2], p[2, 0], p[2, 2]]))
    return edge, corner


PROFILE_ARMS = (label(PREREGISTERED), label(STANDARD), "init_only", "learnable")


def metrics_by_seed(result: SweepResult) -> dict[int, dict[str, float]]:
    """Per seed, not judged: ``corner_{arm}`` (the trained corner-to-centre RMS ratio of the
    applied kernel, :func:`tap_profile`) for the pre-registered arm, ``den_1``,
    ``init_only`` and ``learnable``, and ``den_learned_mean`` (the learnable arm's final d,
    mean over layers)."""
    out: dict[int, dict[str, float]] = {}
    for arm in PROFILE_ARMS:
        for j in result.of(arm):
            if j.get("model") is not None:
                out.setdefault(j["seed"], {})[f"corner_{arm}"] = _edge_corner(tap_profile(j["model"]))[1]
    for j in result.of("learnable"):
        den = [v for layer in j["extra"]["structure"]["den"] for v in layer]
        if den:
            out.setdefault(j["seed"], {})["den_learned_mean"] = float(np.mean(den))
    return out


def profile_table(result: SweepResult, num_classes: int, image_size: int,
                  arms: Sequence[str] = PROFILE_ARMS) -> str:
    """Markdown: per arm the edge- and corner-to-centre RMS ratios of the applied kernel at
    initialisation (the first seed's network, rebuilt) and after training (mean over seeds,
    min–max)."""
    rows = []
    for arm in arms:
        jobs = [j for j in result.of(arm) if j.get("model") is not None]
        if not jobs:
            continue
        cfg = ArchConfig(model=jobs[0]["extra"]["model"], model_kw=dict(jobs[0]["extra"]["model_kw"]))
        e0, c0 = _edge_corner(tap_profile(build_model(cfg, num_classes, image_size, jobs[0]["seed"])))
        trained = np.array([_edge_corner(tap_profile(j["model"])) for j in jobs])

        def cell(col: int) -> str:
            v = trained[:, col]
            return f"{v.mean():.3f}" + (f" ({v.min():.3f}–{v.max():.3f})" if len(v) > 1 else "")
        rows.append([f"`{arm}`", jobs[0]["extra"]["title"], f"{e0:.3f}", f"{c0:.3f}", cell(0), cell(1)])
    return markdown_table(["arm", "network", "edge ÷ centre, init", "corner ÷ centre, init",
                           "edge ÷ centre, trained", "corner ÷ centre, trained"], rows, "llrrll")


def den_keys(result: SweepResult, arm: str = "learnable") -> list[str]:
    """The history keys of the learned densities (``den_0_0``…, layer then ring) of ``arm``."""
    jobs = result.of(arm)
    if not jobs:
        return []
    keys = [k for k in jobs[0]["extra"]["history"][-1] if k.startswith("den_")]
    return sorted(keys, key=lambda k: tuple(int(p) for p in k.split("_")[1:]))
