"""Hard-batch selection: training on the highest-loss mini-batches (Sahayam, Zakkam & Jayaraman 2023, "DyBAT").

The method, as the authors' ``run.py`` implements it:

1. The training set is cut into a **fixed partition** of B mini-batches (a loader without
   shuffling, ``drop_last``).
2. **Pass 1** is one ordinary epoch over all B batches; the training loss of each batch
   (from the forward pass of its own update) is recorded.
3. Then, round after round: sort the batches by their last recorded loss (descending),
   select the top ⌊δ·B⌋ batch *positions*, walk the partition in order and take an SGD
   step **only on the selected batches**, overwriting each one's recorded loss.
4. Stop when the number of updates equals ``epochs × B``: every δ gets the same update
   budget, δ = 1 being plain training.

A batch's score goes stale until it is selected again; "hard" means a high-loss *batch*,
never a sample.

How this maps onto :func:`repro.train.fit`
-----------------------------------------
``fit`` counts "epochs" and evaluates after each. Here one fit epoch is **a fixed number of
updates** — B by default, one epoch's worth — drawn from an endless stream of rounds, so
rounds run across fit-epoch boundaries. Consequences, all of them wanted:

* ``fit(epochs=E)`` takes exactly E·B updates for every δ (the paper's budget) and the
  learning-rate schedule (constant in the paper) has its true length with no extra argument;
* evaluation happens every B updates for every δ — the same grid as ``run.py`` (which logs
  every ``len(train_loader)`` updates), so curves of different δ share their x values;
* the plan's state (recorded losses, the current round's selection and the position in it)
  is saved in fit's checkpoints, so a resumed run continues mid-round.

Two settings (``SETTINGS``): the **paper** setting (fixed partition, no augmentation) and a
**standard** setting (crop/flip augmentation, partition redrawn every round). After a redraw
each position holds new images, so the recorded score of a position describes images it no
longer holds: in the standard setting the selection is by stale scores.

Sweep labels (:func:`arm_configs`): ``<setting>_all`` for δ = 1 (the baseline),
``<setting>_hard`` for δ = ``claim_delta`` (the arm the claims compare with it) and
``<setting>_delta0_2`` for any other δ; e.g. ``paper_all``, ``paper_hard``, ``standard_hard``.
Each job's metric: ``top1`` (final test top-1, %).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ....arms import arm, make_config
from ....data.loader import TensorLoader
from ....sweep import Job, SweepResult
from ....train import evaluate, fit, predict
from ..protocol import TrainingConfig, train_config

NAME = "hardbatch"


@dataclass(frozen=True)
class Setting:
    """How the training batches are formed."""

    augment: bool    # random crop + horizontal flip of each batch
    reshuffle: bool  # redraw the partition at the start of every round
    label: str


SETTINGS: dict[str, Setting] = {
    "paper": Setting(augment=False, reshuffle=False, label="A · paper: fixed partition, no augmentation"),
    "standard": Setting(augment=True, reshuffle=True, label="B · standard: crop/flip, partition redrawn each round"),
}


def num_selected(delta: float, num_batches: int) -> int:
    """⌊δ·B⌋ batches per round (at least one).

    A tiny epsilon makes e.g. 0.29 · 100 give 29, not 28 (binary rounding).
    """
    if not 0.0 < delta <= 1.0:
        raise ValueError(f"delta must be in (0, 1], got {delta}")
    return max(1, math.floor(delta * num_batches + 1e-9))


class HardBatchPlan:
    """A ``repro.train.BatchPlan`` that trains on the ⌊δ·B⌋ highest-loss batches each round.

    Each call of ``epoch_batches`` yields ``updates_per_call`` (default B = ``len(loader)``)
    pairs ``(position, idx)``: ``position`` in 0..B-1 names a batch of the partition,
    ``idx`` (int64 ``[batch_size]``) are its sample indices. ``fit`` then calls
    ``observe(position, loss)`` with the loss of that update's forward pass, which becomes
    the batch's recorded score.

    Args:
        delta: fraction of batches trained on per round after pass 1 (δ = 1: plain training).
        reshuffle: redraw the partition every round (the loader's seeded order of "epoch"
            = round); otherwise the partition is the loader's order of epoch 0, for the whole run.
        updates_per_call: updates per fit epoch (default: B).
        budget: optional cap on the total number of updates (``fit``'s epochs × updates
            per call is the cap when the plan runs inside ``fit``).

    Attributes (also in ``state_dict``): ``losses`` (recorded score per position),
    ``counts`` (updates taken on each position, pass 1 included), ``round`` (0 = pass 1),
    ``updates``, and ``rounds``: per round r ≥ 1 the mean recorded loss of the selected and
    of the unselected positions at selection time.
    """

    def __init__(self, delta: float, reshuffle: bool = False, updates_per_call: int | None = None,
                 budget: int | None = None) -> None:
        num_selected(delta, 1)  # validates delta
        self.delta = float(delta)
        self.reshuffle = bool(reshuffle)
        self.updates_per_call = updates_per_call
        self.budget = budget
        self.num_batches: int | None = None
        self.losses: list[float] = []
        self.counts: list[int] = []
        self.round = -1
        self.selected: list[int] = []
        self.cursor = 0
        self.updates = 0
        self.rounds: list[dict[str, Any]] = []
        self._parts: list[torch.Tensor] | None = None
        self._parts_round: int | None = None

    # -- the BatchPlan protocol ---------------------------------------------------------
    def epoch_batches(self, loader: TensorLoader, epoch: int) -> Iterator[tuple[int, torch.Tensor]]:
        """The next ``updates_per_call`` updates of the stream of rounds (a generator).

        Lazy on purpose: a round's selection is made when its first batch is requested,
        i.e. after ``fit`` has reported the loss of the previous round's last update.
        """
        self._bind(len(loader))
        n = self.updates_per_call or self.num_batches
        for _ in range(n):
            if self.budget is not None and self.updates >= self.budget:
                return
            if self.cursor >= len(self.selected):
                self._next_round()
            pos = self.selected[self.cursor]
            self.cursor += 1
            self.updates += 1
            self.counts[pos] += 1
            yield pos, self._partition(loader)[pos]

    def observe(self, batch_id: int, loss: float) -> None:
        """Record the training loss of batch ``batch_id`` from its latest forward pass."""
        self.losses[batch_id] = float(loss)

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "reshuffle": self.reshuffle, "num_batches": self.num_batches,
                "losses": list(self.losses), "counts": list(self.counts), "round": self.round,
                "selected": list(self.selected), "cursor": self.cursor, "updates": self.updates,
                "rounds": [dict(r) for r in self.rounds]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if state["delta"] != self.delta or state["reshuffle"] != self.reshuffle:
            raise ValueError(f"checkpoint of a plan with delta={state['delta']}, reshuffle="
                             f"{state['reshuffle']}; this plan has {self.delta}, {self.reshuffle}")
        self.num_batches = state["num_batches"]
        self.losses = [float(v) for v in state["losses"]]
        self.counts = [int(v) for v in state["counts"]]
        self.round, self.cursor, self.updates = int(state["round"]), int(state["cursor"]), int(state["updates"])
        self.selected = [int(v) for v in state["selected"]]
        self.rounds = [dict(r) for r in state["rounds"]]
        self._parts, self._parts_round = None, None  # rebuilt from (seed, round) on demand

    # -- internals ------------------------------------------------------------------------
    def _bind(self, num_batches: int) -> None:
        if self.num_batches is None:
            self.num_batches = num_batches
            self.losses = [math.nan] * num_batches
            self.counts = [0] * num_batches
        elif self.num_batches != num_batches:
            raise ValueError(f"the plan was built for {self.num_batches} batches, the loader has {num_batches}")

    def _next_round(self) -> None:
        """Start round ``round + 1``: pass 1 takes every batch, later rounds the top ⌊δB⌋."""
        self.round += 1
        b = self.num_batches
        if self.round == 0:
            self.selected = list(range(b))
        else:
            k = num_selected(self.delta, b)
            # descending recorded loss; ties go to the earlier position (deterministic)
            ranked = sorted(range(b), key=lambda i: (-self.losses[i], i))
            self.selected = sorted(ranked[:k])  # walk the partition in order
            chosen = set(self.selected)
            sel = [self.losses[i] for i in self.selected]
            rest = [self.losses[i] for i in range(b) if i not in chosen]
            self.rounds.append({"round": self.round, "start_update": self.updates,
                                "mean_selected": float(np.mean(sel)),
                                "mean_unselected": float(np.mean(rest)) if rest else None,
                                "min_selected": float(min(sel))})
        self.cursor = 0

    def _partition(self, loader: TensorLoader) -> list[torch.Tensor]:
        """The current round's partition: the loader's batches of "epoch" round (or 0)."""
        r = self.round if self.reshuffle else 0
        if self._parts_round != r or self._parts is None:
            saved = loader.epoch
            loader.set_epoch(r)           # the loader's order is a pure function of (seed, epoch)
            self._parts = loader.batches()
            loader.set_epoch(saved)       # fit's augmentation stream keys on its own epoch
            self._parts_round = r
            if len(self._parts) != self.num_batches:
                raise ValueError("the partition changed size; use drop_last=True")
        return self._parts


# -- one arm ------------------------------------------------------------------------------


@dataclass
class HardBatchConfig(TrainingConfig):
    """One hard-batch setting: δ and the setting (``paper`` or ``standard``), plus the recipe."""

    model: str = "timm:resnet18"
    batch_size: int = 512
    epochs: int = 100             # update budget: epochs × B updates for every δ
    lr: float = 0.005             # constant (run.py: no scheduler)
    momentum: float = 0.9
    weight_decay: float = 0.0
    delta: float = 1.0            # fraction of batches trained on per round (1 = plain training)
    setting: str = "paper"        # a key of SETTINGS

    def __post_init__(self) -> None:
        num_selected(self.delta, 1)  # validates delta
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, not {self.setting!r}")


def arm_label(setting: str, delta: float, claim_delta: float) -> str:
    """``paper_all`` (δ = 1), ``paper_hard`` (δ = claim_delta), ``paper_delta0_2`` (others)."""
    if delta == 1.0:
        return f"{setting}_all"
    if delta == claim_delta:
        return f"{setting}_hard"
    return f"{setting}_delta{delta:g}".replace(".", "_")


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, HardBatchConfig]]:
    """The chapter's arms, ``label → (arm name, config)``: every setting × δ, in the order
    settings, then δ as listed. params: ``settings``, ``deltas``, ``claim_delta`` and every
    field of :class:`HardBatchConfig`."""
    check_arms(params["deltas"], params["claim_delta"], params["settings"])
    return {arm_label(s, float(d), float(params["claim_delta"])):
            (NAME, make_config(HardBatchConfig, params, setting=s, delta=float(d)))
            for s in params["settings"] for d in params["deltas"]}


def build_model(name: str, num_classes: int) -> nn.Module:
    """A registry model (``repro.models``) or, with the prefix ``timm:``, a timm model from
    scratch (the paper's ``timm.create_model(arch, pretrained=False)``)."""
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes)
    from .... import models

    return models.create(name, num_classes=num_classes)


