"""GTEP, the Generalizable Two-phase Evaluation Protocol (Cha & Cho, TMLR 2025), for chapter 02:
its search over the family's baselines (``finetune``, ``replay``, ``replay_kd``) and how the two
protocols choose among the searched configurations.

The usual practice in class-incremental papers picks an algorithm's hyper-parameters by the
score they give on the very scenario that is then reported (here: the evaluation stream's
*test* accuracy), so the reported number is a maximum over the search and biased upwards.
GTEP splits the classes in two disjoint sets:

* phase 1 (tuning): search the hyper-parameters on a stream built from one class set, D^HT,
  and keep H*, the configuration with the best average incremental accuracy (AIA);
* phase 2 (evaluation): run H* on the *same scenario* built from the other set, D^E, and
  report that score.

This module cuts the two class sets, samples each algorithm's search from a typed
:class:`SearchConfig` (the same configurations on both streams), names every (phase, algorithm,
configuration) as a sweep label (:func:`search_label`: an identifier), turns the sweep's jobs back
into search rows (:func:`search_rows`), selects configurations both ways, and derives the
chapter's numbers (the optimistic gap, rank changes, how well the search's ranking transfers).
The protocol glue (``protocol.gtep_streams``, ``protocol.gtep_sweep``) builds the streams from the
run and trains the search with the family's sweep; the figures and tables are the family's.

Selection uses the mean over seeds of a configuration's AIA, as the paper does (several seeds
per trial); the chosen configuration's per-seed scores are then paired by seed.
"""
from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from .... import models
from ....data import Dataset
from ....train import dry_run
from ..learners import IncrementalConfig
from .baselines import BASELINES

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


# -- the search's config ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchConfig:
    """What the chapter searches: the algorithms (baseline arms), how many configurations of
    each, the grid of every searched hyper-parameter, and how the classes are split."""

    tuning_split: str = "halves"
    algorithms: tuple[str, ...] = ("finetune", "replay", "replay_kd")
    trials: int = 30
    search_seed: int = 0
    lr_grid: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3)
    epochs_grid: tuple[int, ...] = (30, 70, 120, 160, 200)
    batch_size_grid: tuple[int, ...] = (32, 64, 128, 256, 512)
    weight_decay_grid: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.005, 0.01)
    kd_weight_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    kd_temperature_grid: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5)

    def __post_init__(self) -> None:
        if self.tuning_split not in SPLITS:
            raise ValueError(f"tuning_split must be one of {SPLITS}, not {self.tuning_split!r}")
        algos = list(self.algorithms)
        unknown = [a for a in algos if a not in BASELINES]
        if unknown or len(set(algos)) != len(algos) or len(algos) < 2:
            raise ValueError(f"algorithms must be ≥ 2 distinct names of {sorted(BASELINES)}, got {algos}")
        if self.trials < 1:
            raise ValueError(f"trials must be ≥ 1, got {self.trials}")
        for hp, name in GRIDS.items():
            grid = list(getattr(self, name))
            if not grid:
                raise ValueError(f"{name} is empty")
            if len(set(grid)) != len(grid):
                raise ValueError(f"{name} repeats a value: {grid}")
            low_ok = (lambda v: v >= 0) if hp == "weight_decay" else (lambda v: v > 0)
            if not all(low_ok(v) for v in grid):
                raise ValueError(f"{name} must hold values {'≥' if hp == 'weight_decay' else '>'} 0, got {grid}")

    def grids(self) -> dict[str, tuple]:
        """Searched hyper-parameter → its grid."""
        return {hp: tuple(getattr(self, name)) for hp, name in GRIDS.items()}


def check_learner_config(cfg: IncrementalConfig) -> None:
    """The learners' shared settings that the search does not set: a known network and schedule."""
    if cfg.schedule not in ("cosine", "step"):
        raise ValueError(f"schedule must be 'cosine' or 'step', not {cfg.schedule!r}")
    if cfg.arch not in models.available():
        raise ValueError(f"unknown arch {cfg.arch!r}; known: {', '.join(models.available())}")


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


def chapter_search(cfg: SearchConfig) -> dict[str, list[dict[str, Any]]]:
    """Each algorithm's sampled configurations (the same ones run on D^HT and on D^E); two
    of them in a dry run (``REPRO_DRY_RUN``: still a choice to make, at a fraction of the cost)."""
    grids = cfg.grids()
    trials = min(cfg.trials, 2) if dry_run() else cfg.trials
    # One seed per algorithm, stable across runs and independent of the list's order.
    return {a: sample_configs(algorithm_space(grids, a), trials,
                              cfg.search_seed * 1_000_003 + zlib.crc32(a.encode()))
            for a in cfg.algorithms}


def search_label(phase: str, algorithm: str, config: int) -> str:
    """The sweep label of one search job, e.g. ``tuning_replay_kd_c3`` (an identifier)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
    label = f"{phase}_{algorithm}_c{int(config)}"
    if not label.isidentifier():
        raise ValueError(f"search label {label!r} is not an identifier (algorithm {algorithm!r})")
    return label


def search_rows(jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One search row per sweep job (its extra names the phase, algorithm and configuration):
    phase, method, config, seed, hp, the accuracy matrix, the accuracy after each task, AIA,
    last accuracy, forgetting and the training time."""
    return [{"phase": j["extra"]["phase"], "method": j["extra"]["algorithm"], "config": j["extra"]["config"],
             "seed": j["seed"], "hp": dict(j["extra"]["hp"]), "A": j["extra"]["A"], "acc_after": j["extra"]["acc_after"],
             "aia": j["metrics"]["aia"], "last": j["metrics"]["last"], "forgetting": j["metrics"]["forgetting"],
             "train_s": j["train_s"]} for j in jobs]



def describe_config(hp: Mapping[str, Any]) -> str:
    """``lr 0.05 · ep 3 · kd_w 2`` (only the keys given)."""
    return " · ".join(f"{SHORT.get(k, k)} {v:g}" if isinstance(v, float) else f"{SHORT.get(k, k)} {v}"
                      for k, v in hp.items())


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


def same_choice_flags(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str]) -> dict[str, str]:
    """Guards for the claims whose value is fixed by the design, not estimated: where both
    protocols pick the same configuration, that algorithm's gap is 0 in every seed (and the
    ranking cannot change). Claim metric → reason."""
    table = protocol_table(rows, algorithms, "aia")
    same = [m for m in algorithms if table[m]["gtep_config"] == table[m]["usual_config"]]
    why = {m: f"both protocols pick configuration {table[m]['gtep_config']} for {m}: its gap is 0 by construction"
           for m in same}
    out = {f"gap_{m}": why[m] for m in same}
    if same and len(same) == len(algorithms):
        out["gap_mean"] = out["rank_swaps"] = "both protocols pick the same configuration for every algorithm"
    a, b = ADVANTAGE_PAIR
    if a in same and b in same:
        out[f"advantage_shrink_{a}_over_{b}"] = f"{why[a]}; {why[b]}"
    return out


def chosen_results(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str]) -> list[dict[str, Any]]:
    """The evaluation-stream runs of each algorithm's two-phase choice H*, one per seed, as the
    family's figures read jobs (arm, seed, extra with A and acc_after)."""
    table = protocol_table(rows, algorithms, "aia")
    return [{"arm": m, "seed": r["seed"], "extra": {"A": r["A"], "acc_after": r["acc_after"]}}
            for m in algorithms for r in rows
            if (r["phase"], r["method"], r["config"]) == ("evaluation", m, table[m]["gtep_config"])]
