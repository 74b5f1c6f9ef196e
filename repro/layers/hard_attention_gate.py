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
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class HardAttentionGate(nn.Module):
    """x ↦ x ⊙ σ(θ) with θ ∈ R^dim along ``channel_axis`` (−1 for tokens, 1 for NCHW maps)."""

    def __init__(self, dim: int, channel_axis: int = -1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.channel_axis = channel_axis
        self.theta = nn.Parameter(torch.empty(dim))
        # ``generator``: a network that must start its shared layers like its gate-free twin
        # draws θ from its own stream, leaving the global one untouched.
        nn.init.xavier_normal_(self.theta.data.view(1, dim), gain=nn.init.calculate_gain("sigmoid"),
                               generator=generator)

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


class GradientRouting:
    """Gradient routing as ``repro.train.fit``'s per-batch :class:`~repro.train.Update`.

    fit's own optimiser must hold the non-gate parameters only (``fit(..., params=others)``
    with :func:`split_gate_parameters`); this object owns the gates' AdamW (the official
    code's lr 1e-2, constant: the main schedule does not reach it), which fit checkpoints
    through :meth:`state_dict`. Each batch is :func:`gradient_routing_step` with cross-entropy
    (label smoothing as the recipe's); the reported loss and logits are pass 2's.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-2, weight_decay: float = 0.0,
                 label_smoothing: float = 0.0, gate_clip: float | None = 128.0,
                 main_clip: float | None = 10.0, accumulate: bool = True) -> None:
        gates, _ = split_gate_parameters(model)
        if not gates:
            raise ValueError("gradient routing needs a model with hard-attention gates")
        self.opt = torch.optim.AdamW(gates, lr=lr, weight_decay=weight_decay)
        self.label_smoothing = label_smoothing
        self.gate_clip, self.main_clip, self.accumulate = gate_clip, main_clip, accumulate

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                 autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
        last: list[torch.Tensor] = []

        def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            last[:] = [logits.detach()]
            return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)

        with autocast():
            _, loss2 = gradient_routing_step(model, loss_fn, x, y, opt, self.opt, gate_clip=self.gate_clip,
                                             main_clip=self.main_clip, accumulate=self.accumulate)
        return torch.tensor(loss2), last[0]

    def state_dict(self) -> dict:
        """The gate optimiser's state (saved in fit's checkpoints)."""
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