def train_loader(data: Any, setting: str, batch_size: int, device: torch.device | str,
                 seed: int) -> TensorLoader:
    """The training loader of a setting: a seeded order, batches of ``batch_size``, drop_last.

    Shuffling is on so that the partition is a seeded permutation; the plan fixes it (paper
    setting: epoch 0's order for the whole run) or redraws it per round (standard setting).
    """
    s = SETTINGS[setting]
    return data.loader("train", batch_size, device, seed=seed, shuffle=True, augment=s.augment,
                       drop_last=True)


@arm(NAME, family="training", config=HardBatchConfig)
def train_hardbatch(cfg: HardBatchConfig, data: Any, seed: int, checkpoint_dir: str | Path | None = None,
                    device: torch.device | str = "cpu") -> Job:
    """Hard batches: train on the ⌊δ·B⌋ highest-loss batches of each round, ``epochs × B`` updates.

    Job metric: ``top1`` (final test top-1, %). extra (JSON-friendly): ``steps`` and
    ``test_acc`` (top-1 %, at update 0 and after every B updates), ``final_acc``,
    ``per_class_acc`` ([K] %), ``counts`` ([B] updates per batch position), ``rounds``
    (selection log), ``num_batches``, ``delta``, ``setting``, ``wall_s``.
    """
    device = torch.device(device)
    torch.manual_seed(seed)  # the initial weights depend on the seed only
    model = build_model(cfg.model, data.num_classes).to(device)
    train = train_loader(data, cfg.setting, cfg.batch_size, device, seed)
    test = data.loader("test", 1024, device)
    init = evaluate(model, test)  # update 0 of the accuracy curve
    plan = HardBatchPlan(cfg.delta, reshuffle=SETTINGS[cfg.setting].reshuffle)
    tc = train_config(cfg, optimizer="sgd", schedule="constant",  # run.py: no scheduler
                      desc=f"{cfg.setting} δ={cfg.delta:g} seed {seed}")
    res = fit(model, train, test, tc, plan=plan, checkpoint_dir=checkpoint_dir)
    logits, y = predict(res.model, test)
    pred = logits.argmax(1)
    per_class = [float((pred[y == c] == c).float().mean() * 100) for c in range(data.num_classes)]
    final = float(res.history[-1]["test_acc"])
    extra = {
        "delta": float(cfg.delta), "setting": cfg.setting, "num_batches": len(train),
        "steps": [0] + [int(h["step"]) for h in res.history],
        "test_acc": [init["acc"]] + [float(h["test_acc"]) for h in res.history],
        "final_acc": final, "per_class_acc": per_class, "counts": list(plan.counts), "rounds": plan.rounds,
        "wall_s": res.train_seconds,
    }
    return Job.from_fits([res], {"top1": final}, n_test=len(data.y_test), extra=extra)


