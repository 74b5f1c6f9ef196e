"""PALM (Lu et al., ICLR 2024): a mixture of K prototypes per class on the unit sphere.

Embeddings ``z`` (unit vectors, ``[N, dim]``) are softly assigned to their class's prototypes
by Sinkhorn–Knopp; the prototypes follow an exponential moving average of the embeddings
assigned to them; the loss is the maximum-likelihood term of the von Mises–Fisher mixture
(a cross-entropy over all ``C·K`` prototypes whose target is the sample's assignment to its
own class's prototypes) plus a supervised contrastive loss between the prototypes.

Prototype ``j`` belongs to class ``j mod C`` (so ``P.view(K, C, dim)[k, c]`` is prototype
``k`` of class ``c``).

One deliberate point, which follows the official code rather than the letter of the card: the
prototype-contrastive term is computed on the *freshly updated* prototypes with the gradient
of the update kept, ``P' = normalise(m·P + (1 − m)·Wᵀz)`` with ``W`` detached, so it reaches
the encoder through ``z`` (scaled by ``1 − m``). The prototypes are a buffer and get no
gradient of their own: with the update under ``no_grad`` the term would be a constant and
``lambda_pcon`` would do nothing. The MLE term uses ``P'`` detached and the buffer keeps
``P'`` detached.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft assignment of N samples to M prototypes by Sinkhorn–Knopp.

    scores: ``[N, M]`` (samples × prototypes, e.g. cosine similarities). Starts from
    ``exp(scores / eps)`` scaled to total mass 1, then ``iters`` times: every prototype's
    column to mass ``1/M`` (equal use of prototypes), every sample's row to mass ``1/N``.
    Returns ``Q`` ``[N, M]`` multiplied by N, so each row sums to 1 exactly and each column
    to about ``N/M`` (exactly in the limit of many iterations). No gradient.
    """
    n, m = scores.shape
    # exp(s/eps) overflows fp32 for eps = 0.05 once s·20 > 88; the first normalisation
    # divides out any global factor, so subtracting the global max changes nothing.
    s = scores.float() / eps
    q = torch.exp(s - s.max())
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(0, keepdim=True) / m
        q = q / q.sum(1, keepdim=True) / n
    return q * n


def _l1_rows(x: torch.Tensor) -> torch.Tensor:
    # An all-zero row stays zero (F.normalize divides by max(norm, eps)).
    return F.normalize(x, p=1, dim=1)


