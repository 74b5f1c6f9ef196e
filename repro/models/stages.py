"""A network as stem → stages → pool → head, for methods that tap intermediate stages
(USKD's weak head, LSSKD's auxiliary branches). Works for the CIFAR ResNets (``stem``,
``stages``) and the ``cnn3`` family (a ``trunk`` of conv-norm-ReLU-pool groups); the returned
modules are the model's own (no copies), so training them trains the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def split_stages(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(stem, [stage_1 … stage_S]) such that ``pool(stage_S(…stage_1(stem(x))))`` gives features."""
    if hasattr(model, "stem") and hasattr(model, "stages"):
        return model.stem, list(model.stages)
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, nn.Sequential):
        ends = [i for i, m in enumerate(trunk) if isinstance(m, nn.MaxPool2d)]
        if ends:
            starts = [0] + [e + 1 for e in ends[:-1]]
            return nn.Identity(), [trunk[s:e + 1] for s, e in zip(starts, ends)]
    raise ValueError(f"{type(model).__name__} has no stem/stages or pooled conv trunk to split")


def stage_outputs(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every stage's output map and the model's logits, in one pass (same result as model(x))."""
    stem, stages = split_stages(model)
    h = stem(x)
    outs = []
    for st in stages:
        h = st(h)
        outs.append(h)
    logits = model.head(model.dropout(torch.flatten(model.pool(h), 1)))
    return outs, logits


def stage_shapes(model: nn.Module, image_size: int = 32) -> list[tuple[int, int]]:
    """``(channels, side)`` of each stage's output map (one dry forward on a 2-image batch in
    eval mode; the training flag is restored)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        outs, _ = stage_outputs(model, torch.zeros(2, 3, image_size, image_size, device=dev))
    model.train(was)
    return [(int(o.shape[1]), int(o.shape[-1])) for o in outs]


def stage_channels(model: nn.Module, image_size: int = 32) -> list[int]:
    """Output channels of each stage (:func:`stage_shapes`)."""
    return [c for c, _ in stage_shapes(model, image_size)]
