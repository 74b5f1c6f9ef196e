"""Training-only heads that distillation methods attach to a student, and the online pair.

Each wrapper's ``forward`` is the bare student's, so the deployed network (and the trainer's
evaluation) is exactly the student; the extra heads only shape the training loss.

* ``WeakHeadStudent`` (USKD): a linear weak head on the pooled output of an intermediate stage.
* ``AuxBranchStudent`` (LSSKD, our reconstruction): an auxiliary class×rotation branch after
  every stage (fresh copies of the remaining stages, an extra conv block after the last).
* ``OnlinePair`` (DML, BD-KD): a teacher and a student trained together.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.stages import split_stages, stage_channels, stage_outputs

ROTATIONS = 4


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


def _reset(module: nn.Module) -> nn.Module:
    """Fresh weights for a copied branch (it must not start as the backbone's twin)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


class AuxBranchStudent(nn.Module):
    """A student with an auxiliary class×rotation branch after each stage (training only)."""

    def __init__(self, student: nn.Module, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.student = student
        self.num_classes = num_classes
        _, stages = split_stages(student)
        chans = stage_channels(student, image_size)
        branches = []
        for s in range(len(stages)):
            if s < len(stages) - 1:
                body = nn.Sequential(*[copy.deepcopy(st) for st in stages[s + 1:]])
            else:
                c = chans[-1]
                body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            _reset(body)
            branches.append(nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(chans[-1], num_classes * ROTATIONS)))
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The main head only: what the deployed student computes."""
        return self.student(x)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Main logits [B, C] and each branch's joint logits [B, 4C]."""
        outs, logits = stage_outputs(self.student, x)
        return logits, [b(o) for b, o in zip(self.branches, outs)]


class OnlinePair(nn.Module):
    """A teacher and a student trained jointly; ``forward`` returns the student's logits."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)
