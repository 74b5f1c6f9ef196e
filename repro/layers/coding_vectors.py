"""The networks of chapter 07 (NAPA-VQ and its PASS-style baseline): learnable coding vectors
with their Neural-Gas edge matrix, a backbone with a coding-vector classifier over (class,
rotation), and a backbone whose linear head covers every (class, rotation).

Shapes: features ``z: [B, D]``; coding vectors ``[C·R, D]``; edges ``[C·R, C·R]``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CodingVectors(nn.Module):
    """Learnable coding vectors ``cv = m·θ`` (one per (class, rotation)), the first
    ``n_frozen`` of which are replaced by a frozen copy, and the Neural-Gas edge matrix."""

    def __init__(self, num_cvs: int, dim: int, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.lr_mult = float(lr_mult)
        # cv ~ N(0, I) as in the official code, whatever the multiplier
        self.theta = nn.Parameter(torch.randn(num_cvs, dim) / self.lr_mult)
        self.register_buffer("frozen", torch.zeros(num_cvs, dim))
        self.register_buffer("n_frozen", torch.zeros((), dtype=torch.long))
        self.register_buffer("edges", torch.eye(num_cvs))

    def vectors(self) -> torch.Tensor:
        """All CVs [num_cvs, dim]: frozen rows first, then the live ones."""
        n = int(self.n_frozen)
        live = self.theta * self.lr_mult
        return torch.cat([self.frozen[:n], live[n:]]) if n else live

    @torch.no_grad()
    def freeze(self, n: int) -> None:
        """Freeze the first ``n`` CVs at their current values (rows already frozen stay as they
        were: weight decay may since have moved their unused parameters)."""
        old = int(self.n_frozen)
        if n < old:
            raise ValueError(f"{old} CVs are frozen already; cannot freeze only {n}")
        self.frozen[old:n] = self.theta[old:n] * self.lr_mult
        self.n_frozen.fill_(n)


class CVNet(nn.Module):
    """A backbone's features and a coding-vector classifier over (class, rotation)."""

    def __init__(self, backbone: nn.Module, num_classes: int, rotations: int, lr_mult: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.head = nn.Identity()  # its linear head is not used
        self.rotations = rotations
        self.num_classes = num_classes
        self.cv = CodingVectors(num_classes * rotations, backbone.num_features, lr_mult)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores: minus the distance between the L2-normalised feature and rotation-0 CVs."""
        z = F.normalize(self.features(x).float(), dim=1)
        cv0 = F.normalize(self.cv.vectors()[:: self.rotations].float(), dim=1)
        return -torch.cdist(z, cv0)  # argmax = nearest_cv(features, rotation-0 CVs)


class RotationNet(nn.Module):
    """A backbone whose linear head has R·C outputs; ``forward`` returns the rotation-0 ones."""

    def __init__(self, backbone: nn.Module, rotations: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.rotations = rotations

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def all_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.backbone.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_logits(self.features(x))[:, :: self.rotations]
