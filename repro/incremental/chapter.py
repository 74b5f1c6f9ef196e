"""What every class-incremental chapter does with the protocol: build the stream from the run's
parameters, train labelled learners over seeds, log the accuracy-matrix numbers per seed, and
draw the family's figures from the results.

A *learner factory* is any callable ``cfg -> Learner`` (a ``Learner`` subclass works as one);
chapters pass their own next to the shared baselines, e.g.
``{"finetune": FineTune, "replay_kd": ReplayKD, "wa": WeightAligning}``. Labels must be
identifiers: they become parts of metric names (``aia_wa``, ``last_replay_kd``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..metrics import mean_std_text
from ..families.incremental.figures import accuracy_curves, accuracy_matrix_heatmap
from ..plots.style import annotate_setting, jsonable, new_figure
from ..families.incremental.learners import IncrementalConfig, Learner, run_stream
from ..families.incremental.stream import Stream, make_stream

Factory = Callable[[IncrementalConfig], Learner]
SUMMARY_KEYS = ("aia", "last", "forgetting", "old_last", "new_last")


def protocol_stream(run) -> Stream:
    """The stream the protocol's parameters name (its data recorded in the run)."""
    p = run.params
    return make_stream(classes=p["classes"], scenario=p["scenario"], order_seed=p["order_seed"],
                       per_class=p["per_class"] or None, test_per_class=p["test_per_class"] or None,
                       image_size=p["image_size"], data_seed=p["data_seed"], run=run)


def protocol_config(run, **overrides: Any) -> IncrementalConfig:
    """An IncrementalConfig from the run's parameters (fields of the same names); ``overrides`` win."""
    from ..arms import make_config

    return make_config(IncrementalConfig, run.params, **overrides)


def check_labels(learners: Mapping[str, Factory]) -> None:
    """Labels must be distinct identifiers (they end up in metric names)."""
    for label in learners:
        if not label.isidentifier():
            raise ValueError(f"learner label {label!r} must be an identifier (letters, digits, _)")


