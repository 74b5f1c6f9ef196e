"""Training on the highest-loss mini-batches (Sahayam, Zakkam & Jayaraman 2023, "DyBAT").

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

from ..data.loader import TensorLoader
from ..train import TrainConfig, evaluate, fit, predict


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
def build_model(name: str, num_classes: int) -> nn.Module:
    """A registry model (``repro.models``) or, with the prefix ``timm:``, a timm model from
    scratch (the paper's ``timm.create_model(arch, pretrained=False)``)."""
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes)
    from .. import models

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


def run_arm(delta: float, setting: str, data: Any, params: Mapping[str, Any], seed: int,
            checkpoint_dir: str | Path | None = None, device: torch.device | str = "cpu",
            progress: bool = True) -> dict[str, Any]:
    """Train one arm (δ, setting, seed) for ``epochs × B`` updates and evaluate it.

    params: ``model``, ``batch_size``, ``epochs``, ``lr``, ``momentum``, ``weight_decay``.
    checkpoint_dir: fit's resume folder (a finished arm is loaded, not retrained).

    Returns a JSON-friendly dict: ``steps`` and ``test_acc`` (top-1 %, at update 0 and
    after every B updates), ``final_acc``, ``per_class_acc`` ([K] %), ``counts`` ([B]
    updates per batch position), ``rounds`` (selection log), ``num_batches``, ``wall_s``.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, not {setting!r}")
    device = torch.device(device)
    torch.manual_seed(seed)  # the initial weights depend on the seed only
    model = build_model(params["model"], data.num_classes).to(device)
    train = train_loader(data, setting, params["batch_size"], device, seed)
    test = data.loader("test", 1024, device)
    init = evaluate(model, test)  # update 0 of the accuracy curve
    plan = HardBatchPlan(delta, reshuffle=SETTINGS[setting].reshuffle)
    cfg = TrainConfig(epochs=params["epochs"], optimizer="sgd", lr=params["lr"], momentum=params["momentum"],
                      weight_decay=params["weight_decay"], schedule="constant",  # run.py: no scheduler
                      progress=progress, desc=f"{setting} δ={delta:g} seed {seed}")
    res = fit(model, train, test, cfg, plan=plan, checkpoint_dir=checkpoint_dir)
    logits, y = predict(res.model, test)
    pred = logits.argmax(1)
    per_class = [float((pred[y == c] == c).float().mean() * 100) for c in range(data.num_classes)]
    return {
        "delta": float(delta), "setting": setting, "seed": int(seed), "num_batches": len(train),
        "steps": [0] + [int(h["step"]) for h in res.history],
        "test_acc": [init["acc"]] + [float(h["test_acc"]) for h in res.history],
        "final_acc": float(res.history[-1]["test_acc"]),
        "per_class_acc": per_class, "counts": list(plan.counts), "rounds": plan.rounds,
        "wall_s": res.train_seconds,
    }


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
    final accuracy: 100 · (u_base − u_arm) / u_base (positive = faster)."""
    target = frac * base["final_acc"]
    u_base = updates_to_reach(base["steps"], base["test_acc"], target)
    u_arm = updates_to_reach(arm["steps"], arm["test_acc"], target)
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


def seed_metrics(arms: Sequence[Mapping[str, Any]], seed: int, claim_delta: float,
                 frac: float = 0.9) -> dict[str, float]:
    """Per-seed numbers for the run record.

    ``acc_gain_<setting>_setting`` = final top-1 of δ = claim_delta minus that of δ = 1 (pts);
    ``updates_saved_pct`` (paper setting) and ``updates_saved_pct_standard``: see
    ``speedup_pct``; ``acc_<setting>_delta<δ>``: final top-1 of every arm.
    """
    out: dict[str, float] = {}
    mine = {(a["setting"], a["delta"]): a for a in arms if a["seed"] == seed}
    for (setting, delta), a in sorted(mine.items()):
        out[f"acc_{setting}_delta{delta:g}"] = a["final_acc"]
    for setting in SETTINGS:
        base, arm = mine.get((setting, 1.0)), mine.get((setting, float(claim_delta)))
        if base is None or arm is None:
            continue
        out[f"acc_gain_{setting}_setting"] = arm["final_acc"] - base["final_acc"]
        key = "updates_saved_pct" if setting == "paper" else f"updates_saved_pct_{setting}"
        out[key] = speedup_pct(base, arm, frac)
    return out


