"""Evaluation metrics, one definition each, shared by every chapter.

All functions accept numpy arrays, torch tensors (any device, with or without grad) or
plain sequences, and return plain Python floats / dicts so results can go straight into
a JSON run record.

Conventions (the book quotes them):

* accuracies are in **percent** (0–100);
* ECE is a **fraction** in [0, 1], computed over ``n_bins`` equal-width confidence bins
  ``(lo, hi]`` (the first bin also holds confidence 0), confidence = max probability;
* for OOD detection the **in-distribution set is the positive class** and a *higher*
  score means "more in-distribution";
* uncertainty over seeds is a Student-t interval on the mean (``mean_ci``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

ArrayLike = Any  # np.ndarray | torch.Tensor | Sequence[float]

__all__ = [
    "to_numpy", "topk_accuracy", "top1", "top5", "ece", "reliability_bins", "auroc",
    "roc_curve", "fpr_at_tpr", "fpr95", "mean_ci", "METRICS",
]


def to_numpy(x: ArrayLike, dtype: Any = None) -> np.ndarray:
    """Convert a torch tensor / array / sequence to a numpy array (optionally of ``dtype``).

    Torch tensors are detached and moved to the CPU first; bfloat16/half tensors are
    upcast because numpy cannot represent bfloat16.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype.itemsize < 4:
            t = t.float()
        x = t.numpy()
    return np.asarray(x, dtype=dtype)


# -- classification accuracy ------------------------------------------------------------
def topk_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Top-k accuracy in percent.

    Args:
        logits: ``[N, C]`` scores (logits or probabilities: only the ranking matters).
        labels: ``[N]`` integer class indices.
        k: a sample counts as correct when its label is among the ``k`` highest scores;
            ``k`` larger than ``C`` is clipped to ``C`` (then every sample is correct).

    Ties are broken towards the lower class index (stable sort), so the result is
    deterministic.
    """
    s = to_numpy(logits, np.float64)
    y = to_numpy(labels).astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be [N, C] with N = len(labels); got {s.shape} and {y.shape}")
    if s.shape[0] == 0:
        raise ValueError("topk_accuracy of an empty set is undefined")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    hit = (top == y[:, None]).any(axis=1)
    return float(hit.mean() * 100.0)


def top1(logits: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in percent (see ``topk_accuracy``)."""
    return topk_accuracy(logits, labels, k=1)


def top5(logits: ArrayLike, labels: ArrayLike) -> float:
    """Top-5 accuracy in percent (see ``topk_accuracy``)."""
    return topk_accuracy(logits, labels, k=5)


