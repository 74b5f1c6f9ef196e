"""Spectral (Fourier-gating) token mixing of chapter 33 (Patro, Namboodiri & Agneeswaran,
"SpectFormer: Frequency and Attention is what you need in a Vision Transformer", arXiv
2304.06446), itself GFNet's global filter (Rao et al., NeurIPS 2021).

For tokens x on an h×w grid with C channels:

    X = rFFT2(x)            (over the two grid axes, orthonormal: X ∈ ℂ^{h×(w/2+1)×C})
    Y = X ⊙ W               (a learnable complex filter W ∈ ℂ^{h×(⌊w/2⌋+1)×C})
    y = irFFT2(Y, size h×w)

which is a circular convolution of every channel over the grid with a learned (real) kernel;
W = 1 is the identity. Real and imaginary parts of W start N(0, 0.02²), as in the official
code. The transform is computed in fp32 whatever the autocast dtype (bf16 FFTs are unsupported
for non-power-of-two sizes and lose accuracy).

SpectFormer's (vanilla) spectral block has one residual:
x ← x + DropPath(MLP(LN(Filter(LN(x))))).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp

from repro.errors import ParameterError


class SpectralFilter(nn.Module):
    """GFNet global filter on tokens ``[B, h·w, C]`` laid out row-major on an ``h×w`` grid."""

    def __init__(self, dim: int, grid: tuple[int, int], std: float = 0.02) -> None:
        super().__init__()
        h, w = grid
        if h < 1 or w < 1:
            raise ParameterError(f"spectral filter grid must be positive, got {grid}")
        self.grid = (h, w)
        # (…, 2) real/imag pairs: complex parameters are awkward for optimisers and weight decay.
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2) * std)

    @property
    def filter(self) -> torch.Tensor:
        """The complex filter W ∈ ℂ^{h×(⌊w/2⌋+1)×C}."""
        # contiguous: fit's channels_last (CUDA, CPU bf16) re-strides every 4-D parameter, and
        # view_as_complex needs the real/imaginary pair adjacent in memory.
        return torch.view_as_complex(self.complex_weight.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, h·w, C] → [B, h·w, C] (same dtype as x)."""
        B, N, C = x.shape
        h, w = self.grid
        if N != h * w:
            raise ParameterError(f"spectral filter expects {h}x{w}={h * w} tokens, got {N}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = x.float().reshape(B, h, w, C)
            z = torch.fft.rfft2(z, dim=(1, 2), norm="ortho")
            z = torch.fft.irfft2(z * self.filter, s=(h, w), dim=(1, 2), norm="ortho")
        return z.reshape(B, N, C).to(x.dtype)


class SpectralBlock(nn.Module):
    """SpectFormer's spectral block: x + DropPath(MLP(LN(Filter(LN(x))))).

    ``gate``, if given, multiplies the branch output (chapter 19's gates; identity otherwise).
    """

    def __init__(self, dim: int, grid: tuple[int, int], mlp_ratio: float = 4.0,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] = nn.LayerNorm,
                 drop: float = 0.0, drop_path: float = 0.0, gate: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.filter = SpectralFilter(dim, grid)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.gate = gate if gate is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, h·w, C] → [B, h·w, C]."""
        return x + self.drop_path(self.gate(self.mlp(self.norm2(self.filter(self.norm1(x))))))
