"""Ghost BatchNorm and "train longer, generalise better": large-batch training without a
generalisation gap (Hoffer, Hubara & Soudry 2017).

The paper's argument: a large batch B trained for the same number of *epochs* as a small
batch b takes B/b times fewer *updates*, and the weights, which drift from their
initialisation only like ‖w_t − w_0‖ ∝ log t ("ultra-slow diffusion"), do not get far
enough. Three fixes, tested here as cumulative arms (Table 1 of the paper):

=================  ========  =====================================  ====================
arm                batch     learning rate                          epochs / milestones
=================  ========  =====================================  ====================
``SB``             b         lr                                     E, m
``LB``             B         lr                                     E, m
``LB_LR``          B         lr · √(B/b)                            E, m
``LB_LR_GBN``      B         lr · √(B/b), Ghost BN over groups of b  E, m
``LB_LR_GBN_RA``   B         lr · √(B/b), Ghost BN                  ⌈B/b⌉·E, ⌈B/b⌉·m
=================  ========  =====================================  ====================

* √-scaling keeps the covariance of the weight update (lr² × gradient variance ∝ lr²/B)
  equal to small-batch training (``sqrt_lr``);
* Ghost BN (``repro.layers.ghost_bn``) normalises inside groups of ``ghost_size`` samples;
  as in the official ``main_gbn.py`` the GBN arms clip the gradient norm (at 5);
* regime adaptation multiplies the number of epochs and every epoch of the LR schedule
  (warm-up end, each drop) by ⌈B/b⌉, so the large batch takes as many updates as the small
  one (``Regime.stretched``).

Sweep labels are the identifiers above; the chapter's ``arms`` parameter may name them as in
Table 1 (``LB+LR+GBN``), :func:`arm_label` maps one to the other. Each job's metric: ``top1``
(final test top-1, %). ``WeightDistance`` logs ‖w_t − w_0‖ (all parameters) during
training and ``log_fit`` tests the log-t law on it (``seed_metrics``: run-level metrics, not
one arm's value); ``landscape_curves`` interpolates between the SB and the LB solutions with
``repro.plots.landscape.interpolate_1d`` (BN statistics re-estimated at every α). The network
C3 is ``repro.models.c3``, Ghost BN ``repro.layers.ghost_bn``; figures are in
``repro.families.training.figures``, tables in ``repro.families.training.tables``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .... import models
from ....arms import arm, make_config
from ....layers.ghost_bn import ghost_norm, ghost_norm1d
from ....plots.landscape import dry_points, interpolate_1d, subset_batches
from ....sweep import Job, SweepResult
from ....train import StepInfo, fit
from ..protocol import TrainingConfig, train_config

NAME = "ghostbn"

# -- the arms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSpec:
    """Which of the paper's fixes an arm uses."""

    large: bool       # batch B (else b)
    lr_fix: bool      # lr × √(B/b)
    ghost: bool       # Ghost BN with groups of ghost_size
    regime_fix: bool  # epochs and milestones × ⌈B/b⌉


ARMS: dict[str, ArmSpec] = {
    "SB": ArmSpec(large=False, lr_fix=False, ghost=False, regime_fix=False),
    "LB": ArmSpec(large=True, lr_fix=False, ghost=False, regime_fix=False),
    "LB_LR": ArmSpec(large=True, lr_fix=True, ghost=False, regime_fix=False),
    "LB_LR_GBN": ArmSpec(large=True, lr_fix=True, ghost=True, regime_fix=False),
    "LB_LR_GBN_RA": ArmSpec(large=True, lr_fix=True, ghost=True, regime_fix=True),
}
# Short labels for figures (Table 1's column names).
LABELS: dict[str, str] = {"SB": "SB", "LB": "LB", "LB_LR": "+LR", "LB_LR_GBN": "+GBN", "LB_LR_GBN_RA": "+RA"}


def arm_label(arm: str) -> str:
    """The sweep label of an arm named as in Table 1: ``"LB+LR+GBN"`` → ``"LB_LR_GBN"``."""
    return arm.replace("+", "_")