# -- metrics --------------------------------------------------------------------------------
def updates_to_reach(steps: Sequence[float], acc: Sequence[float], target: float) -> float:
    """Updates at which the test-accuracy curve first reaches ``target`` (linear interpolation
    between evaluations); the last step if it never does (a lower bound on the true cost)."""
    for i, (s, a) in enumerate(zip(steps, acc)):
        if a >= target:
            if i == 0:
                return float(s)
            s0, a0 = steps[i - 1], acc[i - 1]
            return float(s0 + (target - a0) / (a - a0) * (s - s0))
    return float(steps[-1])


def speedup_pct(base: Mapping[str, Any], arm: Mapping[str, Any], frac: float = 0.9) -> float:
    """Percent of the baseline's updates saved by ``arm`` to reach ``frac`` × the baseline's
    final accuracy: 100 · (u_base − u_arm) / u_base (positive = faster). NaN when the
    baseline is at the target from update 0 (it never learned, as in a one-step dry run)."""
    target = frac * base["final_acc"]
    u_base = updates_to_reach(base["steps"], base["test_acc"], target)
    u_arm = updates_to_reach(arm["steps"], arm["test_acc"], target)
    if u_base == 0:
        return math.nan
    return 100.0 * (u_base - u_arm) / u_base


def check_arms(deltas: Sequence[float], claim_delta: float, settings: Sequence[str]) -> None:
    """Fail early on an experiment that cannot answer the claims."""
    if 1.0 not in deltas:
        raise ValueError(f"deltas must include 1.0 (the baseline), got {list(deltas)}")
    if claim_delta not in deltas or claim_delta >= 1.0:
        raise ValueError(f"claim_delta={claim_delta} must be one of deltas {list(deltas)} and < 1")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")


