"""Token reduction inside a ViT block: EViT pruning, ToMe merging and TCA condensation.

Pure tensor functions, batched over images. Every function takes the block's token sequence
``tokens`` ``[B, N, D]`` with the class token first and ``N − 1 = P`` patch tokens, and a keep
rate ``keep`` (R in the TCA paper): ``L = ⌈keep · P⌉`` patch tokens survive a plain prune.
``keep = 1`` leaves the sequence unchanged for every method.

* :func:`evit_prune` (Liang et al., 2022): keep the CLS token and the ``L`` patches the CLS
  token attends to most; fuse the rest into one token, their CLS-attention-weighted mean.
* :func:`tome_merge` (Bolya et al., 2023): bipartite soft matching. Patches alternate between
  sets A and B; each A token points at its most similar B token (cosine of a ``metric``:
  the block's keys averaged over heads when the model passes them, as ToMe does, else the
  tokens themselves); the ``r = P − L`` best-matched A tokens are averaged into their partner.
* :func:`condense` (TCA, Wang et al., 2024): rank the patches by CLS attention, keep the top
  ``L − 2m`` unchanged, merge the next ``2m`` "class-ambiguous" ones into ``n_merge`` tokens by
  coreset averaging, fuse the rest into one attention-weighted token; ``m = P − L``.

The fused token is a weighted *mean* (the weights are divided by their sum), so it stays on the
scale of the tokens it replaces.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ParameterError

KEPT, MERGED, FUSED = 0, 1, 2  # fate codes of a patch in condense's bookkeeping


def check_keep(keep: float) -> float:
    """``keep`` as a float, or ParameterError unless ``0 < keep ≤ 1``."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) \
            or not 0 < keep <= 1:
        raise ParameterError(f"the keep rate R must satisfy 0 < R ≤ 1 (fraction of patch tokens kept), not {keep!r}")
    return float(keep)


def n_keep(n_patches: int, keep: float) -> int:
    """``L = ⌈keep · P⌉`` patch tokens a plain prune keeps (at least 1)."""
    keep = check_keep(keep)
    # 1e-9 absorbs float error, so that 0.9 · 10 keeps 9 tokens and not 10
    return max(1, min(n_patches, math.ceil(keep * n_patches - 1e-9)))


def cls_attention(attn: torch.Tensor) -> torch.Tensor:
    """CLS → patch attention averaged over heads: ``[B, H, N, N] → [B, N − 1]``."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be [B, H, N, N], got {list(attn.shape)}")
    return attn[:, :, 0, 1:].mean(dim=1)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` [B, K] of ``x`` [B, P, D] → [B, K, D]."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _fuse(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``x`` [B, K, D] with weights [B, K] → [B, 1, D]."""
    w = weights.clamp_min(0)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (x * w.unsqueeze(-1)).sum(dim=1, keepdim=True)


def evit_prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: float) -> torch.Tensor:
    """EViT: ``[CLS, top-L patches by CLS attention, 1 fused token]``.

    tokens ``[B, N, D]`` (CLS first), cls_attn ``[B, N − 1]`` (:func:`cls_attention`). The
    kept patches come in decreasing attention; the fused token is the CLS-attention-weighted
    mean of the others. Returns ``[B, 1 + L + 1, D]``, or ``tokens`` itself when nothing is
    dropped (``L = N − 1``).
    """
    keep = check_keep(keep)
    p = tokens.shape[1] - 1
    L = n_keep(p, keep)
    if L >= p:
        return tokens
    order = cls_attn.argsort(dim=1, descending=True)
    patches = tokens[:, 1:]
    top, rest = order[:, :L], order[:, L:]
    fused = _fuse(_gather(patches, rest), cls_attn.gather(1, rest))
    return torch.cat([tokens[:, :1], _gather(patches, top), fused], dim=1)


