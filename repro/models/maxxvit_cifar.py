"""Astroformer and CoAtNet stacks for small images, chapter 29 (astroformer).

Both are timm's ``MaxxVit`` (CoAtNet machinery: MBConv "C" blocks, relative-position
transformer "T" blocks, ``NormMlpClassifierHead``) built from one :class:`MaxxVitCfg` that
differs only in ``block_type``: ``"ccct"`` (Astroformer: one more conv stage, a single
attention stage) or ``"cctt"`` (CoAtNet). Any string of ``c``/``t``, one letter a stage, is
accepted (e.g. ``"cttt"`` for the card's third stack ablation).

Resolution. timm's layout has a total stride of 32 (stride-2 stem, four stride-2 stages), so a
32-px image would reach the last stage as a 1×1 map. ``reduction`` sets the total stride:

* ``32``: timm unchanged;
* ``16``: stem conv stride 1 (the card's cpu plan): at 32 px the stages run at 16/8/4/2;
* ``8`` (default): stem stride 1 **and** stage 0's first block stride 1: at 32 px the stages
  run at 32/16/8/4, so Astroformer's T stage sees 4×4 tokens and CoAtNet's 8×8 and 4×4 — the
  sizes the card's gpu plan asks for (at 16 px: 2×2, and 4×4 / 2×2).

The relative-position tables of the T blocks cover the whole map and timm sizes them from
``img_size`` at build time, so the model is built for ``img_size · 32 / reduction`` and the
strides are lowered afterwards. (The card's recipe — build at 4× the image and lower only the
stem stride — gives stage maps of 16/8/4/2 at 32 px against tables sized for 32/16/8/4 and fails
in the first T block with a shape error; checked.) Do not call timm's ``set_input_size`` on the
parts: it assumes the stock strides.

Layout and the registry convention: stem → stages → timm's head split in two:
``features`` = global average pool → LayerNorm → FC to ``head_hidden_size`` → tanh (timm's
``pre_logits``, ``[B, head_hidden_size]``), ``dropout`` = the head's dropout, ``head`` = its final
FC. This keeps ``NormMlpClassifierHead`` exactly (timm drops out between the tanh and the final
FC too). With ``head_hidden_size=0`` timm's plain head is used instead: final LayerNorm2d →
pool (``features``, ``[B, dims[-1]]``) → dropout → FC. Weights use timm's ``vit_eff`` init.

Registered (100 classes): ``astroformer_micro`` / ``coatnet_micro`` (cpu tier: dims
(16, 32, 64, 128), depths (1, 1, 1, 1), stem 16) and ``astroformer_tiny`` / ``coatnet_tiny`` (gpu:
dims (48, 96, 192, 384), depths (1, 2, 3, 1), stem 48). Head hidden size = last dim, as in
Astroformer. Attention head dim is timm's 32, so every T stage's width must be a multiple of 32.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn as nn
from timm.models.maxxvit import (MaxxVit, MaxxVitCfg, MaxxVitTransformerCfg, MbConvBlock,
                                 TransformerBlock2d)

from repro.errors import ParameterError
from repro.models import register

STACKS = {"astroformer": "ccct", "coatnet": "cctt"}
REDUCTIONS = (8, 16, 32)


def stage_sizes(img_size: int, reduction: int, num_stages: int = 4) -> list[int]:
    """Side of every stage's output map for a square ``img_size`` input."""
    first = img_size * 8 // reduction  # stage 0's output: the stock layout's img/4, times 32/reduction
    return [first // 2 ** i for i in range(num_stages)]


def _check(stack: str, dims: Sequence[int], depths: Sequence[int], stem_width: int, img_size: int,
           reduction: int, dim_head: int) -> tuple[str, ...]:
    # Every check runs before anything is built, so a bad config costs nothing.
    if not isinstance(stack, str) or not stack or set(stack.lower()) - {"c", "t"}:
        raise ParameterError(f"unknown stack {stack!r}: one letter per stage, 'c' (MBConv) or 't' "
                             f"(transformer), e.g. 'ccct' (Astroformer) or 'cctt' (CoAtNet)")
    n = len(stack)
    if len(dims) != n or len(depths) != n:
        raise ParameterError(f"stack {stack!r} has {n} stages but got {len(dims)} dims and {len(depths)} depths")
    if min(depths) < 1 or min(dims) < 1 or stem_width < 1:
        raise ParameterError(f"dims, depths and stem width must be positive, got {tuple(dims)}, "
                             f"{tuple(depths)}, {stem_width}")
    if reduction not in REDUCTIONS:
        raise ParameterError(f"reduction must be one of {REDUCTIONS}, got {reduction}")
    if n != 4:
        # The reduction arithmetic assumes timm's four stride-2 stages after the stem.
        raise ParameterError(f"need 4 stages, got stack {stack!r}")
    if img_size < 1 or img_size % reduction:
        raise ParameterError(f"image size {img_size} is not divisible by the total stride {reduction}: "
                             f"the last stage's map would not be whole")
    for i, (kind, d) in enumerate(zip(stack.lower(), dims)):
        if kind == "t" and d % dim_head:
            raise ParameterError(f"transformer stage {i}: width {d} is not a multiple of the head dim {dim_head}")
    return tuple(stack.upper())


def _unstride(block: nn.Module) -> None:
    """Make a stride-2 first block of a stage stride 1 (same weights, no downsampling)."""
    if isinstance(block, MbConvBlock):
        # stride_mode 'dw': the stride sits in the depthwise conv (3×3, padding 1, which stays
        # "same" at stride 1); the shortcut pools 2×2 before its 1×1 projection.
        block.conv2_kxk.stride = (1, 1)
        block.shortcut.pool = nn.Identity()
        if not isinstance(block.down, nn.Identity):
            block.down.pool = nn.Identity()
    elif isinstance(block, TransformerBlock2d):
        block.shortcut.pool = nn.Identity()
        block.norm1.down.pool = nn.Identity()
    else:
        raise ParameterError(f"cannot lower the stride of a {type(block).__name__}")


class MaxxVitCifar(nn.Module):
    """timm MaxxVit with a lowered total stride, as a ``repro.models`` network (module docstring).

    ``features(x)``: ``[B, 3, img_size, img_size] → [B, num_features]``;
    ``forward(x) == head(dropout(features(x)))``.

    Args:
        stack: one letter per stage, ``c`` (MBConv) or ``t`` (transformer); case-insensitive.
        dims, depths, stem_width: timm's ``embed_dim``, ``depths``, ``stem_width``.
        img_size: the input side the network is built for (the T blocks' relative-position
            tables are sized for it; another size fails in the first T block).
        reduction: total stride, 8, 16 or 32 (see the module docstring).
        head_hidden_size: ``None`` = ``dims[-1]`` (Astroformer); ``0`` = timm's plain head.
        drop_rate: the head's dropout (``self.dropout``); ``drop_path_rate`` as timm (stage-wise).
        dim_head: attention head dim (timm's 32).

    Raises:
        ParameterError: an unknown stack, mismatched lengths, an image not divisible by the
            total stride, or a T stage whose width is not a multiple of ``dim_head`` — before
            anything is built.
    """

    def __init__(self, stack: str = "ccct", dims: Sequence[int] = (16, 32, 64, 128),
                 depths: Sequence[int] = (1, 1, 1, 1), stem_width: int = 16, img_size: int = 32,
                 num_classes: int = 100, *, reduction: int = 8, head_hidden_size: int | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, dim_head: int = 32,
                 in_chans: int = 3) -> None:
        dims, depths = tuple(int(d) for d in dims), tuple(int(d) for d in depths)
        block_type = _check(stack, dims, depths, stem_width, img_size, reduction, dim_head)
        super().__init__()
        self.stack = "".join(block_type).lower()
        self.img_size, self.reduction = img_size, reduction
        self.stage_sizes = stage_sizes(img_size, reduction, len(dims))
        hidden = dims[-1] if head_hidden_size is None else head_hidden_size
        cfg = MaxxVitCfg(embed_dim=dims, depths=depths, block_type=block_type, stem_width=stem_width,
                         head_hidden_size=hidden or None,
                         transformer_cfg=replace(MaxxVitTransformerCfg(), dim_head=dim_head))
        # Built for the size the stock stride-32 layout would need to give our stage maps.
        body = MaxxVit(cfg, img_size=img_size * 32 // reduction, in_chans=in_chans,
                       num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        if reduction <= 16:
            body.stem.conv1.stride = (1, 1)
            body.stem.stride = 1
        if reduction <= 8:
            _unstride(body.stages[0].blocks[0])
        self.stem = body.stem
        self.stages = body.stages
        self.norm = body.norm  # timm's final norm: LayerNorm2d for the plain head, else Identity
        h = body.head
        self.pool = h.global_pool
        self.head_norm = getattr(h, "norm", nn.Identity())
        self.flatten = nn.Flatten(1)
        self.pre_logits = getattr(h, "pre_logits", nn.Identity())
        self.num_features: int = body.head_hidden_size
        self.dropout = nn.Dropout(drop_rate)
        self.head: nn.Linear = h.fc

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → last stage's map [B, dims[-1], H / reduction, W / reduction]."""
        return self.norm(self.stages(self.stem(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → pooled (pre-logits) features [B, num_features]."""
        x = self.pool(self.feature_map(x))
        return self.pre_logits(self.flatten(self.head_norm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))

    def stage_types(self) -> list[list[str]]:
        """Block class names per stage, e.g. ``[['MbConvBlock'], …, ['TransformerBlock2d']]``."""
        return [[type(b).__name__ for b in s.blocks] for s in self.stages]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative-position tables, which timm exempts from weight decay."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}


_MICRO = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), stem_width=16)
_TINY = dict(dims=(48, 96, 192, 384), depths=(1, 2, 3, 1), stem_width=48)


def _build(base: dict, stack: str, num_classes: int, img_size: int, kw: dict) -> MaxxVitCifar:
    for key, val in base.items():
        kw.setdefault(key, val)
    kw.setdefault("stack", stack)
    return MaxxVitCifar(img_size=img_size, num_classes=num_classes, **kw)


@register("astroformer_micro")
def astroformer_micro(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0, **kw) -> MaxxVitCifar:
    """C-C-C-T, dims (16, 32, 64, 128), depths (1, 1, 1, 1), stem 16, total stride 8 (cpu);
    0.267 M parameters at 100 classes, 31 MFLOPs at 32 px."""
    return _build(_MICRO, STACKS["astroformer"], num_classes, img_size, dict(kw, drop_rate=drop_rate))


@register("coatnet_micro")
def coatnet_micro(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0, **kw) -> MaxxVitCifar:
    """C-C-T-T, otherwise :func:`astroformer_micro`; 0.275 M, 31 MFLOPs at 32 px."""
    return _build(_MICRO, STACKS["coatnet"], num_classes, img_size, dict(kw, drop_rate=drop_rate))


@register("astroformer_tiny")
def astroformer_tiny(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0, **kw) -> MaxxVitCifar:
    """C-C-C-T, dims (48, 96, 192, 384), depths (1, 2, 3, 1), stem 48, total stride 8 (gpu);
    3.13 M parameters, 377 MFLOPs at 32 px (the card expected 5–8 M for these sizes)."""
    return _build(_TINY, STACKS["astroformer"], num_classes, img_size, dict(kw, drop_rate=drop_rate))


@register("coatnet_tiny")
def coatnet_tiny(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0, **kw) -> MaxxVitCifar:
    """C-C-T-T, otherwise :func:`astroformer_tiny`; 3.35 M, 414 MFLOPs at 32 px."""
    return _build(_TINY, STACKS["coatnet"], num_classes, img_size, dict(kw, drop_rate=drop_rate))
