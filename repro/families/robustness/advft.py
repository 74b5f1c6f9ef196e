"""Chapter 40, adversarial fine-tuning (Jeddi, Shafiee & Wong, "A Simple Fine-tuning Is All You
Need: Towards Robust Deep Learning Via Adversarial Fine-tuning", arXiv 2012.13628): a normally
trained network, adversarially fine-tuned for a short time under a "slow start, fast decay"
learning rate, against adversarial training (AT) from scratch.

Arms (:func:`arm_configs`), all the family's ``standard`` arm under one SGD recipe and one PGD
crafting recipe (the ``at_*`` parameters):

* ``pretrained`` — plain training for ``pre_epochs`` (the start of every fine-tuning);
* ``at_scratch`` — PGD-AT from random weights for ``at_epochs`` under the step schedule
  (``at_schedule``; the paper's baseline);
* ``ft_slowfast`` — PGD fine-tuning of ``pretrained`` for ``ft_epochs``: the lr ramps linearly
  from ~0 to ``ft_lr`` over the first ``ft_warmup`` of the steps, then falls linearly to 0;
* ``ft_constant`` — the same fine-tuning at a constant ``ft_constant_lr`` (isolates the schedule);
* ``ft_step`` — the same fine-tuning with a fast start: ``ft_lr`` from the first step, ×0.1 at
  50% and 75% of the steps.

The schedule's shape is a reconstruction (the paper's peak, warm-up fraction and epochs are not
on the card). The fine-tuned arms start from the very ``pretrained`` model (shared checkpoint),
so the three fine-tunings differ only in their schedule. Compute is counted in gradient
evaluations, attack steps included, with and without the pre-training.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ...errors import ParameterError
from ...plots.style import COLORS, annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from ...train import lr_factor
from .attacks import AttackSpec
from .evaluate import EvalConfig
from .figures import MARKERS
from .protocol import RobustConfig, adv_config, robust_config, train_config
from .tables import count, hardening_flag, sanity_flags, seed_mean

FINE_TUNED = ("ft_slowfast", "ft_constant", "ft_step")
#: Arms trained adversarially (their claims need the hardening guard).
ADVERSARIAL = ("at_scratch",) + FINE_TUNED
TITLES = {"pretrained": "standard (pre-trained)", "at_scratch": "PGD-AT from scratch",
          "ft_slowfast": "fine-tune, slow start–fast decay", "ft_constant": "fine-tune, constant lr",
          "ft_step": "fine-tune, fast start (step)"}


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """PGD (``attack_steps``) and APGD-CE at ``eval_eps``, plus PGD at each extra radius of
    ``curve_eps_255`` (the robustness curve), on ``eval_images`` fixed test images, with the
    sanity checks on the PGD at ``eval_eps``."""
    eps, steps, seed = float(params["eval_eps"]), int(params["attack_steps"]), int(params["eval_seed"])
    specs = [AttackSpec("pgd", eps=eps, steps=steps, seed=seed),
             AttackSpec("apgd_ce", eps=eps, steps=steps, seed=seed)]
    extra = sorted({float(e) for e in params["curve_eps_255"]})
    if any(not 0 < e <= 255 for e in extra):
        raise ParameterError(f"curve_eps_255 are radii in 1/255 units, each in (0, 255]: got {extra}")
    for e in extra:
        if abs(e / 255 - eps) > 1e-9:
            specs.append(AttackSpec("pgd", eps=e / 255, steps=steps, seed=seed, label=f"pgd_{e:g}"))
    return EvalConfig(attacks=tuple(specs), images=int(params["eval_images"]), seed=seed,
                      square_queries=int(params["square_queries"]), sanity_attack="pgd")


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """``label → ("standard", config)`` for the chapter's five arms (module docstring), every
    setting checked here (ParameterError before any work)."""
    for name in ("pre_epochs", "at_epochs", "ft_epochs", "track_images"):
        v = params[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "track_images" else 1):
            raise ParameterError(f"{name} must be an integer ≥ {0 if name == 'track_images' else 1}, got {v!r}")
    warm = params["ft_warmup"]
    if isinstance(warm, bool) or not isinstance(warm, (int, float)) or not 0 <= warm < 1:
        raise ParameterError(f"ft_warmup is the fraction of fine-tuning spent ramping up, in [0, 1), got {warm!r}")
    ev = eval_config(params)
    at = adv_config(params)
    track = int(params["track_images"])
    if track > ev.images:
        raise ParameterError(f"track_images ({track}) must not exceed eval_images ({ev.images})")
    pre = robust_config(params, TITLES["pretrained"], epochs=int(params["pre_epochs"]), eval=ev)
    ft_epochs = int(params["ft_epochs"])
    common = dict(adv=at, init=pre, epochs=ft_epochs, eval=ev, track_images=track, warmup_epochs=0.0)
    return {
        "pretrained": ("standard", pre),
        "at_scratch": ("standard", robust_config(params, TITLES["at_scratch"], adv=at, epochs=int(params["at_epochs"]),
                                                 schedule=params["at_schedule"], eval=ev, track_images=track)),
        "ft_slowfast": ("standard", robust_config(params, TITLES["ft_slowfast"], **{
            **common, "schedule": "linear", "lr": float(params["ft_lr"]), "warmup_epochs": float(warm) * ft_epochs})),
        "ft_constant": ("standard", robust_config(params, TITLES["ft_constant"], **{
            **common, "schedule": "constant", "lr": float(params["ft_constant_lr"])})),
        "ft_step": ("standard", robust_config(params, TITLES["ft_step"], **{
            **common, "schedule": "step", "milestones": (0.5, 0.75), "gamma": 0.1, "lr": float(params["ft_lr"])})),
    }


def guards(result: SweepResult, claims: Sequence[Any]) -> list[tuple[str, str]]:
    """``(claim key, reason)`` for each claim resting on an adversarially trained arm when a
    sanity check failed in any arm, or when an adversarial arm is not harder to attack (PGD)
    than the pre-trained standard model. Pass each to ``run.flag(reason, claim=key)``."""
    reasons = sanity_flags(result)
    for a in ADVERSARIAL:
        why = hardening_flag(result, a, "pretrained")
        if why:
            reasons.append(why)
    if not reasons:
        return []
    return [(c.key, "; ".join(reasons)) for c in claims if c.arm in ADVERSARIAL or c.baseline in ADVERSARIAL]


def compute_table(result: SweepResult) -> str:
    """Per arm: epochs, gradient evaluations of its own training and in total (the
    pre-training included for the fine-tuned arms), that total relative to AT from scratch, and
    clean / PGD / APGD-CE / worst accuracy on the evaluation subset (means over seeds)."""
    ref = seed_mean(result, "grad_evals", "at_scratch")
    rows = []
    for a in result.arms():
        jobs = result.of(a)
        cfg = jobs[0]["extra"]["config"]
        own = seed_mean(result, "grad_evals_finetune", a) if cfg.get("init") else seed_mean(result, "grad_evals", a)
        total = seed_mean(result, "grad_evals", a)
        ratio = "—" if not ref or own is None else f"{own / ref:.2f} ({total / ref:.2f})"
        cells = [seed_mean(result, m, a) for m in ("eval_clean", "robust_pgd", "robust_apgd_ce", "robust_worst")]
        rows.append([f"`{a}`", TITLES.get(a, a), str(cfg["epochs"]), count(own), count(total), ratio,
                     *["—" if c is None else f"{c:.1f}" for c in cells]])
    return markdown_table(["arm", "training", "epochs", "grad. evals (own)", "grad. evals (total)",
                           "× AT from scratch: own (total)", "clean", "PGD", "APGD-CE", "worst"], rows,
                          "llrrrrrrrr")


def compute_figure(result: SweepResult, setting: str) -> tuple[Figure, dict]:
    """Key figure: clean (left) and worst-case robust (right) accuracy on the evaluation subset
    against gradient evaluations. A fine-tuned arm appears twice: a filled marker at its own
    cost and a hollow one at its cost with the pre-training, joined by a dotted line. Markers
    are means over seeds, bars min–max."""
    fig, axes = new_figure(width=7.6, height=3.3, ncols=2)
    out: dict[str, Any] = {}
    for i, a in enumerate(result.arms()):
        jobs = result.of(a)
        color, marker = COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]
        own = [j["metrics"].get("grad_evals_finetune", j["metrics"]["grad_evals"]) for j in jobs]
        total = [j["metrics"]["grad_evals"] for j in jobs]
        entry: dict[str, Any] = {"own": own, "total": total}
        for ax, metric in zip(axes, ("eval_clean", "robust_worst")):
            vals = [j["metrics"][metric] for j in jobs]
            m = float(np.mean(vals))
            ax.errorbar(np.mean(own), m, yerr=[[m - min(vals)], [max(vals) - m]], fmt=marker, color=color,
                        markersize=7, capsize=2.5, label=TITLES.get(a, a) if ax is axes[0] else None, zorder=3)
            if a in FINE_TUNED:
                ax.plot([np.mean(own), np.mean(total)], [m, m], ":", color=color, linewidth=1, zorder=2)
                ax.plot(np.mean(total), m, marker, color=color, markerfacecolor="white", markersize=7, zorder=3)
            entry[metric] = vals
        out[a] = entry
    for ax, what in zip(axes, ("clean accuracy (%)", "worst-case robust accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("gradient evaluations (log)")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
    axes[0].set_title("Clean")
    axes[1].set_title("Robust (worst of PGD, APGD-CE per image)")
    axes[0].legend(fontsize=7, loc="lower right")
    annotate_setting(fig, setting + "; hollow: with the pre-training")
    return fig, jsonable({"arms": out, "setting": setting, "bars": "min-max over seeds"})


def schedule_figure(arms: Mapping[str, tuple[str, RobustConfig]], steps_per_epoch: int,
                    setting: str) -> tuple[Figure, dict]:
    """The learning rate against the step, for AT from scratch (left) and the three
    fine-tunings (right), from the very ``TrainConfig`` each arm trains with
    (``repro.train.lr_factor``)."""
    fig, axes = new_figure(width=7.6, height=2.8, ncols=2)
    out: dict[str, Any] = {}
    for i, (label, (_, cfg)) in enumerate(arms.items()):
        if label == "pretrained":
            continue
        tc = train_config(cfg)
        total = tc.epochs * steps_per_epoch
        steps = np.arange(total + 1)
        lr = [tc.lr * lr_factor(tc, int(min(s, total - 1)), total, steps_per_epoch) for s in steps]
        ax = axes[0] if label == "at_scratch" else axes[1]
        ax.plot(steps, lr, color=COLORS[i % len(COLORS)], label=TITLES.get(label, label), drawstyle="steps-post")
        out[label] = {"steps": int(total), "lr": [float(v) for v in lr[:: max(1, total // 200)]]}
    for ax, title in zip(axes, ("AT from scratch", "Adversarial fine-tuning")):
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.set_title(title)
        ax.legend(fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({"schedules": out, "steps_per_epoch": steps_per_epoch, "setting": setting})


def epoch_figure(result: SweepResult, setting: str) -> tuple[Figure, dict]:
    """Clean (dashed) and PGD (solid) accuracy on the tracked images after every epoch, for AT
    from scratch and the fine-tunings (mean over seeds, band min–max): robust overfitting would
    show as PGD accuracy that peaks and falls."""
    fig, ax = new_figure(width=6.2, height=3.3)
    out: dict[str, Any] = {}
    for i, a in enumerate(ADVERSARIAL):
        jobs = result.of(a)
        if not jobs or "track_robust" not in jobs[0]["extra"]["history"][0]:
            continue
        color = COLORS[(i + 1) % len(COLORS)]
        entry = {}
        for key, style in (("track_robust", "-"), ("track_clean", "--")):
            curves = np.array([[r[key] for r in j["extra"]["history"]] for j in jobs])
            ep = np.arange(1, curves.shape[1] + 1)
            ax.plot(ep, curves.mean(0), style, color=color, marker="o", markersize=3,
                    label=TITLES.get(a, a) if key == "track_robust" else None)
            ax.fill_between(ep, curves.min(0), curves.max(0), color=color, alpha=0.15, linewidth=0)
            entry[key] = curves.tolist()
        out[a] = entry
    ax.set_xlabel("epoch of the arm's own training")
    ax.set_ylabel("accuracy on the tracked images (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="best")
    annotate_setting(fig, setting + "; solid: PGD, dashed: clean")
    return fig, jsonable({"arms": out, "setting": setting, "band": "min-max over seeds"})


def comparison_models(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """The chapter's models for the family comparison (chapter 46), as ``label → (builder,
    config)``: ``standard`` (the pre-trained model), ``pgd_at`` (AT from scratch) and
    ``advft`` (the slow-start fine-tuning), all the ``standard`` arm's, with the very configs
    trained here, so the comparison loads them from the shared checkpoints."""
    arms = arm_configs(params)
    pick = {"standard": "pretrained", "pgd_at": "at_scratch", "advft": "ft_slowfast"}
    return {k: ("standard", arms[v][1]) for k, v in pick.items()}
