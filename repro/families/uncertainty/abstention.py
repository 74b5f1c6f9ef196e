"""The dual-threshold paper's second threshold: when to abstain, and how well a score tells.

A sample *should abstain* when its true label is missing from its conformal prediction set.
A score (higher = more reason to abstain) is judged by the rule "abstain if ``s > τ``":

* ``τ*`` maximises Youden's ``J = TPR − FPR`` on the calibration set, positives being the
  should-abstain samples;
* the test AUC is the Mann-Whitney AUROC (:func:`repro.metrics.auroc`) with the
  should-abstain samples as the positive ("in") class, so AUC > 0.5 means the score is
  higher on the samples that should abstain;
* the abstention rate is the fraction of samples with ``s > τ*``.

The paper's score ``−log p_y`` uses the **true label**, which a deployed system does not
have; the honest controls are the label-free scores in :data:`LABEL_FREE`. ``−log max p``
is a strictly increasing function of ``1 − max p``, so it gives the same ROC, AUC and
abstention decisions and is not listed separately.

Degenerate sets (no positives or no negatives) have no ROC: the affected numbers are NaN
rather than an exception, because on an easy clean test set "nobody should abstain" is a
legitimate outcome the chapter has to tabulate.
"""
from __future__ import annotations

import math

import numpy as np

from repro.errors import ParameterError
from repro.families.uncertainty.conformal import _probs, predictive_entropy
from repro.metrics import auroc, roc_curve, to_numpy

__all__ = ["LABEL_FREE", "LABEL_USING", "abstention_scores", "should_abstain",
           "youden_threshold", "abstention_auc", "abstention_rate", "abstention_summary"]

LABEL_FREE = ("one_minus_maxp", "entropy", "set_size")
LABEL_USING = "neg_log_py"

# -log of the smallest positive double (about 708.4): keeps -log p_y finite when p_y
# underflows to 0, since the ROC helpers reject infinite scores.
_TINY = np.finfo(np.float64).tiny


def abstention_scores(probs: object, labels: object = None, sets: object = None) -> dict[str, np.ndarray]:
    """Abstention scores per sample, higher = more reason to abstain.

    Args:
        probs: ``[N, C]`` softmax probabilities.
        labels: ``[N]`` true labels; when given, adds ``"neg_log_py"`` (``−log p_y``, the
            paper's label-using score, clipped to stay finite).
        sets: ``[N, C]`` bool prediction sets; when given, adds ``"set_size"``.

    Returns:
        ``{"one_minus_maxp", "entropy" (nats, 0·log 0 = 0), ["set_size"], ["neg_log_py"]}``,
        each a float ``[N]`` array.
    """
    p = _probs(probs)
    n = p.shape[0]
    out: dict[str, np.ndarray] = {
        "one_minus_maxp": 1.0 - p.max(axis=1),
        "entropy": predictive_entropy(p),
    }
    if sets is not None:
        s = to_numpy(sets).astype(bool)
        if s.shape != p.shape:
            raise ParameterError(f"sets must have the shape of probs {p.shape}, got {s.shape}")
        out["set_size"] = s.sum(axis=1).astype(np.float64)
    if labels is not None:
        y = to_numpy(labels).reshape(-1).astype(np.int64)
        if y.shape[0] != n or ((y < 0) | (y >= p.shape[1])).any():
            raise ParameterError(f"labels must be {n} class indices in [0, {p.shape[1]})")
        out[LABEL_USING] = -np.log(np.maximum(p[np.arange(n), y], _TINY))
    return out


def should_abstain(sets: object, labels: object) -> np.ndarray:
    """``[N]`` bool: True where the true label is *not* in the prediction set."""
    s = to_numpy(sets).astype(bool)
    y = to_numpy(labels).reshape(-1).astype(np.int64)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ParameterError(f"sets must be [N, C] with N = len(labels); got {s.shape} and {y.shape}")
    if ((y < 0) | (y >= s.shape[1])).any():
        raise ParameterError(f"labels must be class indices in [0, {s.shape[1]})")
    return ~s[np.arange(s.shape[0]), y]


