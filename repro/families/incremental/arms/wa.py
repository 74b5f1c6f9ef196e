"""Weight Aligning (WA; Zhao et al., "Maintaining Discrimination and Fairness in Class
Incremental Learning", CVPR 2020) on the family's replay + KD learner: arm ``wa`` (chapter 24).

WA trains each task like iCaRL's base learner (new data + exemplars, cross-entropy over the
classes seen so far + distillation of the old classes' logits from the frozen previous model)
and then, with no extra parameters and no validation set, corrects the classifier's bias
toward the newest classes. With ``W`` the last FC layer's weight rows, ``old`` the classes seen
before task t and ``new`` task t's classes::

    γ = mean_{i ∈ old} ‖W_i‖₂ / mean_{j ∈ new} ‖W_j‖₂ ,      W_j ← γ·W_j  for j ∈ new

so the new classes' mean weight norm equals the old classes'. During training the FC weights are
clipped to be non-negative after every update (the paper's weight clipping: the features after
the last ReLU are non-negative, so with non-negative weights a row's norm tracks the size of
its logits).

Two ways to weight the distillation term are offered, because the reimplementations differ:

* ``kd_mode="paper"``: L = (1 − λ)·CE + λ·KD with λ = old / seen classes (the paper, as read by
  the FACIL-based reimplementations);
* ``kd_mode="pycil"``: L = CE + kd_weight·KD (PyCIL uses kd_weight = 2).

KD is the soft cross-entropy at temperature T on the old classes' logits
(``repro.losses.incremental.kd_old_classes``), as in PyCIL.

The arm's config, :class:`WAConfig`, switches the parts: ``align=False, clip_weights=False``
is the same learner without WA (the chapter's ``replay_kd`` label, with exactly WA's loss). In
``post_train`` every learner of this class records, after each task, the per-class weight
norms and the share of test predictions that land in the newest task's classes, before and
(for WA) after aligning; its metrics (:meth:`WeightAligning.metrics`) and the chapter's
figures are read from those.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ....arms import arm
from ....train import predict
from ....losses.incremental import kd_old_classes, masked_ce
from ..learners import IncrementalConfig, StreamResult
from ..stream import Stream
from .baselines import FAMILY, ReplayKD

KD_MODES = ("paper", "pycil")


# -- the mechanics ---------------------------------------------------------------------------

def head_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer whose rows are the per-class weight vectors: ``model.head`` or, for
    the two-FC models, its last ``nn.Linear``."""
    head = model.head
    if isinstance(head, nn.Linear):
        return head
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__}.head has no nn.Linear layer to align")
    return layers[-1]


def class_norms(weight: torch.Tensor, seen: int) -> torch.Tensor:
    """‖W_c‖₂ of the first ``seen`` rows (one per class), as float32 on the CPU."""
    return weight[:seen].detach().float().norm(dim=1).cpu()


def check_split(old: int, seen: int, rows: int) -> None:
    """``0 < old < seen ≤ rows``: WA needs old and new classes, inside the layer."""
    if not 0 < old < seen <= rows:
        raise ValueError(f"weight aligning needs 0 < old ({old}) < seen ({seen}) ≤ classes of the layer ({rows})")


def align_gamma(weight: torch.Tensor, old: int, seen: int) -> float:
    """γ = mean norm of rows 0..old−1 / mean norm of rows old..seen−1."""
    check_split(old, seen, weight.shape[0])
    norms = class_norms(weight, seen)
    new_mean = norms[old:].mean()
    if new_mean <= 0:
        raise ValueError("the new classes' weight vectors are all zero: γ is undefined")
    return float(norms[:old].mean() / new_mean)


@torch.no_grad()
def weight_align(layer: nn.Linear, old: int, seen: int, bias: bool = False) -> float:
    """Scale the new classes' rows (old..seen−1) of ``layer`` in place by γ; return γ.

    ``bias``: also scale their biases (PyCIL and the paper's formula leave biases alone).
    """
    gamma = align_gamma(layer.weight, old, seen)
    layer.weight[old:seen] *= gamma
    if bias and layer.bias is not None:
        layer.bias[old:seen] *= gamma
    return gamma


