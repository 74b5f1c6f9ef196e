"""Multi-sample dropout (Inoue 2019): one arm per number of dropout samples M.

Arms differ only in how the loss is formed: ``M = 1`` (ordinary dropout), ``M = 2, 4, 8…``
(multi-sample dropout, ``repro.layers.multi_sample_dropout``), optionally a no-dropout
reference and an ``M = 1`` control with a larger learning rate (does a larger step close the
gap? — the card's tuned-lr check). For one seed every arm starts from the same initial
weights and sees the same batches in the same order, so differences come from the loss.

Sweep labels (:func:`arm_configs`): ``M1`` (ordinary dropout), ``M2``, ``M4``… and ``Mmax``
for the largest M of the tier (the arm the claims compare with ``M1``), ``no_dropout`` and
``M1_lr_control``. Each job's metrics: ``test_err`` (final, %), ``train_loss`` (at epoch
``loss_epoch``, where the acceleration claim is read).

Cost is measured twice: the median epoch time of each training job (what a user sees, but
the jobs run one after the other, so on a shared machine load drifts between them) and an
interleaved benchmark (:func:`step_time_benchmark`) that times training steps of every M in
alternation on the same batches — the number the overhead claim uses.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .... import models
from ....arms import arm, make_config
from ....data import Dataset
from ....layers.multi_sample_dropout import multi_sample_dropout_loss
from ....sweep import Job, SweepResult
from ....train import WORK, dry_run, fit, make_optimizer
from ..protocol import TrainingConfig, train_config

NAME = "msdropout"


@dataclass
class MSDropoutConfig(TrainingConfig):
    """One multi-sample dropout setting: M samples (``m``), dropout p, lr multiplier."""

    model: str = "vgg16_bn"
    dropout: float = 0.5          # p of every dropout layer (0 = the no-dropout reference)
    loss_mode: str = "loss_avg"   # 'loss_avg' (the paper) or 'logit_avg'
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    loss_epoch_frac: float = 0.5  # train loss is read at this fraction of the epochs
    bench_steps: int = 10         # steps per M and round of the timing benchmark
    m: int = 1                    # dropout samples per image (1 = ordinary dropout)
    lr_scale: float = 1.0         # multiplies lr (the tuned-lr M = 1 control)

    @property
    def loss_epoch(self) -> int:
        """The epoch at which the train losses are compared."""
        return max(1, round(self.loss_epoch_frac * self.epochs))

    @property
    def label(self) -> str:
        """Display label (figures): ``M = 2``, ``no dropout``, ``M = 1, lr × 2``."""
        if self.dropout == 0:
            return "no dropout"
        return f"M = {self.m}" + ("" if self.lr_scale == 1 else f", lr × {self.lr_scale:g}")


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, MSDropoutConfig]]:
    """The chapter's arms, ``label → (arm name, config)``: one per M in ``samples`` (``M{m}``,
    the largest ``Mmax``), then the optional references ``no_dropout`` and ``M1_lr_control``.

    params: the resolved parameters (``samples``, ``no_dropout_arm``, ``lr_control`` and every
    field of :class:`MSDropoutConfig`).
    """
    samples = [int(m) for m in params["samples"]]
    top = max(samples)
    out = {("Mmax" if m == top else f"M{m}"): (NAME, make_config(MSDropoutConfig, params, m=m)) for m in samples}
    if params.get("no_dropout_arm"):
        out["no_dropout"] = (NAME, make_config(MSDropoutConfig, params, m=1, dropout=0.0))
    if params.get("lr_control"):
        out["M1_lr_control"] = (NAME, make_config(MSDropoutConfig, params, m=1, lr_scale=float(params["lr_control"])))
    return out


def build_model(cfg: MSDropoutConfig, num_classes: int, seed: int, dropout: float | None = None) -> torch.nn.Module:
    """The chapter's network with dropout p before each FC layer, seeded initial weights."""
    torch.manual_seed(seed)  # same initial weights for every arm of this seed
    return models.create(cfg.model, num_classes=num_classes, drop_rate=cfg.dropout if dropout is None else dropout)


@arm(NAME, family="training", config=MSDropoutConfig)
def train_msdropout(cfg: MSDropoutConfig, data: Dataset, seed: int, checkpoint_dir: Path | None = None,
                    device: torch.device | str = "cpu") -> Job:
    """Multi-sample dropout: train with the mean loss of ``cfg.m`` dropout samples per image.

    Job metrics: ``test_err`` (final, %) and ``train_loss`` (at ``cfg.loss_epoch``); extra:
    ``label``, ``M``, ``dropout``, ``lr_scale``, ``history`` (fit's rows plus ``test_err`` =
    100 − top-1) and ``epoch_s`` (median epoch time after the first, which carries one-off
    warm-up costs).
    """
    model = build_model(cfg, data.num_classes, seed)
    res = fit(model, data.loader("train", cfg.batch_size, device, seed=seed), data.loader("test", 1000, device),
              train_config(cfg, lr=cfg.lr * cfg.lr_scale, momentum=0.9, schedule="cosine",
                           desc=f"{cfg.label} · seed {seed}"),
              loss_fn=multi_sample_dropout_loss(cfg.m, cfg.loss_mode), checkpoint_dir=checkpoint_dir)
    history = [dict(h, test_err=100.0 - h["test_acc"]) for h in res.history]
    times = [h["epoch_s"] for h in history]
    i = min(cfg.loss_epoch, len(history)) - 1
    extra = {"label": cfg.label, "M": cfg.m, "dropout": cfg.dropout, "lr_scale": cfg.lr_scale,
             "history": history, "final_test_err": history[-1]["test_err"],
             "epoch_s": float(np.median(times[1:] if len(times) > 1 else times))}
    return Job.from_fits([res], {"test_err": history[-1]["test_err"], "train_loss": history[i]["train_loss"]},
                         n_test=len(data.y_test), extra=extra)


