"""ResNets for 32x32 inputs.

Two families:

* the CIFAR ResNets of He et al. (2016, sec. 4.2): a 3x3 stem and three
  stages of ``n`` BasicBlocks, depth ``6n + 2``.  ``resnet8 ... resnet110`` use
  16/32/64 channels; ``resnet8x4`` and ``resnet32x4`` are the 4x-wide variants
  used as teachers/students in the CRD distillation benchmark (Tian et al.
  2020), stem 32 and stages 64/128/256.
* ``resnet18`` (and ``resnet34``): the ImageNet BasicBlock ResNet-18 (stages 64/128/256/512, two
  blocks each) with a 3x3 stride-1 stem and no max-pool, the common CIFAR
  adaptation.

Shortcuts that change shape use a 1x1 conv + norm ("option B"), which is what
the distillation literature's reference code does and what its published
parameter counts include (resnet20: 278,324 parameters for 100 classes).
``shortcut="A"`` gives the parameter-free zero-padding shortcut of the
original paper's CIFAR experiments (resnet20: 275,572 for 100 classes, i.e.
the paper's 0.27M for 10 classes).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.models import register

NormLayer = Callable[[int], nn.Module]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by a norm layer whose shift makes it redundant.
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class _PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling plus zero channel padding."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, H, W] -> [B, C_out, H/stride, W/stride]."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # Split the padding between both sides like the original Torch code did.
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or projection) shortcut, post-activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = norm_layer(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = norm_layer(cout)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            if cout < cin:
                raise ValueError("option-A shortcut cannot reduce channels")
            self.shortcut = _PadShortcut(cin, cout, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                norm_layer(cout),
            )
        else:
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, H, W] -> [B, C_out, H/stride, W/stride]."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Generic BasicBlock ResNet for small images.

    Args:
        stem_width: channels of the 3x3 stride-1 stem conv.
        widths: channels of each stage; stage ``i > 0`` halves the resolution.
        blocks: number of BasicBlocks per stage.
        num_classes: output size of ``head``.
        drop_rate: dropout probability between ``features`` and ``head``.
        norm_layer: ``norm_layer(C) -> nn.Module``, default ``nn.BatchNorm2d``.
        shortcut: ``"B"`` (1x1 conv + norm) or ``"A"`` (zero padding).

    ``features(x)``: ``[B, 3, H, W] -> [B, widths[-1]]``;
    ``forward(x)``: ``[B, 3, H, W] -> [B, num_classes]``.
    """

    def __init__(
        self,
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int = 100,
        drop_rate: float = 0.0,
        norm_layer: NormLayer | None = None,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("widths and blocks must have the same length")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.stem = nn.Sequential(
            _conv3x3(3, stem_width), norm_layer(stem_width), nn.ReLU(inplace=True)
        )
        stages = []
        cin = stem_width
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, w, stride, norm_layer, shortcut))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init (fan_out) as in the reference implementations; norm
                # layers keep their own defaults so custom norms are untouched.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> pooled features [B, D] (D = last stage width)."""
        x = self.stages(self.stem(x))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def cifar_resnet(
    depth: int,
    num_filters: Sequence[int] = (16, 16, 32, 64),
    num_classes: int = 100,
    **kw,
) -> ResNet:
    """He et al. CIFAR ResNet of ``depth = 6n + 2`` layers.

    ``num_filters = [stem, stage1, stage2, stage3]`` as in the CRD code base;
    ``(16, 16, 32, 64)`` is the original paper's network.
    """
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    stem, *widths = num_filters
    return ResNet(stem, widths, [n] * len(widths), num_classes=num_classes, **kw)


@register("resnet8")
def resnet8(num_classes: int = 100, **kw) -> ResNet:
    """CIFAR ResNet-8 (16/32/64)."""
    return cifar_resnet(8, num_classes=num_classes, **kw)


@register("resnet20")
def resnet20(num_classes: int = 100, **kw) -> ResNet:
    """CIFAR ResNet-20 (16/32/64), ~0.28M parameters."""
    return cifar_resnet(20, num_classes=num_classes, **kw)


@register("resnet32")
def resnet32(num_classes: int = 100, **kw) -> ResNet:
    """CIFAR ResNet-32 (16/32/64), ~0.47M parameters."""
    return cifar_resnet(32, num_classes=num_classes, **kw)


@register("resnet56")
def resnet56(num_classes: int = 100, **kw) -> ResNet:
    """CIFAR ResNet-56 (16/32/64), ~0.86M parameters."""
    return cifar_resnet(56, num_classes=num_classes, **kw)


@register("resnet110")
def resnet110(num_classes: int = 100, **kw) -> ResNet:
    """CIFAR ResNet-110 (16/32/64), ~1.73M parameters."""
    return cifar_resnet(110, num_classes=num_classes, **kw)


@register("resnet8x4")
def resnet8x4(num_classes: int = 100, **kw) -> ResNet:
    """CRD's 4x-wide ResNet-8 (stem 32, stages 64/128/256), ~1.23M parameters."""
    return cifar_resnet(8, (32, 64, 128, 256), num_classes=num_classes, **kw)


@register("resnet32x4")
def resnet32x4(num_classes: int = 100, **kw) -> ResNet:
    """CRD's 4x-wide ResNet-32 (stem 32, stages 64/128/256), ~7.43M parameters."""
    return cifar_resnet(32, (32, 64, 128, 256), num_classes=num_classes, **kw)


@register("resnet18")
def resnet18(num_classes: int = 100, **kw) -> ResNet:
    """ResNet-18 for CIFAR: 3x3 stride-1 stem, no max-pool, ~11.22M parameters."""
    return ResNet(64, (64, 128, 256, 512), (2, 2, 2, 2), num_classes=num_classes, **kw)


@register("resnet34")
def resnet34(num_classes: int = 100, **kw) -> ResNet:
    """ResNet-34 for CIFAR (stages of 3/4/6/3 BasicBlocks, widths as resnet18): the encoder of
    PALM and CIDER, ~21.3M parameters."""
    return ResNet(64, (64, 128, 256, 512), (3, 4, 6, 3), num_classes=num_classes, **kw)