@torch.no_grad()
def clip_nonnegative(layer: nn.Linear) -> None:
    """The paper's weight clipping: negative FC weights become 0 (biases are left alone)."""
    layer.weight.clamp_(min=0.0)


def kd_balance(seen_before: int, seen: int) -> float:
    """λ = old classes / seen classes, the paper's weight of the KD term (0 at the first task)."""
    if not 0 <= seen_before < seen:
        raise ValueError(f"need 0 ≤ seen_before ({seen_before}) < seen ({seen})")
    return seen_before / seen


def new_class_share(logits: torch.Tensor, seen_before: int, seen: int) -> float:
    """Share (%) of the images whose prediction over the first ``seen`` classes falls in the
    newest classes ``seen_before..seen−1``."""
    pred = logits[:, :seen].argmax(1)
    return 100.0 * ((pred >= seen_before) & (pred < seen)).float().mean().item()


def check_kd_mode(kd_mode: str) -> None:
    if kd_mode not in KD_MODES:
        raise ValueError(f"kd_mode must be one of {KD_MODES}, not {kd_mode!r}")


@dataclass
class WAConfig(IncrementalConfig):
    """The family's schedule and memory plus WA's switches."""

    kd_mode: str = "paper"          # "paper": (1 − λ)·CE + λ·KD; "pycil": CE + kd_weight·KD
    clip_weights: bool = True       # clip the FC weights to ≥ 0 during training
    align: bool = True              # weight aligning after each task t ≥ 1
    align_bias: bool = False        # also scale the new classes' biases by γ

    def __post_init__(self) -> None:
        super().__post_init__()
        check_kd_mode(self.kd_mode)
        if self.kd_weight < 0:
            raise ValueError(f"kd_weight must be ≥ 0, not {self.kd_weight}")


@arm("wa", family=FAMILY, config=WAConfig)
class WeightAligning(ReplayKD):
    """Replay + KD (+ weight clipping during training) + weight aligning after each task t ≥ 1.

    ``align=False, clip_weights=False`` gives the replay + KD baseline with the same loss; every
    combination is allowed (e.g. aligning without clipping). ``kd_mode`` weights the KD term
    (see the module docstring); ``align_bias`` also scales the new classes' biases by γ.
    """

    name = "wa"

    def __init__(self, cfg: WAConfig) -> None:
        if not isinstance(cfg, WAConfig):
            raise TypeError(f"WeightAligning needs a WAConfig, not {type(cfg).__name__}")
        super().__init__(cfg)
        self.align, self.clip, self.kd_mode, self.align_bias = cfg.align, cfg.clip_weights, cfg.kd_mode, cfg.align_bias

    def loss_fn(self, t: int, seen: int, seen_before: int):
        old_model, T = self.old_model, self.cfg.kd_temperature
        lam = kd_balance(seen_before, seen)
        clip, kd_mode, kd_weight = self.clip, self.kd_mode, self.cfg.kd_weight

        def fn(model, x, y):
            if clip:
                # Clipping before each forward = clipping after each update (fit has no
                # post-step hook); post_train clips once more after the last update.
                clip_nonnegative(head_linear(model))
            logits = model(x)
            ce = masked_ce(logits, y, seen)
            if old_model is None or seen_before == 0:
                return ce, logits[:, :seen]
            with torch.no_grad():
                old = old_model(x)
            kd = kd_old_classes(logits, old, seen_before, T)
            loss = (1 - lam) * ce + lam * kd if kd_mode == "paper" else ce + kd_weight * kd
            return loss, logits[:, :seen]
        return fn

    @torch.no_grad()
    def post_train(self, model: nn.Module, t: int, stream: Stream) -> dict[str, Any]:
        """Clip, align (t ≥ 1), and record norms and the new-class prediction share before and
        after aligning (test images of every seen class, predicting over the seen classes)."""
        layer = head_linear(model)
        if self.clip:
            clip_nonnegative(layer)
        seen, seen_before = stream.seen(t), (stream.seen(t - 1) if t else 0)
        device = next(model.parameters()).device
        loader = stream.test_loader(range(t + 1), device=device)
        sizes = stream.test_sizes()
        true_share = 100.0 * sizes[t] / sum(sizes[: t + 1])
        norms_before = class_norms(layer.weight, seen)
        logits, _ = predict(model, loader)
        share_before = new_class_share(logits, seen_before, seen)
        out: dict[str, Any] = {"task": t, "seen": seen, "seen_before": seen_before, "true_share": true_share,
                               "norms_before": norms_before.tolist(), "share_before": share_before,
                               "gamma": None, "norms_after": norms_before.tolist(), "share_after": share_before,
                               "bias_before": None if layer.bias is None else layer.bias[:seen].float().cpu().tolist()}
        if t > 0:
            out["norm_ratio_before"] = float(norms_before[seen_before:].mean() / norms_before[:seen_before].mean())
        if self.align and t > 0:
            out["gamma"] = weight_align(layer, seen_before, seen, bias=self.align_bias)
            out["norms_after"] = class_norms(layer.weight, seen).tolist()
            logits, _ = predict(model, loader)
            out["share_after"] = new_class_share(logits, seen_before, seen)
        return out

    def metrics(self, result: StreamResult) -> dict[str, float]:
        """The bias numbers after the last task (see :func:`bias_metrics`)."""
        return bias_metrics(result.extras)


