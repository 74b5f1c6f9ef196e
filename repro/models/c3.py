"""The shallow CIFAR-100 network "C3" of Hoffer, Hubara & Soudry (2017), from the official
``cifar100_shallow`` model (chapter 41, ghostbn)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from repro.models import register


class C3(nn.Module):
    """The paper's shallow CIFAR-100 network "C3" (the official ``cifar100_shallow``).

    Two conv5×5(64) → max-pool 3/2 → BN → ReLU stages, then FC 384 → BN → ReLU → dropout,
    FC 192 → BN → ReLU → dropout, FC classes. ``features(x)``: ``[B, 3, S, S] → [B, 64·s·s]``
    (s = 7 at S = 32); ``head`` is the classifier; ``dropout`` is ``nn.Dropout(0)``, the identity
    (the two dropouts sit inside ``head``), which keeps the package's features/head convention.
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
        self.dropout = nn.Dropout(0.0)  # the registry's pre-head dropout: none here (p = 0 draws no mask)
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




@register("c3")
def c3(num_classes: int = 100, image_size: int = 32, drop_rate: float = 0.5, norm_layer: Any = None,
       norm1d_layer: Any = None) -> C3:
    """C3 for ``image_size`` px inputs; ``norm_layer`` (2-D) and ``norm1d_layer`` (the head's
    1-D BNs) replace BatchNorm, e.g. by Ghost BN."""
    return C3(num_classes, image_size, drop_rate=drop_rate, norm_layer=norm_layer, norm1d_layer=norm1d_layer)
