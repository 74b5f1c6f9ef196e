"""Chapter 19, HAG (Roffo, Biffi, Salvagnini & Cherubini, "Hard-Attention Gates with Gradient
Routing for Endoscopic Image Computing", MICCAI 2024): the same slot ViT without gates, with
gates trained jointly, and with gates trained by gradient routing (GR) — at equal epochs and
at equal gradient evaluations.

Gates: one learnable vector per residual branch, x ← x + Attn(LN x) ⊙ σ(θ₁), x ← x +
MLP(LN x) ⊙ σ(θ₂) (``repro.layers.hard_attention_gate``, slot ``gates="hag"`` of
``repro.models.slot_vit``). Arms (:func:`arm_configs`), labelled by identifiers:

* ``baseline``: no gates, the family's ``standard`` arm;
* ``joint``: gates, trained by the main AdamW with every other weight (``standard``);
* ``routing``: gates on their own AdamW (``gate_lr``, constant) and their own pass before the
  main step, every batch (the family's ``routing`` arm): two forward–backward passes a batch;
* ``routing_half``: ``routing`` for half the epochs (rounded up, at least 1) with the warm-up
  shortened in proportion, so the schedule keeps its shape: as many gradient evaluations as
  the baseline, the deterministic form of the card's "equal wall-clock" comparison. The
  measured training seconds of every job are in the sweep's rows (``train_s``).

Everything else is the family's recipe. The chapter's own table and figures live here, not in
the family's ``figures.py``: :func:`compute_table` (epochs, passes, gradient evaluations and
measured seconds per arm), :func:`accuracy_gap_curves` (train and test top-1 and their gap per
epoch), :func:`compute_curves` (top-1 against gradient evaluations and against seconds) and
:func:`gate_heatmap` (final openings, gate × channel).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ...errors import ParameterError, check_choices
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from .protocol import ArchConfig, arch_config

ARMS = ("baseline", "joint", "routing", "routing_half")
TITLES = {"baseline": "no gates", "joint": "gates, joint", "routing": "gates + GR"}  # routing_half: "…, N ep"


def half_epochs(epochs: int) -> int:
    """The epochs of ``routing_half``: half of ``epochs``, rounded up, at least 1."""
    return max(1, math.ceil(int(epochs) / 2))


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``label → (family arm, config)`` for each name in ``params["arms"]`` (see the module
    docstring) on ``params["model"]``; gates train at ``params["gate_lr"]`` under routing.
    Unknown or no arm names → ParameterError."""
    names = check_choices(list(params["arms"]), ARMS, "arm")
    if not names:
        raise ParameterError(f"arms is empty; choose from {', '.join(ARMS)}")
    model = params["model"]
    gates = {"gates": "hag"}
    out: dict[str, tuple[str, ArchConfig]] = {}
    for name in dict.fromkeys(names):
        if name == "baseline":
            cfg = arch_config(params, model, title=TITLES[name], gate_lr=ArchConfig.gate_lr)
            out[name] = ("standard", cfg)
        elif name == "joint":
            cfg = arch_config(params, model, title=TITLES[name], model_kw=gates, gate_lr=ArchConfig.gate_lr)
            out[name] = ("standard", cfg)
        elif name == "routing":
            cfg = arch_config(params, model, title=TITLES[name], model_kw=gates, routing=True,
                              gate_lr=float(params["gate_lr"]))
            out[name] = ("routing", cfg)
        else:
            epochs = int(params["epochs"])
            half = half_epochs(epochs)
            warm = float(params.get("warmup_epochs", ArchConfig.warmup_epochs)) * half / epochs
            cfg = arch_config(params, model, title=f"gates + GR, {half} ep", model_kw=gates, routing=True,
                              gate_lr=float(params["gate_lr"]), epochs=half, warmup_epochs=warm)
            out[name] = ("routing", cfg)
    return out