# -- calibration ------------------------------------------------------------------------
def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> dict[str, Any]:
    """Per-bin confidence and accuracy for a reliability diagram.

    Args:
        probs: ``[N, C]`` predicted class probabilities (rows should sum to 1).
        labels: ``[N]`` integer class indices.
        n_bins: number of equal-width bins on [0, 1]; bin ``b`` is ``(edges[b], edges[b+1]]``
            and bin 0 also holds confidence exactly 0.

    Returns:
        dict with numpy arrays ``edges [n_bins+1]``, ``confidence [n_bins]`` (mean max-prob
        in the bin, NaN when empty), ``accuracy [n_bins]`` (fraction correct, NaN when
        empty), ``count [n_bins]`` (int), and the float ``ece``.
    """
    p = to_numpy(probs, np.float64)
    y = to_numpy(labels).astype(np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be [N, C] with N = len(labels); got {p.shape} and {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("ECE of an empty set is undefined")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") returns the first edge >= conf, so conf == edge falls in the
    # bin that edge closes, i.e. bins are (lo, hi]; using the same edges array as the
    # reported one avoids float disagreements such as 0.6 * 5 != 3.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, acc_sum / count, np.nan)
    # Empty bins carry zero weight, so they are dropped rather than propagating NaN.
    gaps = np.abs(acc_sum - conf_sum)  # = count * |acc - conf| per bin
    ece_value = float(gaps.sum() / conf.shape[0])
    return {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc,
            "count": count.astype(np.int64), "ece": ece_value}


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error (fraction in [0, 1]) with equal-width confidence bins.

    ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` where ``conf`` is the max probability and
    ``acc`` the fraction of samples whose argmax is the label. Shapes as in
    ``reliability_bins``.
    """
    return reliability_bins(probs, labels, n_bins)["ece"]


# -- OOD detection ----------------------------------------------------------------------
def _scores(scores_in: ArrayLike, scores_out: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s_in = to_numpy(scores_in, np.float64).reshape(-1)
    s_out = to_numpy(scores_out, np.float64).reshape(-1)
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("need at least one in-distribution and one OOD score")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("scores must be finite")
    return s_in, s_out


def auroc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """Area under the ROC curve, in-distribution = positive, higher score = more in-dist.

    Computed exactly as the Mann-Whitney statistic: the probability that a random
    in-distribution score exceeds a random OOD score, ties counting 1/2.

    Args:
        scores_in: ``[N_in]`` scores of in-distribution samples.
        scores_out: ``[N_out]`` scores of out-of-distribution samples.
    """
    s_in, s_out = _scores(scores_in, scores_out)
    n_in, n_out = s_in.size, s_out.size
    # Average ranks make ties contribute exactly 1/2 per tied (in, out) pair.
    ranks = stats.rankdata(np.concatenate([s_in, s_out]), method="average")
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return float(u / (n_in * n_out))


def roc_curve(scores_in: ArrayLike, scores_out: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve for the rule "predict in-distribution when score >= threshold".

    Returns:
        ``(fpr, tpr, thresholds)``, each ``[K + 1]`` for the ``K`` distinct scores:
        thresholds descend from ``+inf`` (nothing accepted, the point (0, 0)) to the
        smallest score (everything accepted, the point (1, 1)). Tied scores move both rates
        in one step, so the trapezoid area under this curve equals ``auroc``.
    """
    s_in, s_out = _scores(scores_in, scores_out)
    thr = np.unique(np.concatenate([s_in, s_out]))[::-1]
    # Counts of scores >= t for every threshold, via sorted search (O((N+K) log N)).
    in_sorted, out_sorted = np.sort(s_in), np.sort(s_out)
    tp = s_in.size - np.searchsorted(in_sorted, thr, side="left")
    fp = s_out.size - np.searchsorted(out_sorted, thr, side="left")
    tpr = np.concatenate([[0.0], tp / s_in.size])
    fpr = np.concatenate([[0.0], fp / s_out.size])
    return fpr, tpr, np.concatenate([[np.inf], thr])


def fpr_at_tpr(scores_in: ArrayLike, scores_out: ArrayLike, tpr: float = 0.95) -> float:
    """False-positive rate at a given true-positive rate (FPR@95 for ``tpr=0.95``).

    Convention: the threshold ``t`` is the *largest* value such that at least ``tpr`` of the
    in-distribution scores are ``>= t``; that is the ``ceil(tpr * N_in)``-th highest
    in-distribution score. The result is the fraction of OOD scores ``>= t`` (OOD samples
    wrongly accepted as in-distribution). With ties at ``t`` the achieved TPR can exceed
    ``tpr``; no interpolation between ROC points is done.

    Args:
        scores_in: ``[N_in]``; scores_out: ``[N_out]``; tpr: in (0, 1].
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s_in, s_out = _scores(scores_in, scores_out)
    # The small epsilon keeps e.g. 0.95 * 20 = 19.000000000000004 from becoming 20.
    k = max(1, math.ceil(tpr * s_in.size - 1e-9))
    t = np.sort(s_in)[::-1][k - 1]
    return float((s_out >= t).mean())


def fpr95(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """``fpr_at_tpr(scores_in, scores_out, 0.95)``, a fraction in [0, 1]."""
    return fpr_at_tpr(scores_in, scores_out, 0.95)


# -- uncertainty over seeds -------------------------------------------------------------
def mean_ci(values: ArrayLike, confidence: float = 0.95) -> dict[str, float | int]:
    """Mean and two-sided Student-t confidence interval over independent runs (seeds).

    ``std`` uses ``ddof=1``; the half-width is ``t_{(1+confidence)/2, n-1} * std / sqrt(n)``.
    With ``n = 1`` there is no interval: ``std = 0`` and ``ci_low = ci_high = mean``
    (``repro.verdicts`` treats ``n < 2`` as "interval includes 0"). With ``n = 0`` every
    value is NaN.

    Returns:
        ``{"mean", "std", "ci_low", "ci_high", "n"}`` as Python floats (``n`` an int).
    """
    v = to_numpy(values, np.float64).reshape(-1)
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": 0.0, "ci_low": mean, "ci_high": mean, "n": 1}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def mean_std_text(values: Sequence[float | None], fmt: str = ".2f") -> str:
    """"mean ± std" over seeds for tables (``ddof=1``; std 0 for one value). Missing and
    non-finite values are left out; with none left the text is "—"."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "—"
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{np.mean(v):{fmt}} ± {sd:{fmt}}"


METRICS: dict[str, Callable[..., float]] = {
    "top1": top1,    # (logits [N, C], labels [N]) -> percent
    "top5": top5,    # (logits [N, C], labels [N]) -> percent
    "ece": ece,      # (probs [N, C], labels [N]) -> fraction
    "auroc": auroc,  # (scores_in [N_in], scores_out [N_out]) -> fraction
    "fpr95": fpr95,  # (scores_in [N_in], scores_out [N_out]) -> fraction
}