def summary_lines(arms: Sequence[Mapping[str, Any]]) -> str:
    """Final test top-1 per (setting, δ): mean over seeds and the per-seed values."""
    keys = sorted({(a["setting"], a["delta"]) for a in arms}, key=lambda k: (k[0], -k[1]))
    lines = [f"{'setting':<10} {'δ':>5} {'updates':>8} {'final top-1 (mean)':>19}  per seed"]
    for setting, delta in keys:
        runs = sorted(_by(arms, setting, delta), key=lambda a: a["seed"])
        accs = [r["final_acc"] for r in runs]
        lines.append(f"{setting:<10} {delta:>5g} {runs[0]['steps'][-1]:>8d} {np.mean(accs):>19.2f}  "
                     + ", ".join(f"{v:.2f}" for v in accs))
    return "\n".join(lines)


# -- figures ----------------------------------------------------------------------------------
def _by(arms: Sequence[Mapping[str, Any]], setting: str, delta: float) -> list[Mapping[str, Any]]:
    return [a for a in arms if a["setting"] == setting and a["delta"] == delta]


def plot_accuracy_vs_updates(arms: Sequence[Mapping[str, Any]], settings: Sequence[str],
                             deltas: Sequence[float], setting_caption: str, frac: float = 0.9):
    """Key figure: test top-1 vs number of updates, one panel per setting, one line per δ
    (mean over seeds, band = min–max). A dotted line marks ``frac`` × the δ = 1 final accuracy."""
    from ..plots.style import annotate_setting, new_figure

    fig, axes = new_figure(ncols=len(settings), squeeze=False, sharey=True)
    data: dict[str, Any] = {"band": "min-max over seeds", "series": {}}
    low = math.inf  # the lowest accuracy after update 0: the y-axis starts just below it
    for ax, setting in zip(axes[0], settings):
        data["series"][setting] = {}
        for i, delta in enumerate(sorted(deltas, reverse=True)):
            runs = _by(arms, setting, delta)
            if not runs:
                continue
            x = np.asarray(runs[0]["steps"])
            y = np.asarray([r["test_acc"] for r in runs])  # [seeds, evals]
            color = f"C{i % 10}"
            label = f"δ = {delta:g}" + (" (baseline)" if delta == 1.0 else "")
            ax.plot(x, y.mean(0), color=color, marker="o", markersize=2.5, label=label)
            if len(runs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.2, linewidth=0)
            low = min(low, float(y[:, 1:].min()) if y.shape[1] > 1 else float(y.min()))
            data["series"][setting][f"{delta:g}"] = {"x": x.tolist(), "mean": y.mean(0).tolist(),
                                                    "min": y.min(0).tolist(), "max": y.max(0).tolist(),
                                                    "n": len(runs)}
        base = _by(arms, setting, 1.0)
        if base:
            level = frac * float(np.mean([b["final_acc"] for b in base]))
            ax.axhline(level, color="0.5", linestyle=":", linewidth=1,
                       label=f"{frac:.0%} of baseline final")
        ax.set_title(SETTINGS[setting].label)
        ax.set_xlabel("number of updates (SGD steps)")
        ax.legend(loc="lower right")
    axes[0][0].set_ylabel("test top-1 accuracy (%)")
    if math.isfinite(low):  # zoom on the comparison; the curves start from update 0 below
        axes[0][0].set_ylim(bottom=max(0.0, low - 3.0))
    annotate_setting(fig, setting_caption)
    return fig, data


