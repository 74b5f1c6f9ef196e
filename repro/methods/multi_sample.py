"""The multi-sample dropout experiment (Inoue 2019): one training job per (arm, seed).

Arms differ only in how the loss is formed: ``M = 1`` (ordinary dropout), ``M = 2, 4, 8…``
(multi-sample dropout, ``repro.layers.multi_sample_dropout``), optionally a no-dropout
reference and an ``M = 1`` control with a larger learning rate (does a larger step close the
gap? — the card's tuned-lr check). For one seed every arm starts from the same initial
weights and sees the same batches in the same order, so differences come from the loss.

Cost is measured twice: the median epoch time of each training job (what a user sees, but
the jobs run one after the other, so on a shared machine load drifts between them) and an
interleaved benchmark (``step_time_benchmark``) that times training steps of every M in
alternation on the same batches — the number the overhead claim uses.

``run_arm`` trains one arm, ``seed_metrics`` turns one seed's arms into the chapter's
per-seed metrics, ``epochs_to_reach`` counts epochs to a target train loss, and the
``plot_*`` functions draw the chapter's figures in the book's style.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .. import models
from ..data import Dataset
from ..layers.multi_sample_dropout import multi_sample_dropout_loss
from ..plots import training_curves
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import WORK, TrainConfig, dry_run, fit, make_optimizer

# -- the arms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One training recipe: M dropout samples, dropout p, learning-rate multiplier."""

    samples: int          # M (1 = ordinary dropout)
    dropout: float        # p of every dropout layer (0 = the no-dropout reference)
    lr_scale: float = 1.0  # multiplies the base lr (the tuned-lr M = 1 control)

    @property
    def label(self) -> str:
        if self.dropout == 0:
            return "no dropout"
        return f"M = {self.samples}" + ("" if self.lr_scale == 1 else f", lr × {self.lr_scale:g}")

    @property
    def key(self) -> str:
        """Short id for checkpoint folders."""
        return f"M{self.samples}-p{self.dropout:g}-lr{self.lr_scale:g}"


def arms_for(params: Mapping[str, Any]) -> list[Arm]:
    """The chapter's arms: one per M in ``samples``, then the optional references.

    params: ``samples`` (list of M), ``dropout``, ``no_dropout_arm`` (bool), ``lr_control``
    (lr multiplier of an extra M = 1 arm; 0 = none).
    """
    p = float(params["dropout"])
    arms = [Arm(int(m), p) for m in params["samples"]]
    if params.get("no_dropout_arm"):
        arms.append(Arm(1, 0.0))
    if params.get("lr_control"):
        arms.append(Arm(1, p, float(params["lr_control"])))
    return arms


def _train_config(arm: Arm, params: Mapping[str, Any], desc: str = "") -> TrainConfig:
    return TrainConfig(epochs=int(params["epochs"]), lr=float(params["lr"]) * arm.lr_scale, momentum=0.9,
                       weight_decay=float(params["weight_decay"]), schedule="cosine", desc=desc)


def build_model(params: Mapping[str, Any], num_classes: int, dropout: float, seed: int) -> torch.nn.Module:
    """The chapter's network with dropout p before each FC layer, seeded initial weights."""
    torch.manual_seed(seed)  # same initial weights for every arm of this seed
    return models.create(params["model"], num_classes=num_classes, drop_rate=dropout)


