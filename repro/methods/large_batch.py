"""Large-batch training without a generalisation gap (Hoffer, Hubara & Soudry 2017).

The paper's argument: a large batch B trained for the same number of *epochs* as a small
batch b takes B/b times fewer *updates*, and the weights, which drift from their
initialisation only like ‖w_t − w_0‖ ∝ log t ("ultra-slow diffusion"), do not get far
enough. Three fixes, tested here as cumulative arms (Table 1 of the paper):

=================  ========  =====================================  ====================
arm                batch     learning rate                          epochs / milestones
=================  ========  =====================================  ====================
``SB``             b         lr                                     E, m
``LB``             B         lr                                     E, m
``LB+LR``          B         lr · √(B/b)                            E, m
``LB+LR+GBN``      B         lr · √(B/b), Ghost BN over groups of b  E, m
``LB+LR+GBN+RA``   B         lr · √(B/b), Ghost BN                  ⌈B/b⌉·E, ⌈B/b⌉·m
=================  ========  =====================================  ====================

* √-scaling keeps the covariance of the weight update (lr² × gradient variance ∝ lr²/B)
  equal to small-batch training (``sqrt_lr``);
* Ghost BN (``repro.layers.ghost_bn``) normalises inside groups of ``ghost_size`` samples;
  as in the official ``main_gbn.py`` the GBN arms clip the gradient norm (at 5);
* regime adaptation multiplies the number of epochs and every epoch of the LR schedule
  (warm-up end, each drop) by ⌈B/b⌉, so the large batch takes as many updates as the small
  one (``Regime.stretched``).

``WeightDistance`` logs ‖w_t − w_0‖ (all parameters) during training, ``log_fit`` tests
the log-t law on it, ``run_arm`` trains one arm through ``repro.train.fit`` (resumable),
``seed_metrics`` turns one seed's arms into the chapter's per-seed claim metrics, and the
``plot_*`` functions draw the chapter's figures in the book's style.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.ghost_bn import ghost_norm, ghost_norm1d
from ..train import WORK, StepInfo, TrainConfig, dry_run, fit

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
    "LB+LR": ArmSpec(large=True, lr_fix=True, ghost=False, regime_fix=False),
    "LB+LR+GBN": ArmSpec(large=True, lr_fix=True, ghost=True, regime_fix=False),
    "LB+LR+GBN+RA": ArmSpec(large=True, lr_fix=True, ghost=True, regime_fix=True),
}
# Short labels for figures (Table 1's column names).
LABELS: dict[str, str] = {"SB": "SB", "LB": "LB", "LB+LR": "+LR", "LB+LR+GBN": "+GBN",
                          "LB+LR+GBN+RA": "+RA"}


def metric_key(arm: str) -> str:
    """``"LB+LR+GBN"`` → ``"lb_lr_gbn"`` (metric names: ``acc_lb_lr_gbn``…)."""
    return arm.lower().replace("+", "_")


def check_arms(arms: Sequence[str]) -> None:
    """Fail early on an unknown arm name."""
    unknown = [a for a in arms if a not in ARMS]
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
    spec = ARMS[arm]
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


# -- models ----------------------------------------------------------------------------------


class C3(nn.Module):
    """The paper's shallow CIFAR-100 network "C3" (the official ``cifar100_shallow``).

    Two conv5×5(64) → max-pool 3/2 → BN → ReLU stages, then FC 384 → BN → ReLU → dropout,
    FC 192 → BN → ReLU → dropout, FC classes. ``features(x)``: ``[B, 3, S, S] → [B, 64·s·s]``
    (s = 7 at S = 32); ``head`` is the classifier; ``dropout`` is the identity (the two
    dropouts sit inside ``head``), which keeps the package's features/head convention.
    """

    def __init__(self, num_classes: int = 100, image_size: int = 32, drop_rate: float = 0.5,
                 norm_layer: Any = None, norm1d_layer: Any = None) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        norm1d_layer = norm1d_layer or nn.BatchNorm1d
        s = image_size
        for _ in range(2):
            s = (s - 3) // 2 + 1  # max-pool 3, stride 2, no padding
        if s < 1:
            raise ValueError(f"C3 needs images of at least 7 px, got {image_size}")
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 64, 5, padding=2, bias=False), nn.MaxPool2d(3, 2), norm_layer(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 5, padding=2, bias=False), nn.MaxPool2d(3, 2), norm_layer(64), nn.ReLU(inplace=True),
        )
        self.num_features = 64 * s * s
        self.dropout = nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(self.num_features, 384, bias=False), norm1d_layer(384), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(384, 192, bias=False), norm1d_layer(192), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(192, num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] → flattened conv features [B, 64·s·s]."""
        return torch.flatten(self.trunk(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] → logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def build_model(name: str, num_classes: int, image_size: int, ghost_size: int | None) -> nn.Module:
    """``"c3"`` (this module) or a ``repro.models`` name, with Ghost BN when ``ghost_size``.

    Every BatchNorm of the network becomes a Ghost BN (the official chunked forward splits
    the whole network's batch, the C3's 1-D BNs included).
    """
    norm = ghost_norm(ghost_size) if ghost_size else None
    if name == "c3":
        return C3(num_classes, image_size, norm_layer=norm,
                  norm1d_layer=ghost_norm1d(ghost_size) if ghost_size else None)
    from .. import models

    return models.create(name, num_classes=num_classes, **({"norm_layer": norm} if norm else {}))


# -- one arm -----------------------------------------------------------------------------------


def base_regime(params: Mapping[str, Any]) -> Regime:
    """The small-batch regime of the chapter's parameters."""
    return Regime(epochs=int(params["epochs"]), lr=float(params["lr"]),
                  milestones=tuple(float(m) for m in params["milestones"]),
                  gamma=float(params["gamma"]), warmup_epochs=float(params["warmup_epochs"]))


def run_arm(arm: str, data: Any, params: Mapping[str, Any], seed: int,
            checkpoint_dir: str | Path | None = None, device: torch.device | str = "cpu",
            progress: bool = True) -> dict[str, Any]:
    """Build and train one arm for one seed; evaluate after every epoch.

    data: a ``repro.data.Dataset``. params: ``model``, ``image_size``, ``small_batch``,
    ``large_batch``, ``ghost_size``, ``epochs``, ``lr``, ``momentum``, ``weight_decay``,
    ``milestones`` (epochs of the small-batch regime), ``gamma``, ``warmup_epochs``,
    ``grad_clip_gbn`` (0 = none), ``dist_every``. checkpoint_dir: fit's resume folder (a
    finished arm is loaded, not retrained).

    Returns ``{"arm", "seed", "batch_size", "lr", "epochs", "milestones" (fractions),
    "updates_per_epoch", "updates", "first_drop_update", "warmup_updates", "fit_start_update"
    (window of the log-t test, see ``fit_start``), "history" (fit's per-epoch rows plus
    ``test_err``), "dist_steps", "dist", "final_acc", "wall_s", "model"}`` — everything
    but ``model`` is JSON-friendly.
    """
    check_arms([arm])
    spec = ARMS[arm]
    device = torch.device(device)
    batch, regime = arm_regime(arm, base_regime(params), int(params["small_batch"]),
                               int(params["large_batch"]))
    ghost = int(params["ghost_size"]) if spec.ghost else None
    torch.manual_seed(seed)  # same initial weights for every arm of a seed (BN and GBN alike)
    model = build_model(params["model"], data.num_classes, int(params["image_size"]), ghost).to(device)
    distance = WeightDistance(model, every=int(params["dist_every"]))
    train = data.loader("train", batch, device, seed=seed)
    test = data.loader("test", 1000, device)
    clip = float(params["grad_clip_gbn"]) if spec.ghost and params["grad_clip_gbn"] > 0 else None
    cfg = TrainConfig(epochs=regime.epochs, optimizer="sgd", lr=regime.lr, momentum=float(params["momentum"]),
                      weight_decay=float(params["weight_decay"]), schedule="step",
                      milestones=tuple(regime.fractions()), gamma=regime.gamma,
                      warmup_epochs=regime.warmup_epochs, grad_clip=clip, progress=progress,
                      desc=f"{arm} B={batch} seed {seed}")
    res = fit(model, train, test, cfg, checkpoint_dir=checkpoint_dir, callbacks=[distance])
    history = [{**row, "test_err": 100.0 - row["test_acc"]} for row in res.history]
    return {
        "arm": arm, "seed": int(seed), "batch_size": batch, "lr": regime.lr, "epochs": regime.epochs,
        "milestones": regime.fractions(), "warmup_epochs": regime.warmup_epochs,
        "updates_per_epoch": len(train), "updates": res.steps,
        "first_drop_update": regime.first_drop_update(len(train)),
        "warmup_updates": int(regime.warmup_epochs * len(train)),
        "fit_start_update": fit_start(int(regime.warmup_epochs * len(train)), float(params["momentum"])),
        "history": history, "dist_steps": list(distance.steps), "dist": list(distance.dist),
        "final_acc": float(res.history[-1]["test_acc"]), "wall_s": res.train_seconds, "model": res.model,
    }


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
    """Per-seed metrics from the arms of one seed (``arm → run_arm result``); in points
    of test top-1 unless said otherwise. Metrics whose arms are missing are left out.

    * ``acc_<arm>``: final test top-1 of each arm (``acc_sb``, ``acc_lb_lr_gbn``…);
    * ``gap_lb`` = acc(SB) − acc(LB): the generalisation gap the paper sets out to close;
    * ``lr_gain`` = acc(LB+LR) − acc(LB); ``gbn_gain`` = acc(LB+LR+GBN) − acc(LB+LR);
      ``ra_gain`` = acc(LB+LR+GBN+RA) − acc(LB+LR+GBN);
    * ``ra_minus_sb`` = acc(LB+LR+GBN+RA) − acc(SB): ≥ 0 when the fixes close the gap;
    * ``dist_r2_log_<arm>``, ``dist_r2_sqrt_<arm>``, ``dist_slope_<arm>`` (distance per
      decade of updates): ``log_fit`` of ‖w_t − w_0‖ over the arm's initial phase
      (``distance_fit``); ``dist_log_vs_sqrt_lb`` = R²(log t) − R²(√t) for LB (> 0: the log
      law fits better), and ``dist_log_vs_sqrt_lb_from1`` the same from update 1.
    """
    acc = {a: float(r["final_acc"]) for a, r in by_arm.items()}
    out: dict[str, float] = {f"acc_{metric_key(a)}": v for a, v in acc.items()}

    def diff(name: str, a: str, b: str) -> None:
        if a in acc and b in acc:
            out[name] = acc[a] - acc[b]

    diff("gap_lb", "SB", "LB")
    diff("lr_gain", "LB+LR", "LB")
    diff("gbn_gain", "LB+LR+GBN", "LB+LR")
    diff("ra_gain", "LB+LR+GBN+RA", "LB+LR+GBN")
    diff("ra_minus_sb", "LB+LR+GBN+RA", "SB")
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


def summary(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """JSON-friendly record of all arms (for ``run.note``): the models are dropped."""
    return {arm: [{k: v for k, v in r.items() if k != "model"} for r in runs]
            for arm, runs in results.items()}


def summary_table(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One line per arm: batch, lr, epochs, updates, final top-1 per seed and mean."""
    lines = [f"{'arm':<14} {'batch':>5} {'lr':>8} {'epochs':>6} {'updates':>7}  top-1 per seed (mean)"]
    for arm, runs in results.items():
        r0 = runs[0]
        accs = [r["final_acc"] for r in runs]
        lines.append(f"{arm:<14} {r0['batch_size']:>5} {r0['lr']:>8.4g} {r0['epochs']:>6} {r0['updates']:>7}  "
                     + ", ".join(f"{a:.2f}" for a in accs) + f"  ({np.mean(accs):.2f})")
    return "\n".join(lines)


# -- loss landscape ------------------------------------------------------------------------------


def landscape_batches(data: Any, split: str, n: int, device: torch.device | str,
                      batch_size: int = 1000) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, un-augmented subset of ``n`` images of ``split`` (the first ``n`` of a
    seeded permutation; ``n ≤ 0`` = all) as a list of ``(x, y)`` batches (one batch in a dry
    run, as every evaluation there)."""
    from ..data.loader import TensorLoader

    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = idx[: n] if n > 0 else idx
    if dry_run():
        idx = idx[:batch_size]
    return list(TensorLoader(x[idx], y[idx], batch_size, device, train=False))  # no shuffle/augment


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of ``model`` (in place) as the exact
    average over ``batches``, then put the model in eval mode.

    Only the norm layers run in training mode (dropout stays off); a Ghost BN does so by
    ghost batches, as it would in training.
    """
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
        m.train()
    dev = next(model.parameters()).device
    for x, _ in itertools.islice(batches, 1 if dry_run() else None):  # a dry run: one batch
        model(x.to(dev))
        WORK["eval_batches"] += 1
    for m, mom in zip(norms, saved):
        m.momentum = mom
    return model.eval()


@torch.no_grad()
def _loss_acc(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Sample-weighted mean cross-entropy and top-1 (%) in eval mode."""
    dev = next(model.parameters()).device
    loss, correct, n = 0.0, 0, 0
    for x, y in itertools.islice(batches, 1 if dry_run() else None):  # a dry run: one batch
        x, y = x.to(dev), y.to(dev)
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += int(y.numel())
        WORK["eval_batches"] += 1
    return loss / n, 100.0 * correct / n


def interpolation(model_a: nn.Module, model_b: nn.Module, data: Any, alphas: Sequence[float],
                  n_samples: int, device: torch.device | str = "cpu",
                  bn: str = "recalibrate") -> dict[str, dict[str, Any]]:
    """Loss and top-1 along θ(α) = (1 − α)·θ_a + α·θ_b on a training and a test subset.

    bn="recalibrate" (default): at every α the BN running statistics are re-estimated on
    the training subset before evaluating. The statistics stored with θ_a and θ_b describe
    the activations of those weights only; interpolating them linearly, as
    ``repro.plots.landscape.interpolate_1d`` does (bn="interpolate"), is harmless between
    the ends but breaks down outside [0, 1], where an extrapolated running variance can
    reach zero and the loss explodes for a reason that has nothing to do with the landscape.

    Returns ``{"train": r, "test": r}`` with ``r = {"alpha", "loss", "acc", "n_samples", "bn"}``
    (the format of ``interpolate_1d``). A dry run evaluates 3 α values on one batch each.
    """
    from ..plots.landscape import dry_points

    alphas = dry_points(alphas)  # a dry run: 3 of them
    train_b = landscape_batches(data, "train", n_samples, device)
    test_b = landscape_batches(data, "test", n_samples, device)
    if bn == "interpolate":
        from ..plots.landscape import interpolate_1d

        return {split: {**interpolate_1d(model_a, model_b, b, alphas), "bn": bn}
                for split, b in (("train", train_b), ("test", test_b))}
    if bn != "recalibrate":
        raise ValueError(f"bn must be 'recalibrate' or 'interpolate', not {bn!r}")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    work = copy.deepcopy(model_a)
    out = {s: {"alpha": [float(a) for a in alphas], "loss": [], "acc": [], "bn": bn,
               "n_samples": sum(int(y.numel()) for _, y in b)} for s, b in (("train", train_b), ("test", test_b))}
    for a in alphas:
        work.load_state_dict({k: torch.lerp(v.float(), sb[k].to(v.device).float(), float(a)).to(v.dtype)
                              if v.is_floating_point() else v for k, v in sa.items()})
        recalibrate_bn(work, train_b)
        for split, b in (("train", train_b), ("test", test_b)):
            loss, acc = _loss_acc(work, b)
            out[split]["loss"].append(loss)
            out[split]["acc"].append(acc)
    return out


def landscape_curves(results: Mapping[str, Sequence[Mapping[str, Any]]], data: Any, alphas: Sequence[float],
                     n_samples: int, device: torch.device | str = "cpu",
                     targets: Sequence[str] = ("LB", "LB+LR+GBN+RA")) -> dict[str, dict[str, Any]]:
    """Interpolations from the first seed's SB model to the same seed's ``targets`` models
    (those that were trained): ``{"SB → LB": {"train": …, "test": …}, …}``. The models of
    one seed share their initial weights, so the line joins two solutions of one start."""
    if "SB" not in results:
        return {}
    sb = results["SB"][0]["model"]
    return {f"SB → {LABELS[t]}": interpolation(sb, results[t][0]["model"], data, alphas, n_samples, device)
            for t in targets if t in results}


def plot_interpolation(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], setting: str):
    """Loss (log scale) and accuracy along θ(α) = (1 − α)·θ_SB + α·θ_other.

    curves: ``label → {"train": interpolate_1d result, "test": ...}``; solid = train,
    dashed = test, one colour per endpoint model.
    """
    from ..plots.style import annotate_setting, new_figure

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


# -- figures ---------------------------------------------------------------------------------------


def _series(runs: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """x shared by the seeds (their logs have the same grid) and y stacked [seeds, points]."""
    n = min(len(r[x]) for r in runs)
    return np.asarray(runs[0][x][:n], dtype=float), np.asarray([r[y][:n] for r in runs], dtype=float)


def plot_distance_and_accuracy(results: Mapping[str, Sequence[Mapping[str, Any]]], setting: str,
                               fit_arm: str = "LB"):
    """Key figure. Left: ‖w_t − w_0‖ against the number of updates on a log axis, one line
    per arm (mean over seeds, band = min–max), with the log-t fit of ``fit_arm`` over its
    initial phase (dashed, black). Right: final test top-1 per arm, bars = mean, dots = seeds."""
    from ..plots.style import annotate_setting, new_figure

    fig, (ax_d, ax_b) = new_figure(ncols=2, width=9.4, height=3.6, gridspec_kw={"width_ratios": [1.5, 1]})
    data: dict[str, Any] = {"distance": {}, "accuracy": {}, "band": "min-max over seeds", "setting": setting}
    for i, (arm, runs) in enumerate(results.items()):
        color = f"C{i % 10}"
        x, y = _series(runs, "dist_steps", "dist")
        if x.size:
            ax_d.plot(x, y.mean(0), color=color, label=f"{LABELS[arm]} (B={runs[0]['batch_size']})")
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
                      label=f"{LABELS[fit_arm]}: a + k·log t fit (R² {r2:.3f})")
            data["fit"] = {"arm": fit_arm, "intercept": a, "slope_per_decade": k, "r2_log": float(r2),
                           "t_min": fits[0]["t_min"], "t_max": fits[0]["t_max"]}
    ax_d.set_xscale("log")
    ax_d.set_xlabel("number of updates (log scale)")
    ax_d.set_ylabel(r"$\|w_t - w_0\|_2$ (all parameters)")
    ax_d.set_title("Distance from initialisation (▼ = first LR drop)")
    ax_d.legend(fontsize=7)
    ax_b.set_xticks(range(len(results)), [LABELS[a] for a in results])
    ax_b.set_ylabel("final test top-1 (%)")
    ax_b.set_title("Final accuracy (bars: mean, dots: seeds)")
    ax_b.grid(axis="x", visible=False)
    lo = min(min(v["per_seed"]) for v in data["accuracy"].values())
    hi = max(max(v["per_seed"]) for v in data["accuracy"].values())
    ax_b.set_ylim(max(0.0, lo - 0.25 * (hi - lo + 1) - 2), hi + 0.15 * (hi - lo + 1) + 1)
    annotate_setting(fig, setting)
    return fig, data


def plot_error_vs_updates(results: Mapping[str, Sequence[Mapping[str, Any]]], arms: Sequence[str],
                          setting: str):
    """Test error (%) against the number of updates for ``arms`` (mean over seeds, band =
    min–max; evaluations after every epoch). With regime adaptation the large batch takes as
    many updates as the small one, and its curve should end where SB's ends."""
    from ..plots.style import annotate_setting, new_figure

    fig, ax = new_figure(width=5.6, height=3.6)
    data: dict[str, Any] = {"series": {}, "band": "min-max over seeds", "setting": setting}
    for i, arm in enumerate(results):
        if arm not in arms:
            continue
        runs = results[arm]
        color = f"C{i % 10}"
        hx = [{"step": [h["step"] for h in r["history"]], "err": [h["test_err"] for h in r["history"]]}
              for r in runs]
        x, y = _series(hx, "step", "err")
        ax.plot(x, y.mean(0), color=color, marker="o", markersize=3,
                label=f"{LABELS[arm]} (B={runs[0]['batch_size']}, {runs[0]['epochs']} ep)")
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
