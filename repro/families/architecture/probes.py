"""Looking inside a trained network of the family: attention matrices of the slot ViT (softmax
or KArAt) on fixed images, and the spectral filters of SpectFormer blocks.

Attention is read at the input of each attention module's ``attn_drop`` (the matrix after
softmax, or after the learned KArAt operator, before any dropout), with timm's fused kernel
turned off so the matrix exists. KArAt rows need not sum to 1 and may be negative; rollout
(``repro.plots.attention_rollout``) assumes row-stochastic maps, so for KArAt the chapter
shows the per-head maps and, for the rollout, |σ(A)| with rows renormalised (said on the
figure).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ...data import MEAN, STD
from ...flops import unfused_attention
from ...layers.spectral_filter import SpectralFilter


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per attention block, ``[B, heads, N, N]`` (CPU, fp32) for images ``x`` (normalised, as
    the model was trained on). Blocks without attention (spectral) are skipped. The model runs
    once in eval mode; its training flag and attention settings are restored."""
    maps: list[torch.Tensor] = []

    def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        maps.append(inputs[0].detach().float().cpu())

    blocks = [b for b in getattr(model, "blocks", []) if hasattr(getattr(b, "attn", None), "attn_drop")]
    was = model.training
    handles = [b.attn.attn_drop.register_forward_hook(hook) for b in blocks]
    try:
        model.eval()
        with unfused_attention(model):
            model(x.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return maps


def stochastic(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Maps made row-stochastic for rollout: |A| with each row divided by its sum (softmax maps
    are returned unchanged up to rounding)."""
    out = []
    for a in maps:
        a = a.abs()
        out.append(a / a.sum(-1, keepdim=True).clamp_min(1e-12))
    return out


@torch.no_grad()
def spectral_filters(model: nn.Module) -> list[torch.Tensor]:
    """|W| of every spectral filter, ``[h, w//2 + 1]`` each (mean over channels), in block
    order: the gain each block applies per spatial frequency."""
    return [f.filter.abs().mean(-1).cpu() for f in model.modules() if isinstance(f, SpectralFilter)]


def fixed_images(data: Any, k: int = 6) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``k`` fixed test images, the first test image of each of the first ``k`` classes (the
    same images for every arm, seed and re-run): normalised as the models see them, in
    [0, 1] for drawing, and their test-set indices."""
    y = data.y_test.cpu()
    idx = [int((y == c).nonzero()[0]) for c in range(min(k, data.num_classes))]
    x01 = data.x_test[idx].float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x01 - mean) / std, x01, idx
