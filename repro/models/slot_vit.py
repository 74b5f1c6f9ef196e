"""A small-image ViT with slots for the architecture family (issue "Architecture family").

One skeleton, built from timm's pieces, whose parts a chapter swaps by name so that arms
differ only in the part a paper studies:

* **token mixer** per block: ``"softmax"`` (timm ``Attention``), ``"spectral"`` (SpectFormer /
  GFNet global filter, chapter 33), ``"karat"`` (Fourier-KArAt, one operator per block and
  head — G·B, chapter 26) or ``"karat_universal"`` (one operator per head shared by every
  such block — G·U). ``mixer`` may be one name or a list with one per block, e.g.
  :func:`spectral_first` for SpectFormer's α.
* **activation** of every MLP: ``"gelu"``, ``"relu"`` or ``"crrelu"`` (chapter 20; one
  learnable ε per block).
* **gates**: ``"hag"`` puts chapter 19's hard-attention gates on each residual branch.

Layout: patch embedding (conv) → optional class token → learned position embedding →
blocks → LayerNorm → pool (class token, or mean over tokens without one) → ``dropout`` →
``head``. Attention blocks are pre-norm with two residuals; spectral blocks are SpectFormer's
single-residual block. Spectral mixing needs a pure token grid, so it requires
``class_token=False``. Follows :mod:`repro.models`' features/head convention.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import Attention, DropPath, Mlp, PatchEmbed, trunc_normal_

from repro.errors import ParameterError
from repro.layers.crrelu import CRReLU
from repro.layers.hard_attention_gate import HardAttentionGate
from repro.layers.kan_attention import FourierKANOperator, KANAttention
from repro.layers.spectral_filter import SpectralBlock
from repro.models import register

MIXERS = ("softmax", "spectral", "karat", "karat_universal")
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "crrelu": CRReLU}
GATES = (None, "hag")


def spectral_first(depth: int, alpha: int, reverse: bool = False) -> list[str]:
    """SpectFormer's mixer list: the first ``alpha`` blocks spectral, the rest softmax
    attention; ``reverse=True`` puts the ``alpha`` spectral blocks last instead."""
    if not 0 <= alpha <= depth:
        raise ParameterError(f"alpha must be in 0..{depth}, got {alpha}")
    mixers = ["spectral"] * alpha + ["softmax"] * (depth - alpha)
    return mixers[::-1] if reverse else mixers


class AttentionSlotBlock(nn.Module):
    """Pre-norm block: x + DropPath(g₁(Mixer(LN x))), then x + DropPath(g₂(MLP(LN x)));
    g₁, g₂ are hard-attention gates or identities."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, act_layer: type[nn.Module],
                 norm_layer: type[nn.Module], drop: float, drop_path: float, gates: bool,
                 gate_generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = mixer
        self.gate1 = HardAttentionGate(dim, generator=gate_generator) if gates else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.gate2 = HardAttentionGate(dim, generator=gate_generator) if gates else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, dim] → [B, N, dim]."""
        x = x + self.drop_path(self.gate1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.gate2(self.mlp(self.norm2(x))))


def _check(img_size: int, patch_size: int, embed_dim: int, depth: int, heads: int,
           mixer: str | Sequence[str], activation: str, gates: str | bool | None,
           class_token: bool) -> tuple[list[str], str | None]:
    # Every check runs before any module is built, so a bad config costs nothing.
    if depth < 1 or heads < 1 or patch_size < 1 or img_size < 1:
        raise ParameterError(f"depth, heads, patch and image size must be positive, got "
                             f"{depth}, {heads}, {patch_size}, {img_size}")
    if img_size % patch_size:
        raise ParameterError(f"image size {img_size} is not divisible by patch size {patch_size}")
    if embed_dim % heads:
        raise ParameterError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
    mixers = [mixer] * depth if isinstance(mixer, str) else list(mixer)
    if len(mixers) != depth:
        raise ParameterError(f"got {len(mixers)} mixers for {depth} blocks")
    unknown = sorted({m for m in mixers if m not in MIXERS})
    if unknown:
        raise ParameterError(f"unknown mixer {', '.join(map(repr, unknown))}; known: {', '.join(MIXERS)}")
    if activation not in ACTIVATIONS:
        raise ParameterError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    gate = "hag" if gates is True else (None if gates is False else gates)
    if gate not in GATES:
        raise ParameterError(f"unknown gates {gates!r}; known: None, 'hag'")
    if "spectral" in mixers and class_token:
        raise ParameterError("spectral mixing needs a pure token grid: build with class_token=False")
    return mixers, gate


class SlotViT(nn.Module):
    """Small-image ViT with a token-mixer, activation and gate slot (see the module docstring).

    ``features(x)``: ``[B, 3, H, W] → [B, embed_dim]``; ``forward(x) == head(dropout(features(x)))``.

    Args:
        img_size, patch_size: square images and patches; ``img_size % patch_size == 0``.
        embed_dim, depth, heads, mlp_ratio, num_classes: the usual ViT sizes.
        mixer: one of :data:`MIXERS`, or a list of ``depth`` of them.
        activation: one of :data:`ACTIVATIONS`.
        gates: ``None`` or ``"hag"`` (``True`` is an alias).
        class_token: prepend a class token and pool it; ``False`` pools the token mean.
        qkv_bias: bias on q, k, v (timm's ViT default).
        drop_rate: pre-head dropout (``self.dropout``); ``proj_drop_rate`` / ``attn_drop_rate`` /
            ``drop_path_rate`` (linear over depth) as in timm.
        karat_grid, karat_rank, karat_normalise: KArAt's G, r and the optional 1/√(2GN) scale.

    Raises:
        ParameterError: a bad size, an unknown mixer / activation / gate name, or spectral
            mixing with a class token — before anything is built.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 4, embed_dim: int = 64, depth: int = 4,
                 heads: int = 2, mlp_ratio: float = 2.0, num_classes: int = 100,
                 mixer: str | Sequence[str] = "softmax", activation: str = "gelu",
                 gates: str | bool | None = None, *, class_token: bool = True, qkv_bias: bool = True,
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm,
                 karat_grid: int = 3, karat_rank: int = 12, karat_normalise: bool = False,
                 in_chans: int = 3) -> None:
        mixers, gate = _check(img_size, patch_size, embed_dim, depth, heads, mixer, activation,
                              gates, class_token)
        super().__init__()
        self.mixers, self.activation, self.gates = mixers, activation, gate
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        n_tokens = self.grid[0] * self.grid[1] + int(class_token)
        self.num_tokens = n_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, embed_dim))
        self.pos_drop = nn.Dropout(proj_drop_rate)

        act = ACTIVATIONS[activation]
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        # G·U: one operator per head, the same object in every "karat_universal" block.
        # KArAt operators draw from their own stream too, for the same reason as the gates.
        kan_gen = (torch.Generator().manual_seed(torch.initial_seed() + 0x4A4E)
                   if any(m.startswith("karat") for m in mixers) else None)
        shared = (FourierKANOperator(heads, n_tokens, karat_grid, karat_rank, karat_normalise, generator=kan_gen)
                  if "karat_universal" in mixers else None)
        # Gates draw their θ from a stream of their own, seeded from the global seed, so a gated
        # network starts every shared layer exactly as its gate-free twin of the same seed.
        gen = torch.Generator().manual_seed(torch.initial_seed() + 0x6A7E) if gate else None
        blocks: list[nn.Module] = []
        for kind, dp in zip(mixers, dpr):
            if kind == "spectral":
                blocks.append(SpectralBlock(embed_dim, self.grid, mlp_ratio, act, norm_layer, proj_drop_rate, dp,
                                            gate=HardAttentionGate(embed_dim, generator=gen) if gate else None))
                continue
            if kind == "softmax":
                attn: nn.Module = Attention(embed_dim, heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                                            proj_drop=proj_drop_rate)
            else:
                attn = KANAttention(embed_dim, heads, n_tokens, grid=karat_grid, rank=karat_rank,
                                    normalise=karat_normalise, operator=shared, generator=kan_gen, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop_rate, proj_drop=proj_drop_rate)
            blocks.append(AttentionSlotBlock(embed_dim, attn, mlp_ratio, act, norm_layer, proj_drop_rate, dp,
                                             gates=gate is not None, gate_generator=gen))
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm_layer(embed_dim)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's "timm" ViT scheme: trunc-normal(0.02) linears and position embedding, tiny
        # class token; the KArAt / spectral / gate parameters keep their papers' inits.
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → normalised tokens after the last block [B, N, embed_dim]."""
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        return self.norm(self.blocks(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → pooled features [B, embed_dim]."""
        t = self.tokens(x)
        return t[:, 0] if self.cls_token is not None else t.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] → logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


