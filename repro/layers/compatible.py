"""The retrieval network of chapter 01 (OCA): a registered backbone, a linear projection to an
L2-normalised embedding ``f`` (the retrieval feature), an optional orthogonal layer (Ricci et al.,
2024) and a bias-free classifier.

Shapes: images ``x: [B, 3, S, S]``; features ``f: [B, dim]``; logits ``[B, K]``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations

from .. import models

TRANSFORMS = ("none", "orthogonal")


class EmbeddingNet(nn.Module):
    """Backbone → linear projection → L2 normalisation = the retrieval feature ``f``.

    ``transform="none"``: logits = V f. ``"orthogonal"``: z = W f + b with W kept orthogonal
    (PyTorch's orthogonal parametrization), logits = V z. V is bias-free in both cases.
    """

    def __init__(self, arch: str, num_classes: int, dim: int, transform: str = "none",
                 arch_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, not {transform!r}")
        self.backbone = models.create(arch, num_classes=num_classes, **dict(arch_kwargs or {}))
        self.backbone.head = nn.Identity()  # only backbone.features is used
        width = self.backbone.num_features
        self.dim, self.transform_kind = dim, transform
        self.proj = nn.Linear(width, dim)
        self.transform = (parametrizations.orthogonal(nn.Linear(dim, dim)) if transform == "orthogonal"
                          else nn.Identity())
        self.classifier = nn.Linear(dim, num_classes, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] → the retrieval feature f: [B, dim], unit norm."""
        return F.normalize(self.proj(self.backbone.features(x)), dim=1)

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """f: [B, dim] → logits [B, K] (through the orthogonal layer if there is one)."""
        return self.classifier(self.transform(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def ortho_error(self) -> float:
        """‖WᵀW − I‖_F of the orthogonal layer (0 without one)."""
        if self.transform_kind != "orthogonal":
            return 0.0
        W = self.transform.weight.detach().float()
        return float(torch.linalg.matrix_norm(W.T @ W - torch.eye(W.shape[1], device=W.device)))
