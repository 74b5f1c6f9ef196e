"""The OOD protocol of chapters 31 (palm) and 44 (oodcompare): the models, the evaluation sets
and one job per (model, seed) that scores every detector on every OOD set.

Both chapters build their models from the shared ``uncertainty`` protocol parameters with
:func:`model_configs`, so the same setting gives the same configs, the same artifact keys and
therefore the same cached predictions: the comparison chapter re-scores chapter 31's models
instead of training them again.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ... import arms as _arms
from ...arms import make_config
from ...errors import check_choices
from ...metrics import top1
from ...sweep import Job, JobFn, SweepResult
from . import detectors as det
from .predictions import EvalSet, Predictions, cached
from .protocol import FAMILY, FamilyData, held_out_labels

MODELS = {
    "ce": "cross-entropy classifier",
    "palm": "PALM, K prototypes a class",
    "k1": "one prototype a class (CIDER-like)",
}


def check_models(names: Sequence[str]) -> list[str]:
    return check_choices(names, MODELS, "model")


def model_configs(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """``label → (arm name, config)`` for the named models, from the protocol's parameters:
    ``ce`` with ``ce_lr``/``ce_weight_decay``, ``palm`` with K = ``prototypes``, ``k1`` with one
    prototype a class (top-k 1)."""
    out: dict[str, tuple[str, Any]] = {}
    for name in check_models(names):
        if name == "ce":
            cfg = make_config(_arms.get(FAMILY, "ce").config, params, lr=params["ce_lr"],
                              weight_decay=params["ce_weight_decay"])
            out[name] = ("ce", cfg)
        else:
            kw = {"prototypes": 1, "topk": 1} if name == "k1" else {}
            out[name] = ("palm", make_config(_arms.get(FAMILY, "palm").config, params, **kw))
    return out


def eval_sets(fd: FamilyData, ood_sets: Sequence[str], per_set: int = 0, seed: int = 0) -> dict[str, EvalSet]:
    """The evaluation sets: ``train`` (training images, unaugmented: detectors are fitted on
    them), ``test`` (in-distribution), one per OOD set and ``held_out`` (the held-out classes'
    test images) when the data has them. OOD sets have ``per_set`` images (0: as many as the
    test set)."""
    from ...data.ood import OOD_SETS, ood_images

    check_choices(ood_sets, OOD_SETS, "OOD set")
    d = fd.data
    n = int(per_set) or len(d.y_test)
    sets = {"train": EvalSet(d.x_train, d.y_train), "test": EvalSet(d.x_test, d.y_test)}
    for name in ood_sets:
        x = ood_images(name, n, d.image_size, seed=seed, source=d.x_test)
        sets[name] = EvalSet(x, held_out_labels(len(x)))
    if len(fd.x_held_out):
        sets["held_out"] = EvalSet(fd.x_held_out, held_out_labels(len(fd.x_held_out)))
    return sets


def ood_names(sets: Mapping[str, EvalSet]) -> list[str]:
    return [n for n in sets if n not in ("train", "test")]


def score(pred: Predictions, detectors: Sequence[str], knn_k: int) -> dict[str, dict[str, dict[str, float]]]:
    """``detector → OOD set → {auroc, fpr95, auroc_var, fpr95_var}`` of one model's predictions."""
    scorers = det.fit(pred["train"], detectors, knn_k)
    return det.evaluate(scorers, pred["test"], {o: pred[o] for o in pred.sets if o not in ("train", "test")})