def run_learners(run, stream: Stream, learners: Mapping[str, Factory], cfg: IncrementalConfig,
                 seeds: Sequence[int], keep_models: bool = False,
                 configs: Mapping[str, IncrementalConfig] | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Train every (seed, learner) over the stream; one result dict per run.

    Each job is checkpointed after every task under ``run.checkpoint_dir(label, seed)``, so an
    interrupted chapter resumes at the task it was in. ``configs`` gives a learner its own
    config (e.g. another memory budget); the others use ``cfg``. With ``keep_models`` each
    result also holds the final model under "model" and the learner under "learner_obj".
    ``progress=False`` silences the per-task progress bars (e.g. for a search of many runs).
    """
    check_labels(learners)
    configs = dict(configs or {})
    out = []
    for seed in seeds:
        for label, factory in learners.items():
            learner = factory(configs.get(label, cfg))
            t0 = time.time()
            res = run_stream(stream, learner, seed, run.device, checkpoint_dir=run.checkpoint_dir(label, seed),
                             progress=progress)
            row = {"method": label, "seed": seed, "order_seed": stream.order_seed, "learner": res.learner, **res.extra(),
                   "summary": {**res.summary(), "train_s": res.train_s}, "histories": res.histories,
                   "train_s": res.train_s,
                   "wall_s": time.time() - t0}
            if keep_models:
                row["model"], row["learner_obj"] = res.model, learner
            out.append(row)
    return out


def jsonable_results(results: list[dict[str, Any]], histories: bool = False) -> list[dict[str, Any]]:
    """The results for the record: no models; per-epoch histories only if asked (they are long)."""
    drop = {"model", "learner_obj"} | (set() if histories else {"histories"})
    return [{k: v for k, v in r.items() if k not in drop} for r in results]


def log_seed_metrics(run, results: list[dict[str, Any]], keys: Sequence[str] = SUMMARY_KEYS) -> None:
    """Per seed and learner: ``{key}_{label}`` for every summary key (AIA, last, forgetting…)."""
    for r in results:
        run.log(r["seed"], **{f"{k}_{r['method']}": r["summary"][k] for k in keys})


def log_gain(run, results: list[dict[str, Any]], a: str, b: str, key: str = "aia") -> dict[int, float]:
    """Log ``{key}_{a}_minus_{b}`` per seed (paired by seed) and return it."""
    by = {(r["method"], r["seed"]): r["summary"][key] for r in results}
    gains = {s: by[(a, s)] - by[(b, s)] for (m, s) in by if m == a and (b, s) in by}
    for s, g in gains.items():
        run.log(s, **{f"{key}_{a}_minus_{b}": g})
    return gains


def summary_markdown(results: list[dict[str, Any]], labels: Sequence[str] | None = None) -> str:
    """Mean ± std over seeds of AIA, last accuracy, forgetting, the final old/new split and
    the training time of each learner."""
    labels = list(labels or dict.fromkeys(r["method"] for r in results))
    lines = ["| learner | AIA % | last % | forgetting (pts) | old / new after the last task % | train s / run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label in labels:
        runs = [r for r in results if r["method"] == label]
        s = {k: [r["summary"][k] for r in runs] for k in SUMMARY_KEYS}
        ms = {k: mean_std_text(v) for k, v in s.items()}
        lines.append(f"| {label} (n={len(runs)}) | {ms['aia']} | {ms['last']} | {ms['forgetting']} "
                     f"| {ms['old_last']} / {ms['new_last']} | {np.mean([r['train_s'] for r in runs]):.1f} |")
    return "\n".join(lines)


def seen_classes(stream: Stream) -> list[int]:
    return [stream.seen(t) for t in range(stream.num_tasks)]


def plot_curves(results: list[dict[str, Any]], stream: Stream, setting: str,
                labels: Sequence[str] | None = None, title: str | None = None):
    """Accuracy on all seen classes after each task, every learner (mean, min–max over seeds)."""
    labels = list(labels or dict.fromkeys(r["method"] for r in results))
    curves = {label: [r["acc_after"] for r in results if r["method"] == label] for label in labels}
    return accuracy_curves(curves, seen_classes(stream), setting, title=title)


def mean_matrix(results: list[dict[str, Any]], label: str) -> np.ndarray:
    """A[t, j] averaged over the seeds of one learner (NaN above the diagonal)."""
    return np.mean([_pad(r["A"]) for r in results if r["method"] == label], axis=0)


def _pad(rows: Sequence[Sequence[float]]) -> np.ndarray:
    T = len(rows)
    A = np.full((T, T), np.nan)
    for t, r in enumerate(rows):
        A[t, : len(r)] = r
    return A


def plot_matrices(results: list[dict[str, Any]], setting: str, labels: Sequence[str] | None = None,
                  title: str = "Accuracy matrix A[t, j], mean over seeds"):
    """One heatmap per learner side by side (one colour scale, 0–100 %); a single learner
    falls back to ``repro.plots.incremental.accuracy_matrix_heatmap``."""
    labels = list(labels or dict.fromkeys(r["method"] for r in results))
    mats = {label: mean_matrix(results, label) for label in labels}
    if len(labels) == 1:
        return accuracy_matrix_heatmap(mats[labels[0]], setting, title=f"{title}: {labels[0]}")
    T = next(iter(mats.values())).shape[0]
    side = max(2.4, 0.42 * T + 1.0)
    fig, axes = new_figure(ncols=len(labels), width=side * len(labels) + 1.0, height=side + 0.9, squeeze=False)
    im = None
    for ax, label in zip(axes[0], labels):
        A = mats[label]
        im = ax.imshow(np.ma.masked_invalid(A), vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for t in range(T):
            for j in range(T):
                if np.isfinite(A[t, j]):
                    ax.text(j, t, f"{A[t, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if A[t, j] < 60 else "black")
        ax.set_xticks(range(T), [str(i + 1) for i in range(T)])
        ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
        ax.set_xlabel("evaluated task j")
        ax.grid(False)
        ax.set_title(label, fontsize=10)
    axes[0][0].set_ylabel("after training task t")
    fig.colorbar(im, ax=list(axes[0]), label="top-1 on task j (%)", shrink=0.85)
    fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"matrices": mats, "setting": setting, "seeds_averaged": True})
