"""VGG-like networks with weighted convolutions, chapter 23 (wconv).

Every 3×3 convolution is a :class:`repro.layers.weighted_conv.WeightedConv2d` applying
``W ⊙ Φ(den)``. Each network is built as its plain-convolution twin first (same layers, same
random draws, same Kaiming-normal fan_out init as :mod:`repro.models.small`) and then each
``nn.Conv2d`` is swapped for a weighted one carrying the same ``W``, so:

* ``den = 1`` gives **exactly** the plain network of the same seed (``wconv_vgg11_bn`` equals the
  registry's ``vgg11_bn``; ``wconv_vgg4`` equals :func:`vgg4`);
* ``init_only=True`` is the card's control "standard conv with init multiplied by Φ": plain
  ``nn.Conv2d`` layers whose initial weight is ``W ⊙ Φ`` — the weighted network's starting
  effective weight (same outputs at init), but trained without the reparametrisation, so the
  per-tap learning-rate factor Φ² is absent;
* ``learnable_den=True`` makes each layer's ``den`` a parameter (the paper's trainable variant;
  :func:`repro.layers.weighted_conv.density_parameters` finds them for their own optimiser).

Both follow :mod:`repro.models`' features/head convention (``TrunkClassifier``) and accept any
input side the pools allow; they take no ``img_size``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from repro.errors import ParameterError
from repro.layers.weighted_conv import WeightedConv2d, _as_den, density_matrix
from repro.models import register
from repro.models.small import _VGG_CFG, NormLayer, TrunkClassifier, _conv_bn_relu, _mlp_head

VGG4_CFG: tuple[int | str, ...] = (32, "M", 64, "M", 128, "M", 128)


def _check(den: float | Sequence[float], learnable_den: bool, init_only: bool) -> list[float]:
    vals = _as_den(den, 3)  # one value for a 3×3 kernel (a ParameterError otherwise)
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ParameterError(f"den must be finite and > 0, got {den}")
    if learnable_den and init_only:
        raise ParameterError("init_only is a plain convolution: it has no den to learn (drop learnable_den)")
    return vals


def _trunk(cfg: Sequence[int | str], norm_layer: NormLayer) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += _conv_bn_relu(cin, int(v), norm_layer)
            cin = int(v)
    return nn.Sequential(*layers), cin


def _weighted(net: TrunkClassifier, den: list[float], learnable_den: bool, init_only: bool) -> TrunkClassifier:
    """Swap every 3×3 ``nn.Conv2d`` of ``net.trunk`` for a weighted one with the same weight
    (or, ``init_only``, scale its weight by Φ in place). Draws no random numbers."""
    trunk = net.trunk
    for i, m in enumerate(trunk):
        if type(m) is not nn.Conv2d or m.kernel_size != (3, 3):
            continue
        if init_only:
            with torch.no_grad():
                m.weight.mul_(density_matrix(torch.tensor(den, dtype=m.weight.dtype)))
            continue
        # WeightedConv2d initialises its own weight; fork_rng keeps those draws off the global
        # stream so the network's later layers (and the seed's meaning) stay the plain twin's.
        with torch.random.fork_rng(devices=[]):
            w = WeightedConv2d(m.in_channels, m.out_channels, 3, den, learnable_den=learnable_den,
                               stride=m.stride, padding=m.padding, bias=m.bias is not None)
        with torch.no_grad():
            w.weight.copy_(m.weight)
            if m.bias is not None:
                w.bias.copy_(m.bias)
        trunk[i] = w
    return net


def vgg4(num_classes: int = 100, drop_rate: float = 0.0, norm_layer: NormLayer | None = None) -> TrunkClassifier:
    """The plain-convolution twin of :func:`wconv_vgg4` (not registered): conv 32 → pool →
    conv 64 → pool → conv 128 → pool → conv 128, each conv3×3-norm-ReLU, global average pool,
    linear head. Any input side ≥ 8."""
    trunk, width = _trunk(VGG4_CFG, norm_layer or nn.BatchNorm2d)
    return TrunkClassifier(trunk, width, nn.Linear(width, num_classes), drop_rate)


@register("wconv_vgg4")
def wconv_vgg4(num_classes: int = 100, drop_rate: float = 0.0, den: float | Sequence[float] = 1.0,
               learnable_den: bool = False, init_only: bool = False,
               norm_layer: NormLayer | None = None) -> TrunkClassifier:
    """:func:`vgg4` with weighted 3×3 convolutions (cpu tier; 254,084 parameters at 100 classes).

    Args:
        den: density of the outer ring (Φ = α αᵀ, α = [den, 1, den]); 1 is the standard conv.
        learnable_den: one trainable ``den`` per layer.
        init_only: plain convs initialised at ``W ⊙ Φ`` (the init-only control).

    ``features``: ``[B, 3, H, W] → [B, 128]``.

    Raises:
        ParameterError: ``den`` not a single positive number, or ``init_only`` with
            ``learnable_den``.
    """
    vals = _check(den, learnable_den, init_only)
    return _weighted(vgg4(num_classes, drop_rate, norm_layer), vals, learnable_den, init_only)


@register("wconv_vgg11_bn")
def wconv_vgg11_bn(num_classes: int = 100, drop_rate: float = 0.0, den: float | Sequence[float] = 1.0,
                   learnable_den: bool = False, init_only: bool = False,
                   norm_layer: NormLayer | None = None, hidden: int = 512) -> TrunkClassifier:
    """The registry's ``vgg11_bn`` (CIFAR VGG-11 with norm, classifier 512 → hidden → classes)
    with weighted 3×3 convolutions (gpu tier); ``den``, ``learnable_den``, ``init_only`` as
    :func:`wconv_vgg4`. Needs inputs of side ≥ 32. ``features``: ``[B, 3, H, W] → [B, 512]``."""
    vals = _check(den, learnable_den, init_only)
    # Built exactly as small._vgg (same modules, same order of random draws).
    trunk, width = _trunk(_VGG_CFG["vgg11"], norm_layer or nn.BatchNorm2d)
    net = TrunkClassifier(trunk, width, _mlp_head(width, hidden, num_classes, drop_rate), drop_rate)
    return _weighted(net, vals, learnable_den, init_only)