class PALMLoss(nn.Module):
    """PALM's loss and its prototypes (a buffer ``prototypes`` ``[C·K, dim]``, in the owner's
    state_dict, so a checkpoint resumes it).

    Args:
        num_classes: C.
        k: prototypes per class K (K = 1 with ``topk = 1`` is the CIDER-like single-prototype
            model).
        dim: embedding size.
        topk: each sample is assigned to at most ``min(topk, k)`` prototypes of its class.
        eps, sinkhorn_iters: Sinkhorn–Knopp's entropic temperature and iterations.
        momentum: EMA factor m of the prototype update (1.0: fixed prototypes).
        temperature: τ of the MLE logits ``z·Pᵀ/τ`` (and of :meth:`class_logits`).
        proto_temperature: temperature of the prototype-contrastive term.
        lambda_pcon: its weight (0: MLE only).

    Prototypes start as random unit vectors (Gaussian directions; the official code draws
    them in the positive orthant with ``rand``, which the contrastive term spreads out
    anyway). ``steps`` counts training calls (like BatchNorm's ``num_batches_tracked``);
    callers use it to seed per-step randomness that must survive a resume.
    """

    prototypes: torch.Tensor
    steps: torch.Tensor

    def __init__(self, num_classes: int, k: int, dim: int, topk: int = 5, eps: float = 0.05,
                 sinkhorn_iters: int = 3, momentum: float = 0.999, temperature: float = 0.1,
                 proto_temperature: float = 0.5, lambda_pcon: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1 or k < 1 or dim < 1 or topk < 1:
            raise ValueError("num_classes, k, dim and topk must be ≥ 1")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], not {momentum}")
        self.num_classes, self.k, self.dim = num_classes, k, dim
        self.topk = min(topk, k)
        self.eps, self.sinkhorn_iters = eps, sinkhorn_iters
        self.momentum, self.temperature = momentum, temperature
        self.proto_temperature, self.lambda_pcon = proto_temperature, lambda_pcon
        self.register_buffer("prototypes", F.normalize(torch.randn(num_classes * k, dim), dim=1))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, k={self.k}, dim={self.dim}, topk={self.topk}, "
                f"momentum={self.momentum}, temperature={self.temperature}")

    @property
    def proto_labels(self) -> torch.Tensor:
        """Class of each prototype, ``j mod C`` (``[C·K]``)."""
        return torch.arange(self.num_classes * self.k, device=self.prototypes.device) % self.num_classes

    def class_mask(self, y: torch.Tensor) -> torch.Tensor:
        """``[N, C·K]`` float mask: 1 where prototype j belongs to sample i's class."""
        return (y.view(-1, 1) == self.proto_labels.view(1, -1)).float()

    def assignment(self, z: torch.Tensor, y: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """Sinkhorn assignment restricted to the sample's class and to its ``topk`` largest
        entries, rows L1-normalised (``[N, C·K]``, each row sums to 1). No gradient."""
        q = sinkhorn(z.detach() @ protos.T, self.eps, self.sinkhorn_iters) * self.class_mask(y)
        if self.topk < self.k:
            keep = torch.zeros_like(q).scatter_(1, q.topk(self.topk, dim=1).indices, 1.0)
            q = q * keep
        return _l1_rows(q)

    def updated_prototypes(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``normalise(m·P + (1 − m)·Wᵀz)`` with W the assignment, rows then columns
        L1-normalised (so each prototype moves towards a convex mean of its samples). The
        gradient flows to ``z`` (W is detached); the buffer is not changed here."""
        w = self.assignment(z, y, self.prototypes)
        w = F.normalize(w, p=1, dim=0)  # a prototype no sample chose keeps a zero column
        return F.normalize(self.momentum * self.prototypes + (1 - self.momentum) * (w.T @ z), dim=1)

    def mle_loss(self, z: torch.Tensor, y: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """``−mean_i[Σ_j w_ij·ℓ_ij − logsumexp_j ℓ_ij]`` with ``ℓ = z·Pᵀ/τ`` over all C·K
        prototypes (``protos`` detached) and w the top-k assignment to the sample's class."""
        protos = protos.detach()
        logits = z @ protos.T / self.temperature
        w = self.assignment(z, y, protos)
        return -((w * logits).sum(1) - logits.logsumexp(1)).mean()

    def proto_contrast(self, protos: torch.Tensor) -> torch.Tensor:
        """SupCon between the prototypes: anchor i, positives = the other prototypes of its
        class (equal weights), denominator = every prototype but i, temperature
        ``proto_temperature``; mean over anchors. With K = 1 there are no positives and the
        term is the mean log-sum-exp (a uniformity loss)."""
        n = protos.shape[0]
        logits = protos @ protos.T / self.proto_temperature
        self_mask = torch.eye(n, dtype=torch.bool, device=protos.device)
        lab = self.proto_labels
        pos = _l1_rows(((lab.view(-1, 1) == lab.view(1, -1)) & ~self_mask).float())
        neg = logits.masked_fill(self_mask, float("-inf")).logsumexp(1)
        return -((pos * logits).sum(1) - neg).mean()

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss on embeddings ``z`` ``[N, dim]`` (unit norm; stack all views) with labels ``y``
        ``[N]``. In training mode the prototype buffer takes the EMA step and ``steps`` counts
        it; in eval mode the loss is computed against the updated prototypes without storing
        them. Computed in fp32 even under autocast. Returns ``(loss, {"mle": …,
        "proto_contra": …})``, the parts as detached 0-d tensors (``.item()`` would sync a GPU
        every step) and ``proto_contra`` already × lambda_pcon."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            protos = self.updated_prototypes(z, y)
            mle = self.mle_loss(z, y, protos)
            loss, parts = mle, {"mle": mle.detach()}
            if self.lambda_pcon > 0:
                pc = self.lambda_pcon * self.proto_contrast(protos)
                loss = loss + pc
                parts["proto_contra"] = pc.detach()
        if self.training:
            with torch.no_grad():
                self.prototypes.copy_(protos.detach())
                self.steps += 1
        return loss, parts

    def class_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` class scores: for each class the largest ``z·p/τ`` over its K prototypes
        (the nearest prototype of the class). A model's forward returns these, so accuracy
        and logit-based OOD scores (MSP, energy, max-logit) are read from the prototypes.
        Computed in fp32 even under autocast: bf16 cosines / τ = 0.1 would be coarse enough to
        tie the logit scores."""
        with torch.autocast(z.device.type, enabled=False):
            logits = z.float() @ self.prototypes.T / self.temperature
        return logits.view(-1, self.k, self.num_classes).amax(1)
