"""Small-image Swin and CoSwin for the architecture family (chapter 22, coswin).

A timm ``SwinTransformer`` (patch 2, window 4) sized for 16- and 32-px images, with its parts
re-homed in a module that follows :mod:`repro.models`' features/head convention. With
``local_branch="add"`` or ``"gate"`` every Swin block is replaced by
:class:`repro.layers.coswin_block.CoSwinBlock` with the same settings (window, shift on odd
blocks, drop-path, heads, MLP ratio) and the same attention/MLP weights, so that CoSwin and Swin
built from one seed share every Swin parameter and differ only by the local branch.

Token grids. ``img_size / patch_size`` tokens a side at stage 0, halved by every patch merging.
At a stage whose grid is larger than the window, the window must tile the grid (timm would
otherwise pad the map to whole windows, and CoSwin's block refuses that). A stage whose grid
is **not larger** than the window becomes a single full window without a shift (timm clamps
the window to the grid and drops the shift; we keep that behaviour and do not reject it), e.g.
at 32 px, patch 2, window 4 the grids are 16 → 8 → 4 → 2: stages 0–1 use 4×4 windows with
shifts, stage 2 one 4×4 window, stage 3 one 2×2 window.

Layout: patch embedding (conv, LayerNorm) → stages → LayerNorm → mean over tokens
(``features``, ``[B, embed_dim · 2^(stages-1)]``) → ``dropout`` → ``head`` (``nn.Linear``).

Registered: ``swin_micro`` / ``coswin_micro`` / ``swin_micro_wide`` (cpu tier) and
``swin_tiny_cifar`` / ``coswin_tiny_cifar`` / ``swin_tiny_cifar_wide`` (gpu tier). The ``_wide``
models are the card's parameter-matched controls: plain Swin whose ``embed_dim`` is the one
that brings its parameter count closest to the CoSwin model's (see :data:`WIDE_EMBED_DIM`).
Every builder takes ``local_branch`` so any of them can be made a CoSwin.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock

from repro.errors import ParameterError
from repro.layers.coswin_block import CoSwinBlock
from repro.models import register

LOCAL_BRANCHES = (None, "add", "gate")

#: ``embed_dim`` of the parameter-matched plain-Swin controls (100 classes, 32 px):
#: swin_micro 515,135, coswin_micro 557,599, embed 33 → 547,185 (−1.9 %; 34 would be +4.1 %);
#: swin_tiny_cifar 10,707,760, coswin_tiny_cifar 11,566,768, embed 66 → 11,384,442 (−1.6 %;
#: the embed must be even for stage 0's 2 heads; 68 would be +4.5 %).
#: Checked in tests/test_arch_models.py (within 5 %).
WIDE_EMBED_DIM = {"micro": 33, "tiny": 66}


def stage_grids(img_size: int, patch_size: int, num_stages: int) -> list[int]:
    """Token-grid side of every stage: ``img_size // patch_size`` halved at each merging."""
    g = img_size // patch_size
    return [g // 2 ** i for i in range(num_stages)]


def _check(img_size: int, patch_size: int, window_size: int, embed_dim: int, depths: Sequence[int],
           num_heads: Sequence[int], local_branch: str | None) -> None:
    # Every check runs before anything is built, so a bad config costs nothing.
    if min(img_size, patch_size, window_size, embed_dim) < 1:
        raise ParameterError(f"image, patch, window size and embed_dim must be positive, got "
                             f"{img_size}, {patch_size}, {window_size}, {embed_dim}")
    if len(depths) != len(num_heads) or not depths or min(depths) < 1:
        raise ParameterError(f"need one positive depth and one head count per stage, got depths "
                             f"{tuple(depths)}, heads {tuple(num_heads)}")
    if img_size % patch_size:
        raise ParameterError(f"image size {img_size} is not divisible by patch size {patch_size}")
    n = len(depths)
    grid = img_size // patch_size
    if grid % 2 ** (n - 1):
        # timm pads odd maps before merging; we keep the grid exact so every stage's map is
        # the image downsampled by a power of two.
        raise ParameterError(f"a {grid}x{grid} token grid cannot be halved {n - 1} times "
                             f"(image {img_size}, patch {patch_size}, {n} stages)")
    for i, g in enumerate(stage_grids(img_size, patch_size, n)):
        if g > window_size and g % window_size:
            raise ParameterError(f"window size {window_size} does not tile stage {i}'s {g}x{g} token grid "
                                 f"(image {img_size}, patch {patch_size})")
    for i, h in enumerate(num_heads):
        dim = embed_dim * 2 ** i
        if h < 1 or dim % h:
            raise ParameterError(f"stage {i}: dim {dim} is not divisible by {h} heads")
    if local_branch not in LOCAL_BRANCHES:
        raise ParameterError(f"unknown local_branch {local_branch!r}; known: None, 'add', 'gate'")


class SwinCifar(nn.Module):
    """Swin (or CoSwin) for small images; see the module docstring.

    ``features(x)``: ``[B, 3, H, W] → [B, num_features]`` (mean of the final normed tokens);
    ``forward(x) == head(dropout(features(x)))``.

    Args:
        img_size, patch_size: square images and patches; ``img_size % patch_size == 0``. The
            input must be exactly ``img_size`` (timm's strict patch embedding).
        window_size: attention window (tokens a side); see the module docstring for stages
            whose grid is not larger than it.
        embed_dim, depths, num_heads: stage ``i`` has ``embed_dim · 2^i`` channels,
            ``depths[i]`` blocks and ``num_heads[i]`` heads.
        mlp_ratio, qkv_bias: as timm.
        local_branch: ``None`` (Swin), ``"add"`` (CoSwin as reconstructed) or ``"gate"``
            (CoSwin with a zero-init scalar gate on the local branch: equals Swin at init).
        drop_rate: pre-head dropout (``self.dropout``); ``proj_drop_rate``, ``attn_drop_rate``
            and ``drop_path_rate`` as timm (drop-path linear over all blocks).

    Raises:
        ParameterError: a bad size, a window that does not tile a stage's grid, heads that do
            not divide a stage's width, or an unknown ``local_branch`` — before anything is built.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 2, window_size: int = 4, embed_dim: int = 32,
                 depths: Sequence[int] = (1, 1, 2), num_heads: Sequence[int] = (1, 2, 4),
                 num_classes: int = 100, *, local_branch: str | None = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, in_chans: int = 3) -> None:
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        _check(img_size, patch_size, window_size, embed_dim, depths, num_heads, local_branch)
        super().__init__()
        self.img_size, self.patch_size, self.window_size = img_size, patch_size, window_size
        self.local_branch = local_branch
        self.grids = stage_grids(img_size, patch_size, len(depths))
        # timm builds and initialises everything (its "" init: trunc-normal(0.02) linears); we
        # keep its modules and drop its head wrapper, whose pooling/dropout we do ourselves.
        body = SwinTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                               num_classes=num_classes, embed_dim=embed_dim, depths=depths,
                               num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
                               qkv_bias=qkv_bias, drop_rate=0.0, proj_drop_rate=proj_drop_rate,
                               attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        self.patch_embed = body.patch_embed
        self.layers = body.layers
        self.norm = body.norm
        self.num_features: int = body.num_features
        self.dropout = nn.Dropout(drop_rate)
        self.head: nn.Linear = body.head.fc
        if local_branch is not None:
            # Replaced after the whole Swin is built, so the Swin weights are those of the plain
            # model of the same seed; only the local branches draw extra random numbers.
            for stage in self.layers:
                stage.blocks = nn.Sequential(*[
                    _to_coswin(b, local_branch, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate)
                    for b in stage.blocks])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → final normed token map [B, h, w, num_features] (channels last)."""
        return self.norm(self.layers(self.patch_embed(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → pooled features [B, num_features]."""
        return self.tokens(x).mean(dim=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative-position tables, which timm exempts from weight decay."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}


def _to_coswin(block: SwinTransformerBlock, fuse: str, mlp_ratio: float, qkv_bias: bool,
               proj_drop: float, attn_drop: float) -> CoSwinBlock:
    # The block's own window/shift are already clamped by timm (a grid not larger than the
    # window → one full window, no shift), which is what CoSwinBlock's tiling check needs.
    dp = block.drop_path1.drop_prob if isinstance(block.drop_path1, DropPath) else 0.0
    co = CoSwinBlock(block.dim, tuple(block.input_resolution), num_heads=block.attn.num_heads,
                     window_size=block.window_size[0], shift_size=block.shift_size[0], fuse=fuse,
                     mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                     drop_path=dp)
    missing, unexpected = co.load_state_dict(block.state_dict(), strict=False)
    # Anything but the new branch missing means the settings did not match the Swin block.
    if unexpected or any(not k.startswith("local") for k in missing):
        raise RuntimeError(f"CoSwin block does not match its Swin block: missing {missing}, "
                           f"unexpected {unexpected}")
    assert co.window_size == block.window_size and co.shift_size == block.shift_size
    return co


_MICRO = dict(patch_size=2, window_size=4, embed_dim=32, depths=(1, 1, 2), num_heads=(1, 2, 4))
_TINY = dict(patch_size=2, window_size=4, embed_dim=64, depths=(2, 2, 4, 2), num_heads=(2, 4, 8, 16))


def _build(base: dict, num_classes: int, img_size: int, local_branch: str | None, kw: dict) -> SwinCifar:
    for key, val in base.items():
        kw.setdefault(key, val)
    return SwinCifar(img_size=img_size, num_classes=num_classes, local_branch=local_branch, **kw)


@register("swin_micro")
def swin_micro(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0,
               local_branch: str | None = None, **kw) -> SwinCifar:
    """Swin, patch 2, window 4, embed 32, depths (1, 1, 2), heads (1, 2, 4) (cpu tier);
    0.515 M parameters at 100 classes. Builds at 16 and 32 px.

    With these depths no block is ever shifted: stages 0 and 1 have one (unshifted) block each
    and stage 2's grid (4 at 32 px, 2 at 16 px) is a single window, so windows of the early
    stages exchange information only through patch merging."""
    return _build(_MICRO, num_classes, img_size, local_branch, dict(kw, drop_rate=drop_rate))


@register("coswin_micro")
def coswin_micro(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0,
                 local_branch: str | None = "add", **kw) -> SwinCifar:
    """:func:`swin_micro` with the CoSwin local branch in every block (``"add"``); 0.558 M."""
    return _build(_MICRO, num_classes, img_size, local_branch, dict(kw, drop_rate=drop_rate))


@register("swin_micro_wide")
def swin_micro_wide(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0,
                    local_branch: str | None = None, **kw) -> SwinCifar:
    """Parameter-matched control for :func:`coswin_micro`: plain Swin, embed 33 (0.547 M)."""
    kw.setdefault("embed_dim", WIDE_EMBED_DIM["micro"])
    return _build(_MICRO, num_classes, img_size, local_branch, dict(kw, drop_rate=drop_rate))


@register("swin_tiny_cifar")
def swin_tiny_cifar(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0,
                    local_branch: str | None = None, **kw) -> SwinCifar:
    """The card's gpu Swin: patch 2, window 4, embed 64, depths (2, 2, 4, 2), heads
    (2, 4, 8, 16); grids 16/8/4/2 at 32 px (the last two stages are single windows); 10.7 M."""
    return _build(_TINY, num_classes, img_size, local_branch, dict(kw, drop_rate=drop_rate))


@register("coswin_tiny_cifar")
def coswin_tiny_cifar(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0,
                      local_branch: str | None = "add", **kw) -> SwinCifar:
    """:func:`swin_tiny_cifar` with the CoSwin local branch in every block; 11.6 M."""
    return _build(_TINY, num_classes, img_size, local_branch, dict(kw, drop_rate=drop_rate))


@register("swin_tiny_cifar_wide")
def swin_tiny_cifar_wide(num_classes: int = 100, img_size: int = 32, drop_rate: float = 0.0,
                         local_branch: str | None = None, **kw) -> SwinCifar:
    """Parameter-matched control for :func:`coswin_tiny_cifar`: plain Swin, embed 66 (11.4 M)."""
    kw.setdefault("embed_dim", WIDE_EMBED_DIM["tiny"])
    return _build(_TINY, num_classes, img_size, local_branch, dict(kw, drop_rate=drop_rate))
