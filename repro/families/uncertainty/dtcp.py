"""Chapter 06 (dual-threshold conformal abstention): its evaluation sets and the analysis of one
model's cached predictions.

Per seed, one classifier is trained on the training split (the calibration split held out),
and its logits are cached on the calibration split, the clean test set and every
(corruption, severity) copy of it. The analysis then takes seconds:

1. **threshold 1** (conformal): RAPS sets with λ fixed at calibration and test (the
   exchangeable variant, whose coverage is guaranteed), with λ scaled by (1 − normalised
   entropy) at both (also exchangeable), and the paper's mix (fixed at calibration, scaled at
   test);
2. **threshold 2** (abstention): "should abstain" = the true label is not in the paper-rule
   set; τ* maximises TPR − FPR of "abstain if s > τ" on the calibration split; AUC and
   abstention rate on each test set, for the paper's label-using score −log p_y and for the
   label-free scores 1 − max p, entropy and set size.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...data.corruptions import corrupt
from ...errors import ParameterError, check_choices
from ...metrics import top1
from . import abstention as ab
from . import conformal as cp
from .detectors import auroc_var
from .predictions import EvalSet, Predictions
from .protocol import FamilyData

RULES = ("fixed", "adaptive", "paper")
SCORES = (ab.LABEL_USING, *ab.LABEL_FREE)


def check_params(params: Mapping[str, Any]) -> None:
    """The chapter's analysis parameters, checked before any work: α in (0, 1), λ ≥ 0,
    k_reg ≥ 0, known corruptions, severities in 1–5 (ParameterError otherwise)."""
    from ...data.corruptions import CORRUPTIONS, SEVERITIES

    from ...arms import make_config
    from .arms.ce import CEConfig, check_backbone

    cp.check_alpha(params["alpha"])
    check_backbone(make_config(CEConfig, params))
    if params["raps_lambda"] < 0 or params["raps_k"] < 0:
        raise ParameterError(f"raps_lambda ({params['raps_lambda']}) and raps_k ({params['raps_k']}) must be ≥ 0")
    check_choices(params["corruptions"], CORRUPTIONS, "corruption")
    bad_k = [k for k in params["severities"] if k not in SEVERITIES]
    if bad_k or not params["severities"]:
        raise ParameterError(f"severities must be a non-empty list drawn from {list(SEVERITIES)}, not {params['severities']}")


def set_name(corruption: str, severity: int) -> str:
    return f"{corruption}_s{severity}"


def eval_sets(fd: FamilyData, corruptions: Sequence[str], severities: Sequence[int], seed: int = 0) -> dict[str, EvalSet]:
    """``calib``, ``test`` and one corrupted copy of the test set per (corruption, severity),
    all without features (the analysis needs logits only)."""
    from ...data.corruptions import CORRUPTIONS

    check_choices(corruptions, CORRUPTIONS, "corruption")
    if not len(fd.y_calib):
        raise ParameterError("calib_per_class must be > 0: the conformal threshold is calibrated on held-out training images")
    d = fd.data
    sets = {"calib": EvalSet(fd.x_calib, fd.y_calib, features=False), "test": EvalSet(d.x_test, d.y_test, features=False)}
    for c in corruptions:
        for k in severities:
            sets[set_name(c, k)] = EvalSet(corrupt(d.x_test, c, int(k), seed=seed), d.y_test, features=False)
    return sets


def _pct_var(p: float, n: int) -> float:
    """Binomial variance of a percentage ``p`` (in %) on ``n`` images, in %²."""
    return p * (100 - p) / max(n, 1)


def _auc(scores: np.ndarray, pos: np.ndarray) -> tuple[float, float]:
    """Abstention AUC in % and its Hanley–McNeil variance (nan for a degenerate set)."""
    a = ab.abstention_auc(scores, pos)
    if np.isnan(a):
        return float("nan"), float("nan")
    return 100 * a, 1e4 * auroc_var(a, int(pos.sum()), int((~pos).sum()))


def analyse(pred: Predictions, corruptions: Sequence[str], severities: Sequence[int], alpha: float,
            lam: float, k_reg: int, seed: int) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """One seed's metrics, their test-set variances and a per-set table for the record.

    Metrics: ``top1`` (clean), ``coverage_<rule>`` and ``size_<rule>`` on clean data, and per
    set ``<quantity>_<corruption>_s<k>`` (top1, coverage and size of the paper-rule sets,
    abstention rate and AUC of every score); the claims' ``abstention_rise``, ``auc_rise``
    (severity max minus min, mean over corruptions), ``coverage_gap`` (fixed-rule clean
    coverage minus 1 − α) and ``auc_label_gain`` (label-using minus 1 − max p at the highest
    severity).
    """
    cp.check_alpha(alpha)
    cal = pred["calib"]
    p_cal, y_cal = cal.probs, cal.labels
    names = ["test"] + [set_name(c, k) for c in corruptions for k in severities]
    metrics: dict[str, float] = {}
    var: dict[str, float] = {}
    table: dict[str, dict[str, float]] = {}
    # per-rule qhat on the calibration split (the conformal threshold)
    conf = {r: cp.calibrate_and_predict(p_cal, y_cal, pred["test"].probs, alpha, "raps", lam, k_reg, r, seed)
            for r in RULES}
    n_test = len(pred["test"].labels)
    for r in RULES:
        metrics[f"coverage_{r}"] = 100 * cp.coverage(conf[r].sets, pred["test"].labels)
        var[f"coverage_{r}"] = _pct_var(metrics[f"coverage_{r}"], n_test)
        metrics[f"size_{r}"] = cp.mean_set_size(conf[r].sets)
    metrics["coverage_gap"] = metrics["coverage_fixed"] - 100 * (1 - alpha)
    var["coverage_gap"] = var["coverage_fixed"]
    # threshold 2 on the calibration split: the paper-rule sets of the calibration images
    cal_sets = cp.calibrate_and_predict(p_cal, y_cal, p_cal, alpha, "raps", lam, k_reg, "paper", seed).sets
    pos_cal = ab.should_abstain(cal_sets, y_cal)
    s_cal = ab.abstention_scores(p_cal, y_cal, cal_sets)
    for name in names:
        o = pred[name]
        res = cp.calibrate_and_predict(p_cal, y_cal, o.probs, alpha, "raps", lam, k_reg, "paper", seed)
        pos = ab.should_abstain(res.sets, o.labels)
        scores = ab.abstention_scores(o.probs, o.labels, res.sets)
        row = {"top1": top1(o.logits, o.labels), "coverage": 100 * cp.coverage(res.sets, o.labels),
               "size": cp.mean_set_size(res.sets), "should_abstain": 100 * float(pos.mean())}
        for s in SCORES:
            summ = ab.abstention_summary(s_cal[s], pos_cal, scores[s], pos)
            row[f"rate_{s}"] = 100 * summ["rate_test"]
            row[f"auc_{s}"], row[f"auc_{s}_var"] = _auc(scores[s], pos)
        row["n"] = len(o.labels)
        table[name] = row
        if name != "test":
            for q in ("top1", "coverage", "size"):
                metrics[f"{q}_{name}"] = row[q]
            metrics[f"abstain_{name}"] = row[f"rate_{ab.LABEL_USING}"]
            metrics[f"auc_{name}"] = row[f"auc_{ab.LABEL_USING}"]
    metrics["top1"] = table["test"]["top1"]
    lo, hi = min(severities), max(severities)
    C = len(corruptions)
    if C and hi > lo:
        rate = ab.LABEL_USING
        r_hi = [table[set_name(c, hi)][f"rate_{rate}"] for c in corruptions]
        r_lo = [table[set_name(c, lo)][f"rate_{rate}"] for c in corruptions]
        metrics["abstention_rise"] = float(np.mean(r_hi) - np.mean(r_lo))
        var["abstention_rise"] = sum(_pct_var(a, n_test) + _pct_var(b, n_test) for a, b in zip(r_hi, r_lo)) / C**2
        a_hi = [table[set_name(c, hi)][f"auc_{rate}"] for c in corruptions]
        a_lo = [table[set_name(c, lo)][f"auc_{rate}"] for c in corruptions]
        metrics["auc_rise"] = float(np.mean(a_hi) - np.mean(a_lo))
        var["auc_rise"] = sum(table[set_name(c, k)][f"auc_{rate}_var"] for c in corruptions for k in (lo, hi)) / C**2
        free = [table[set_name(c, hi)]["auc_one_minus_maxp"] for c in corruptions]
        metrics["auc_label_gain"] = float(np.mean(a_hi) - np.mean(free))
        var["auc_label_gain"] = sum(table[set_name(c, hi)][f"auc_{rate}_var"]
                                    + table[set_name(c, hi)]["auc_one_minus_maxp_var"] for c in corruptions) / C**2
    metrics = {k: float(v) for k, v in metrics.items()}
    var = {k: float(v) for k, v in var.items() if np.isfinite(v)}
    extra = {"qhat": {r: conf[r].qhat for r in RULES}, "table": table}
    return metrics, var, extra


def jobs(cfg: Any, fd: FamilyData, sets: Mapping[str, EvalSet], params: Mapping[str, Any],
         device: Any = "cpu") -> dict[str, Any]:
    """The chapter's one job (label ``model``) for ``repro.sweep.sweep``: the classifier's
    cached predictions (trained now if none are stored), then :func:`analyse` with the
    chapter's α, λ, k_reg, corruptions and severities."""
    from ...sweep import Job
    from .predictions import cached

    def job(seed: int, checkpoint_dir: Any) -> Job:
        pred = cached("ce", cfg, fd.data, seed, sets, checkpoint_dir, device, label="dtcp")
        metrics, var, extra = analyse(pred, params["corruptions"], params["severities"], params["alpha"],
                                      params["raps_lambda"], params["raps_k"], seed)
        return Job(metrics, n_test=len(fd.data.y_test), train_s=pred.train_s, train_images=pred.train_images,
                   test_var=var, extra={**extra, "cached": not pred.built_now, "history": pred.info.get("history", [])})
    return {"model": job}


