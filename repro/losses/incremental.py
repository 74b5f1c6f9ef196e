"""Losses of the class-incremental chapters, as plain functions on tensors.

* ``masked_ce``, ``kd_old_classes``: cross-entropy over the classes seen so far and the
  distillation of the old classes' logits (iCaRL/PyCIL; the family's replay + KD and WA);
* ``seen_classes_loss``: BCE per class or softmax CE over the seen classes (GCAB);
* ``hat_regulariser``: HAT's sparsity term on the task masks (GCAB);
* ``influence_loss``, ``alignment_loss``: backward-compatible training through the old model's
  pseudo-classifier (BCT, OCA);
* ``feature_kd``, ``na_loss``: feature distillation and the neighbourhood-aware loss over coding
  vectors (PASS, NAPA-VQ).

Shapes: logits ``[B, C]``, labels ``[B]``, features ``[B, D]``, pseudo-classifier ``[K, D]``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def masked_ce(logits: torch.Tensor, y: torch.Tensor, seen: int) -> torch.Tensor:
    """Cross-entropy over the first ``seen`` classes only."""
    return F.cross_entropy(logits[:, :seen], y)


def kd_old_classes(logits: torch.Tensor, old_logits: torch.Tensor, old: int, temperature: float) -> torch.Tensor:
    """Soft cross-entropy between the previous and the current model on the ``old`` classes, at T
    (iCaRL/PyCIL's KD term; equals KL plus the old model's entropy, a constant)."""
    p_old = F.softmax(old_logits[:, :old] / temperature, dim=1)
    return -(p_old * F.log_softmax(logits[:, :old] / temperature, dim=1)).sum(1).mean()


def seen_classes_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """BCE of the sigmoid of every seen class's logit against the one-hot target (mean over
    batch × classes, as DyTox/GCAB), or softmax cross-entropy over the seen classes."""
    if kind == "ce":
        return F.cross_entropy(logits, y)
    return F.binary_cross_entropy_with_logits(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))


def hat_regulariser(masks: Sequence[torch.Tensor], mask_pre: Sequence[torch.Tensor] | None,
                    lam: float) -> torch.Tensor:
    """λ·Σ m(1 − m_pre)/Σ(1 − m_pre) over all masks; with no earlier task, λ·mean(m)."""
    if mask_pre is None:
        return lam * sum(m.sum() for m in masks) / sum(m.numel() for m in masks)
    free = [1 - mp for mp in mask_pre]
    den = sum(f.sum() for f in free)
    # Every unit already claimed: nothing new can be claimed, so there is nothing to penalise.
    if float(den) == 0:
        return masks[0].sum() * 0.0
    return lam * sum((m * f).sum() for m, f in zip(masks, free)) / den


def influence_loss(f_old: torch.Tensor, P: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """CE of normalize(f_old)·Pᵀ: the new feature classified by the old model's pseudo-classifier."""
    return F.cross_entropy(F.normalize(f_old, dim=1) @ P.T, y, label_smoothing=label_smoothing)


def alignment_loss(f_old: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of 1 − cos(f_old, P[y]): pulls each feature toward its class prototype in the old space."""
    return (1.0 - F.cosine_similarity(f_old, P[y], dim=1)).mean()


def feature_kd(f: torch.Tensor, f_old: torch.Tensor) -> torch.Tensor:
    """‖f − f_old‖₂ over the whole batch (Frobenius norm, not a mean: the official term)."""
    return torch.linalg.vector_norm((f - f_old).float())


def na_loss(z: torch.Tensor, labels: torch.Tensor, cvs: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The neighbourhood-aware loss: mean over the batch of
    ``relu(d²(z, cv_y) − Σ_j w_j d²(z, cv_j))`` over the neighbours j of CV y (edge > 0, y
    itself excluded), with ``w = softmax_j(−0.001·d²)`` held constant. A CV without
    neighbours leaves ``relu(d²(z, cv_y))`` (the official code's behaviour)."""
    d2 = torch.cdist(z.float(), cvs.float()) ** 2                     # [B, M]
    M = cvs.shape[0]
    d_pos = d2.gather(1, labels[:, None]).squeeze(1)
    nb = edges[labels][:, :M] > 0
    nb[torch.arange(len(labels), device=nb.device), labels] = False
    with torch.no_grad():
        logits = torch.where(nb, -0.001 * d2, torch.full_like(d2, -math.inf))
        w = torch.softmax(logits, dim=1).nan_to_num(0.0)              # all-−inf rows → 0
    return F.relu(d_pos - (w * d2).sum(1)).mean()
