"""FLOP counts against hand-computed totals (multiply–add = 2 FLOPs; see repro.flops)."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from repro.flops import count_flops
from repro.layers.spectral_filter import SpectralFilter


def _vit_flops_by_hand(img: int, p: int, d: int, depth: int, mlp: int, classes: int) -> tuple[int, int]:
    """(total, attention) forward FLOPs of a class-token timm ViT on one image."""
    P = (img // p) ** 2  # patches
    N = P + 1            # tokens
    patch_embed = 2 * P * d * (3 * p * p)
    qkv, proj = 2 * N * d * 3 * d, 2 * N * d * d
    mlp_flops = 2 * (2 * N * d * (mlp * d))
    attention = 2 * 2 * N * N * d  # Q·Kᵀ and A·V over all heads
    head = 2 * d * classes
    total = patch_embed + depth * (qkv + proj + mlp_flops + attention) + head
    return total, depth * attention


def test_timm_vit_count_includes_attention() -> None:
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                          num_classes=10).train()
    fused = [b.attn.fused_attn for b in m.blocks]
    got = count_flops(m, (1, 3, 16, 16))
    total, attention = _vit_flops_by_hand(16, 4, 32, 2, 2, 10)
    assert attention == 2 * 2 * 17 ** 2 * 32 * 2 == 73_984
    assert got["flops"] == total == 680_832
    assert got["by_op"]["bmm"] == attention
    assert got["params"] == sum(p.numel() for p in m.parameters())
    # Settings restored.
    assert m.training and [b.attn.fused_attn for b in m.blocks] == fused


def test_plain_counter_misses_fused_attention_on_cpu() -> None:
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                          num_classes=10)
    if not any(b.attn.fused_attn for b in m.blocks):  # timm configured without SDPA: nothing to show
        return
    total, attention = _vit_flops_by_hand(16, 4, 32, 2, 2, 10)
    assert count_flops(m, torch.zeros(1, 3, 16, 16), fused_attention_off=False)["flops"] == total - attention


def test_conv_and_batch_scale() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    one = count_flops(conv, (1, 3, 8, 8))
    assert one["flops"] == 2 * (8 * 8 * 8) * (3 * 3 * 3) == 27_648  # bias not counted
    assert one["params"] == 8 * 27 + 8
    assert count_flops(conv, (4, 3, 8, 8))["flops"] == 4 * one["flops"]


def test_fft_convention() -> None:
    # 8×8 grid, 4 channels: each real FFT is 2.5·n·log₂n with n = 64, over 4 channels, twice.
    f = SpectralFilter(4, (8, 8))
    got = count_flops(f, (1, 64, 4))
    assert got["by_op"] == {"_fft_r2c": 3840, "_fft_c2r": 3840}
    assert got["flops"] == 2 * int(2.5 * 64 * 4 * 6)
    assert got["params"] == 8 * 5 * 4 * 2
