"""Weighted convolution of chapter 23 (Cammarasana & Patanè, "Optimal Weighted Convolution
for Classification and Denosing", arXiv 2505.24558).

Each kernel tap is scaled by a fixed spatial density that depends on its distance from the
centre: the layer keeps an ordinary weight W ∈ R^{out×in×k×k} and convolves with W ⊙ Φ,

    Φ = α αᵀ,   α = [den, 1, reversed(den)]   (len(den) = (k − 1)/2),

e.g. k = 3, den = [d]: Φ = [[d², d, d²], [d, 1, d], [d², d, d²]]. den = 1 is exactly
``nn.Conv2d``. The trainable variant makes ``den`` a parameter (the paper gives it its own
optimiser; :func:`density_parameters` finds them).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from repro.errors import ParameterError


def _as_den(den: float | Sequence[float], kernel_size: int) -> list[float]:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ParameterError(f"weighted convolution needs an odd square kernel, got {kernel_size}")
    vals = [float(den)] if isinstance(den, (int, float)) else [float(d) for d in den]
    need = (kernel_size - 1) // 2
    if len(vals) == 1 and need > 1:
        vals = vals * need  # one value for every ring
    if len(vals) != need:
        raise ParameterError(f"a {kernel_size}x{kernel_size} kernel needs {need} density values, got {len(vals)}")
    return vals


def density_matrix(den: torch.Tensor) -> torch.Tensor:
    """Φ = α αᵀ with α = [den, 1, reversed(den)]: ``den`` [(k−1)/2] → Φ [k, k] (differentiable)."""
    one = torch.ones(1, dtype=den.dtype, device=den.device)
    alpha = torch.cat([den, one, den.flip(0)])
    return torch.outer(alpha, alpha)


class WeightedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel is multiplied tap-wise by Φ (see the module docstring).

    Args:
        den: the density values from the outer ring inwards ((k−1)/2 of them; one number is
            repeated for every ring). ``1.0`` gives the standard convolution.
        learnable_den: make ``den`` an ``nn.Parameter`` (the paper's trainable variant)
            instead of a fixed buffer.
        Other arguments as ``nn.Conv2d`` (square, odd ``kernel_size``).

    The weight is Kaiming-normal (fan_out, ReLU gain), as in the official code; the bias,
    if any, keeps ``nn.Conv2d``'s initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 den: float | Sequence[float] = 1.0, *, learnable_den: bool = False, **conv_kw) -> None:
        vals = _as_den(den, kernel_size)
        super().__init__(in_channels, out_channels, kernel_size, **conv_kw)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        d = torch.tensor(vals, dtype=self.weight.dtype)
        if learnable_den:
            self.den = nn.Parameter(d)
        else:
            self.register_buffer("den", d)

    def effective_weight(self) -> torch.Tensor:
        """V = W ⊙ Φ, the kernel the convolution actually applies."""
        # Φ is rebuilt every call (a k×k outer product, negligible next to the convolution) so
        # it can never go stale after load_state_dict or a den update.
        return self.weight * density_matrix(self.den).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, H, W] → [B, C_out, H', W']."""
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", den={[round(v, 4) for v in self.den.tolist()]}"


def density_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The learnable ``den`` parameters of every ``WeightedConv2d`` in ``model``."""
    for m in model.modules():
        if isinstance(m, WeightedConv2d) and isinstance(m.den, nn.Parameter):
            yield m.den
