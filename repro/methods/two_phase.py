"""GTEP, the Generalizable Two-phase Evaluation Protocol (Cha & Cho, TMLR 2025), for chapter 02.

The usual practice in class-incremental papers picks an algorithm's hyper-parameters by the
score they give on the very scenario that is then reported (here: the evaluation stream's
*test* accuracy), so the reported number is a maximum over the search and biased upwards.
GTEP splits the classes in two disjoint sets:

* phase 1 (tuning): search the hyper-parameters on a stream built from one class set, D^HT,
  and keep H*, the configuration with the best average incremental accuracy (AIA);
* phase 2 (evaluation): run H* on the *same scenario* built from the other set, D^E, and
  report that score.

This module builds the two streams from the family's protocol, samples each algorithm's
search (the same configurations on both streams), trains them with the family's learners and
``run_stream``, selects configurations both ways, and derives the chapter's numbers (the
optimistic gap, rank changes, how well the search's ranking transfers) and its figures.

Selection uses the mean over seeds of a configuration's AIA, as the paper does (several seeds
per trial); the chosen configuration's per-seed scores are then paired by seed.
"""
from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from .. import models
from ..data import Dataset, class_order, incremental_tasks
from ..incremental.chapter import protocol_config
from ..families.incremental.arms.baselines import BASELINES
from ..families.incremental.learners import run_stream
from ..families.incremental.stream import Stream, parse_scenario
from ..metrics import mean_std_text
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import dry_run

SPLITS = ("halves", "disjoint")
PHASES = ("tuning", "evaluation")          # D^HT, D^E
# Search-space parameters of the chapter → the IncrementalConfig field each one sets.
GRIDS: dict[str, str] = {"lr": "lr_grid", "epochs": "epochs_grid", "batch_size": "batch_size_grid",
                         "weight_decay": "weight_decay_grid", "kd_weight": "kd_weight_grid",
                         "kd_temperature": "kd_temperature_grid"}
KD_HPS = ("kd_weight", "kd_temperature")  # searched only for learners that distil
# The more elaborate method and the simpler one it builds on: does its advantage survive GTEP?
ADVANTAGE_PAIR = ("replay_kd", "replay")
SHORT = {"lr": "lr", "epochs": "ep", "batch_size": "bs", "weight_decay": "wd", "kd_weight": "kd_w",
         "kd_temperature": "T"}


# -- the two class sets and their streams ------------------------------------------------------
def split_classes(order: Sequence[int], classes: int, split: str) -> tuple[list[int], list[int]]:
    """CIFAR-100 ids of D^HT (tuning) and D^E (evaluation), disjoint and of equal size.

    ``halves``: the first ``classes`` classes of the order, first half D^HT, second half D^E
    (the paper's split of CIFAR-100 into 50 + 50). ``disjoint``: D^E is the protocol's own
    stream, the first ``classes`` classes, and D^HT the next ``classes`` of the order (so the
    evaluation stream is the one every other chapter of the family reports on).
    """
    order = list(order)
    if split not in SPLITS:
        raise ValueError(f"tuning_split must be one of {SPLITS}, not {split!r}")
    if split == "halves":
        if classes < 2 or classes % 2 or classes > len(order):
            raise ValueError(f"tuning_split 'halves' needs an even number of classes ≤ {len(order)}, got {classes}")
        h = classes // 2
        return order[:h], order[h:classes]
    if classes < 1 or 2 * classes > len(order):
        raise ValueError(f"tuning_split 'disjoint' needs 2 × classes ≤ {len(order)} "
                         f"(got classes={classes}); use 'halves' for more classes")
    return order[classes:2 * classes], order[:classes]


def stream_memory(memory: int, protocol_classes: int, stream_classes: int) -> int:
    """The exemplar budget of one stream: the protocol's exemplars *per class* are kept, so a
    stream over half the protocol's classes gets half its budget (2,000 for 100 classes →
    1,000 for 50, the paper's 20 per class)."""
    return memory * stream_classes // protocol_classes