def tome_merge(tokens: torch.Tensor, keep: float, metric: torch.Tensor | None = None) -> torch.Tensor:
    """ToMe bipartite soft matching down to ``L = ⌈keep · P⌉`` patch tokens; CLS untouched.

    metric ``[B, N, d]``: what similarity is measured on (the model passes the attention keys
    averaged over heads, as ToMe does); default ``tokens``. Patches ``0, 2, 4…`` form set A and
    ``1, 3, 5…`` set B; the ``r`` A tokens with the highest cosine to their best B partner are
    merged into it (plain mean of the partner and every A token matched to it; ToMe's size
    tracking and proportional attention are left out). One round merges at most ``|A|`` tokens;
    for ``keep < ½`` rounds repeat on the result until ``L`` remain. Returns
    ``[B, 1 + L, D]`` (unmerged A tokens first, then B).
    """
    keep = check_keep(keep)
    p = tokens.shape[1] - 1
    target = n_keep(p, keep)
    if target >= p:
        return tokens
    metric = tokens if metric is None else metric
    cls, x, m = tokens[:, :1], tokens[:, 1:], metric[:, 1:]
    while x.shape[1] > target:
        x, m = _bipartite_round(x, m, x.shape[1] - target)
    return torch.cat([cls, x], dim=1)