def plot_selection(arms: Sequence[Mapping[str, Any]], settings: Sequence[str], delta: float,
                   setting_caption: str):
    """(a) how many updates each batch position received (pass 1 included), all seeds pooled;
    (b) mean recorded loss of the selected vs the unselected batches at each round's start."""
    from ..plots.style import annotate_setting, new_figure

    fig, (ax1, ax2) = new_figure(ncols=2)
    data: dict[str, Any] = {"delta": delta, "counts": {}, "rounds": {}}
    for i, setting in enumerate(settings):
        runs = _by(arms, setting, delta)
        if not runs:
            continue
        color = f"C{i % 10}"
        counts = np.concatenate([np.asarray(r["counts"]) for r in runs])
        bins = np.arange(counts.min(), counts.max() + 2) - 0.5
        ax1.hist(counts, bins=bins, histtype="step", linewidth=1.6, color=color,
                 label=SETTINGS[setting].label.split(":")[0])
        data["counts"][setting] = counts.tolist()
        r = runs[0]["rounds"]
        if r:
            x = [d["round"] for d in r]
            ax2.plot(x, [d["mean_selected"] for d in r], color=color,
                     label=f"{SETTINGS[setting].label.split(':')[0]}: selected")
            ax2.plot(x, [d["mean_unselected"] for d in r], color=color, linestyle="--",
                     label=f"{SETTINGS[setting].label.split(':')[0]}: not selected")
            data["rounds"][setting] = r
    budget = runs[0]["steps"][-1] / runs[0]["num_batches"] if runs else float("nan")
    ax1.axvline(budget, color="0.5", linestyle=":", linewidth=1, label=f"δ = 1 (every batch: {budget:g})")
    ax1.set_xlabel(f"updates on a batch (δ = {delta:g}, pass 1 included)")
    ax1.set_ylabel("number of batches")
    ax1.legend()
    ax2.set_xlabel(f"round (seed {runs[0]['seed'] if runs else '—'})")
    ax2.set_ylabel("mean recorded batch loss at selection")
    ax2.legend()
    annotate_setting(fig, setting_caption)
    return fig, data


def plot_per_class_change(arms: Sequence[Mapping[str, Any]], settings: Sequence[str], delta: float,
                          class_names: Sequence[str], setting_caption: str):
    """Per-class test accuracy of δ minus that of δ = 1 (mean over seeds), one panel per
    setting, classes sorted from hardest to easiest.

    Difficulty is the mean per-class accuracy of the *two* arms, not the baseline's alone:
    sorting by the baseline would make its unlucky classes look "hard" and gain by
    regression to the mean, while (a + b) / 2 is uncorrelated with a − b when the two arms
    are equally noisy (the Bland–Altman ordering)."""
    from ..plots.style import annotate_setting, new_figure

    k = len(class_names)
    fig, axes = new_figure(ncols=1, nrows=len(settings), squeeze=False,
                           width=max(7.0, 0.12 * k + 2.0), height=2.9 * len(settings))
    data: dict[str, Any] = {"delta": delta, "settings": {}}
    step = 1 if k <= 40 else 5  # label every class, or every fifth of many
    for ax, setting in zip(axes[:, 0], settings):
        base = np.mean([r["per_class_acc"] for r in _by(arms, setting, 1.0)], axis=0)  # [K]
        arm = np.mean([r["per_class_acc"] for r in _by(arms, setting, delta)], axis=0)
        level = (base + arm) / 2
        order = np.argsort(level, kind="stable")  # hardest class first
        diff = (arm - base)[order]
        ax.bar(np.arange(k), diff, color=["C2" if d >= 0 else "C1" for d in diff], width=0.8)
        ax.axhline(0, color="0.3", linewidth=0.8)
        names = [class_names[i] for i in order]
        ax.set_xticks(np.arange(k)[::step], names[::step], rotation=90, fontsize=7)
        ax.set_ylabel("Δ top-1 (pts)")
        ax.set_title(SETTINGS[setting].label, loc="left")
        ax.grid(axis="x", visible=False)
        data["settings"][setting] = {"classes": names, "baseline_acc": base[order].tolist(),
                                     "mean_acc_both": level[order].tolist(), "change": diff.tolist()}
    axes[-1, 0].set_xlabel(f"class, from hardest to easiest (mean per-class test accuracy of δ = 1 and δ = {delta:g})")
    fig.suptitle(f"Per-class test accuracy: δ = {delta:g} minus δ = 1 (mean over seeds)")
    annotate_setting(fig, setting_caption)
    return fig, data
