"""What a job logs about its own learned structure after every epoch (``fit``'s
``extra_eval``), so the chapters can draw it over training:

* ``eps_{i}``: CRReLU's learned ε of the i-th activation module (chapter 20);
* ``gate_q10`` / ``gate_q50`` / ``gate_q90`` / ``gate_mean``: quantiles of every hard-attention
  gate opening σ(θ), pooled over the model (chapter 19);
* ``den_{i}_{j}``: the j-th learnable density value of the i-th weighted convolution (23).

A model without such parts logs nothing. :func:`final_structure` returns the full vectors
at the end of training (gate openings per gate, ε per block) for the figures.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...layers.crrelu import CRReLU
from ...layers.hard_attention_gate import HardAttentionGate
from ...layers.weighted_conv import WeightedConv2d


@torch.no_grad()
def trace(model: nn.Module) -> dict[str, float]:
    """One epoch's row of learned-structure values (see the module docstring)."""
    row: dict[str, float] = {}
    for i, m in enumerate(m for m in model.modules() if isinstance(m, CRReLU)):
        row[f"eps_{i}"] = float(m.eps)
    gates = [m.values().float().cpu() for m in model.modules() if isinstance(m, HardAttentionGate)]
    if gates:
        g = torch.cat(gates).numpy()
        q10, q50, q90 = np.quantile(g, [0.1, 0.5, 0.9])
        row.update(gate_q10=float(q10), gate_q50=float(q50), gate_q90=float(q90), gate_mean=float(g.mean()))
    convs = [m for m in model.modules() if isinstance(m, WeightedConv2d) and isinstance(m.den, nn.Parameter)]
    for i, m in enumerate(convs):
        for j, v in enumerate(m.den.detach().cpu().tolist()):
            row[f"den_{i}_{j}"] = float(v)
    return row


@torch.no_grad()
def final_structure(model: nn.Module) -> dict[str, Any]:
    """Full learned-structure vectors of a trained model: ``gates`` (one list of σ(θ) per
    gate, in module order), ``eps`` (ε per CRReLU) and ``den`` (per learnable weighted conv).
    Empty lists for parts the model lacks."""
    return {
        "gates": [m.values().float().cpu().tolist() for m in model.modules() if isinstance(m, HardAttentionGate)],
        "eps": [float(m.eps) for m in model.modules() if isinstance(m, CRReLU)],
        "den": [m.den.detach().cpu().tolist() for m in model.modules()
                if isinstance(m, WeightedConv2d) and isinstance(m.den, nn.Parameter)],
    }