def guards(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(reason, claim key)`` for claims this run's settings make meaningless (``run.flag``):
    with one epoch, ``routing_half`` trains as long as ``routing`` and spends twice the
    baseline's gradient evaluations, so it is no equal-compute arm."""
    epochs = int(params["epochs"])
    if "routing_half" in params["arms"] and half_epochs(epochs) == epochs:
        return [(f"routing_half trains all {epochs} epoch(s) (half rounded up): twice the baseline's gradient "
                 "evaluations, not equal compute", "top1:routing_half-baseline")]
    return []


def gated_arms(result: SweepResult) -> list[str]:
    """The arms of a sweep whose networks have gates, in sweep order."""
    return [a for a in result.arms() if result.of(a) and result.of(a)[0]["extra"]["structure"]["gates"]]


def _openings(job: Mapping[str, Any]) -> np.ndarray:
    return np.concatenate([np.asarray(g, dtype=float) for g in job["extra"]["structure"]["gates"]])


def metrics_by_seed(result: SweepResult) -> dict[int, dict[str, float]]:
    """Per seed, not judged: for each gated arm the final openings' mean (``gate_mean_ARM``),
    spread (``gate_sd_ARM``: 0 would be every gate at one value; it grows as gates drift apart
    from the common start near 0.5) and the share of nearly closed gates (``gate_closed_ARM``,
    σ(θ) < 0.1, in %); for every other arm, its measured training seconds over the baseline's
    (``time_ratio_ARM``: timings, noisy on a shared CPU)."""
    out: dict[int, dict[str, float]] = {}
    for arm in gated_arms(result):
        for j in result.of(arm):
            g = _openings(j)
            out.setdefault(j["seed"], {}).update({f"gate_mean_{arm}": float(g.mean()), f"gate_sd_{arm}": float(g.std()),
                                                  f"gate_closed_{arm}": float((g < 0.1).mean() * 100)})
    base = {j["seed"]: j["train_s"] for j in result.of("baseline")}
    for arm in result.arms():
        if arm == "baseline":
            continue
        for j in result.of(arm):
            if base.get(j["seed"]):
                out.setdefault(j["seed"], {})[f"time_ratio_{arm}"] = float(j["train_s"] / base[j["seed"]])
    return out


def _unit(values: Sequence[float]) -> tuple[float, str]:
    top = max(values, default=0.0)
    return (1e6, "millions") if top >= 1e6 else ((1e3, "thousands") if top >= 1e3 else (1.0, ""))


def accuracy_gap_curves(result: SweepResult, setting: str, arms: Sequence[str] | None = None) -> tuple[Figure, dict]:
    """Per epoch and arm: train top-1 on the augmented batches (left), test top-1 (middle) and
    their difference, the overfitting gap (right); the mean over seeds with a min–max band."""
    arms = [a for a in (arms or result.arms()) if result.of(a)]
    keys = ("train_acc", "test_acc", "gap")
    labels = ("train top-1 (%, augmented)", "test top-1 (%)", "train − test gap (pts)")
    fig, axes = new_figure(ncols=3, width=7.6, height=3.0)
    series: dict[str, dict] = {}
    for i, arm in enumerate(arms):
        hist = [j["extra"]["history"] for j in result.of(arm)]
        n = min(len(h) for h in hist)
        ep = [r["epoch"] for r in hist[0][:n]]
        vals = {"train_acc": np.array([[r["train_acc"] for r in h[:n]] for h in hist]),
                "test_acc": np.array([[r["test_acc"] for r in h[:n]] for h in hist])}
        vals["gap"] = vals["train_acc"] - vals["test_acc"]
        series[arm] = {"title": _title(result, arm), "epoch": ep, "seeds": len(hist)}
        for ax, k in zip(axes, keys):
            v = vals[k]
            ax.plot(ep, v.mean(0), color=f"C{i % 10}", marker="o" if n < 6 else None, markersize=3,
                    label=_title(result, arm))
            if len(hist) > 1:
                ax.fill_between(ep, v.min(0), v.max(0), color=f"C{i % 10}", alpha=0.18, linewidth=0)
            series[arm][k] = {"mean": v.mean(0), "min": v.min(0), "max": v.max(0)}
    for ax, lab in zip(axes, labels):
        ax.set_xlabel("epoch")
        ax.set_title(lab, fontsize=9)
    if arms:
        axes[1].legend(fontsize=8, loc="best")
    annotate_setting(fig, setting)
    return fig, jsonable({"keys": list(keys), "series": series, "setting": setting, "band": "min-max over seeds"})


def _count(v: float) -> str:
    return f"{v / 1e6:.2f} M" if v >= 1e6 else (f"{v / 1e3:.1f} k" if v >= 1e3 else f"{v:.0f}")


def compute_table(result: SweepResult, arms: Sequence[str] | None = None) -> str:
    """One row per arm: epochs, forward–backward passes a batch, gradient evaluations (image
    passes, counted), measured training seconds (mean over seeds, and relative to the
    baseline's) and mean test top-1."""
    base = [j["train_s"] for j in result.of("baseline")]
    rows = []
    for arm in arms or result.arms():
        jobs = result.of(arm)
        if not jobs:
            continue
        secs = float(np.mean([j["train_s"] for j in jobs]))
        rel = f"{secs / np.mean(base):.2f}×" if base and np.mean(base) > 0 else "—"
        rows.append([f"`{arm}`", _title(result, arm), str(jobs[0]["extra"]["epochs"]),
                     "2" if jobs[0]["extra"].get("routing") else "1",
                     _count(float(np.mean([j['metrics']['grad_evals'] for j in jobs]))),
                     f"{secs:.1f}" if secs >= 10 else f"{secs:.2f}", rel,
                     f"{np.mean([j['metrics']['top1'] for j in jobs]):.2f}"])
    return markdown_table(["arm", "network", "epochs", "passes a batch", "gradient evaluations",
                           "training s (mean)", "vs baseline", "top-1 (mean)"], rows, "llrrrrrr")


def _title(result: SweepResult, arm: str) -> str:
    jobs = result.of(arm)
    return (jobs[0]["extra"].get("title") or arm) if jobs else arm


def compute_curves(result: SweepResult, setting: str, arms: Sequence[str] | None = None) -> tuple[Figure, dict]:
    """Test top-1 against training cost, one line per arm (mean over seeds, min–max band):
    left against gradient evaluations (forward–backward passes over one image, counted:
    an epoch of routing is two passes over the data), right against measured training
    seconds (cumulative ``epoch_s``; resumed epochs keep the seconds they took)."""
    arms = [a for a in (arms or result.arms()) if result.of(a)]
    scale, unit = _unit([j["metrics"]["grad_evals"] for a in arms for j in result.of(a)])
    fig, axes = new_figure(ncols=2, width=7.4, height=3.2, sharey=True)
    series: dict[str, dict] = {}
    for i, arm in enumerate(arms):
        jobs = result.of(arm)
        hist = [j["extra"]["history"] for j in jobs]
        n = min(len(h) for h in hist)
        acc = np.array([[r["test_acc"] for r in h[:n]] for h in hist])
        per_epoch = np.mean([j["metrics"]["grad_evals"] / j["extra"]["epochs"] for j in jobs])
        evals = per_epoch * np.arange(1, n + 1)
        secs = np.array([np.cumsum([r.get("epoch_s", float("nan")) for r in h[:n]]) for h in hist])
        m, lo, hi = acc.mean(0), acc.min(0), acc.max(0)
        name = _title(result, arm)
        style = dict(color=f"C{i % 10}", marker="o" if n < 6 else None, markersize=3, label=name)
        evals = evals / scale
        axes[0].plot(evals, m, **style)
        axes[1].plot(secs.mean(0), m, **style)
        if len(jobs) > 1:
            axes[0].fill_between(evals, lo, hi, color=f"C{i % 10}", alpha=0.18, linewidth=0)
            axes[1].fill_between(secs.mean(0), lo, hi, color=f"C{i % 10}", alpha=0.18, linewidth=0)
        series[arm] = {"title": name, "grad_evals": evals * scale, "train_s_mean": secs.mean(0), "top1_mean": m,
                       "top1_min": lo, "top1_max": hi, "seeds": len(jobs)}
    axes[0].set_xlabel(f"gradient evaluations ({unit + ' of ' if unit else ''}image passes)")
    axes[1].set_xlabel("measured training time (s, mean over seeds)")
    axes[0].set_ylabel("test top-1 (%)")
    if arms:
        axes[0].legend(fontsize=8, loc="best")
    annotate_setting(fig, setting)
    return fig, jsonable({"series": series, "setting": setting, "band": "min-max over seeds"})


def gate_heatmap(result: SweepResult, setting: str, seed: int,
                 arms: Sequence[str] | None = None) -> tuple[Figure, dict]:
    """Final gate openings σ(θ) of one seed's models, one panel per gated arm: a row per gate
    (block i's attention branch ``iA``, then its MLP branch ``iM``), a column per channel."""
    arms = [a for a in (arms or gated_arms(result)) if any(j["seed"] == seed for j in result.of(a))]
    if not arms:
        raise ValueError(f"no gated arm has seed {seed}")
    mats = {}
    for a in arms:
        job = next(j for j in result.of(a) if j["seed"] == seed)
        mats[a] = np.array(job["extra"]["structure"]["gates"], dtype=float)
    rows = max(m.shape[0] for m in mats.values())
    fig, axes = new_figure(ncols=len(arms), width=min(7.4, 2.3 * len(arms) + 1.2), height=0.22 * rows + 1.6,
                           squeeze=False)
    im = None
    for ax, a in zip(axes[0], arms):
        ax.grid(False)
        im = ax.imshow(mats[a], cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(_title(result, a), fontsize=9)
        ax.set_xlabel("channel")
        labels = [f"{i // 2}{'AM'[i % 2]}" for i in range(mats[a].shape[0])]
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if ax is axes[0][0] else [], fontsize=7)
    axes[0][0].set_ylabel("gate (block, A = attention, M = MLP)")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.9, label="σ(θ)")
    annotate_setting(fig, setting)
    return fig, jsonable({"seed": seed, "gates": mats, "setting": setting})