def run_arm(arm: Arm | int, data: Dataset, params: Mapping[str, Any], seed: int,
            checkpoint_dir: Path | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train one arm (an ``Arm`` or just M) for one seed; return its history.

    params: the chapter's resolved parameters (model, dropout, epochs, batch_size, lr,
    weight_decay, loss_mode). checkpoint_dir: ``run.checkpoint_dir(arm.key, seed)`` makes a
    finished job load instead of retraining and an interrupted one resume.

    Returns ``{"arm", "label", "M", "seed", "history", "final_test_err", "epoch_s"}``; each
    history row (``repro.train`` keys) gains ``test_err`` = 100 − top-1 (%). ``epoch_s`` is
    the median over epochs after the first (the first carries one-off warm-up costs).
    """
    arm = arm if isinstance(arm, Arm) else Arm(int(arm), float(params["dropout"]))
    model = build_model(params, data.num_classes, arm.dropout, seed)
    res = fit(model, data.loader("train", int(params["batch_size"]), device, seed=seed),
              data.loader("test", 1000, device), _train_config(arm, params, f"{arm.label} · seed {seed}"),
              loss_fn=multi_sample_dropout_loss(arm.samples, params["loss_mode"]),
              checkpoint_dir=checkpoint_dir)
    history = [dict(h, test_err=100.0 - h["test_acc"]) for h in res.history]
    times = [h["epoch_s"] for h in history]
    return {"arm": arm.key, "label": arm.label, "M": arm.samples, "dropout": arm.dropout,
            "lr_scale": arm.lr_scale, "seed": seed, "history": history,
            "final_test_err": history[-1]["test_err"],
            "epoch_s": float(np.median(times[1:] if len(times) > 1 else times))}


# -- cost ----------------------------------------------------------------------------------


def step_time_benchmark(data: Dataset, params: Mapping[str, Any], seed: int, samples: Sequence[int],
                        device: torch.device | str = "cpu", steps: int = 8, rounds: int = 5) -> dict[int, float]:
    """Seconds per training step for each M, timed in alternation on the same batches.

    One model (the chapter's, with this seed's initial weights) takes ``rounds`` rounds; in
    each round every M trains ``steps`` SGD steps (forward, backward, update, as in
    ``repro.train.fit``: bf16 autocast and channels_last on CUDA), in an order that rotates
    from round to round, after one untimed warm-up round. Interleaving puts every M under the
    same machine load, which sequential training jobs on a shared machine do not. Returns
    ``{M: median seconds per step}``. A dry run takes one step per M in the warm-up round and
    in one timed round.
    """
    if dry_run():
        steps, rounds = 1, 1
    device = torch.device(device)
    cuda = device.type == "cuda"
    model = build_model(params, data.num_classes, float(params["dropout"]), seed).to(device).train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, _train_config(Arm(1, float(params["dropout"])), params))
    loader = data.loader("train", int(params["batch_size"]), device, seed=seed)
    batches = [loader.fetch(idx) for idx in loader.batches()[:steps]]
    if cuda:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    losses = {m: multi_sample_dropout_loss(m, params["loss_mode"]) for m in samples}
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


# -- metrics -------------------------------------------------------------------------------


def epochs_to_reach(history: Sequence[Mapping[str, float]], key: str, target: float) -> float | None:
    """First epoch whose ``key`` is ≤ ``target`` (None if none is)."""
    for h in history:
        if h[key] <= target:
            return float(h["epoch"])
    return None


def seed_metrics(arms: Sequence[Mapping[str, Any]], seed: int, samples: Sequence[int], loss_epoch: int,
                 bench: Mapping[int, float] | None = None, steps_per_epoch: int | None = None,
                 overhead_limit: float = 10.0) -> dict[str, float]:
    """One seed's metrics, comparing the largest M with the baseline M (1, else the smallest).

    Only the arms with the chapter's dropout and lr (not the references) enter.

    * ``train_loss_gain``: train loss(M_base) − train loss(M_max) at epoch ``loss_epoch``
      (> 0: the larger M trains faster);
    * ``test_err_gain``: final test error(M_base) − final test error(M_max), points
      (> 0: the larger M generalises better);
    * ``overhead_pct``: 100·(time per step of M_max / M_base − 1) from ``bench`` (the
      interleaved benchmark), else from the training jobs' median epoch times;
      ``overhead_margin`` = ``overhead_limit`` − ``overhead_pct`` (> 0: within the limit);
    * ``job_overhead_pct``: the same ratio from the training jobs' median epoch times;
    * ``epochs_saved``: epochs M_base needs to reach its own train loss at ``loss_epoch``
      minus the epochs M_max needs (logged only when M_max reaches it);
    * per M: ``test_err_M{m}``, ``train_loss_M{m}`` (at ``loss_epoch``), ``epoch_s_M{m}``
      (the benchmark's step time × ``steps_per_epoch`` when given).
    """
    by = {a["M"]: a for a in arms if a["seed"] == seed and a.get("lr_scale", 1.0) == 1.0
          and a.get("dropout", 1.0) > 0 and a["M"] in samples}
    base = 1 if 1 in by else min(by)
    top = max(by)
    lo, hi = by[base], by[top]
    i = min(max(loss_epoch, 1), len(lo["history"])) - 1
    if bench is not None:
        overhead = 100.0 * (bench[top] / bench[base] - 1.0)
    else:
        overhead = 100.0 * (hi["epoch_s"] / lo["epoch_s"] - 1.0)
    out = {
        "train_loss_gain": lo["history"][i]["train_loss"] - hi["history"][i]["train_loss"],
        "test_err_gain": lo["final_test_err"] - hi["final_test_err"],
        "overhead_pct": overhead,
        "overhead_margin": overhead_limit - overhead,
        "job_overhead_pct": 100.0 * (hi["epoch_s"] / lo["epoch_s"] - 1.0),
    }
    target = lo["history"][i]["train_loss"]
    e_lo, e_hi = epochs_to_reach(lo["history"], "train_loss", target), epochs_to_reach(hi["history"], "train_loss", target)
    if e_lo is not None and e_hi is not None:
        out["epochs_saved"] = e_lo - e_hi
    for m, a in sorted(by.items()):
        out[f"test_err_M{m}"] = a["final_test_err"]
        out[f"train_loss_M{m}"] = a["history"][min(i, len(a["history"]) - 1)]["train_loss"]
        if bench is not None and m in bench and steps_per_epoch:
            out[f"epoch_s_M{m}"] = bench[m] * steps_per_epoch
    return out


# -- figures -------------------------------------------------------------------------------


def plot_curves(arms: Sequence[Mapping[str, Any]], setting: str, loss_epoch: int | None = None):
    """Key figure: train loss and test error vs epoch, one line per arm (mean, min–max band).

    A dotted vertical line marks ``loss_epoch``, where the acceleration claim is read.
    """
    labels = list(dict.fromkeys(a["label"] for a in arms))
    hist = {lab: [a["history"] for a in arms if a["label"] == lab] for lab in labels}
    fig, data = training_curves(hist, x="epoch", ys=("train_loss", "test_err"), setting=setting,
                                title="Multi-sample dropout: train loss and test error by number of samples M")
    fig.axes[1].set_ylabel("test error (%)")
    refs = {lab for lab in labels if lab == "no dropout" or "lr ×" in lab}
    for ax in fig.axes:  # reference arms dashed, so the M = … lines stand out
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for line in ax.get_lines():
            if line.get_label().split(" (n=")[0] in refs:
                line.set_linestyle("--")
        if ax.get_legend() is not None:
            ax.legend()
    if loss_epoch is not None:
        fig.axes[0].axvline(loss_epoch, color="0.5", linestyle=":", linewidth=1)
        data["loss_epoch"] = loss_epoch
    return fig, data


def plot_vs_m(per_m: Mapping[int, Sequence[float]], ylabel: str, setting: str, title: str,
              refs: Mapping[str, Sequence[float]] | None = None,
              hollow: Mapping[int, Sequence[float]] | None = None, hollow_label: str = "",
              hline: tuple[float, str] | None = None):
    """A metric against M (log₂ axis): one dot per seed, the mean as a line.

    per_m: ``M → per-seed values``; refs: ``label → per-seed values`` of arms without an M
    (drawn as dashed horizontal lines at their mean); hollow: a second measurement per M
    drawn as hollow markers (e.g. the training jobs' own epoch times); hline: ``(y, label)``
    of a threshold line. Returns ``(fig, data)``.
    """
    fig, ax = new_figure(width=4.6, height=3.3)
    ms = sorted(per_m)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    means = [float(np.mean(per_m[m])) for m in ms]
    ax.plot(ms, means, color="C0", marker="o", label="mean over seeds", zorder=2)
    for m in ms:
        v = np.asarray(per_m[m], dtype=float)
        ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, v.size), v, s=16, color="0.15", zorder=3,
                   label="one seed" if m == ms[0] else None)
    if hollow:
        for m in sorted(hollow):
            v = np.asarray(hollow[m], dtype=float)
            ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, v.size), v, s=22, facecolors="none",
                       edgecolors="C1", zorder=3, label=hollow_label if m == min(hollow) else None)
    for i, (lab, v) in enumerate((refs or {}).items()):
        ax.axhline(float(np.mean(v)), color=f"C{i + 2}", linestyle="--", linewidth=1.2, label=f"{lab} (mean)")
    if hline is not None:
        ax.axhline(hline[0], color="C3", linestyle=":", linewidth=1.2, label=hline[1])
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.minorticks_off()
    ax.set_xlabel("dropout samples per image, M")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    annotate_setting(fig, setting)
    data = {"per_m": {str(m): list(per_m[m]) for m in ms}, "mean": dict(zip(map(str, ms), means)),
            "refs": {k: list(v) for k, v in (refs or {}).items()},
            "hollow": {str(m): list(v) for m, v in (hollow or {}).items()}, "hollow_label": hollow_label,
            "hline": list(hline) if hline else None, "ylabel": ylabel, "title": title, "setting": setting}
    return fig, jsonable(data)


def plot_final_error(arms: Sequence[Mapping[str, Any]], samples: Sequence[int], setting: str):
    """Final test error against M, one dot per seed; reference arms as dashed lines."""
    main = [a for a in arms if a["dropout"] > 0 and a["lr_scale"] == 1.0 and a["M"] in samples]
    per_m = {m: [a["final_test_err"] for a in main if a["M"] == m] for m in samples}
    refs: dict[str, list[float]] = {}
    for a in arms:
        if a not in main:
            refs.setdefault(a["label"], []).append(a["final_test_err"])
    return plot_vs_m(per_m, "final test error (%)", setting, "Final test error vs number of dropout samples",
                     refs=refs)


def plot_epoch_time(bench: Mapping[int, Mapping[int, float]], steps_per_epoch: int,
                    arms: Sequence[Mapping[str, Any]], samples: Sequence[int], setting: str,
                    overhead_limit: float = 10.0):
    """Cost of M, two panels: seconds per training epoch (left, log scale) and the extra time
    relative to the baseline M (right, %, with the ``overhead_limit`` line).

    bench: ``seed → {M: seconds per step}`` from ``step_time_benchmark`` (filled dots, one per
    seed; epoch time = step time × ``steps_per_epoch``); arms: the training jobs, whose
    median epoch times are drawn as hollow markers. Each seed's overhead is taken against
    that seed's own baseline measurement. Returns ``(fig, data)``.
    """
    ms = sorted(samples)
    m0 = 1 if 1 in ms else ms[0]
    seeds = sorted(bench)
    jobs = {(a["seed"], a["M"]): a["epoch_s"] for a in arms
            if a["dropout"] > 0 and a["lr_scale"] == 1.0 and a["M"] in ms}
    bench_s = {m: [bench[s][m] * steps_per_epoch for s in seeds] for m in ms}
    job_s = {m: [jobs[s, m] for s in seeds if (s, m) in jobs] for m in ms}
    bench_pct = {m: [100 * (bench[s][m] / bench[s][m0] - 1) for s in seeds] for m in ms}
    job_pct = {m: [100 * (jobs[s, m] / jobs[s, m0] - 1) for s in seeds if (s, m) in jobs and (s, m0) in jobs]
               for m in ms}
    fig, axes = new_figure(ncols=2, width=8.6, height=3.3)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    for ax, (b, j) in zip(axes, ((bench_s, job_s), (bench_pct, job_pct))):
        ax.plot(ms, [float(np.mean(b[m])) for m in ms], color="C0", marker="o",
                label="benchmark, mean over seeds", zorder=2)
        for k, m in enumerate(ms):
            ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, len(b[m])), b[m], s=16, color="0.15", zorder=3,
                       label="benchmark, one seed" if k == 0 else None)
            ax.scatter(m * 2 ** rng.uniform(-0.06, 0.06, len(j[m])), j[m], s=22, facecolors="none",
                       edgecolors="C1", zorder=3, label="training job (median epoch)" if k == 0 else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.minorticks_off()
        ax.set_xlabel("dropout samples per image, M")
    # log scale: the benchmark and the jobs can differ by an order of magnitude on a busy machine
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].set_ylabel("seconds per training epoch")
    # The overhead panel is scaled to the benchmark and the limit; a training job far outside
    # (load on a shared machine changes between jobs) is drawn as ▲ at the top with its value.
    allb = [v for m in ms for v in bench_pct[m]]
    top = max(4 * overhead_limit, 1.3 * max(allb))
    bottom = min(-overhead_limit, 1.3 * min(allb))
    for m in ms:
        for side, out in (("top", [v for v in job_pct[m] if v > top]), ("bottom", [v for v in job_pct[m] if v < bottom])):
            if not out:
                continue
            y = top if side == "top" else bottom
            axes[1].scatter([m], [y], marker="^" if side == "top" else "v", s=26, color="C1", zorder=4, clip_on=False)
            axes[1].annotate("job: " + ", ".join(f"{v:+.0f} %" for v in out), (m, y), textcoords="offset points",
                             xytext=(-8, -12 if side == "top" else 6), ha="right", fontsize=7, color="C1")
    axes[1].set_ylim(bottom, top)
    axes[0].set_title("Time per epoch")
    axes[1].axhline(overhead_limit, color="C3", linestyle=":", linewidth=1.2, label=f"{overhead_limit:g} % limit")
    axes[1].axhline(0, color="0.5", linewidth=0.8)
    axes[1].set_ylabel(f"extra time vs M = {m0} (%)")
    axes[1].set_title("Overhead")
    axes[1].legend()
    fig.suptitle("Cost of multi-sample dropout: training time vs M")
    annotate_setting(fig, setting)
    data = {"seeds": seeds, "steps_per_epoch": steps_per_epoch, "baseline_M": m0,
            "bench_epoch_s": {str(m): v for m, v in bench_s.items()},
            "job_epoch_s": {str(m): v for m, v in job_s.items()},
            "bench_overhead_pct": {str(m): v for m, v in bench_pct.items()},
            "job_overhead_pct": {str(m): v for m, v in job_pct.items()},
            "overhead_limit": overhead_limit, "setting": setting}
    return fig, jsonable(data)
