"""Chapter 33, SpectFormer (Patro, Namboodiri & Agneeswaran, "SpectFormer: Frequency and
Attention is what you need in a Vision Transformer", arXiv 2304.06446): the same mean-pooled
slot ViT with its first α blocks spectral (GFNet global filters) and the rest softmax
attention, for α over ``params["alphas"]``, plus the reversed order.

A spectral block (``repro.layers.spectral_filter``) is x + MLP(LN(irFFT2(W ⊙ rFFT2(LN x)))),
with a learnable complex filter W per channel over the token grid's frequencies; an attention
block is the usual pre-norm MHSA + MLP block. Arms (:func:`arm_configs`), labelled by
identifiers and differing only in the per-block mixer list (``spectral_first``):

* ``alpha_0``: α = 0, every block attention (DeiT-like, but mean-pooled);
* ``alpha_mid``: α = depth/2 (rounded down), spectral first: the hybrid the claims name;
* ``alpha_all``: α = depth, every block spectral (GFNet-like);
* ``alpha_{a}``: any other α in ``alphas``;
* ``reversed`` (when ``reversed_arm``): attention in the first half, spectral in the last
  (depth/2 spectral blocks, like ``alpha_mid``, in the other order).

Every arm is built with ``class_token=False`` (spectral mixing needs a pure token grid), so
the pure-attention arm pools the token mean too and only the mixers differ. Spectral blocks
are smaller than attention blocks (a filter of h·(w/2+1)·C complex weights against 4·C² for
q, k, v and the projection): the arms do not have equal parameters, and the family's cost
figure shows by how much.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ... import models
from ...errors import ParameterError
from ...models.slot_vit import SlotViT, spectral_first
from ...sweep import SweepResult
from .protocol import ArchConfig, arch_config

#: the tiers whose claims are judged (repro/papers/spectformer.toml: tiers = ["gpu", "paper"]);
#: there every arm a claim names must be trained.
JUDGED_TIERS = ("gpu", "paper")


@lru_cache(maxsize=16)
def depth_of(model: str, image_size: int) -> int:
    """The number of blocks of slot ViT ``model`` (ParameterError for another network)."""
    if model not in models.available():
        raise ParameterError(f"unknown model {model!r}; available: {', '.join(models.available())}")
    if not model.startswith("vit_slot_"):
        raise ParameterError(f"spectformer sets the mixers of the slot ViT; {model!r} is not one "
                             "(use vit_slot_micro_p4 or vit_slot_tiny_p4)")
    net = models.create(model, num_classes=10, img_size=image_size, class_token=False)
    assert isinstance(net, SlotViT)
    return len(net.blocks)


def label(alpha: int, depth: int) -> str:
    """The arm label of α: ``alpha_0``, ``alpha_mid`` (depth // 2), ``alpha_all`` (depth) or
    ``alpha_{α}``."""
    if alpha == 0:
        return "alpha_0"
    if alpha == depth:
        return "alpha_all"
    if alpha == depth // 2:
        return "alpha_mid"
    return f"alpha_{alpha}"


def title(alpha: int, depth: int, reverse: bool = False) -> str:
    """Display name: ``α=2 of 4``, with the pure arms named; the reversed arm
    ``reversed, α=2 of 4 last``."""
    if reverse:
        return f"reversed, α={alpha} of {depth} last"
    kind = {0: " (attention)", depth: " (spectral)"}.get(alpha, "")
    return f"α={alpha} of {depth}{kind}"


def arm_alphas(params: Mapping[str, Any]) -> dict[str, int]:
    """``label → α`` of the spectral-first arms, in increasing α (the reversed arm is not
    in it). α outside 0..depth, repeated, or a set lacking 0, depth/2 or depth (the arms the
    claims compare) → ParameterError."""
    depth = depth_of(params["model"], int(params["image_size"]))
    if depth < 2:
        raise ParameterError(f"spectformer needs depth ≥ 2 (a hybrid), got {depth}")
    alphas = list(params["alphas"])
    bad = [a for a in alphas if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a <= depth]
    if bad:
        raise ParameterError(f"alphas must be integers in 0..{depth} (the model's depth), got {bad}")
    if len(set(alphas)) != len(alphas):
        raise ParameterError(f"alphas repeat: {alphas}")
    need = sorted({0, depth // 2, depth} - set(alphas))
    if need:
        raise ParameterError(f"alphas must include 0, {depth // 2} and {depth} (pure attention, the hybrid and "
                             f"pure spectral, which the claims compare); missing {need}")
    return {label(a, depth): a for a in sorted(alphas)}


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``label → ("standard", config)``: one arm per α of ``params["alphas"]`` (spectral
    first), then ``reversed`` when ``params["reversed_arm"]``; all on ``params["model"]``
    without a class token. Bad α (:func:`arm_alphas`) → ParameterError; so does
    ``reversed_arm = false`` at a tier whose claims are judged (the third claim needs it)."""
    model = params["model"]
    depth = depth_of(model, int(params["image_size"]))
    out: dict[str, tuple[str, ArchConfig]] = {}
    for name, a in arm_alphas(params).items():
        kw = {"mixer": spectral_first(depth, a), "class_token": False}
        out[name] = ("standard", arch_config(params, model, title=title(a, depth), model_kw=kw))
    if params["reversed_arm"]:
        mid = depth // 2
        kw = {"mixer": spectral_first(depth, mid, reverse=True), "class_token": False}
        out["reversed"] = ("standard", arch_config(params, model, title=title(mid, depth, True), model_kw=kw))
    elif params.get("tier") in JUDGED_TIERS:
        raise ParameterError(f"reversed_arm = false at the {params['tier']} tier: the claim 'spectral first beats "
                             "attention first' is judged there and needs the reversed arm")
    return out


def sweep_points(result: SweepResult, params: Mapping[str, Any], metric: str = "top1") -> dict[int, list[float]]:
    """α → per-seed ``metric`` of the spectral-first arms (for ``figures.sweep_curve``)."""
    return {a: list(result.per_seed(metric, name).values()) for name, a in arm_alphas(params).items()
            if result.per_seed(metric, name)}


def attention_arms(result: SweepResult) -> list[str]:
    """The arms of a sweep with at least one attention block (rollout needs one)."""
    return [a for a in result.arms() if result.of(a) and "softmax" in result.of(a)[0]["extra"]["model_kw"]["mixer"]]


def spectral_arms(result: SweepResult) -> list[str]:
    """The arms of a sweep with at least one spectral block."""
    return [a for a in result.arms() if result.of(a) and "spectral" in result.of(a)[0]["extra"]["model_kw"]["mixer"]]
