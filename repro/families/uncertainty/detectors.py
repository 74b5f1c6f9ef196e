"""OOD detectors, one definition each, on cached outputs (``predictions.Outputs``).

Every score here is oriented *higher = more in-distribution*, the convention of
``repro.metrics.auroc`` and ``fpr95`` (in-distribution is the positive class).

Library choice: pytorch-ood 0.4 supplies MSP, energy, max-logit, class-conditional
Mahalanobis and kNN (it returns *outlier* scores, so we negate them). Written here, because
pytorch-ood has no such detector: ``ssd``, the class-agnostic Mahalanobis distance on
L2-normalised, standardised features that SSD+ and PALM score with (one Gaussian over all
training features), and the Hanley–McNeil variance of an AUROC.

Detectors that need training features (``mahalanobis``, ``knn``, ``ssd``) are fitted once on
the training set's outputs with :func:`fit`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import check_choices
from ...metrics import auroc, fpr95, roc_curve
from .predictions import Outputs

LOGIT_DETECTORS = ("msp", "energy", "maxlogit")
FEATURE_DETECTORS = ("mahalanobis", "knn", "ssd")
DETECTORS = LOGIT_DETECTORS + FEATURE_DETECTORS
DESCRIPTIONS = {
    "msp": "maximum softmax probability (Hendrycks & Gimpel 2017)",
    "energy": "negative free energy, logsumexp of the logits (Liu et al. 2020)",
    "maxlogit": "largest logit (Hendrycks et al. 2022)",
    "mahalanobis": "−min over classes of the Mahalanobis distance, class means and a tied covariance (Lee et al. 2018)",
    "knn": "−distance to the k-th nearest training feature, L2-normalised (Sun et al. 2022)",
    "ssd": "−Mahalanobis distance to one Gaussian of all normalised, standardised training features (SSD+, PALM)",
}


def check_detectors(names: Sequence[str]) -> list[str]:
    """The names, or a ParameterError listing the detectors."""
    return check_choices(names, DETECTORS, "detector")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@dataclass
class _SSD:
    """One Gaussian over all L2-normalised, standardised training features."""

    mean: np.ndarray
    std: np.ndarray
    mu: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, z: np.ndarray) -> "_SSD":
        z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
        mean, std = z.mean(0), z.std(0).clip(1e-6)
        s = (z - mean) / std
        mu = s.mean(0)
        cov = np.cov(s - mu, rowvar=False)
        return cls(mean, std, mu, np.linalg.pinv(cov))  # pseudo-inverse, as PALM's code

    def score(self, z: np.ndarray) -> np.ndarray:
        z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
        d = (z - self.mean) / self.std - self.mu
        return -np.einsum("nd,de,ne->n", d, self.precision, d)


Scorer = Callable[[Outputs], np.ndarray]


def fit(train: Outputs, names: Sequence[str] = DETECTORS, knn_k: int = 50) -> dict[str, Scorer]:
    """Fit the named detectors on the training set's outputs; returns ``name → score(outputs)``.

    knn_k: the k of the kNN detector (Sun et al. use 50 with all 50,000 CIFAR training
    images; it is capped at the number of training features).
    """
    from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxLogit, MaxSoftmax

    check_detectors(names)
    out: dict[str, Scorer] = {}
    need_feats = [n for n in names if n in FEATURE_DETECTORS]
    if need_feats and train.features is None:
        raise ValueError(f"{', '.join(need_feats)} need training features; the training set's outputs have none")
    for n in names:
        if n == "msp":
            out[n] = lambda o: -MaxSoftmax.score(_t(o.logits)).double().numpy()
        elif n == "energy":
            out[n] = lambda o: -EnergyBased.score(_t(o.logits)).double().numpy()
        elif n == "maxlogit":
            out[n] = lambda o: -MaxLogit.score(_t(o.logits)).double().numpy()
        elif n == "mahalanobis":
            det = Mahalanobis(None).fit_features(_t(train.features), torch.from_numpy(train.labels))
            out[n] = lambda o, det=det: -det.predict_features(_t(o.features)).double().numpy()
        elif n == "knn":
            k = max(1, min(int(knn_k), len(train.labels)))
            det = KNN(None, k=k).fit_features(_t(train.features), torch.from_numpy(train.labels))
            out[n] = lambda o, det=det: -det.predict_features(_t(o.features)).double().numpy()
        elif n == "ssd":
            ssd = _SSD.fit(train.features.astype(np.float64))
            out[n] = lambda o, ssd=ssd: ssd.score(o.features.astype(np.float64))
    return out


def auroc_var(a: float, n_pos: int, n_neg: int) -> float:
    """Hanley–McNeil (1982) sampling variance of an AUROC ``a`` (a fraction) estimated from
    ``n_pos`` positive and ``n_neg`` negative samples."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)


def ood_metrics(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    """AUROC and FPR@95 in percent, with the AUROC's Hanley–McNeil variance (percent²) and the
    FPR@95's binomial variance on the OOD images (percent²)."""
    a = auroc(s_in, s_out)
    f = fpr95(s_in, s_out)
    return {"auroc": 100 * a, "fpr95": 100 * f,
            "auroc_var": 1e4 * auroc_var(a, len(s_in), len(s_out)),
            "fpr95_var": 1e4 * f * (1 - f) / len(s_out)}


def evaluate(scorers: Mapping[str, Scorer], ind: Outputs, ood: Mapping[str, Outputs]) -> dict[str, dict[str, dict[str, float]]]:
    """``detector → OOD set → ood_metrics`` for every fitted detector, the in-distribution
    test outputs ``ind`` against each OOD set."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, score in scorers.items():
        s_in = score(ind)
        out[name] = {o: ood_metrics(s_in, score(outs)) for o, outs in ood.items()}
    return out


def roc_points(scorers: Mapping[str, Scorer], ind: Outputs, ood: Mapping[str, Outputs],
               max_points: int = 400) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``OOD set → detector → {fpr, tpr}`` ROC points (thinned), for the family's ROC figure."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, score in scorers.items():
        s_in = score(ind)
        for o, outs in ood.items():
            fpr, tpr, _ = roc_curve(s_in, score(outs))
            idx = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).round().astype(int))
            out.setdefault(o, {})[name] = {"fpr": fpr[idx].tolist(), "tpr": tpr[idx].tolist()}
    return out


def mean_over_sets(results: Mapping[str, Mapping[str, float]], metric: str) -> tuple[float, float]:
    """Mean of ``metric`` over OOD sets and the variance of that mean (independent sets)."""
    vals = [r[metric] for r in results.values()]
    vars_ = [r.get(metric + "_var", 0.0) for r in results.values()]
    k = len(vals)
    return float(sum(vals) / k), float(sum(vars_) / (k * k)) if k else math.nan
