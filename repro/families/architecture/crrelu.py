"""Chapter 20, CRReLU (Sun, Wu et al., "A Method on Searching Better Activation Functions",
ICLR 2025): the same slot ViT with GELU, ReLU or CRReLU in every MLP.

CRReLU(x) = ReLU(x) + ε·x·exp(−x²/2), one learnable ε per block, initialised to 0.01
(``repro.layers.crrelu``). Arms (:func:`arm_configs`) are labelled by the activation name;
every arm trains with the family's recipe from the same initial weights of the shared layers
(the seed fixes them; CRReLU adds one scalar a block). The learned ε per block is logged every
epoch (``eps_0``… in each job's history, :mod:`~repro.families.architecture.traces`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import check_choices
from ...layers.crrelu import crrelu
from ...models.slot_vit import ACTIVATIONS
from ...sweep import SweepResult
from .protocol import ArchConfig, arch_config

TITLES = {"gelu": "GELU", "relu": "ReLU", "crrelu": "CRReLU"}


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``activation → ("standard", config)`` for each name in ``params["activations"]``
    (``gelu``, ``relu``, ``crrelu``) on ``params["model"]``."""
    acts = list(params["activations"])
    check_choices(acts, ACTIVATIONS, "activation")
    return {a: ("standard", arch_config(params, params["model"], title=TITLES.get(a, a), model_kw={"activation": a}))
            for a in acts}


def shapes(learned_eps: float | None = None) -> dict[str, Any]:
    """The activations drawn in the chapter: ReLU, GELU, CRReLU at ε = 0.01 (init) and 0.5,
    and, if given, at the mean learned ε."""
    out: dict[str, Any] = {"ReLU": F.relu, "GELU": F.gelu,
                           "CRReLU ε=0.01": lambda x: crrelu(x, 0.01), "CRReLU ε=0.5": lambda x: crrelu(x, 0.5)}
    if learned_eps is not None:
        out[f"CRReLU ε={learned_eps:.3f} (learned)"] = lambda x, e=learned_eps: crrelu(x, e)
    return out


def learned_eps(result: SweepResult, arm: str = "crrelu") -> dict[int, list[float]]:
    """seed → final ε per block of the CRReLU arm (empty if it was not trained)."""
    return {j["seed"]: j["extra"]["structure"]["eps"] for j in result.of(arm)}


def eps_keys(result: SweepResult, arm: str = "crrelu") -> list[str]:
    """The history keys of the per-block ε (``eps_0``…) the arm logged."""
    jobs = result.of(arm)
    if not jobs:
        return []
    return sorted((k for k in jobs[0]["extra"]["history"][-1] if k.startswith("eps_")), key=lambda k: int(k[4:]))


def metrics_by_seed(result: SweepResult, arm: str = "crrelu") -> dict[int, dict[str, float]]:
    """Per seed: ``eps_mean`` (mean learned ε over blocks) and ``eps_max_abs`` — how far the
    activation moved from ReLU (ε = 0) and from its start (0.01). Not judged."""
    out = {}
    for seed, eps in learned_eps(result, arm).items():
        if eps:
            t = torch.tensor(eps)
            out[seed] = {"eps_mean": float(t.mean()), "eps_max_abs": float(t.abs().max())}
    return out
