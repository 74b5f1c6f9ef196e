"""FLOP and parameter counts of a model, with attention and FFTs included.

Built on :class:`torch.utils.flop_counter.FlopCounterMode`, whose conventions hold here:

* a multiply–add counts as **2 FLOPs**: a linear layer ``[M, K] @ [K, N]`` is ``2·M·K·N``, a
  convolution is ``2 · out_elements · C_in/groups · k_h · k_w``;
* biases, normalisation, activations, softmax and other element-wise ops count **0**;
* only the forward pass is counted (one call, batch as given).

Two gaps of the plain counter are closed:

* ``scaled_dot_product_attention`` counts 0 on CPU (its CPU kernel has no formula) and timm
  uses it by default, so attention would be missing. While counting, every module's
  ``fused_attn`` flag (timm's switch, read once at construction, so
  ``timm.layers.set_fused_attn`` would come too late for a built model) is turned off and
  the math SDPA backend is forced; both are restored afterwards. A ViT block then counts its
  ``2·2·N²·d`` attention FLOPs (``Q·Kᵀ`` and ``A·V``).
* FFTs count 0; here a real FFT of ``n`` points counts ``2.5·n·log₂n`` and a complex one
  ``5·n·log₂n`` (the usual radix-2 Cooley–Tukey estimates), so spectral token mixers are not
  free.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _fft_points(shape: Sequence[int], dims: Sequence[int]) -> int:
    return math.prod(shape[d] for d in dims)


def _fft_r2c_flop(x_shape, dim, normalization, onesided, out_shape=None, **_: Any) -> int:
    n = _fft_points(x_shape, dim)
    return int(2.5 * math.prod(x_shape) * math.log2(n)) if n > 1 else 0


def _fft_c2r_flop(x_shape, dim, normalization, last_dim_size, out_shape=None, **_: Any) -> int:
    # The real side of an inverse real FFT is its output.
    n = _fft_points(out_shape, dim)
    return int(2.5 * math.prod(out_shape) * math.log2(n)) if n > 1 else 0


def _fft_c2c_flop(x_shape, dim, normalization, forward, out_shape=None, **_: Any) -> int:
    n = _fft_points(x_shape, dim)
    return int(5 * math.prod(x_shape) * math.log2(n)) if n > 1 else 0


FFT_FORMULAS = {aten._fft_r2c: _fft_r2c_flop, aten._fft_c2r: _fft_c2r_flop, aten._fft_c2c: _fft_c2c_flop}


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Turn off timm's fused attention in every module of ``model`` (restored on exit)."""
    saved = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        for m, _ in saved:
            m.fused_attn = False
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for m, flag in saved:
            m.fused_attn = flag


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (shared parameters counted once) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, example: torch.Tensor | Sequence[int], *,
                fused_attention_off: bool = True) -> dict[str, Any]:
    """Forward FLOPs and parameters of ``model`` on one input.

    Args:
        model: any module; it is run once in eval mode without gradients (its training flag
            and attention settings are restored).
        example: an input tensor, or its shape (e.g. ``(1, 3, 32, 32)``) to count on zeros.
        fused_attention_off: count attention through its explicit matmuls (see the module
            docstring); ``False`` reproduces the plain counter, which misses SDPA on CPU.

    Returns:
        ``{"flops": total, "params": count, "by_op": {aten op name: flops}}``, FLOPs under
        the module docstring's conventions (multiply–add = 2) and for the batch as given.
    """
    if not isinstance(example, torch.Tensor):
        example = torch.zeros(tuple(example))
    param = next(model.parameters(), None)
    if param is not None:
        example = example.to(param.device)
    was_training = model.training
    counter = FlopCounterMode(display=False, custom_mapping=FFT_FORMULAS)
    try:
        model.eval()
        with torch.no_grad():
            if fused_attention_off:
                with unfused_attention(model), counter:
                    model(example)
            else:
                with counter:
                    model(example)
    finally:
        model.train(was_training)
    by_op = {str(k).removeprefix("aten."): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "params": count_params(model), "by_op": by_op}
