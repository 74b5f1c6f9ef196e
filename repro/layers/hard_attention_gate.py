"""Hard-attention gates with gradient routing, chapter 19 (Roffo, Biffi, Salvagnini &
Cherubini, "Hard-Attention Gates with Gradient Routing for Endoscopic Image Computing",
MICCAI 2024, arXiv 2407.04400). Written from the paper card only (the official repository
has no licence).

Gate: a learnable vector θ ∈ R^D scales features channel-wise, x ↦ x ⊙ σ(θ). θ starts
Xavier-normal with the sigmoid gain (std = √(2/(D+1)) for a 1×D fan), so σ(θ) ≈ 0.5. In a
ViT block (LayerScale and drop-path removed):

    x ← x + Attn(LN(x)) ⊙ σ(θ₁);   x ← x + MLP(LN(x)) ⊙ σ(θ₂).

Gradient routing (GR), per batch, with two optimisers (gates / everything else):

1. forward, loss, backward; clip the gates' gradient norm (128); step **only** the gate
   optimiser;
2. forward again with the updated gates, loss, backward; clip the other parameters' norm (10);
   step the main optimiser.

The official loop zeroes the main parameters' gradients once per batch, so step 2 uses the
**sum** of both passes' gradients; ``accumulate=False`` uses pass 2's alone.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


class HardAttentionGate(nn.Module):
    """x ↦ x ⊙ σ(θ) with θ ∈ R^dim along ``channel_axis`` (−1 for tokens, 1 for NCHW maps)."""

    def __init__(self, dim: int, channel_axis: int = -1) -> None:
        super().__init__()
        self.channel_axis = channel_axis
        self.theta = nn.Parameter(torch.empty(dim))
        nn.init.xavier_normal_(self.theta.data.view(1, dim), gain=nn.init.calculate_gain("sigmoid"))

    def values(self) -> torch.Tensor:
        """σ(θ) [dim], the current gate openings."""
        return torch.sigmoid(self.theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Any shape with ``dim`` channels on ``channel_axis``."""
        shape = [1] * x.ndim
        shape[self.channel_axis] = -1
        return x * self.values().to(x.dtype).view(shape)


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """θ of every :class:`HardAttentionGate` in ``model``."""
    return [m.theta for m in model.modules() if isinstance(m, HardAttentionGate)]


def split_gate_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(gate parameters, all other parameters) — one optimiser each under gradient routing."""
    gates = {id(p) for p in gate_parameters(model)}
    params = list(model.parameters())
    return [p for p in params if id(p) in gates], [p for p in params if id(p) not in gates]


def gradient_routing_step(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          x: torch.Tensor, y: torch.Tensor, main_opt: torch.optim.Optimizer,
                          gate_opt: torch.optim.Optimizer, *, gate_clip: float | None = 128.0,
                          main_clip: float | None = 10.0, accumulate: bool = True) -> tuple[float, float]:
    """One GR batch (see the module docstring): a gate-only step, then a main step.

    ``main_opt`` must hold the non-gate parameters and ``gate_opt`` the gates
    (:func:`split_gate_parameters`). Returns the two passes' losses.
    """
    gates, others = split_gate_parameters(model)
    main_opt.zero_grad(set_to_none=True)
    gate_opt.zero_grad(set_to_none=True)
    loss1 = loss_fn(model(x), y)
    loss1.backward()
    if gate_clip is not None:
        torch.nn.utils.clip_grad_norm_(gates, gate_clip)
    gate_opt.step()
    if not accumulate:
        main_opt.zero_grad(set_to_none=True)
    loss2 = loss_fn(model(x), y)
    loss2.backward()
    if main_clip is not None:
        torch.nn.utils.clip_grad_norm_(others, main_clip)
    main_opt.step()
    # Pass 2's gate gradients are never used; drop them so nothing reads stale values.
    gate_opt.zero_grad(set_to_none=True)
    return float(loss1.detach()), float(loss2.detach())
