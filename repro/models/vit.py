"""Small Vision Transformers for 32x32 (or 16x16) images, built on timm.

Patch size 4 turns a 32x32 image into 64 tokens (+1 class token), the usual
choice for training ViTs from scratch on CIFAR.  Weights are always randomly
initialised; nothing is downloaded.

The timm ``drop_rate`` (its head dropout) is kept at 0 and replaced by this
package's ``dropout`` attribute so that ``features`` is deterministic in eval
*and* train mode apart from the transformer's own dropouts, and so that
``forward(x) == head(dropout(features(x)))`` as for every other model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from repro.models import register


class CifarViT(VisionTransformer):
    """timm ``VisionTransformer`` with the package's features/head convention.

    ``features(x)``: ``[B, 3, H, W] -> [B, embed_dim]`` (class-token pre-logits);
    ``forward(x)``: ``[B, 3, H, W] -> [B, num_classes]``.
    """

    def __init__(self, drop_rate: float = 0.0, **kw) -> None:
        super().__init__(drop_rate=0.0, **kw)
        self.dropout = nn.Dropout(drop_rate)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> pre-logits [B, embed_dim]."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x: [B, 3, H, W] -> logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def _vit(num_classes: int, embed_dim: int, depth: int, num_heads: int,
         mlp_ratio: float, img_size: int, **kw) -> CifarViT:
    return CifarViT(
        img_size=img_size,
        patch_size=4,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        class_token=True,
        global_pool="token",
        **kw,
    )


@register("vit_micro_p4")
def vit_micro_p4(num_classes: int = 100, img_size: int = 32, **kw) -> CifarViT:
    """ViT, patch 4, dim 64, depth 4, 2 heads, MLP ratio 2 (cpu tiers).

    Extra kwargs (``drop_rate``, ``drop_path_rate``, ``attn_drop_rate``,
    ``norm_layer`` ...) go to timm's ``VisionTransformer``.
    """
    kw.setdefault("mlp_ratio", 2.0)
    return _vit(num_classes, 64, 4, 2, img_size=img_size, **kw)


@register("vit_tiny_p4")
def vit_tiny_p4(num_classes: int = 100, img_size: int = 32, **kw) -> CifarViT:
    """ViT, patch 4, dim 192, depth 6, 3 heads, MLP ratio 4."""
    kw.setdefault("mlp_ratio", 4.0)
    return _vit(num_classes, 192, 6, 3, img_size=img_size, **kw)


@register("vit_small_p4")
def vit_small_p4(num_classes: int = 100, img_size: int = 32, **kw) -> CifarViT:
    """ViT, patch 4, dim 384, depth 6, 6 heads, MLP ratio 4."""
    kw.setdefault("mlp_ratio", 4.0)
    return _vit(num_classes, 384, 6, 6, img_size=img_size, **kw)


@contextmanager
def _unfused_attention(model: VisionTransformer) -> Iterator[None]:
    # The fused SDPA kernel never materialises the attention matrix, so the
    # explicit softmax path must be forced for it to be observable.
    saved = [blk.attn.fused_attn for blk in model.blocks]
    try:
        for blk in model.blocks:
            blk.attn.fused_attn = False
        yield
    finally:
        for blk, f in zip(model.blocks, saved):
            blk.attn.fused_attn = f


@torch.no_grad()
def attention_maps(model: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-block attention probabilities of a timm ViT.

    Args:
        model: a ``VisionTransformer`` (e.g. from ``create("vit_tiny_p4")``).
        x: images ``[B, 3, H, W]``.

    Returns:
        ``depth`` tensors of shape ``[B, heads, N, N]`` with ``N = 1 + (H/p)(W/p)``
        (class token first); each row sums to 1.

    The model is run in eval mode (so attention dropout does not perturb the
    maps); its training flag and fused-attention settings are restored.
    """
    maps: list[torch.Tensor] = []

    def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        # The input of attn_drop is the post-softmax matrix before any dropout.
        maps.append(inputs[0].detach())

    was_training = model.training
    handles = [blk.attn.attn_drop.register_forward_hook(hook) for blk in model.blocks]
    try:
        model.eval()
        with _unfused_attention(model):
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return maps
