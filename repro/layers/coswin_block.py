"""CoSwin block, chapter 22 (Khadka, Rizk, Wang & Santosh, "CoSwin: Convolution Enhanced
Hierarchical Shifted Window Attention For Small-Scale Vision", arXiv 2509.08959).

A Swin block whose (shifted-)window attention branch gains a convolutional local branch on
the same normalised input, fused by addition:

    x ← x + Fuse(W-MSA/SW-MSA(LN x), Local(LN x));   x ← x + FFN(LN x)
    Local = 3×3 depthwise conv → BatchNorm → GELU → 1×1 conv   (on the H×W×C token map)

The card marks the kernel and the fusion as a **reconstruction** from the abstract and a
secondary review (unverified against the official code). ``fuse="gate"`` is the card's safe
variant: the local branch is scaled by a learnable scalar that starts at 0, so the block
starts as the plain Swin block.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.swin_transformer import SwinTransformerBlock

from repro.errors import ParameterError


class LocalBranch(nn.Module):
    """3×3 depthwise conv → BN → GELU → 1×1 conv on ``[B, H, W, C]`` maps (channels last)."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.GELU()
        self.pw = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] → [B, H, W, C]."""
        y = self.pw(self.act(self.bn(self.dw(x.permute(0, 3, 1, 2)))))
        return y.permute(0, 2, 3, 1)


class CoSwinBlock(SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` plus :class:`LocalBranch` (see the module docstring).

    Args:
        dim, input_resolution, num_heads, window_size, shift_size, **swin_kw: as timm's block.
        fuse: ``"add"`` (the paper's default as reconstructed) or ``"gate"`` (zero-init scalar).

    Raises:
        ParameterError: a window that does not tile the token grid, a shift not smaller than
            the window, or an unknown ``fuse`` — before anything is built.
    """

    def __init__(self, dim: int, input_resolution: int | tuple[int, int], num_heads: int = 4,
                 window_size: int = 4, shift_size: int = 0, *, fuse: str = "add", **swin_kw) -> None:
        H, W = (input_resolution, input_resolution) if isinstance(input_resolution, int) else input_resolution
        if window_size < 1 or H % window_size or W % window_size:
            raise ParameterError(f"window size {window_size} does not tile the {H}x{W} token grid")
        if not 0 <= shift_size < window_size:
            raise ParameterError(f"shift size must be in 0..{window_size - 1}, got {shift_size}")
        if fuse not in ("add", "gate"):
            raise ParameterError(f"unknown fuse {fuse!r}; known: 'add', 'gate'")
        super().__init__(dim, (H, W), num_heads=num_heads, window_size=window_size,
                         shift_size=shift_size, **swin_kw)
        self.local = LocalBranch(dim)
        self.local_gate = nn.Parameter(torch.zeros(())) if fuse == "gate" else None

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        # timm calls _attn on LN(x), so both branches see the same normalised map.
        local = self.local(x)
        if self.local_gate is not None:
            local = self.local_gate * local
        return super()._attn(x) + local
