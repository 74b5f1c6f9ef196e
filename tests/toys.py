"""Toy data the robustness tests share, with answers known by hand: four classes told apart by
mean brightness. Class k has brightness c_k ∈ {0.2, 0.4, 0.6, 0.8} ± 0.05, plus ±0.02 pixel
noise, so no image is closer than 0.05 to a boundary between classes."""
from __future__ import annotations

import torch

CENTRES = torch.tensor([0.2, 0.4, 0.6, 0.8])


def brightness_data(n: int, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """n images [n, 3, size, size] in [0, 1] whose class is their brightness level, and the labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    b = CENTRES[y] + (torch.rand(n, generator=g) - 0.5) * 0.1
    x = b.view(-1, 1, 1, 1) + (torch.rand(n, 3, size, size, generator=g) - 0.5) * 0.04
    return x.clamp(0, 1), y


def brightness_uint8(n: int, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`brightness_data` as uint8 images (the on-disk format a ``Dataset`` holds)."""
    x, y = brightness_data(n, seed, size)
    return (x * 255).round().to(torch.uint8), y