def job_metrics(pred: Predictions, results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[dict[str, float], dict[str, float]]:
    """A job's metrics and their test-set variances: ``top1``, then per detector the mean
    over OOD sets (``auroc_<det>``, ``fpr95_<det>``) and per set (``auroc_<det>_<set>``)."""
    test = pred["test"]
    metrics = {"top1": top1(test.logits, test.labels)}
    var: dict[str, float] = {}
    for d, per_set in results.items():
        for m in ("auroc", "fpr95"):
            metrics[f"{m}_{d}"], var[f"{m}_{d}"] = det.mean_over_sets(per_set, m)
            for o, r in per_set.items():
                metrics[f"{m}_{d}_{o}"], var[f"{m}_{d}_{o}"] = r[m], r[m + "_var"]
    return metrics, var


def jobs(models: Mapping[str, tuple[str, Any]], fd: FamilyData, sets: Mapping[str, EvalSet],
         detectors: Sequence[str], knn_k: int, device: Any = "cpu") -> dict[str, JobFn]:
    """One job per model label for ``repro.sweep.sweep``: load or train the model's cached
    predictions, score every detector, return the metrics (with AUROC/FPR@95 variances)."""
    det.check_detectors(detectors)
    out: dict[str, JobFn] = {}
    for label, (arm, cfg) in models.items():
        def job(seed: int, checkpoint_dir: Any, arm=arm, cfg=cfg, label=label) -> Job:
            pred = cached(arm, cfg, fd.data, seed, sets, checkpoint_dir, device, label=label)
            results = score(pred, detectors, knn_k)
            metrics, var = job_metrics(pred, results)
            return Job(metrics, n_test=len(fd.data.y_test), train_s=pred.train_s, train_images=pred.train_images,
                       test_var=var, extra={"artifact": pred.key, "cached": not pred.built_now,
                                            "history": pred.info.get("history", [])})
        out[label] = job
    return out


def detector_rows(run: Any, result: SweepResult, detectors: Sequence[str], metrics: Sequence[str] = ("auroc", "fpr95")) -> None:
    """Rows ``<model>_<detector>`` (metric ``auroc``/``fpr95``, mean over OOD sets) for every
    job, so that claims can compare two detectors on one model, paired by seed."""
    for j in result.jobs:
        for d in detectors:
            for m in metrics:
                key = f"{m}_{d}"
                if key in j["metrics"]:
                    run.add_row(f"{j['arm']}_{d}", j["seed"], m, j["metrics"][key], j["n_test"],
                                (j.get("test_var") or {}).get(key))


def with_interval(result: SweepResult, arm: str, key: str) -> str:
    """``mean [low, high]`` of one metric of one model: the book's interval, seed spread plus the
    metric's test-set variance (averaged over seeds)."""
    from ...verdicts import interval

    jobs = [j for j in result.of(arm) if key in j["metrics"]]
    if not jobs:
        return "—"
    tv = [float((j.get("test_var") or {}).get(key, 0.0)) for j in jobs]
    iv = interval([j["metrics"][key] for j in jobs], sum(tv) / len(tv))
    return f"{iv['mean']:.1f} [{iv['ci_low']:.1f}, {iv['ci_high']:.1f}]"


def summary(result: SweepResult, detectors: Sequence[str], ood: Sequence[str], metric: str = "auroc") -> dict[str, dict[str, dict[str, float]]]:
    """``model → detector → OOD set (and 'mean') → mean over seeds`` of ``metric``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm in result.arms():
        for d in detectors:
            row = {}
            for o in [*ood, "mean"]:
                key = f"{metric}_{d}" if o == "mean" else f"{metric}_{d}_{o}"
                vals = list(result.per_seed(key, arm).values())
                if vals:
                    row[o] = float(np.mean(vals))
            out.setdefault(arm, {})[d] = row
    return out


def detector_cost(pred: Predictions, detectors: Sequence[str], knn_k: int) -> dict[str, dict[str, float]]:
    """Seconds each detector takes to fit on the training outputs and to score every
    evaluation image once (test and OOD sets), on this machine."""
    import time

    out: dict[str, dict[str, float]] = {}
    names = [o for o in pred.sets if o != "train"]
    n = sum(len(pred[o].labels) for o in names)
    for d in detectors:
        t0 = time.perf_counter()
        s = det.fit(pred["train"], [d], knn_k)[d]
        t1 = time.perf_counter()
        for o in names:
            s(pred[o])
        t2 = time.perf_counter()
        out[d] = {"fit_s": t1 - t0, "score_ms_per_1k": 1000 * (t2 - t1) / n * 1000}
    return out
