"""USKD (Yang et al., ICCV 2023): self-knowledge distillation with a weak head on an
intermediate feature and self-made soft labels (the loss is ``repro.losses.distillation.uskd_loss``).

The student is wrapped with a linear weak head on the pooled output of its second-to-last
stage (stage 3 of ResNet-18 in the paper; stage 2 of ``cnn3``). ``forward`` returns the
student's own logits, so the wrapper predicts exactly like the bare student.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import distillation as D
from ..models.stages import stage_channels, stage_outputs
from ..train import FitResult
from .distill import StudentSetup, _fit_student_model, register_arm


class WeakHeadStudent(nn.Module):
    """A student plus USKD's weak linear head on an intermediate stage (training only)."""

    def __init__(self, student: nn.Module, num_classes: int, image_size: int, stage: int = -2) -> None:
        super().__init__()
        self.student = student
        self.stage = stage
        self.weak = nn.Linear(stage_channels(student, image_size)[stage], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student logits, weak-head logits) from one pass."""
        outs, logits = stage_outputs(self.student, x)
        mid = torch.flatten(F.adaptive_avg_pool2d(outs[self.stage], 1), 1)
        return logits, self.weak(mid)


@register_arm("uskd", {"alpha": 0.1, "beta": 0.1, "mu": 0.1})
def uskd_arm(setup: StudentSetup, alpha: float, beta: float, mu: float) -> FitResult:
    """CE + USKD (CIFAR-100 config of the official code: α = β = μ = 0.1); no teacher."""
    model = WeakHeadStudent(setup.new_student(), setup.num_classes, setup.train.images.shape[-1])

    def loss_fn(m: WeakHeadStudent, x, y):
        s, w = m.forward_both(x)
        return F.cross_entropy(s, y) + D.uskd_loss(s.float(), w.float(), y, alpha, beta, mu), s

    return _fit_student_model(setup, model, loss_fn, "uskd")
