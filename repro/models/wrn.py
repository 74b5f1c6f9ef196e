"""Wide Residual Networks (Zagoruyko & Komodakis, 2016).

WRN-d-k: a 3x3 stem of 16 channels, three stages of ``n = (d - 4) / 6``
pre-activation blocks with ``16k, 32k, 64k`` channels, a final norm + ReLU,
global average pooling and a linear classifier.  Shortcuts that change shape
are a bare 1x1 conv (no norm), as in the authors' code, which is what the
published parameter counts (e.g. 36.5M for WRN-28-10) include.

Two dropout knobs exist because the paper and this package mean different
things by "dropout":

* ``block_drop_rate``: the paper's dropout between the two convs of each block
  (0.3 in their best CIFAR runs);
* ``drop_rate``: the package-wide dropout between ``features`` and ``head``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.models import register

NormLayer = Callable[[int], nn.Module]


class WideBlock(nn.Module):
    """Pre-activation block: norm-ReLU-conv3x3-norm-ReLU-dropout-conv3x3."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        block_drop_rate: float = 0.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.bn1 = norm_layer(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(cout)
        self.drop = nn.Dropout(block_drop_rate)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = (
            None if self.equal else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, H, W] -> [B, C_out, H/stride, W/stride]."""
        o = F.relu(self.bn1(x))
        # When the shape changes the projection sees the pre-activated input,
        # matching the authors' implementation.
        skip = x if self.equal else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.drop(F.relu(self.bn2(o))))
        return o + skip


class WideResNet(nn.Module):
    """WRN-depth-width.

    ``features(x)``: ``[B, 3, H, W] -> [B, 64 * width]``;
    ``forward(x)``: ``[B, 3, H, W] -> [B, num_classes]``.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        block_drop_rate: float = 0.0,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        norm_layer = norm_layer or nn.BatchNorm2d
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        stages = []
        cin = 16
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(WideBlock(cin, w, stride, block_drop_rate, norm_layer))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # Pre-activation blocks leave the last output un-normalised.
        self.final_norm = norm_layer(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> pooled features [B, 64 * width]."""
        x = self.stages(self.stem(x))
        x = F.relu(self.final_norm(x))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def wide_resnet(
    depth: int,
    width: int,
    num_classes: int = 100,
    drop_rate: float = 0.0,
    norm_layer: NormLayer | None = None,
    block_drop_rate: float = 0.0,
) -> WideResNet:
    """Build WRN-``depth``-``width`` (``depth = 6n + 4``).

    Args:
        depth: total number of conv/linear layers, e.g. 28.
        width: widening factor ``k``, e.g. 10.
        num_classes: logits size.
        drop_rate: dropout before the final linear layer.
        norm_layer: ``norm_layer(C) -> nn.Module`` (default ``nn.BatchNorm2d``).
        block_drop_rate: the paper's dropout inside each residual block.
    """
    return WideResNet(depth, width, num_classes, drop_rate, block_drop_rate, norm_layer)


@register("wrn16_2")
def wrn16_2(num_classes: int = 100, **kw) -> WideResNet:
    """WRN-16-2; kwargs as in :func:`wide_resnet`."""
    return wide_resnet(16, 2, num_classes=num_classes, **kw)


@register("wrn16_4")
def wrn16_4(num_classes: int = 100, **kw) -> WideResNet:
    """WRN-16-4; kwargs as in :func:`wide_resnet`."""
    return wide_resnet(16, 4, num_classes=num_classes, **kw)


@register("wrn16_8")
def wrn16_8(num_classes: int = 100, **kw) -> WideResNet:
    """WRN-16-8; kwargs as in :func:`wide_resnet`."""
    return wide_resnet(16, 8, num_classes=num_classes, **kw)


@register("wrn28_4")
def wrn28_4(num_classes: int = 100, **kw) -> WideResNet:
    """WRN-28-4; kwargs as in :func:`wide_resnet`."""
    return wide_resnet(28, 4, num_classes=num_classes, **kw)


@register("wrn28_10")
def wrn28_10(num_classes: int = 100, **kw) -> WideResNet:
    """WRN-28-10; kwargs as in :func:`wide_resnet`."""
    return wide_resnet(28, 10, num_classes=num_classes, **kw)


@register("wrn40_2")
def wrn40_2(num_classes: int = 100, **kw) -> WideResNet:
    """WRN-40-2; kwargs as in :func:`wide_resnet`."""
    return wide_resnet(40, 2, num_classes=num_classes, **kw)