def _bipartite_round(x: torch.Tensor, m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One ToMe round on patch tokens ``x`` [B, P, D] (metric ``m``): merge ≤ ``r`` A tokens."""
    a, b = x[:, ::2], x[:, 1::2]
    ma, mb = m[:, ::2], m[:, 1::2]
    r = min(r, a.shape[1]) if b.shape[1] else 0  # several A tokens may share one B partner
    if r <= 0:
        return x, m
    na = ma / ma.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    nb = mb / mb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    best, partner = (na @ nb.transpose(1, 2)).max(dim=-1)        # [B, |A|]
    edges = best.argsort(dim=1, descending=True)
    src, unm = edges[:, :r], edges[:, r:]
    dst = partner.gather(1, src)                                   # [B, r]

    def merge(t_a: torch.Tensor, t_b: torch.Tensor) -> torch.Tensor:
        moved = _gather(t_a, src)
        merged = t_b.scatter_reduce(1, dst.unsqueeze(-1).expand(-1, -1, t_b.shape[-1]), moved,
                                    reduce="mean", include_self=True)
        return torch.cat([_gather(t_a, unm), merged], dim=1)

    return merge(a, b), merge(ma, mb)


def _coreset_merge(x: torch.Tensor, k: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-center on ``x`` [B, S, D] (first centre: row 0), every row joins its nearest
    centre, each cluster becomes its inverse-distance-weighted mean ``Σ wᵢxᵢ / Σ wᵢ`` with
    ``wᵢ = 1 / (dᵢ + eps)`` (dᵢ: distance to the centre). Returns (tokens [B, k, D], cluster
    of each row [B, S])."""
    bsz, s, _ = x.shape
    dist = torch.cdist(x.float(), x.float())                           # [B, S, S]
    bi = torch.arange(bsz, device=x.device)
    centres = [torch.zeros(bsz, dtype=torch.long, device=x.device)]
    nearest = dist[bi, centres[0]]                                     # [B, S]
    for _ in range(1, k):
        nxt = nearest.argmax(dim=1)
        centres.append(nxt)
        nearest = torch.minimum(nearest, dist[bi, nxt])
    c = torch.stack(centres, dim=1)                                    # [B, k]
    to_centre = dist.gather(1, c.unsqueeze(-1).expand(-1, -1, s))      # [B, k, S]
    d, cluster = to_centre.min(dim=1)                                  # [B, S]
    # a centre always founds its own cluster, even when a duplicate row ties with another centre
    cluster.scatter_(1, c, torch.arange(k, device=x.device).expand(bsz, -1))
    d = d.scatter(1, c, torch.zeros_like(c, dtype=d.dtype))
    w = (1.0 / (d + eps)).to(x.dtype)
    num = torch.zeros(bsz, k, x.shape[-1], dtype=x.dtype, device=x.device)
    num.scatter_add_(1, cluster.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x * w.unsqueeze(-1))
    den = torch.zeros(bsz, k, dtype=x.dtype, device=x.device).scatter_add_(1, cluster, w)
    return num / den.unsqueeze(-1), cluster


def condense(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: float, n_merge: int = 4,
             eps: float = 1.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """TCA token condensation: ``[CLS, kept, n_merge merged, 1 fused]``.

    With ``P`` patches, ``L = ⌈keep · P⌉`` and ``m = P − L`` (what a plain prune drops), the
    patches ranked by CLS attention split into the top ``L − 2m`` (kept unchanged, in
    decreasing attention), the next ``2m`` (merged into ``n_merge`` tokens by coreset
    averaging: greedy k-center from the most attended one, nearest-centre assignment,
    inverse-distance-weighted means with ``wᵢ = 1/(dᵢ + eps)``) and the remaining ``m`` (fused
    into one CLS-attention-weighted mean).

    Small ``P`` or small ``keep`` (the card's 16-patch proxy): when ``L − 2m < 0`` nothing is
    kept unchanged, the top ``L`` patches are merged and the other ``m`` fused, so the fused
    group is always the ``m`` least attended patches, as in the regular case. A merge group of at
    most ``n_merge`` tokens passes through unchanged (each is its own cluster), and an empty
    fused group adds no token, so ``keep = 1`` (``m = 0``) returns ``tokens`` itself.

    Returns (tokens ``[B, 1 + K + C + F, D]``, info) where info holds, per image, indices
    into the input's *patch* tokens (0-based, CLS excluded): ``kept`` [B, K], ``merged``
    [B, S] with ``cluster`` [B, S] (which merged token each joined), ``fused`` [B, F ≤ 1 row
    of length m], plus ``n_kept``, ``n_merged_tokens``, ``n_fused_tokens``.
    """
    keep = check_keep(keep)
    if n_merge < 1:
        raise ParameterError(f"n_merge must be ≥ 1, not {n_merge}")
    bsz, n, _ = tokens.shape
    p = n - 1
    L = n_keep(p, keep)
    m = p - L
    k_kept = max(L - 2 * m, 0)
    s = L - k_kept  # 2m, or all L when L < 2m; the m least attended are always fused
    order = cls_attn.argsort(dim=1, descending=True)
    kept, merged, fused = order[:, :k_kept], order[:, k_kept:k_kept + s], order[:, k_kept + s:]
    patches = tokens[:, 1:]
    parts = [tokens[:, :1], _gather(patches, kept)]
    if s > n_merge:
        merged_tokens, cluster = _coreset_merge(_gather(patches, merged), n_merge, eps)
    else:
        merged_tokens = _gather(patches, merged)
        cluster = torch.arange(s, device=tokens.device).expand(bsz, -1)
    parts.append(merged_tokens)
    if fused.shape[1]:
        parts.append(_fuse(_gather(patches, fused), cls_attn.gather(1, fused)))
    info = {"kept": kept, "merged": merged, "cluster": cluster, "fused": fused,
            "n_kept": k_kept, "n_merged_tokens": merged_tokens.shape[1], "n_fused_tokens": int(fused.shape[1] > 0)}
    if m == 0:
        return tokens, info
    return torch.cat(parts, dim=1), info


def condense_owner(info: dict[str, Any], n_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each input patch went in :func:`condense`'s output: (new patch index [B, P], fate
    [B, P] with :data:`KEPT`, :data:`MERGED` or :data:`FUSED`)."""
    kept, merged, cluster, fused = info["kept"], info["merged"], info["cluster"], info["fused"]
    bsz = kept.shape[0]
    dev = kept.device
    new = torch.zeros(bsz, n_patches, dtype=torch.long, device=dev)
    fate = torch.zeros(bsz, n_patches, dtype=torch.long, device=dev)
    k = kept.shape[1]
    new.scatter_(1, kept, torch.arange(k, device=dev).expand(bsz, -1))
    new.scatter_(1, merged, k + cluster)
    fate.scatter_(1, merged, torch.full_like(merged, MERGED))
    if fused.shape[1]:
        new.scatter_(1, fused, torch.full_like(fused, k + info["n_merged_tokens"]))
        fate.scatter_(1, fused, torch.full_like(fused, FUSED))
    if info["n_merged_tokens"] == merged.shape[1]:  # nothing actually merged: those patches stay whole
        fate.scatter_(1, merged, torch.full_like(merged, KEPT))
    if fused.shape[1] == 1:  # a "fused" token of one patch is that patch
        fate.scatter_(1, fused, torch.full_like(fused, KEPT))
    return new, fate