# -- cost ----------------------------------------------------------------------------------


def step_time_benchmark(cfg: MSDropoutConfig, data: Dataset, seed: int, samples: Sequence[int],
                        device: torch.device | str = "cpu", steps: int | None = None,
                        rounds: int = 5) -> dict[int, float]:
    """Seconds per training step for each M, timed in alternation on the same batches.

    One model (the chapter's, with this seed's initial weights) takes ``rounds`` rounds; in
    each round every M trains ``steps`` (default ``cfg.bench_steps``) SGD steps (forward,
    backward, update, as in ``repro.train.fit``: bf16 autocast and channels_last on CUDA), in
    an order that rotates from round to round, after one untimed warm-up round. Interleaving
    puts every M under the same machine load, which sequential training jobs on a shared
    machine do not. Returns ``{M: median seconds per step}``. A dry run takes one step per M
    in the warm-up round and in one timed round.
    """
    steps = cfg.bench_steps if steps is None else steps
    if dry_run():
        steps, rounds = 1, 1
    device = torch.device(device)
    cuda = device.type == "cuda"
    model = build_model(cfg, data.num_classes, seed).to(device).train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, train_config(cfg, momentum=0.9, schedule="cosine"))
    loader = data.loader("train", cfg.batch_size, device, seed=seed)
    batches = [loader.fetch(idx) for idx in loader.batches()[:steps]]
    if cuda:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    losses = {m: multi_sample_dropout_loss(m, cfg.loss_mode) for m in samples}
    times: dict[int, list[float]] = {m: [] for m in samples}
    order = list(samples)
    for r in range(rounds + 1):
        for m in order[r % len(order):] + order[:r % len(order)]:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x, y in batches:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    loss, _ = losses[m](model, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                WORK["train_steps"] += 1
            if cuda:
                torch.cuda.synchronize()
            if r > 0:  # round 0 warms up allocator, kernels and caches
                times[m].append((time.perf_counter() - t0) / len(batches))
    return {m: float(np.median(v)) for m, v in times.items()}


# -- metrics that are not one arm's value -----------------------------------------------------


def epochs_to_reach(history: Sequence[Mapping[str, float]], key: str, target: float) -> float | None:
    """First epoch whose ``key`` is ≤ ``target`` (None if none is)."""
    for h in history:
        if h[key] <= target:
            return float(h["epoch"])
    return None


def seed_metrics(base: Mapping[str, Any], top: Mapping[str, Any], loss_epoch: int,
                 bench: Mapping[int, float] | None = None, steps_per_epoch: int | None = None,
                 overhead_limit: float = 10.0) -> dict[str, float]:
    """One seed's metrics that compare the largest M (``top``) with the baseline M (``base``)
    and are not a difference of two arms' values (those are the claims' paired rows).

    base, top: the two jobs' extras (``M``, ``history``, ``epoch_s``).

    * ``overhead_pct``: 100·(time per step of M_top / M_base − 1) from ``bench`` (the
      interleaved benchmark, ``M → seconds per step``), else from the training jobs' median
      epoch times; ``overhead_margin`` = ``overhead_limit`` − ``overhead_pct`` (> 0: within);
    * ``job_overhead_pct``: the same ratio from the training jobs' median epoch times;
    * ``epochs_saved``: epochs M_base needs to reach its own train loss at ``loss_epoch``
      minus the epochs M_top needs (only when M_top reaches it);
    * ``epoch_s_M{m}``: the benchmark's step time × ``steps_per_epoch`` (when given).
    """
    i = min(max(loss_epoch, 1), len(base["history"])) - 1
    job = 100.0 * (top["epoch_s"] / base["epoch_s"] - 1.0)
    overhead = 100.0 * (bench[top["M"]] / bench[base["M"]] - 1.0) if bench is not None else job
    out = {"overhead_pct": overhead, "overhead_margin": overhead_limit - overhead, "job_overhead_pct": job}
    target = base["history"][i]["train_loss"]
    e_lo = epochs_to_reach(base["history"], "train_loss", target)
    e_hi = epochs_to_reach(top["history"], "train_loss", target)
    if e_lo is not None and e_hi is not None:
        out["epochs_saved"] = e_lo - e_hi
    if bench is not None and steps_per_epoch:
        for m in sorted(bench):
            out[f"epoch_s_M{m}"] = bench[m] * steps_per_epoch
    return out


# -- chapter glue (at the level of the sweep) ---------------------------------------------------


def runs(result: SweepResult) -> list[dict[str, Any]]:
    """Every job as one dict (its extra plus ``arm`` and ``seed``), for figures and notes."""
    return [{**j["extra"], "arm": j["arm"], "seed": j["seed"]} for j in result.jobs]


def metrics_by_seed(result: SweepResult, cfg: MSDropoutConfig, bench: Mapping[int, Mapping[int, float]],
                    steps_per_epoch: int, baseline: str = "M1", top: str = "Mmax") -> dict[int, dict[str, float]]:
    """Each seed's :func:`seed_metrics` (``top`` against ``baseline``; ``run.log_seeds`` logs them)."""
    by = {(j["arm"], j["seed"]): j["extra"] for j in result.jobs}
    out: dict[int, dict[str, float]] = {}
    base = baseline if any(a == baseline for a, _ in by) else min(
        (a for a, _ in by if a.startswith("M") and a[1:].isdigit()), key=lambda a: int(a[1:]))
    for seed in sorted({s for _, s in by}):
        if (base, seed) in by and (top, seed) in by:
            out[seed] = seed_metrics(by[base, seed], by[top, seed], cfg.loss_epoch, bench.get(seed), steps_per_epoch)
    return out
