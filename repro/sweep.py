"""One sweep for every family: arms × seeds, with seeding, checkpoints, resume, progress and
cost, and tidy rows in the run's record.

A *job* is a function ``job(seed, checkpoint_dir) -> Job`` that trains one arm for one seed
and evaluates it; a family builds its jobs from its arms and typed configs. The sweep owns
everything around it:

* seeding: Python, numpy and torch are seeded with the job's seed before it starts;
* checkpoints: each (arm, seed) gets its own folder from the run (keyed by the paper, tier,
  parameters and source hash), so an interrupted chapter resumes where it stopped and a
  finished job is loaded instead of retrained;
* progress: one bar over the jobs;
* cost and rows: the job's training seconds and images (from what ``fit`` returned), and one
  tidy row per (arm, seed, metric) with its value and the number of test images behind it.

Claims then name their parts (metric ``aia``, arm ``wa``, baseline ``replay_kd``) and the run
forms the paired per-seed differences from these rows itself.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    """What one (arm, seed) job returns.

    metrics: scalar results (``{"top1": 61.2, "ece": 3.1}``); n_test: test images behind
    them (0 when a metric is not a test-set estimate); train_s / train_images: the cost of
    producing the model (from ``FitResult``, resumed work included); extra: JSON-able facts
    for the record and figures; model: the trained model (kept only if the sweep is asked to).
    """

    metrics: dict[str, float]
    n_test: int = 0
    train_s: float = 0.0
    train_images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    test_var: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_fits(cls, fits: Iterable[Any], metrics: dict[str, float], n_test: int = 0, **kw: Any) -> "Job":
        """A Job whose cost is the sum of the given ``FitResult``s."""
        fits = list(fits)
        return cls(metrics=metrics, n_test=n_test, train_s=sum(f.train_seconds for f in fits),
                   train_images=sum(f.train_images for f in fits), **kw)


JobFn = Callable[[int, Path | None], Job]


@dataclass
class SweepResult:
    """Every job's outcome, with look-ups by arm, seed and metric."""

    jobs: list[dict[str, Any]]

    def value(self, arm: str, seed: int, metric: str) -> float:
        for j in self.jobs:
            if j["arm"] == arm and j["seed"] == seed:
                return j["metrics"][metric]
        raise KeyError((arm, seed, metric))

    def per_seed(self, metric: str, arm: str) -> dict[int, float]:
        """seed → value of ``metric`` for ``arm``."""
        return {j["seed"]: j["metrics"][metric] for j in self.jobs if j["arm"] == arm and metric in j["metrics"]}

    def paired(self, metric: str, arm: str, baseline: str) -> dict[int, float]:
        """seed → ``arm`` minus ``baseline`` on ``metric`` (seeds both have)."""
        a, b = self.per_seed(metric, arm), self.per_seed(metric, baseline)
        return {s: a[s] - b[s] for s in a if s in b}

    def arms(self) -> list[str]:
        return list(dict.fromkeys(j["arm"] for j in self.jobs))

    def of(self, arm: str) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j["arm"] == arm]

    def jsonable(self) -> list[dict[str, Any]]:
        """The jobs without models, for the record."""
        return [{k: v for k, v in j.items() if k != "model"} for j in self.jobs]


def sweep(run: Any, jobs: Mapping[str, JobFn], seeds: Sequence[int] | None = None, *,
          keep_models: bool = False, progress: bool = True, order: str = "seed") -> SweepResult:
    """Run every (arm, seed) job; returns their results and logs tidy rows into ``run``.

    jobs: arm label → job function. seeds: default ``run.seeds``. order: "seed" runs all
    arms of a seed before the next seed (the default), "arm" all seeds of an arm first.
    keep_models: keep each job's trained model in its result (memory!).
    """
    from tqdm.auto import tqdm

    from .run import seed_everything

    seeds = list(run.seeds if seeds is None else seeds)
    for label in jobs:
        if not str(label).isidentifier():
            raise ValueError(f"arm label {label!r} must be an identifier (it becomes part of metric names)")
    pairs = [(s, a) for s in seeds for a in jobs] if order == "seed" else [(s, a) for a in jobs for s in seeds]
    out = []
    bar = tqdm(pairs, desc=f"{run.spec.name} jobs", unit="job", disable=not progress, leave=False)
    for seed, label in bar:
        bar.set_postfix(arm=label, seed=seed)
        seed_everything(seed)
        t0 = time.time()
        res = jobs[label](seed, run.checkpoint_dir(label, seed))
        row = {"arm": label, "seed": seed, "metrics": dict(res.metrics), "n_test": res.n_test,
               "train_s": res.train_s, "train_images": res.train_images, "wall_s": time.time() - t0,
               "extra": res.extra}
        if res.test_var:
            row["test_var"] = dict(res.test_var)
        if keep_models:
            row["model"] = res.model
        out.append(row)
        for metric, value in res.metrics.items():
            run.add_row(label, seed, metric, value, res.n_test, res.test_var.get(metric))
    bar.close()
    return SweepResult(out)
