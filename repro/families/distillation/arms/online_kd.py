"""Online distillation: teacher and student trained together from scratch, one step updating both.

``repro.layers.distillation.OnlinePair`` holds the two networks; its ``forward`` is the
student's, so the trainer's evaluation measures the student, and the teacher's accuracy is added
to each epoch's history (``teacher_acc``). Arms:

* ``dml`` (Zhang et al., 2018): student CE + τ²·KL(p_T ‖ p_S); teacher CE + τ²·KL(p_S ‖ p_T).
* ``bdkd`` (Amara et al., 2022): student CE + per-sample w_F·KL(p_T ‖ p_S) + w_R·KL(p_S ‖ p_T)
  (``bdkd_student_loss``; the entropy-gap weighting is our assumption, see chapter 37); teacher
  CE + τ²·KL(p_T ‖ p_S), the reverse-KL regulariser seen from the teacher.

Both arms keep a ``BalanceLog`` of the entropy gap H(p_S) − H(p_T) seen by the loss: the
per-step mean, the mean reverse-KL weight w_R (for DML the weight BD-KD *would* give; it is
not applied), and per-epoch histograms of the per-sample gap. It is a trainer callback with a
state, so it survives a resume; the arm's ``FitResult.extra["balance"]`` holds its export.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .... import models
from ....arms import arm
from ....layers.distillation import OnlinePair
from ....losses import distillation as D
from ....train import FitResult, evaluate
from ..protocol import DistillConfig, StudentSetup, check_pair, fit_model


class BalanceLog:
    """What the loss saw of the entropy gap H_S − H_T, step by step and sample by sample.

    ``gap`` / ``w_reverse``: per-step batch means of the gap and of w_R. With ``bound`` set,
    ``hist[epoch]`` counts the per-sample gaps of that epoch in ``bins`` equal bins on
    [−bound, bound] (values outside are clipped into the end bins); the gap of C-class
    distributions lies in [−ln C, ln C], the natural bound.
    """

    def __init__(self, bound: float | None = None, bins: int = 400) -> None:
        if bound is not None and not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"BalanceLog bound must be a positive number, got {bound}")
        self.bound, self.bins = bound, int(bins)
        self.gap: list[float] = []
        self.w_reverse: list[float] = []
        self.hist: dict[int, list[int]] = {}
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def stage(self, gap: torch.Tensor, w_r: torch.Tensor) -> None:
        """Keep this batch's per-sample gaps and weights until the trainer reports the step."""
        gap, w_r = gap.detach(), w_r.detach()
        counts = None
        if self.bound is not None:
            # clamp first: histc drops values outside [min, max], we want them in the end bins
            counts = torch.histc(gap.float().clamp(-self.bound, self.bound), self.bins, -self.bound, self.bound)
        self._pending = (gap.mean(), w_r.mean(), counts)

    def on_step(self, info) -> None:
        """Trainer callback: commit the staged batch (one sync per step)."""
        if self._pending is None:
            return
        g, w, counts = self._pending
        self.gap.append(float(g))
        self.w_reverse.append(float(w))
        if counts is not None:
            epoch = int(getattr(info, "epoch", 0) or 0)
            row = self.hist.setdefault(epoch, [0] * self.bins)
            for i, c in enumerate(counts.round().long().tolist()):
                row[i] += c
        self._pending = None

    def edges(self) -> list[float]:
        """Bin edges of the histograms (empty without a bound)."""
        if self.bound is None:
            return []
        return np.linspace(-self.bound, self.bound, self.bins + 1).tolist()

    def state_dict(self) -> dict:
        return {"gap": self.gap, "w_reverse": self.w_reverse, "bound": self.bound, "bins": self.bins,
                "hist": {str(k): v for k, v in self.hist.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.gap, self.w_reverse = list(state["gap"]), list(state["w_reverse"])
        self.bound, self.bins = state.get("bound", self.bound), int(state.get("bins", self.bins))
        self.hist = {int(k): list(v) for k, v in state.get("hist", {}).items()}

    def export(self, max_epochs: int = 5) -> dict[str, Any]:
        """The log for a result: per-step series, bin edges and the histograms of at most
        ``max_epochs`` epochs (first, last and evenly spaced between) to keep records small."""
        epochs = sorted(self.hist)
        if len(epochs) > max_epochs:
            pick = np.unique(np.linspace(0, len(epochs) - 1, max_epochs).round().astype(int))
            epochs = [epochs[i] for i in pick]
        return {"gap": list(self.gap), "w_reverse": list(self.w_reverse), "edges": self.edges(),
                "hist": {str(e): self.hist[e] for e in epochs}}


def check_kappa(kappa: float, hard: bool = False) -> None:
    """κ must be a positive finite number (κ → ∞ is the ``hard`` switch, asked for by name)."""
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not (kappa > 0 and math.isfinite(kappa)):
        raise ValueError(f"bdkd kappa must be a positive finite number, got {kappa!r} "
                         "(use hard=True for the step-function limit)")
    if not isinstance(hard, bool):
        raise ValueError(f"bdkd hard must be True or False, got {hard!r}")


def _pair(setup: StudentSetup) -> OnlinePair:
    if not setup.teacher_arch:
        raise ValueError("online distillation needs setup.teacher_arch (the architecture trained alongside)")
    torch.manual_seed(setup.seed + 10_000)  # the teacher's own initialisation, fixed per seed
    teacher = models.create(setup.teacher_arch, num_classes=setup.num_classes, **setup.teacher_kwargs)
    student = setup.new_student()
    check_pair(teacher, student, setup.train.images.shape[-1])
    return OnlinePair(teacher, student)


Term = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def online_loss(student_term: Term, teacher_term: Term):
    """The pair's loss_fn: [CE(s, y) + student_term(s, t̂)] + [CE(t, y) + teacher_term(t, ŝ)].

    A hat marks a detached partner, so each network's gradient comes from its own bracket
    only; returns the student's logits (what the trainer scores)."""
    def loss_fn(m: OnlinePair, x: torch.Tensor, y: torch.Tensor):
        t, s = m.teacher(x).float(), m.student(x).float()
        loss_s = F.cross_entropy(s, y) + student_term(s, t.detach())
        loss_t = F.cross_entropy(t, y) + teacher_term(t, s.detach())
        return loss_s + loss_t, s
    return loss_fn


def _online(setup: StudentSetup, tag: str, terms: tuple[Term, Term], log: BalanceLog) -> FitResult:
    pair = _pair(setup)
    log.bound = math.log(setup.num_classes)

    def teacher_acc(m: OnlinePair) -> dict[str, float]:
        return {"teacher_acc": evaluate(m.teacher, setup.test)["acc"]}

    res = fit_model(setup, pair, online_loss(*terms), tag, callbacks=[log], extra_eval=teacher_acc)
    res.extra["balance"] = log.export()
    return res


def _stage_balance(log: BalanceLog | None, s: torch.Tensor, t: torch.Tensor, T: float, kappa: float,
                   hard: bool) -> None:
    if log is None:
        return
    with torch.no_grad():
        gap = D.entropy(s, T) - D.entropy(t, T)
        log.stage(gap, D.bdkd_weights(s, t, kappa, hard, T)[1])


def dml_terms(temperature: float, log: BalanceLog | None = None) -> tuple[Term, Term]:
    """(student term τ²·KL(p_T‖p_S), teacher term τ²·KL(p_S‖p_T)). ``log`` records the gap and
    the w_R that BD-KD's default rule (κ = 5) would assign; DML does not apply it."""
    T = temperature

    def student_term(s, t):
        _stage_balance(log, s, t, T, 5.0, False)
        return T * T * D.kl_div(t, s, T)

    return student_term, lambda t, s: T * T * D.kl_div(s, t, T)


def bdkd_terms(temperature: float, kappa: float, hard: bool, log: BalanceLog | None = None) -> tuple[Term, Term]:
    """(student term ``bdkd_student_loss``, teacher term τ²·KL(p_T‖p_S))."""
    check_kappa(kappa, hard)
    T = temperature

    def student_term(s, t):
        _stage_balance(log, s, t, T, kappa, hard)
        return D.bdkd_student_loss(s, t, T, kappa, hard)

    return student_term, lambda t, s: T * T * D.kl_div(t, s, T)


@dataclass(frozen=True)
class DMLConfig(DistillConfig):
    """DML's τ of both KL terms (with the τ² factor)."""

    temperature: float = 3.0

    def __post_init__(self) -> None:
        D.check_temperature("temperature", self.temperature)


@arm("dml", family="distillation", config=DMLConfig)
def dml_arm(setup: StudentSetup, cfg: DMLConfig) -> FitResult:
    """Deep mutual learning: each network distils from the other (forward KL for the student)."""
    log = BalanceLog()
    return _online(setup, "dml", dml_terms(cfg.temperature, log), log)


@dataclass(frozen=True)
class BDKDConfig(DistillConfig):
    """BD-KD's τ, the steepness κ of w_R = sigmoid(κ·(H_S − H_T)) (our assumption) and the
    hard switch (the κ → ∞ limit)."""

    temperature: float = 3.0
    kappa: float = 5.0
    hard: bool = False

    def __post_init__(self) -> None:
        D.check_temperature("temperature", self.temperature)
        check_kappa(self.kappa, self.hard)


@arm("bdkd", family="distillation", config=BDKDConfig)
def bdkd_arm(setup: StudentSetup, cfg: BDKDConfig) -> FitResult:
    """BD-KD: entropy-gap-balanced forward/reverse KL for the student; reverse KL for the teacher."""
    log = BalanceLog()
    terms = bdkd_terms(cfg.temperature, cfg.kappa, cfg.hard, log)
    return _online(setup, "bdkd-hard" if cfg.hard else f"bdkd-k{cfg.kappa:g}", terms, log)


# --------------------------------------------------------------------------- chapter 37's plan
def bdkd_plan(temperature: float, kappa: float, with_hard: bool = False, kappa_ablation: Sequence[float] = (),
              params: Mapping[str, Any] | None = None) -> tuple[dict[str, tuple[str, DistillConfig]], dict[str, str]]:
    """Chapter 37's arms — CE, DML, BD-KD (κ), optionally the hard switch and BD-KD at other κ —
    with their configs (protocol fields from ``params``), and each label's display name.
    Every value is checked here, before any training."""
    from ....arms import make_config

    if not isinstance(with_hard, bool):
        raise ValueError(f"with_hard must be True or False, got {with_hard!r}")
    check_kappa(kappa)
    extra = list(kappa_ablation)
    for k in extra:
        check_kappa(k)
    if len(set(extra)) != len(extra) or kappa in extra:
        raise ValueError(f"kappa_ablation must list distinct values other than kappa={kappa}: {extra}")
    arms: dict[str, tuple[str, DistillConfig]] = {
        "ce": ("ce", make_config(DistillConfig, params)),
        "dml": ("dml", make_config(DMLConfig, params, temperature=temperature)),
        "bdkd": ("bdkd", make_config(BDKDConfig, params, temperature=temperature, kappa=kappa, hard=False))}
    names = {"ce": "CE", "dml": "DML", "bdkd": "BD-KD"}
    if with_hard:
        arms["bdkd_hard"] = ("bdkd", make_config(BDKDConfig, params, temperature=temperature, kappa=kappa, hard=True))
        names["bdkd_hard"] = "BD-KD hard"
    for k in extra:
        label = f"bdkd_kappa{float(k):g}".replace(".", "_")
        arms[label] = ("bdkd", make_config(BDKDConfig, params, temperature=temperature, kappa=float(k), hard=False))
        names[label] = f"BD-KD κ={k:g}"
    return arms, names


def teacher_metrics(model: nn.Module, test) -> dict[str, float]:
    """An online pair's teacher, evaluated like the student (``teacher_top1``, ``teacher_ece``…);
    nothing for other models. For ``protocol.jobs(..., metrics=teacher_metrics)``."""
    from ..protocol import evaluate_student

    if not isinstance(model, OnlinePair):
        return {}
    return {f"teacher_{k}": v for k, v in evaluate_student(model.teacher, test).items()}


def record_results(jobs: list[dict[str, Any]], max_points: int = 400) -> list[dict[str, Any]]:
    """A sweep's jobs (``SweepResult.jsonable()``) for the record: per-step balance series averaged
    down to at most ``max_points`` points (a paper-tier run has ~10⁵ steps)."""
    out = []
    for r in jobs:
        bal = r.get("extra", {}).get("balance")
        if bal is not None:
            bal = {**bal, "gap": _coarsen(bal["gap"], max_points), "w_reverse": _coarsen(bal["w_reverse"], max_points),
                   "steps_per_point": max(1, math.ceil(len(bal["gap"]) / max_points))}
            r = {**r, "extra": {**r["extra"], "balance": bal}}
        out.append(r)
    return out


def _coarsen(values: Sequence[float], max_points: int) -> list[float]:
    """Means of consecutive chunks so that at most ``max_points`` remain."""
    v = np.asarray(values, dtype=float)
    k = max(1, math.ceil(v.size / max_points))
    n = v.size // k * k
    head = v[:n].reshape(-1, k).mean(1).tolist() if n else []
    return head + ([float(v[n:].mean())] if n < v.size else [])