def bias_metrics(extras: list[dict[str, Any]]) -> dict[str, float]:
    """From the per-task extras of a stream, after the last task: excess share of predictions in
    the newest classes (predicted − true, pts; after aligning where the learner aligns), its
    absolute value, the same before aligning, and the new/old mean weight-norm excess before
    aligning (%, 100·(ratio − 1)), at the last task and averaged over tasks t ≥ 1. Empty for a
    stream of one task."""
    ex = extras[-1] if extras else {}
    if not ex or "norm_ratio_before" not in ex:
        return {}
    ratios = [e["norm_ratio_before"] for e in extras if "norm_ratio_before" in e]
    excess = ex["share_after"] - ex["true_share"]
    return {"new_share_excess": excess,
            "new_share_abs_excess": abs(excess),
            "new_share_excess_unaligned": ex["share_before"] - ex["true_share"],
            "norm_excess_last": 100.0 * (ex["norm_ratio_before"] - 1.0),
            "norm_excess_mean": 100.0 * (float(np.mean(ratios)) - 1.0)}


# -- the chapter's plan ------------------------------------------------------------------------

def check_norm_seed(norm_seed: int, seeds: list[int]) -> None:
    """The seed whose weight norms the chapter draws must be one of the run's seeds."""
    if norm_seed not in seeds:
        raise ValueError(f"norm_seed={norm_seed} must be one of seeds={list(seeds)}")


def chapter_plan(clip_weights: bool = True, with_align_only: bool = False) -> dict[str, tuple[str, dict[str, Any]]]:
    """The chapter's labelled arms (label → (arm, config overrides)): fine-tuning, replay + KD
    (WA's loss, no clipping, no aligning), WA (clipping as ``clip_weights`` says + aligning)
    and, with ``with_align_only`` and clipping on, aligning without clipping (``wa_noclip``)."""
    plan: dict[str, tuple[str, dict[str, Any]]] = {
        "finetune": ("finetune", {}),
        "replay_kd": ("wa", {"align": False, "clip_weights": False}),
        "wa": ("wa", {"align": True}),
    }
    if with_align_only and clip_weights:
        plan["wa_noclip"] = ("wa", {"align": True, "clip_weights": False})
    return plan
