"""Online distillation: teacher and student trained together from scratch, one step updating both.

``OnlinePair`` holds the two networks; its ``forward`` is the student's, so the trainer's
evaluation measures the student, and the teacher's accuracy is added to each epoch's history
(``teacher_acc``). Arms:

* ``dml`` (Zhang et al., 2018): student CE + τ²·KL(p_T ‖ p_S); teacher CE + τ²·KL(p_S ‖ p_T).
* ``bdkd`` (Amara et al., 2022): student CE + per-sample w_F·KL(p_T ‖ p_S) + w_R·KL(p_S ‖ p_T)
  (``bdkd_student_loss``; the entropy-gap weighting is our assumption, see the chapter); teacher
  CE + τ²·KL(p_T ‖ p_S), the reverse-KL regulariser seen from the teacher.

The per-step entropy gap and reverse-KL weight are kept in a ``BalanceLog`` that survives a
resume (it is a trainer callback with a state).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..losses import distillation as D
from ..train import FitResult, evaluate
from .distill import StudentSetup, _fit_student_model, check_pair, register_arm


class OnlinePair(nn.Module):
    """A teacher and a student trained jointly; ``forward`` returns the student's logits."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class BalanceLog:
    """Per-step means of the entropy gap H_S − H_T and of the reverse-KL weight w_R."""

    def __init__(self) -> None:
        self.gap: list[float] = []
        self.w_reverse: list[float] = []
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def stage(self, gap: torch.Tensor, w_r: torch.Tensor) -> None:
        self._pending = (gap.mean().detach(), w_r.mean().detach())

    def on_step(self, info) -> None:
        if self._pending is not None:
            self.gap.append(float(self._pending[0]))
            self.w_reverse.append(float(self._pending[1]))
            self._pending = None

    def state_dict(self) -> dict:
        return {"gap": self.gap, "w_reverse": self.w_reverse}

    def load_state_dict(self, state: dict) -> None:
        self.gap, self.w_reverse = list(state["gap"]), list(state["w_reverse"])


def _pair(setup: StudentSetup) -> OnlinePair:
    if not setup.teacher_arch:
        raise ValueError("online distillation needs setup.teacher_arch (the architecture trained alongside)")
    torch.manual_seed(setup.seed + 10_000)  # the teacher's own initialisation, fixed per seed
    teacher = models.create(setup.teacher_arch, num_classes=setup.num_classes, **setup.teacher_kwargs)
    student = setup.new_student()
    check_pair(teacher, student, setup.train.images.shape[-1])
    return OnlinePair(teacher, student)


def _online(setup: StudentSetup, tag: str, student_term, teacher_term, log: BalanceLog | None = None) -> FitResult:
    pair = _pair(setup)

    def loss_fn(m: OnlinePair, x, y):
        t, s = m.teacher(x).float(), m.student(x).float()
        loss_s = F.cross_entropy(s, y) + student_term(s, t.detach())
        loss_t = F.cross_entropy(t, y) + teacher_term(t, s.detach())
        return loss_s + loss_t, s

    def teacher_acc(m: OnlinePair) -> dict[str, float]:
        return {"teacher_acc": evaluate(m.teacher, setup.test)["acc"]}

    res = _fit_student_model(setup, pair, loss_fn, tag, callbacks=[log] if log else (), extra_eval=teacher_acc)
    if log is not None:
        res.extra["balance"] = log.state_dict()
    return res


@register_arm("dml", {"temperature": 3.0})
def dml_arm(setup: StudentSetup, temperature: float) -> FitResult:
    """Deep mutual learning: each network distils from the other (forward KL for the student)."""
    T = temperature
    return _online(setup, "dml", lambda s, t: T * T * D.kl_div(t, s, T), lambda t, s: T * T * D.kl_div(s, t, T))


@register_arm("bdkd", {"temperature": 3.0, "kappa": 5.0, "hard": False})
def bdkd_arm(setup: StudentSetup, temperature: float, kappa: float, hard: bool) -> FitResult:
    """BD-KD: entropy-gap-balanced forward/reverse KL for the student; reverse KL for the teacher."""
    T = temperature
    log = BalanceLog()

    def student_term(s, t):
        gap = D.entropy(s, T) - D.entropy(t, T)
        log.stage(gap, D.bdkd_weights(s, t, kappa, hard, T)[1])
        return D.bdkd_student_loss(s, t, T, kappa, hard)

    return _online(setup, "bdkd" + ("-hard" if hard else ""), student_term,
                   lambda t, s: T * T * D.kl_div(t, s, T), log)
