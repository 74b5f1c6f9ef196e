"""Fourier Kolmogorov–Arnold attention (KArAt), chapter 26 (Maity, Hitsman, Li & Dutta,
"Kolmogorov-Arnold Attention: Is Learnable Attention Better For Vision Transformers?",
arXiv 2503.10632). Written from the paper card (the official code is unreleased).

Softmax is replaced by a learnable operator on each row of the pre-activation scores
A = QKᵀ/√d_h ∈ R^{N×N} (N tokens, class token included). With a Fourier basis of G
frequencies and rank r, for row k:

    u_p = Σ_{q=1..N} Σ_{m=1..G} [ a_{pqm} cos(m·A_kq) + b_{pqm} sin(m·A_kq) ],   p = 1..r
    σ(A)_k = W u,   W ∈ R^{N×r}

and the head outputs σ(A)·V. Per head that is 2·G·r·N + N·r parameters. "Blockwise" (G·B)
gives every (block, head) its own operator; "universal" (G·U) shares one operator per head
across all blocks — pass the same :class:`FourierKANOperator` to every block.

Initialisation: a, b ~ N(0, 1) (paper, Table 6). ``normalise=True`` divides them by √(2GN)
(our addition, for when N(0, 1) diverges). The paper does not state W's initialisation; here
it is U(−1/√r, 1/√r), ``nn.Linear``'s default for fan-in r. No base activation and no ℓ1 /
simplex projection (the paper's best variant).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import Attention

from repro.errors import ParameterError


class FourierKANOperator(nn.Module):
    """σ(A) for scores A ``[B, heads, N, N]``; one low-rank Fourier-KAN operator per head.

    Attributes:
        coef: ``[heads, r, N, 2G]``; ``coef[..., :G]`` are a_{pqm}, ``coef[..., G:]`` b_{pqm}
            (m = 1..G).
        w: ``[heads, N, r]`` (W of each head).
    """

    def __init__(self, num_heads: int, num_tokens: int, grid: int = 3, rank: int = 12,
                 normalise: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if min(num_heads, num_tokens, grid, rank) < 1:
            raise ParameterError("KArAt needs positive heads, tokens, grid and rank, got "
                                 f"{num_heads}, {num_tokens}, {grid}, {rank}")
        self.num_heads, self.num_tokens, self.grid, self.rank = num_heads, num_tokens, grid, rank
        scale = 1 / math.sqrt(2 * grid * num_tokens) if normalise else 1.0
        # ``generator``: a network that must start its shared layers like its softmax twin draws
        # the operator from its own stream, leaving the global one untouched.
        self.coef = nn.Parameter(torch.randn(num_heads, rank, num_tokens, 2 * grid, generator=generator) * scale)
        bound = 1 / math.sqrt(rank)
        self.w = nn.Parameter(torch.empty(num_heads, num_tokens, rank).uniform_(-bound, bound, generator=generator))
        self.register_buffer("freqs", torch.arange(1, grid + 1, dtype=torch.float32), persistent=False)

    def basis(self, scores: torch.Tensor) -> torch.Tensor:
        """[cos(m·A), sin(m·A)] for m = 1..G: ``[B, h, N, N]`` → ``[B, h, N, N, 2G]``."""
        mA = scores.unsqueeze(-1) * self.freqs.to(scores.dtype)
        return torch.cat([torch.cos(mA), torch.sin(mA)], dim=-1)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [B, h, N, N] → learned attention σ(A) [B, h, N, N] (rows need not sum to 1)."""
        if scores.shape[-1] != self.num_tokens or scores.shape[1] != self.num_heads:
            raise ParameterError(f"KArAt operator built for {self.num_heads} heads x {self.num_tokens} "
                                 f"tokens got scores {tuple(scores.shape)}")
        u = torch.einsum("bhkqg,hrqg->bhkr", self.basis(scores), self.coef.to(scores.dtype))
        return torch.einsum("bhkr,hpr->bhkp", u, self.w.to(scores.dtype))


class KANAttention(Attention):
    """timm ``Attention`` with softmax replaced by a :class:`FourierKANOperator`.

    Args:
        dim, num_heads, qkv_bias, attn_drop, proj_drop: as timm's ``Attention``.
        num_tokens: N, fixed by the image and patch size (class token included).
        operator: a shared operator (universal, G·U); ``None`` builds this block's own
            (blockwise, G·B) from ``grid``, ``rank`` and ``normalise``.
    """

    def __init__(self, dim: int, num_heads: int, num_tokens: int, *, grid: int = 3, rank: int = 12,
                 normalise: bool = False, operator: FourierKANOperator | None = None,
                 generator: torch.Generator | None = None,
                 qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.fused_attn = False  # there is no fused kernel for a learned operator
        self.operator = operator if operator is not None else FourierKANOperator(
            num_heads, num_tokens, grid=grid, rank=rank, normalise=normalise, generator=generator)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """x [B, N, dim] → [B, N, dim]. Masks are not supported (ViT blocks pass none)."""
        if attn_mask is not None or is_causal:
            raise ParameterError("KArAt attention does not support attention masks")
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.attn_drop(self.operator((q * self.scale) @ k.transpose(-2, -1)))
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))