# Names start with "vit_" so the registry's ViT conventions (img_size, LayerNorm) apply to them.
@register("vit_slot_micro_p4")
def vit_slot_micro_p4(num_classes: int = 100, img_size: int = 32, **kw) -> SlotViT:
    """SlotViT, patch 4, dim 64, depth 4, 2 heads, MLP ratio 2 (cpu tiers); softmax / GELU
    unless ``mixer`` / ``activation`` / ``gates`` say otherwise."""
    for key, val in {"patch_size": 4, "embed_dim": 64, "depth": 4, "heads": 2, "mlp_ratio": 2.0}.items():
        kw.setdefault(key, val)
    return SlotViT(img_size=img_size, num_classes=num_classes, **kw)


@register("vit_slot_tiny_p4")
def vit_slot_tiny_p4(num_classes: int = 100, img_size: int = 32, **kw) -> SlotViT:
    """SlotViT, patch 4, dim 192, depth 6, 3 heads, MLP ratio 4 (gpu tiers)."""
    for key, val in {"patch_size": 4, "embed_dim": 192, "depth": 6, "heads": 3, "mlp_ratio": 4.0}.items():
        kw.setdefault(key, val)
    return SlotViT(img_size=img_size, num_classes=num_classes, **kw)


@register("vit_spectformer_micro_p4")
def vit_spectformer_micro_p4(num_classes: int = 100, img_size: int = 32, alpha: int | None = None,
                             reverse: bool = False, **kw) -> SlotViT:
    """Micro SpectFormer: the first ``alpha`` (default depth/2) blocks spectral, the rest
    attention (``reverse=True``: attention first); no class token, mean pooling."""
    depth = kw.setdefault("depth", 4)
    kw.setdefault("mixer", spectral_first(depth, depth // 2 if alpha is None else alpha, reverse))
    kw.setdefault("class_token", False)
    return vit_slot_micro_p4(num_classes=num_classes, img_size=img_size, **kw)


@register("vit_karat_micro_p4")
def vit_karat_micro_p4(num_classes: int = 100, img_size: int = 32, universal: bool = False,
                       **kw) -> SlotViT:
    """Micro ViT with Fourier-KArAt attention, G = 3, r = 12: blockwise (G3B) or, with
    ``universal=True``, one operator per head shared across blocks (G3U)."""
    kw.setdefault("mixer", "karat_universal" if universal else "karat")
    return vit_slot_micro_p4(num_classes=num_classes, img_size=img_size, **kw)
