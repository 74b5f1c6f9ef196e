"""USKD (Yang et al., ICCV 2023): self-knowledge distillation with a weak head on an
intermediate feature and self-made soft labels (the loss is ``repro.losses.distillation.uskd_loss``,
the weak head ``repro.layers.distillation.WeakHeadStudent``; the student predicts exactly as
the bare student)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ....arms import arm
from ....layers.distillation import WeakHeadStudent
from ....losses import distillation as D
from ....train import FitResult
from ..protocol import DistillConfig, StudentSetup, fit_model


@dataclass(frozen=True)
class USKDConfig(DistillConfig):
    """USKD's weights α (target), β (non-target), μ (weak head) (official CIFAR-100: 0.1 each)."""

    uskd_alpha: float = 0.1
    uskd_beta: float = 0.1
    uskd_mu: float = 0.1


@arm("uskd", family="distillation", config=USKDConfig)
def uskd_arm(setup: StudentSetup, cfg: USKDConfig) -> FitResult:
    """CE + USKD (CIFAR-100 config of the official code: α = β = μ = 0.1); no teacher."""
    model = WeakHeadStudent(setup.new_student(), setup.num_classes, setup.train.images.shape[-1])
    a, b, mu = cfg.uskd_alpha, cfg.uskd_beta, cfg.uskd_mu

    def loss_fn(m: WeakHeadStudent, x, y):
        s, w = m.forward_both(x)
        return F.cross_entropy(s, y) + D.uskd_loss(s.float(), w.float(), y, a, b, mu), s

    return fit_model(setup, model, loss_fn, "uskd")