def metric_key(arm: str) -> str:
    """``"LB+LR+GBN"`` or ``"LB_LR_GBN"`` → ``"lb_lr_gbn"`` (metric names: ``dist_slope_lb_lr_gbn``…)."""
    return arm_label(arm).lower()


def check_arms(arms: Sequence[str]) -> None:
    """Fail early on an unknown arm name (Table 1's names or the sweep labels)."""
    unknown = [a for a in arms if arm_label(a) not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")


# -- learning rate and regime ---------------------------------------------------------------


def sqrt_lr(lr: float, batch: int, base_batch: int) -> float:
    """The paper's LR fix: ``lr · √(batch / base_batch)``."""
    if batch <= 0 or base_batch <= 0:
        raise ValueError("batch sizes must be positive")
    return float(lr) * math.sqrt(batch / base_batch)


def regime_factor(batch: int, base_batch: int) -> int:
    """⌈B/b⌉, the factor by which regime adaptation stretches training (official code)."""
    return max(1, math.ceil(batch / base_batch))


@dataclass(frozen=True)
class Regime:
    """A step learning-rate regime counted in epochs.

    ``lr`` until ``warmup_epochs`` is reached linearly (0 = none), then × ``gamma`` at each
    epoch of ``milestones``; ``epochs`` in all.
    """

    epochs: int
    lr: float
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        if list(self.milestones) != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            raise ValueError(f"milestones must be positive and increasing, got {self.milestones}")

    def stretched(self, factor: int) -> "Regime":
        """Regime adaptation: epochs, every milestone and the warm-up × ``factor``."""
        return replace(self, epochs=self.epochs * factor,
                       milestones=tuple(m * factor for m in self.milestones),
                       warmup_epochs=self.warmup_epochs * factor)

    def fractions(self) -> list[float]:
        """Milestones as fractions of training (``TrainConfig`` reads values ≤ 1 that way,
        which removes its epoch/fraction ambiguity at 1); drops at or after the end never
        fire and are left out."""
        return [m / self.epochs for m in self.milestones if m < self.epochs]

    def first_drop_update(self, updates_per_epoch: int) -> int:
        """Update at which the LR first drops (the end of training if it never does)."""
        fr = self.fractions()
        total = self.epochs * updates_per_epoch
        return int(math.ceil(fr[0] * total)) if fr else total


def arm_regime(arm: str, base: Regime, small_batch: int, large_batch: int) -> tuple[int, Regime]:
    """Batch size and regime of an arm, from the small-batch regime ``base``."""
    spec = ARMS[arm_label(arm)]
    batch = large_batch if spec.large else small_batch
    regime = base
    if spec.lr_fix:
        regime = replace(regime, lr=sqrt_lr(regime.lr, batch, small_batch))
    if spec.regime_fix:
        regime = regime.stretched(regime_factor(batch, small_batch))
    return batch, regime


# -- distance from initialisation -------------------------------------------------------------


class WeightDistance:
    """Step callback for ``repro.train.fit``: ‖w_t − w_0‖ over all parameters.

    Logged after update t when ``t % every == 0`` and, so that the start is resolved on a
    log axis, when t is a power of two. w_0 is the model's parameters when the callback is
    built (build it before training). ``state_dict`` carries w_0 and the log, so a resumed
    run continues the same curve.

    Attributes: ``steps`` (update numbers) and ``dist`` (distances), same length.
    """

    def __init__(self, model: nn.Module, every: int = 50) -> None:
        if every < 1:
            raise ValueError(f"every must be ≥ 1, got {every}")
        self.every = int(every)
        self.w0 = [p.detach().clone() for p in model.parameters()]
        self.steps: list[int] = []
        self.dist: list[float] = []

    def due(self, step: int) -> bool:
        return step > 0 and (step % self.every == 0 or (step & (step - 1)) == 0)

    @torch.no_grad()
    def distance(self, model: nn.Module) -> float:
        """‖w − w_0‖₂ of the concatenation of all parameters."""
        sq = sum(float((p.detach().float() - p0.float()).pow(2).sum())
                 for p, p0 in zip(model.parameters(), self.w0))
        return math.sqrt(sq)

    def on_step(self, info: StepInfo) -> None:
        if self.due(info.step):
            self.steps.append(int(info.step))
            self.dist.append(self.distance(info.model))

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "steps": list(self.steps), "dist": list(self.dist),
                "w0": [w.cpu() for w in self.w0]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.every = int(state["every"])
        self.steps = [int(s) for s in state["steps"]]
        self.dist = [float(d) for d in state["dist"]]
        dev = self.w0[0].device if self.w0 else "cpu"
        self.w0 = [w.to(dev) for w in state["w0"]]


def _r2(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line y ≈ a + b·x: (a, b, R²)."""
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), r2


def log_fit(steps: Sequence[float], dist: Sequence[float], t_min: float = 1,
            t_max: float | None = None) -> dict[str, float]:
    """Test the paper's law ‖w_t − w_0‖ ≈ a + k·log t on a logged curve.

    Two straight-line fits of the distance over the updates ``t_min ≤ t ≤ t_max`` (the
    initial constant-LR phase): against ``log10 t`` (ultra-slow diffusion, the paper) and
    against ``√t`` (what a plain random walk would give). Both have two free parameters,
    so their R² compare fairly.

    Returns ``{"slope_per_decade": k (distance gained per 10× updates), "intercept",
    "r2_log", "r2_sqrt", "n", "t_min", "t_max"}``.
    """
    t = np.asarray(steps, dtype=np.float64)
    d = np.asarray(dist, dtype=np.float64)
    keep = (t >= t_min) & (t <= (t_max if t_max is not None else np.inf))
    t, d = t[keep], d[keep]
    if t.size < 3:
        raise ValueError(f"need ≥ 3 logged points in [{t_min}, {t_max}] for a fit, got {t.size}")
    a, k, r2_log = _r2(np.log10(t), d)
    _, _, r2_sqrt = _r2(np.sqrt(t), d)
    return {"slope_per_decade": k, "intercept": a, "r2_log": r2_log, "r2_sqrt": r2_sqrt,
            "n": int(t.size), "t_min": float(t.min()), "t_max": float(t.max())}


# -- one arm -----------------------------------------------------------------------------------


@dataclass
class GhostBNConfig(TrainingConfig):
    """One column of Table 1 (``column``) and the small-batch regime it starts from."""

    model: str = "c3"              # "c3" or a repro.models name with a norm_layer
    image_size: int = 32
    small_batch: int = 128         # b
    large_batch: int = 4096        # B
    ghost_size: int = 128
    epochs: int = 200              # of the small-batch regime
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (120.0, 180.0)  # small-batch epochs of the LR drops
    gamma: float = 0.1
    warmup_epochs: float = 60.0
    grad_clip_gbn: float = 5.0     # 0 = none
    dist_every: int = 50
    column: str = "SB"             # a key of ARMS (or its Table 1 name)

    def __post_init__(self) -> None:
        check_arms([self.column])
        self.column = arm_label(self.column)

    @property
    def base_regime(self) -> Regime:
        """The small-batch regime."""
        return Regime(epochs=int(self.epochs), lr=float(self.lr), milestones=tuple(float(m) for m in self.milestones),
                      gamma=float(self.gamma), warmup_epochs=float(self.warmup_epochs))


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, GhostBNConfig]]:
    """The chapter's arms, ``label → (arm name, config)``, one per entry of ``arms``."""
    check_arms(params["arms"])
    return {arm_label(a): (NAME, make_config(GhostBNConfig, params, column=arm_label(a))) for a in params["arms"]}


def build_model(name: str, num_classes: int, image_size: int, ghost_size: int | None) -> nn.Module:
    """``"c3"`` (``repro.models.c3``) or another ``repro.models`` name, with Ghost BN when
    ``ghost_size``.

    Every BatchNorm of the network becomes a Ghost BN (the official chunked forward splits
    the whole network's batch, the C3's 1-D BNs included).
    """
    norm = ghost_norm(ghost_size) if ghost_size else None
    if name == "c3":
        return models.create("c3", num_classes=num_classes, image_size=image_size, norm_layer=norm,
                             norm1d_layer=ghost_norm1d(ghost_size) if ghost_size else None)
    return models.create(name, num_classes=num_classes, **({"norm_layer": norm} if norm else {}))


@arm(NAME, family="training", config=GhostBNConfig)
def train_ghostbn(cfg: GhostBNConfig, data: Any, seed: int, checkpoint_dir: str | Path | None = None,
                  device: torch.device | str = "cpu") -> Job:
    """Large batch with the paper's fixes: one column of Table 1 (SB, LB, +√-LR, +Ghost BN,
    +regime adaptation) trained for one seed, evaluated after every epoch.

    Job metric: ``top1`` (final test top-1, %); model: the trained network. extra (JSON-friendly):
    ``column``, ``batch_size``, ``lr``, ``epochs``, ``milestones`` (fractions),
    ``warmup_epochs``, ``updates_per_epoch``, ``updates``, ``first_drop_update``,
    ``warmup_updates``, ``fit_start_update`` (window of the log-t test, see ``fit_start``),
    ``history`` (fit's per-epoch rows plus ``test_err``), ``dist_steps``, ``dist``,
    ``final_acc``, ``wall_s``.
    """
    spec = ARMS[cfg.column]
    device = torch.device(device)
    batch, regime = arm_regime(cfg.column, cfg.base_regime, cfg.small_batch, cfg.large_batch)
    ghost = cfg.ghost_size if spec.ghost else None
    torch.manual_seed(seed)  # same initial weights for every arm of a seed (BN and GBN alike)
    model = build_model(cfg.model, data.num_classes, cfg.image_size, ghost).to(device)
    distance = WeightDistance(model, every=cfg.dist_every)
    train = data.loader("train", batch, device, seed=seed)
    test = data.loader("test", 1000, device)
    clip = float(cfg.grad_clip_gbn) if spec.ghost and cfg.grad_clip_gbn > 0 else None
    tc = train_config(cfg, epochs=regime.epochs, optimizer="sgd", lr=regime.lr, schedule="step",
                      milestones=tuple(regime.fractions()), gamma=regime.gamma,
                      warmup_epochs=regime.warmup_epochs, grad_clip=clip, desc=f"{cfg.column} B={batch} seed {seed}")
    res = fit(model, train, test, tc, checkpoint_dir=checkpoint_dir, callbacks=[distance])
    history = [{**row, "test_err": 100.0 - row["test_acc"]} for row in res.history]
    final = float(res.history[-1]["test_acc"])
    extra = {
        "column": cfg.column, "batch_size": batch, "lr": regime.lr, "epochs": regime.epochs,
        "milestones": regime.fractions(), "warmup_epochs": regime.warmup_epochs,
        "updates_per_epoch": len(train), "updates": res.steps,
        "first_drop_update": regime.first_drop_update(len(train)),
        "warmup_updates": int(regime.warmup_epochs * len(train)),
        "fit_start_update": fit_start(int(regime.warmup_epochs * len(train)), float(cfg.momentum)),
        "history": history, "dist_steps": list(distance.steps), "dist": list(distance.dist),
        "final_acc": final, "wall_s": res.train_seconds,
    }
    return Job.from_fits([res], {"top1": final}, n_test=len(data.y_test), extra=extra, model=res.model)


def fit_start(warmup_updates: int, momentum: float) -> int:
    """First update of the window in which the log-t law is tested: after the LR warm-up
    and after the momentum transient, the ≈ 1/(1 − β) updates over which the heavy-ball
    velocity builds up (a ballistic start that neither a log t nor a √t law describes;
    1 without momentum)."""
    return max(1, int(warmup_updates), round(1.0 / (1.0 - momentum)) if momentum < 1 else 1)


def distance_fit(result: Mapping[str, Any], t_min: float | None = None) -> dict[str, float]:
    """``log_fit`` of one arm over its initial constant-LR phase: from ``fit_start_update``
    (or ``t_min``) to the first LR drop."""
    start = result.get("fit_start_update", max(1, result["warmup_updates"])) if t_min is None else t_min
    return log_fit(result["dist_steps"], result["dist"], t_min=start, t_max=result["first_drop_update"])


def seed_metrics(by_arm: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per-seed metrics that are not one arm's value, from the jobs of one seed (``label →``
    the job's extra): the log-t law of ‖w_t − w_0‖. The arms' final top-1 are the sweep's
    rows (metric ``top1``) and their differences the claims' paired rows.

    * ``dist_r2_log_<arm>``, ``dist_r2_sqrt_<arm>``, ``dist_slope_<arm>`` (distance per
      decade of updates): ``log_fit`` of ‖w_t − w_0‖ over the arm's initial phase
      (``distance_fit``); ``dist_log_vs_sqrt_lb`` = R²(log t) − R²(√t) for LB (> 0: the log
      law fits better), and ``dist_log_vs_sqrt_lb_from1`` the same from update 1.
    """
    out: dict[str, float] = {}
    for a, r in by_arm.items():
        try:
            f = distance_fit(r)
        except ValueError:  # too few points in the initial phase (tiny smoke runs)
            continue
        k = metric_key(a)
        out[f"dist_r2_log_{k}"] = f["r2_log"]
        out[f"dist_r2_sqrt_{k}"] = f["r2_sqrt"]
        out[f"dist_slope_{k}"] = f["slope_per_decade"]
    if "dist_r2_log_lb" in out:
        out["dist_log_vs_sqrt_lb"] = out["dist_r2_log_lb"] - out["dist_r2_sqrt_lb"]
        try:  # the same comparison with the momentum transient included (for transparency)
            f = distance_fit(by_arm["LB"], t_min=1)
            out["dist_log_vs_sqrt_lb_from1"] = f["r2_log"] - f["r2_sqrt"]
        except ValueError:
            pass
    return out



# -- chapter glue (at the level of the sweep) ---------------------------------------------------


def runs(result: SweepResult) -> dict[str, list[dict[str, Any]]]:
    """``label → one dict per seed`` (the job's extra plus ``seed`` and ``model``, if kept), in
    the sweep's arm order, for figures, tables and the landscape."""
    out: dict[str, list[dict[str, Any]]] = {}
    for j in result.jobs:
        out.setdefault(j["arm"], []).append({**j["extra"], "arm": j["arm"], "seed": j["seed"],
                                             "model": j.get("model")})
    return out


def metrics_by_seed(result: SweepResult) -> dict[int, dict[str, float]]:
    """Each seed's :func:`seed_metrics` (``run.log_seeds`` logs them)."""
    by_seed: dict[int, dict[str, Any]] = {}
    for j in result.jobs:
        by_seed.setdefault(j["seed"], {})[j["arm"]] = j["extra"]
    return {seed: seed_metrics(by_arm) for seed, by_arm in by_seed.items()}


# -- loss landscape ------------------------------------------------------------------------------


def landscape_curves(results: Mapping[str, Sequence[Mapping[str, Any]]], data: Any, alphas: Sequence[float],
                     n_samples: int, device: torch.device | str = "cpu",
                     targets: Sequence[str] = ("LB", "LB_LR_GBN_RA")) -> dict[str, dict[str, Any]]:
    """Interpolations from the first seed's SB model to the same seed's ``targets`` models
    (those that were trained): ``{"SB → LB": {"train": r, "test": r}, …}`` with ``r`` an
    ``interpolate_1d`` result on ``n_samples`` train / test images. The models of one seed
    share their initial weights, so the line joins two solutions of one start. At every α the
    BN running statistics are re-estimated on the training subset (``bn_batches``): lerped
    running variances blow up beyond α = 1. A dry run evaluates 3 α values on one batch each."""
    if "SB" not in results:
        return {}
    alphas = dry_points(alphas)
    train_b = subset_batches(data, "train", n_samples, device)
    test_b = subset_batches(data, "test", n_samples, device)
    sb = results["SB"][0]["model"]
    return {f"SB → {LABELS[t]}": interpolate_1d(sb, results[t][0]["model"], {"train": train_b, "test": test_b},
                                                 alphas, bn_batches=train_b)
            for t in targets if t in results}
