"""A timm model as a ``repro.models`` network (``features``, ``dropout``, ``head``), for chapters
that start from a pretrained timm backbone (chapter 10, nmc). Not registered: it wraps a body
built elsewhere (``timm.create_model(name, num_classes=0)``)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import MEAN, STD


class TimmNet(nn.Module):
    """A timm model as a ``repro.models`` network: ``features`` (pooled pre-logits), ``dropout``, ``head``.

    The stream's loader normalises images with the CIFAR mean/std; like the official script,
    the backbone sees them un-normalised ([0, 1]) and resized to its input side."""

    def __init__(self, body: nn.Module, num_classes: int, size: int) -> None:
        super().__init__()
        self.body, self.size = body, size
        self.dropout = nn.Identity()
        self.head = nn.Linear(body.num_features, num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.std + self.mean
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
