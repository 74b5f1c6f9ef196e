"""Chapter 45, the family's synthesis: every token mixer, activation and gate of the family in
one small ViT, under one recipe, the same seeds and the same budget.

Each variant is built by its own chapter's ``arm_configs`` from this chapter's parameters, so
it is exactly the network that chapter trains: ``vit`` (softmax attention, GELU: the
reference), ``crrelu`` (20), ``hag`` (gates with gradient routing, 19), ``karat`` (Fourier-
KArAt per block, G3B, 26), ``spectformer`` (spectral blocks in the first half, mean pooling,
33), and the hierarchical pair ``swin`` / ``coswin`` (22), whose reference is ``swin``.
With the same recipe and data, a variant whose chapter ran at the same tier and commit is
loaded from the family's shared checkpoints instead of trained again (its cost is still
counted). No chapter-specific recipe change is taken over: here KArAt trains without its
paper's gradient clip, like everything else.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import ParameterError, check_choices
from ...sweep import SweepResult
from ...tables import markdown_table
from . import crrelu, hag, karat, spectformer
from .protocol import ArchConfig

#: variant → (display name, reference variant)
VARIANTS: dict[str, tuple[str, str]] = {
    "vit": ("ViT (softmax, GELU)", "vit"),
    "crrelu": ("CRReLU MLPs", "vit"),
    "hag": ("gates + routing", "vit"),
    "karat": ("KArAt G3B", "vit"),
    "spectformer": ("SpectFormer, half spectral", "vit"),
}


def _one(configs: Mapping[str, tuple[str, ArchConfig]], key: str, title: str) -> tuple[str, ArchConfig]:
    arm, cfg = configs[key]
    return arm, dataclasses.replace(cfg, title=title)


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``variant → (family arm, config)`` for each name in ``params["variants"]`` (see
    :data:`VARIANTS`), on ``params["model"]`` with the family's recipe. Unknown names →
    ParameterError; a variant without its reference is refused too."""
    names = check_choices(list(params["variants"]), VARIANTS, "variant")
    missing = sorted({VARIANTS[n][1] for n in names} - set(names))
    if missing:
        raise ParameterError(f"variants {names} lack their reference(s) {missing}")
    p = dict(params)
    out: dict[str, tuple[str, ArchConfig]] = {}
    for n in names:
        title = VARIANTS[n][0]
        if n in ("vit", "crrelu"):
            act = "gelu" if n == "vit" else "crrelu"
            out[n] = _one(crrelu.arm_configs({**p, "activations": [act]}), act, title)
        elif n == "hag":
            out[n] = _one(hag.arm_configs({**p, "arms": ["routing"]}), "routing", title)
        elif n == "karat":
            out[n] = _one(karat.arm_configs(p), "g3b", title)
        elif n == "spectformer":
            depth = spectformer.depth_of(p["model"], int(p["image_size"]))
            sp = {**p, "alphas": sorted({0, depth // 2, depth}), "reversed_arm": True}
            out[n] = _one(spectformer.arm_configs(sp), spectformer.label(depth // 2, depth), title)
    return out


def gains_table(result: SweepResult) -> str:
    """One row per variant against its reference: Δ top-1 (mean over seeds, paired by seed,
    with the per-seed values), Δ parameters, Δ forward MFLOPs and training throughput
    relative to the reference. The intervals and verdicts are in the claims table."""
    rows = []
    for v in result.arms():
        ref = VARIANTS.get(v, (v, v))[1]
        if v == ref or not result.of(ref):
            continue
        d = result.paired("top1", v, ref)
        p = np.mean(list(result.per_seed("params", v).values())) - np.mean(list(result.per_seed("params", ref).values()))
        f = np.mean(list(result.per_seed("mflops", v).values())) - np.mean(list(result.per_seed("mflops", ref).values()))
        ips = np.mean(list(result.per_seed("images_per_s", v).values())) / np.mean(
            list(result.per_seed("images_per_s", ref).values()))
        rows.append([f"`{v}`", f"`{ref}`", f"{np.mean(list(d.values())):+.2f}",
                     ", ".join(f"{x:+.1f}" for x in d.values()), f"{p / 1e3:+.1f} k", f"{f:+.2f}", f"{ips:.2f}×"])
    return markdown_table(["variant", "vs", "Δ top-1 (mean)", "per seed", "Δ params", "Δ MFLOPs",
                           "train speed vs ref"], rows, "llrlrrr")


def claim_rows(variants: Sequence[str]) -> list[str]:
    """The claim keys (``top1:variant-reference``) this run can judge."""
    return [f"top1:{v}-{VARIANTS[v][1]}" for v in variants if VARIANTS[v][1] != v]