def per_severity(result: Any, corruptions: Sequence[str], severities: Sequence[int], quantity: str,
                 arm: str = "model") -> dict[str, dict[int, list[float]]]:
    """``corruption → severity → per-seed values`` of one quantity of the sweep's records'
    tables (``top1``, ``coverage``, ``size``, ``rate_<score>``, ``auc_<score>``)."""
    out: dict[str, dict[int, list[float]]] = {}
    for j in result.of(arm):
        t = j["extra"]["table"]
        for c in corruptions:
            for k in severities:
                out.setdefault(c, {}).setdefault(int(k), []).append(t[set_name(c, k)][quantity])
    return out


def scores_for_roc(pred: Predictions, name: str, alpha: float, lam: float, k_reg: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every abstention score on one set and its "should abstain" labels (for ROC figures)."""
    o = pred[name]
    res = cp.calibrate_and_predict(pred["calib"].probs, pred["calib"].labels, o.probs, alpha, "raps", lam, k_reg,
                                   "paper", seed)
    return ab.abstention_scores(o.probs, o.labels, res.sets), ab.should_abstain(res.sets, o.labels)


def set_sizes(pred: Predictions, names: Sequence[str], alpha: float, lam: float, k_reg: int, seed: int) -> dict[str, np.ndarray]:
    """Paper-rule set sizes on each named set (for the histogram figure)."""
    return {n: cp.set_sizes(cp.calibrate_and_predict(pred["calib"].probs, pred["calib"].labels, pred[n].probs, alpha,
                                                     "raps", lam, k_reg, "paper", seed).sets) for n in names}


def table_rows(tables: Mapping[int, Mapping[str, Mapping[str, float]]], names: Sequence[str], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean over seeds of each table entry: ``set → key → mean``."""
    out: dict[str, dict[str, float]] = {}
    for n in names:
        out[n] = {k: float(np.nanmean([t[n][k] for t in tables.values()])) for k in keys}
    return out
