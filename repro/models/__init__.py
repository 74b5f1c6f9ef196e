"""Model zoo for the CIFAR-100 reproductions.

Every chapter builds its networks through :func:`create` so that a paper's
configuration file can name an architecture as a plain string.

All registered networks follow one convention, which several chapters rely
on (linear probes, multi-sample dropout, distillation on penultimate
features):

* ``model.features(x)`` maps ``x: [B, 3, H, W]`` to pooled features ``[B, D]``;
* ``model.head`` is the module applied after the pre-head dropout
  (usually a single ``nn.Linear(D, num_classes)``; for the two-FC models it is
  an ``nn.Sequential`` whose first layer is a ``nn.Linear(D, ...)``);
* ``model(x) == model.head(model.dropout(model.features(x)))`` with
  ``model.dropout = nn.Dropout(drop_rate)``.

Every builder accepts ``num_classes`` and ``drop_rate``; the convolutional
ones also accept ``norm_layer`` (a callable ``norm_layer(num_channels) ->
nn.Module``, default ``nn.BatchNorm2d``) so that, e.g., Ghost BatchNorm can be
swapped in.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a model builder under ``name``.

    The builder is called as ``builder(num_classes=..., **kw)`` and must
    return an ``nn.Module`` that follows the features/head convention of this
    package.  Registering a different function under a taken name raises
    ``ValueError``; re-registering the same function (e.g. after
    ``importlib.reload``) is allowed.
    """

    def decorator(fn: Builder) -> Builder:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(
                f"model name {name!r} is already registered by "
                f"{old.__module__}.{old.__qualname__}"
            )
        _REGISTRY[name] = fn
        return fn

    return decorator


def available() -> list[str]:
    """Sorted list of registered model names."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 100, **kw) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: registry key, e.g. ``"resnet20"`` or ``"wrn16_4"``.
        num_classes: size of the output layer (logits ``[B, num_classes]``).
        **kw: architecture-specific options (``drop_rate``, ``norm_layer``,
            ``width``, ``img_size`` ...), forwarded to the builder.

    Raises:
        KeyError: if ``name`` is not registered; the message lists the
            available names so a typo in a config is easy to fix.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; available: {', '.join(available())}"
        ) from None
    return builder(num_classes=num_classes, **kw)


# Imported for their side effect of filling the registry; placed after the
# registry helpers because each module does ``from repro.models import register``.
from repro.models import resnet_cifar, small, vit, wrn  # noqa: E402,F401

__all__ = ["available", "create", "register"]

from repro.models import c3  # noqa: E402,F401
from repro.models import slot_vit  # noqa: E402,F401
from repro.models import maxxvit_cifar, swin_cifar, wconv_net  # noqa: E402,F401