def updates_saved(result: SweepResult, seed: int, settings: Sequence[str], frac: float = 0.9) -> dict[str, float]:
    """One seed's ``updates_saved_pct`` (paper setting) and ``updates_saved_pct_<setting>``
    (others): :func:`speedup_pct` of ``<setting>_hard`` against ``<setting>_all`` — not a
    difference of two arms' values, so a metric of its own."""
    out: dict[str, float] = {}
    by = {(j["arm"], j["seed"]): j["extra"] for j in result.jobs}
    for setting in settings:
        base, hard = by.get((f"{setting}_all", seed)), by.get((f"{setting}_hard", seed))
        if base is None or hard is None:
            continue
        key = "updates_saved_pct" if setting == "paper" else f"updates_saved_pct_{setting}"
        saved = speedup_pct(base, hard, frac)
        if math.isfinite(saved):  # undefined when the baseline never learned (a one-step dry run)
            out[key] = saved
    return out


# -- chapter glue (at the level of the sweep) ---------------------------------------------------


def runs(result: SweepResult) -> list[dict[str, Any]]:
    """Every job as one dict (its extra plus ``arm`` and ``seed``), for figures and tables."""
    return [{**j["extra"], "arm": j["arm"], "seed": j["seed"]} for j in result.jobs]


def metrics_by_seed(result: SweepResult, settings: Sequence[str], frac: float = 0.9) -> dict[int, dict[str, float]]:
    """Each seed's :func:`updates_saved` (``run.log_seeds`` logs them)."""
    return {seed: updates_saved(result, seed, settings, frac) for seed in sorted({j["seed"] for j in result.jobs})}
