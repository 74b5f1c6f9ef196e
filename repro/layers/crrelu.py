"""CRReLU, the corrected ReLU of chapter 20 (Sun, Wu et al., "A Method on Searching Better
Activation Functions", arXiv 2405.12954, ICLR 2025).

    CRReLU(x) = ReLU(x) + ε · x · exp(−x²/2)

with one learnable scalar ε per activation module, initialised to 0.01 (the paper's value;
the third-party implementations agree). The correction is an odd, Gaussian-windowed bump, so
the negative side is slightly below zero near 0 and ε = 0 is exactly ReLU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def crrelu(x: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """ReLU(x) + eps · x · exp(−x²/2), element-wise."""
    return F.relu(x) + eps * x * torch.exp(-0.5 * x * x)


class CRReLU(nn.Module):
    """CRReLU with a learnable scalar ``eps`` (a drop-in ``act_layer`` for timm's ``Mlp``).

    Args:
        eps_init: initial ε (paper: 0.01).
        inplace: ignored; accepted so the class can stand wherever ``nn.ReLU`` is built.
    """

    def __init__(self, eps_init: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.tensor(float(eps_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise; any shape."""
        return crrelu(x, self.eps.to(x.dtype))

    def extra_repr(self) -> str:
        return f"eps={self.eps.item():.4g}"
