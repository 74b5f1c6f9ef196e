"""Small plain CNNs: the cpu-tier ``cnn3`` family and CIFAR VGGs.

All follow the package convention ``forward(x) = head(dropout(features(x)))``.
For the two-FC models (``cnn3_mlp``, ``vgg*_bn``) the ``head`` is the whole
classifier *after the first dropout*::

    features(x) -> dropout -> head = [Linear -> ReLU -> Dropout -> Linear]

so a method that re-samples dropout masks (multi-sample dropout) can call
``features`` once and replicate ``head(dropout(f))`` M times; ``head[0]`` is
the first FC and ``head[-1]`` the classifier layer.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from repro.models import register

NormLayer = Callable[[int], nn.Module]


def _conv_bn_relu(cin: int, cout: int, norm_layer: NormLayer) -> list[nn.Module]:
    # Conv bias is dropped because the following norm's shift subsumes it.
    return [
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        norm_layer(cout),
        nn.ReLU(inplace=True),
    ]


def _mlp_head(din: int, hidden: int, num_classes: int, drop_rate: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(din, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.Linear(hidden, num_classes),
    )


class TrunkClassifier(nn.Module):
    """A conv trunk, global average pooling, dropout and a head.

    Args:
        trunk: module mapping ``[B, 3, H, W] -> [B, D, h, w]``.
        num_features: ``D``.
        head: module mapping ``[B, D] -> [B, num_classes]``.
        drop_rate: dropout probability between ``features`` and ``head``.
    """

    def __init__(self, trunk: nn.Module, num_features: int, head: nn.Module, drop_rate: float) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = num_features
        self.dropout = nn.Dropout(drop_rate)
        self.head = head
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> pooled trunk output [B, D]."""
        return torch.flatten(self.pool(self.trunk(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def _cnn3_trunk(width: int, norm_layer: NormLayer) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for w in (width, 2 * width, 4 * width):
        layers += _conv_bn_relu(cin, w, norm_layer) + [nn.MaxPool2d(2)]
        cin = w
    return nn.Sequential(*layers)


@register("cnn3")
def cnn3(
    num_classes: int = 100,
    width: int = 32,
    drop_rate: float = 0.0,
    norm_layer: NormLayer | None = None,
) -> TrunkClassifier:
    """Three conv3x3-norm-ReLU-maxpool stages (``w, 2w, 4w``), GAP, linear head.

    About 0.1M parameters at ``width=32``; works for any input side >= 8.
    ``features``: ``[B, 3, H, W] -> [B, 4 * width]``.
    """
    trunk = _cnn3_trunk(width, norm_layer or nn.BatchNorm2d)
    return TrunkClassifier(trunk, 4 * width, nn.Linear(4 * width, num_classes), drop_rate)


@register("cnn3_mlp")
def cnn3_mlp(
    num_classes: int = 100,
    width: int = 32,
    hidden: int = 256,
    drop_rate: float = 0.0,
    norm_layer: NormLayer | None = None,
) -> TrunkClassifier:
    """``cnn3`` trunk with a two-FC head and dropout before each FC.

    ``forward(x) = head(dropout(features(x)))`` with
    ``head = Sequential(Linear(4w, hidden), ReLU, Dropout(drop_rate), Linear(hidden, C))``,
    i.e. ``head`` is everything after the first dropout.
    ``features``: ``[B, 3, H, W] -> [B, 4 * width]``.
    """
    trunk = _cnn3_trunk(width, norm_layer or nn.BatchNorm2d)
    head = _mlp_head(4 * width, hidden, num_classes, drop_rate)
    return TrunkClassifier(trunk, 4 * width, head, drop_rate)


_VGG_CFG: dict[str, Sequence[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg(cfg: Sequence[int | str], num_classes: int, drop_rate: float,
         norm_layer: NormLayer | None, hidden: int) -> TrunkClassifier:
    norm_layer = norm_layer or nn.BatchNorm2d
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += _conv_bn_relu(cin, int(v), norm_layer)
            cin = int(v)
    head = _mlp_head(cin, hidden, num_classes, drop_rate)
    return TrunkClassifier(nn.Sequential(*layers), cin, head, drop_rate)


@register("vgg11_bn")
def vgg11_bn(num_classes: int = 100, drop_rate: float = 0.0,
             norm_layer: NormLayer | None = None, hidden: int = 512) -> TrunkClassifier:
    """CIFAR VGG-11 with norm; classifier 512 -> hidden -> classes.

    Needs inputs of side >= 32 (five 2x2 max-pools).
    ``features``: ``[B, 3, H, W] -> [B, 512]``; ``head`` as in :func:`cnn3_mlp`.
    """
    return _vgg(_VGG_CFG["vgg11"], num_classes, drop_rate, norm_layer, hidden)


@register("vgg16_bn")
def vgg16_bn(num_classes: int = 100, drop_rate: float = 0.0,
             norm_layer: NormLayer | None = None, hidden: int = 512) -> TrunkClassifier:
    """CIFAR VGG-16 with norm; classifier 512 -> hidden -> classes.

    Needs inputs of side >= 32 (five 2x2 max-pools).
    ``features``: ``[B, 3, H, W] -> [B, 512]``; ``head`` as in :func:`cnn3_mlp`.
    """
    return _vgg(_VGG_CFG["vgg16"], num_classes, drop_rate, norm_layer, hidden)