def subset_dataset(data: Dataset, labels: Sequence[int]) -> Dataset:
    """The images of ``labels`` only, relabelled 0..len(labels)−1 in the given order."""
    labels = list(labels)
    lut = torch.full((data.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor(labels)] = torch.arange(len(labels))
    tr, te = lut[data.y_train], lut[data.y_test]
    keep_tr, keep_te = tr >= 0, te >= 0
    return Dataset(x_train=data.x_train[keep_tr], y_train=tr[keep_tr], x_test=data.x_test[keep_te],
                   y_test=te[keep_te], classes=[data.classes[i] for i in labels],
                   class_names=[data.class_names[i] for i in labels], checksum=data.checksum,
                   test_name=data.test_name, info=dict(data.info))


def check_setup(params: Mapping[str, Any]) -> None:
    """Every parameter error of the chapter, raised before any data is read or model trained."""
    p = params
    split_classes(class_order(p["order_seed"]), p["classes"], p["tuning_split"])
    base, inc = parse_scenario(p["scenario"])
    per_stream = p["classes"] // 2 if p["tuning_split"] == "halves" else p["classes"]
    incremental_tasks(list(range(per_stream)), base, inc)  # raises if the scenario does not fit
    algos = list(p["algorithms"])
    unknown = [a for a in algos if a not in BASELINES]
    if unknown or len(set(algos)) != len(algos) or len(algos) < 2:
        raise ValueError(f"algorithms must be ≥ 2 distinct names of {sorted(BASELINES)}, got {algos}")
    if p["trials"] < 1:
        raise ValueError(f"trials must be ≥ 1, got {p['trials']}")
    if not p["seeds"]:
        raise ValueError("seeds is empty")
    if p["schedule"] not in ("cosine", "step"):
        raise ValueError(f"schedule must be 'cosine' or 'step', not {p['schedule']!r}")
    if p["arch"] not in models.available():
        raise ValueError(f"unknown arch {p['arch']!r}; known: {', '.join(models.available())}")
    for hp, name in GRIDS.items():
        grid = list(p[name])
        if not grid:
            raise ValueError(f"{name} is empty")
        if len(set(grid)) != len(grid):
            raise ValueError(f"{name} repeats a value: {grid}")
        low_ok = (lambda v: v >= 0) if hp == "weight_decay" else (lambda v: v > 0)
        if not all(low_ok(v) for v in grid):
            raise ValueError(f"{name} must hold values {'≥' if hp == 'weight_decay' else '>'} 0, got {grid}")


def make_streams(run) -> dict[str, Stream]:
    """D^HT and D^E as two streams of the protocol's scenario (one data load, recorded in the run).

    Both class sets are loaded together as a prefix of the class order, so in the
    ``disjoint`` split D^E holds exactly the images of the family's protocol stream.
    """
    p = run.params
    check_setup(p)
    order = class_order(p["order_seed"])
    tuning, evaluation = split_classes(order, p["classes"], p["tuning_split"])
    union = order[:max(order.index(c) for c in tuning + evaluation) + 1]
    data = run.data(classes=union, per_class=p["per_class"] or None, test_per_class=p["test_per_class"] or None,
                    image_size=p["image_size"], seed=p["data_seed"])
    base, inc = parse_scenario(p["scenario"])
    out = {}
    for phase, cls in zip(PHASES, (tuning, evaluation)):
        sub = subset_dataset(data, [union.index(c) for c in cls])
        out[phase] = Stream(data=sub, order=list(cls), tasks=incremental_tasks(list(range(len(cls))), base, inc),
                            scenario=p["scenario"], order_seed=p["order_seed"])
    return out


# -- the search --------------------------------------------------------------------------------
def algorithm_space(grids: Mapping[str, Sequence], algorithm: str) -> dict[str, list]:
    """The search space of one algorithm: KD weight and temperature only where it distils."""
    distils = BASELINES[algorithm].uses_old_model
    return {hp: list(v) for hp, v in grids.items() if distils or hp not in KD_HPS}


def sample_configs(space: Mapping[str, Sequence], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` distinct configurations drawn uniformly from the grid (all of it, in grid
    order, when it has no more points than that; otherwise a seeded sample kept in grid order)."""
    keys = list(space)
    grid = [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]
    if trials >= len(grid):
        return grid
    idx = np.random.default_rng(seed).choice(len(grid), size=trials, replace=False)
    return [grid[i] for i in sorted(idx.tolist())]


def chapter_search(params: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each algorithm's sampled configurations (the same ones run on D^HT and on D^E); two
    of them in a dry run (``REPRO_DRY_RUN``: still a choice to make, at a fraction of the cost)."""
    grids = {hp: params[name] for hp, name in GRIDS.items()}
    trials = min(params["trials"], 2) if dry_run() else params["trials"]
    # One seed per algorithm, stable across runs and independent of the list's order.
    return {a: sample_configs(algorithm_space(grids, a), trials,
                              params["search_seed"] * 1_000_003 + zlib.crc32(a.encode()))
            for a in params["algorithms"]}


def describe_config(hp: Mapping[str, Any]) -> str:
    """``lr 0.05 · ep 3 · kd_w 2`` (only the keys given)."""
    return " · ".join(f"{SHORT.get(k, k)} {v:g}" if isinstance(v, float) else f"{SHORT.get(k, k)} {v}"
                      for k, v in hp.items())


def run_search(run, streams: Mapping[str, Stream], search: Mapping[str, list[dict[str, Any]]],
               seeds: Sequence[int], memory: int, verbose: bool = True) -> list[dict[str, Any]]:
    """Train every (seed, phase, algorithm, configuration) once; one row per run.

    Each run is checkpointed per task under ``run.checkpoint_dir(phase, algorithm, config,
    seed)``, so an interrupted search resumes where it stopped. Rows hold the accuracy matrix,
    the accuracy after each task, AIA, last accuracy, forgetting and the training time.
    """
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for phase in PHASES:
            stream = streams[phase]
            mem = stream_memory(memory, run.params["classes"], stream.num_classes)
            for algo, configs in search.items():
                t0 = time.time()
                for i, hp in enumerate(configs):
                    learner = BASELINES[algo](protocol_config(run, memory=mem, **hp))
                    res = run_stream(stream, learner, seed, run.device, progress=False,
                                     checkpoint_dir=run.checkpoint_dir(phase, algo, i, seed))
                    s = res.matrix.summary()
                    rows.append({"phase": phase, "method": algo, "config": i, "seed": seed, "hp": dict(hp),
                                 "A": res.matrix.rows, "acc_after": res.matrix.acc_after(), "aia": s["aia"],
                                 "last": s["last"], "forgetting": s["forgetting"], "train_s": res.train_s})
                if verbose:
                    got = [r["aia"] for r in rows if (r["phase"], r["method"], r["seed"]) == (phase, algo, seed)]
                    print(f"seed {seed} · {phase:<10} · {algo:<9} {len(configs)} configs · AIA "
                          f"{min(got):.1f}–{max(got):.1f} % · {time.time() - t0:.1f} s")
    return rows


# -- the two protocols -------------------------------------------------------------------------
def score_table(rows: Sequence[Mapping[str, Any]], phase: str, method: str,
                key: str = "aia") -> dict[int, dict[int, float]]:
    """{config: {seed: score}} of one algorithm on one stream."""
    out: dict[int, dict[int, float]] = {}
    for r in rows:
        if r["phase"] == phase and r["method"] == method:
            out.setdefault(r["config"], {})[r["seed"]] = float(r[key])
    return out


def pick(scores: Mapping[int, Mapping[int, float]]) -> int:
    """The configuration with the best mean over seeds (NaN counts as worst; ties → the
    lowest index, so the choice never depends on dict order)."""
    if not scores:
        raise ValueError("no configurations to pick from")

    def mean(c: int) -> float:
        m = float(np.mean(list(scores[c].values())))
        return m if np.isfinite(m) else -np.inf

    return min(scores, key=lambda c: (-mean(c), c))


def protocol_table(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str],
                   key: str = "aia") -> dict[str, dict[str, Any]]:
    """Per algorithm: the configuration each protocol picks and its per-seed scores on D^E.

    * ``usual``: the configuration with the best mean ``key`` on D^E's test set, reported
      there — tuning on the evaluation scenario (the optimistic practice the paper criticises);
    * ``gtep``: the configuration with the best mean ``key`` on D^HT, reported on D^E;
    * ``tuning``: H*'s per-seed score on D^HT (phase 1), to see which stream is harder.
    """
    out = {}
    for m in algorithms:
        ht, ev = score_table(rows, "tuning", m, key), score_table(rows, "evaluation", m, key)
        c_gtep, c_usual = pick(ht), pick(ev)
        out[m] = {"gtep_config": c_gtep, "usual_config": c_usual, "gtep": dict(ev[c_gtep]),
                  "usual": dict(ev[c_usual]), "tuning": dict(ht[c_gtep])}
    return out


def discordant_pairs(a: Mapping[str, float], b: Mapping[str, float]) -> int:
    """How many pairs of algorithms the two score lists order differently (Kendall's
    distance; a tie in one list and not in the other counts as a change)."""
    names = list(a)
    return sum(int(np.sign(a[x] - a[y]) != np.sign(b[x] - b[y])) for x, y in itertools.combinations(names, 2))


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """Rank 1 = best; ties share the better rank ("competition" ranking)."""
    return {m: 1 + sum(v > s for v in scores.values()) for m, s in scores.items()}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ (NaN when either side is constant or has fewer than 3 values)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def seed_metrics(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str]) -> dict[int, dict[str, float]]:
    """Per seed, everything the chapter logs (names as in the claims):

    ``gap_{m}`` usual − two-phase AIA on D^E; ``gap_mean`` their mean over algorithms;
    ``aia_usual_{m}``, ``aia_gtep_{m}``, ``last_usual_{m}``, ``last_gtep_{m}``;
    ``rank_swaps`` pairs of algorithms ordered differently by the two protocols;
    ``advantage_shrink_replay_kd_over_replay`` = gap(replay_kd) − gap(replay), i.e. how much
    of replay_kd's lead over replay under the usual protocol is gone under GTEP;
    ``e_minus_ht_{m}`` H*'s AIA on D^E minus on D^HT; ``rho_{m}`` Spearman's ρ between the
    configurations' AIA on D^HT and on D^E (does the search's ranking transfer?).
    """
    table = protocol_table(rows, algorithms, "aia")
    last = {m: {p: score_table(rows, p, m, "last") for p in PHASES} for m in algorithms}
    seeds = sorted({r["seed"] for r in rows})
    out: dict[int, dict[str, float]] = {}
    for s in seeds:
        v: dict[str, float] = {}
        for m in algorithms:
            t = table[m]
            v[f"aia_usual_{m}"], v[f"aia_gtep_{m}"] = t["usual"][s], t["gtep"][s]
            v[f"gap_{m}"] = t["usual"][s] - t["gtep"][s]
            v[f"last_usual_{m}"] = last[m]["evaluation"][t["usual_config"]][s]
            v[f"last_gtep_{m}"] = last[m]["evaluation"][t["gtep_config"]][s]
            v[f"e_minus_ht_{m}"] = t["gtep"][s] - t["tuning"][s]
            ht, ev = score_table(rows, "tuning", m), score_table(rows, "evaluation", m)
            cs = sorted(ht)
            v[f"rho_{m}"] = spearman([ht[c][s] for c in cs], [ev[c][s] for c in cs])
        v["gap_mean"] = float(np.mean([v[f"gap_{m}"] for m in algorithms]))
        v["rank_swaps"] = float(discordant_pairs({m: v[f"aia_usual_{m}"] for m in algorithms},
                                                 {m: v[f"aia_gtep_{m}"] for m in algorithms}))
        a, b = ADVANTAGE_PAIR
        if a in algorithms and b in algorithms:
            v[f"advantage_shrink_{a}_over_{b}"] = v[f"gap_{a}"] - v[f"gap_{b}"]
        out[s] = v
    return out


def log_metrics(run, rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str]) -> dict[int, dict[str, float]]:
    """Log :func:`seed_metrics` per seed (NaN ρ, from a constant score list, is left out)."""
    per = seed_metrics(rows, algorithms)
    for s, v in per.items():
        run.log(s, **{k: x for k, x in v.items() if np.isfinite(x)})
    return per


# -- tables ------------------------------------------------------------------------------------
def search_markdown(search: Mapping[str, list[dict[str, Any]]], params: Mapping[str, Any]) -> str:
    """The search space and how many of its points each algorithm tries."""
    grids = {hp: params[name] for hp, name in GRIDS.items()}
    lines = ["| algorithm | searched values | grid points | trials run |", "| --- | --- | --- | --- |"]
    for a, configs in search.items():
        space = algorithm_space(grids, a)
        size = int(np.prod([len(v) for v in space.values()]))
        vals = "; ".join(f"{SHORT[k]} ∈ {{{', '.join(f'{x:g}' for x in v)}}}" for k, v in space.items())
        lines.append(f"| {a} | {vals} | {size} | {len(configs)} |")
    return "\n".join(lines)


def protocol_markdown(rows: Sequence[Mapping[str, Any]], search: Mapping[str, list[dict[str, Any]]],
                      algorithms: Sequence[str]) -> str:
    """Per algorithm: the two choices, their AIA (mean ± std over seeds) and the ranks."""
    table = protocol_table(rows, algorithms, "aia")
    usual = {m: float(np.mean(list(table[m]["usual"].values()))) for m in algorithms}
    gtep = {m: float(np.mean(list(table[m]["gtep"].values()))) for m in algorithms}
    ru, rg = ranks(usual), ranks(gtep)
    lines = ["| algorithm | H* picked on D^HT (two-phase) | picked on D^E's test (usual) | AIA of H* on D^HT % "
             "| **two-phase** AIA on D^E % | usual AIA on D^E % | usual − two-phase (pts) "
             "| rank usual → two-phase |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in algorithms:
        t = table[m]
        same = " (same)" if t["gtep_config"] == t["usual_config"] else ""
        gaps = [t["usual"][s] - t["gtep"][s] for s in t["usual"]]
        lines.append(f"| {m} | #{t['gtep_config']}: {describe_config(search[m][t['gtep_config']])} "
                     f"| #{t['usual_config']}: {describe_config(search[m][t['usual_config']])}{same} "
                     f"| {mean_std_text(list(t['tuning'].values()), '.1f')} | {mean_std_text(list(t['gtep'].values()), '.1f')} "
                     f"| {mean_std_text(list(t['usual'].values()), '.1f')} | {mean_std_text(gaps, '.1f')} | {ru[m]} → {rg[m]} |")
    return "\n".join(lines)


def jsonable_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows for the record (already plain: matrices, curves, scores, hyper-parameters)."""
    return jsonable([dict(r) for r in rows])


# -- figures -----------------------------------------------------------------------------------
def plot_protocols(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str], setting: str):
    """Key figure. Left: each algorithm's AIA on D^E under the usual protocol (tuned on D^E's
    test) and under GTEP (tuned on D^HT), mean with per-seed dots; the drop is the optimistic
    bias. Right: the algorithms' ranks (1 = best, by mean AIA) under each protocol."""
    table = protocol_table(rows, algorithms, "aia")
    fig, (ax, axr) = new_figure(ncols=2, width=8.6, height=3.6)
    usual = {m: float(np.mean(list(table[m]["usual"].values()))) for m in algorithms}
    gtep = {m: float(np.mean(list(table[m]["gtep"].values()))) for m in algorithms}
    ru, rg = ranks(usual), ranks(gtep)
    for i, m in enumerate(algorithms):
        c = f"C{i % 10}"
        t = table[m]
        ax.plot([0, 1], [usual[m], gtep[m]], "o-", color=c, label=m, zorder=3)
        for s in t["usual"]:
            ax.plot([0, 1], [t["usual"][s], t["gtep"][s]], "-", color=c, alpha=0.3, linewidth=0.8)
            ax.plot([0, 1], [t["usual"][s], t["gtep"][s]], ".", color=c, alpha=0.5)
        axr.plot([0, 1], [ru[m], rg[m]], "o-", color=c, linewidth=2.2, markersize=8)
        # algorithms tied at a rank get their labels stacked, not printed on top of each other
        for x, r, ha in ((-0.06, ru, "right"), (1.06, rg, "left")):
            tied = [k for k in algorithms if r[k] == r[m]]
            dy = 0.16 * (tied.index(m) - (len(tied) - 1) / 2)
            axr.text(x, r[m] + dy, m, ha=ha, va="center", color=c, fontsize=8)
    for a in (ax, axr):
        a.set_xticks([0, 1], ["usual\n(tuned on $D^{E}$ test)", "two-phase\n(tuned on $D^{HT}$)"])
        a.set_xlim(-0.45, 1.45)
    ax.set_ylabel("AIA on $D^{E}$ (%)")
    ax.set_title("Reported score on the evaluation stream")
    ax.legend(loc="best")
    n = len(algorithms)
    axr.set_yticks(range(1, n + 1))
    axr.set_ylim(n + 0.5, 0.5)
    axr.set_ylabel("rank (1 = best mean AIA)")
    axr.set_title("Ranking of the algorithms")
    axr.grid(False)
    annotate_setting(fig, setting)
    return fig, jsonable({"usual_mean": usual, "gtep_mean": gtep, "rank_usual": ru, "rank_gtep": rg,
                          "per_seed": {m: {"usual": table[m]["usual"], "gtep": table[m]["gtep"]} for m in algorithms},
                          "setting": setting})


def plot_transfer(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str], setting: str):
    """Every sampled configuration's AIA on D^HT (x) against D^E (y), mean over seeds (bars:
    min–max over seeds). The star is GTEP's H* (rightmost point), the ring the usual choice
    (topmost point); ρ is Spearman's rank correlation of the means."""
    table = protocol_table(rows, algorithms, "aia")
    fig, axes = new_figure(ncols=len(algorithms), width=3.3 * len(algorithms) + 0.4, height=3.5, squeeze=False)
    data: dict[str, Any] = {}
    for i, (ax, m) in enumerate(zip(axes[0], algorithms)):
        c = f"C{i % 10}"
        ht, ev = score_table(rows, "tuning", m), score_table(rows, "evaluation", m)
        cs = sorted(ht)
        x = np.array([np.mean(list(ht[k].values())) for k in cs])
        y = np.array([np.mean(list(ev[k].values())) for k in cs])
        xerr = np.array([[x[j] - min(ht[k].values()), max(ht[k].values()) - x[j]] for j, k in enumerate(cs)]).T
        yerr = np.array([[y[j] - min(ev[k].values()), max(ev[k].values()) - y[j]] for j, k in enumerate(cs)]).T
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=c, alpha=0.75, elinewidth=0.7, capsize=0)
        g, u = cs.index(table[m]["gtep_config"]), cs.index(table[m]["usual_config"])
        ax.plot(x[g], y[g], "*", color="k", markersize=13, label="$H^*$ (two-phase pick)", zorder=4)
        ax.plot(x[u], y[u], "o", markerfacecolor="none", markeredgecolor="k", markersize=13,
                markeredgewidth=1.4, label="usual pick", zorder=4)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        pad = 0.05 * (hi - lo + 1e-9)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ":", color="0.5", linewidth=0.9, label="y = x")
        rho = spearman(x, y)
        ax.set_title(f"{m}: ρ = {rho:.2f}" if np.isfinite(rho) else f"{m}: ρ undefined", fontsize=10)
        ax.set_xlabel("AIA on $D^{HT}$, tuning (%)")
        data[m] = {"configs": cs, "tuning_mean": x, "evaluation_mean": y, "spearman_rho": rho,
                   "gtep_config": table[m]["gtep_config"], "usual_config": table[m]["usual_config"]}
    axes[0][0].set_ylabel("AIA on $D^{E}$, evaluation (%)")
    axes[0][0].legend(loc="best", fontsize=7)
    fig.suptitle("Does a configuration's score on $D^{HT}$ predict its score on $D^{E}$?")
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting, "bars": "min-max over seeds"})


def chosen_results(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str]) -> list[dict[str, Any]]:
    """The evaluation-stream runs of each algorithm's two-phase choice H*, one per seed, in the
    form ``repro.incremental.chapter.plot_matrices`` reads (method, seed, A)."""
    table = protocol_table(rows, algorithms, "aia")
    return [{"method": m, "seed": r["seed"], "A": r["A"], "acc_after": r["acc_after"]}
            for m in algorithms for r in rows
            if (r["phase"], r["method"], r["config"]) == ("evaluation", m, table[m]["gtep_config"])]


def plot_chosen_curves(rows: Sequence[Mapping[str, Any]], streams: Mapping[str, Stream],
                       algorithms: Sequence[str], setting: str):
    """Accuracy on all seen classes after each task for the chosen configurations: H* on
    D^HT (phase 1, dashed), H* on D^E (the two-phase result, solid) and the usual pick on D^E
    (dotted); mean over seeds, band min–max."""
    table = protocol_table(rows, algorithms, "aia")
    ev = streams["evaluation"]
    x = np.array([ev.seen(t) for t in range(ev.num_tasks)])
    fig, axes = new_figure(ncols=len(algorithms), width=3.3 * len(algorithms) + 0.4, height=3.4,
                           squeeze=False, sharey=True)
    data: dict[str, Any] = {}
    for i, (ax, m) in enumerate(zip(axes[0], algorithms)):
        t = table[m]
        lines = {"H* on $D^{HT}$ (phase 1)": ("tuning", t["gtep_config"], "--", "0.45"),
                 "H* on $D^{E}$ (two-phase)": ("evaluation", t["gtep_config"], "-", f"C{i % 10}"),
                 "usual pick on $D^{E}$": ("evaluation", t["usual_config"], ":", "k")}
        data[m] = {}
        for label, (phase, cfg, ls, c) in lines.items():
            arr = np.array([r["acc_after"] for r in rows
                            if (r["phase"], r["method"], r["config"]) == (phase, m, cfg)], dtype=float)
            mean = arr.mean(0)
            ax.plot(x[: len(mean)], mean, ls, marker="o", color=c, label=label)
            if len(arr) > 1:
                ax.fill_between(x[: len(mean)], arr.min(0), arr.max(0), color=c, alpha=0.15, linewidth=0)
            data[m][label] = {"config": cfg, "mean": mean, "min": arr.min(0), "max": arr.max(0), "n": len(arr)}
        ax.set_title(m, fontsize=10)
        ax.set_xticks(x)
        ax.set_xlabel("classes seen")
    axes[0][0].set_ylabel("top-1 on all seen classes (%)")
    axes[0][-1].legend(loc="best", fontsize=7)
    fig.suptitle("Accuracy after each task of the chosen configurations")
    annotate_setting(fig, setting)
    return fig, jsonable({"seen_classes": x, "curves": data, "setting": setting, "band": "min-max over seeds"})