def _split(scores: object, positives: object) -> tuple[np.ndarray, np.ndarray]:
    s = to_numpy(scores, np.float64).reshape(-1)
    pos = to_numpy(positives).reshape(-1).astype(bool)
    if s.shape != pos.shape:
        raise ParameterError(f"scores and positives differ in length: {s.shape[0]} vs {pos.shape[0]}")
    if not np.isfinite(s).all():
        raise ParameterError("abstention scores must be finite")
    return s[pos], s[~pos]


def youden_threshold(scores: object, positives: object) -> float:
    """``τ*`` maximising ``TPR − FPR`` of "abstain if ``s > τ``" (positives = should abstain).

    Candidates are the distinct observed scores: any ``τ`` between two neighbouring scores
    makes the same decisions as the lower one, and ``τ = max`` (abstain on nothing, J = 0)
    is always a candidate, so "abstain on everything" (also J = 0) is never needed. Ties in
    J go to the **smallest** ``τ``, i.e. the most abstentions among the equally good rules.
    Returns NaN when there are no positives or no negatives (J is undefined).
    """
    s_pos, s_neg = _split(scores, positives)
    if s_pos.size == 0 or s_neg.size == 0:
        return math.nan
    # roc_curve point i (i >= 1) is "s >= thr[i]", which on the data equals "s > thr[i+1]";
    # point 0 (nothing flagged) is "s > thr[1]" (thr[1] = the largest score).
    fpr, tpr, thr = roc_curve(s_pos, s_neg)
    j = (tpr - fpr)[:-1]   # drop the last point, "abstain on everything"
    taus = thr[1:]         # the tau of point i is thr[i + 1]
    best = np.flatnonzero(j == j.max())
    return float(taus[best].min())


def abstention_auc(scores: object, positives: object) -> float:
    """AUROC of the score at separating should-abstain (positive) from the rest.

    1 = every should-abstain sample scores higher than every other, 0.5 = chance. NaN when
    there are no positives or no negatives.
    """
    s_pos, s_neg = _split(scores, positives)
    if s_pos.size == 0 or s_neg.size == 0:
        return math.nan
    return auroc(s_pos, s_neg)


def abstention_rate(scores: object, tau: float) -> float:
    """Fraction of samples with ``s > τ`` (0 for ``τ`` NaN, as nothing compares greater)."""
    s = to_numpy(scores, np.float64).reshape(-1)
    if s.size == 0:
        raise ParameterError("abstention_rate of an empty set is undefined")
    return float((s > tau).mean())


def abstention_summary(scores_cal: object, pos_cal: object, scores_test: object,
                       pos_test: object) -> dict[str, float]:
    """Calibrate ``τ*`` on one set and evaluate it on another.

    Returns:
        ``{"tau", "auc_test", "rate_test", "tpr_test", "fpr_test"}`` as floats. ``tau`` is
        NaN when the calibration set is degenerate, and then every test number except
        ``auc_test`` is NaN too; ``auc_test`` is NaN when the test set is degenerate,
        ``tpr_test`` NaN without test positives, ``fpr_test`` NaN without test negatives.
    """
    tau = youden_threshold(scores_cal, pos_cal)
    s_pos, s_neg = _split(scores_test, pos_test)
    auc = abstention_auc(scores_test, pos_test)
    if math.isnan(tau):
        return {"tau": tau, "auc_test": auc, "rate_test": math.nan, "tpr_test": math.nan,
                "fpr_test": math.nan}
    return {
        "tau": tau,
        "auc_test": auc,
        "rate_test": abstention_rate(np.concatenate([s_pos, s_neg]), tau),
        "tpr_test": float((s_pos > tau).mean()) if s_pos.size else math.nan,
        "fpr_test": float((s_neg > tau).mean()) if s_neg.size else math.nan,
    }
