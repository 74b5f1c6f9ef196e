"""Online distillation: teacher and student trained together from scratch, one step updating both.

``OnlinePair`` holds the two networks; its ``forward`` is the student's, so the trainer's
evaluation measures the student, and the teacher's accuracy is added to each epoch's history
(``teacher_acc``). Arms:

* ``dml`` (Zhang et al., 2018): student CE + τ²·KL(p_T ‖ p_S); teacher CE + τ²·KL(p_S ‖ p_T).
* ``bdkd`` (Amara et al., 2022): student CE + per-sample w_F·KL(p_T ‖ p_S) + w_R·KL(p_S ‖ p_T)
  (``bdkd_student_loss``; the entropy-gap weighting is our assumption, see chapter 37); teacher
  CE + τ²·KL(p_T ‖ p_S), the reverse-KL regulariser seen from the teacher.

Both arms keep a ``BalanceLog`` of the entropy gap H(p_S) − H(p_T) seen by the loss: the
per-step mean, the mean reverse-KL weight w_R (for DML the weight BD-KD *would* give; it is
not applied), and per-epoch histograms of the per-sample gap. It is a trainer callback with a
state, so it survives a resume.

The rest of the module is chapter 37's mechanics: the labelled arms, running them over seeds
with the teacher evaluated too, the per-seed metrics and the figures.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import metrics, models
from ..losses import distillation as D
from ..plots.curves import training_curves
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import FitResult, evaluate
from . import kd_compare
from .distill import StudentSetup, _fit_student_model, check_pair, register_arm


class OnlinePair(nn.Module):
    """A teacher and a student trained jointly; ``forward`` returns the student's logits."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class BalanceLog:
    """What the loss saw of the entropy gap H_S − H_T, step by step and sample by sample.

    ``gap`` / ``w_reverse``: per-step batch means of the gap and of w_R. With ``bound`` set,
    ``hist[epoch]`` counts the per-sample gaps of that epoch in ``bins`` equal bins on
    [−bound, bound] (values outside are clipped into the end bins); the gap of C-class
    distributions lies in [−ln C, ln C], the natural bound.
    """

    def __init__(self, bound: float | None = None, bins: int = 400) -> None:
        if bound is not None and not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"BalanceLog bound must be a positive number, got {bound}")
        self.bound, self.bins = bound, int(bins)
        self.gap: list[float] = []
        self.w_reverse: list[float] = []
        self.hist: dict[int, list[int]] = {}
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def stage(self, gap: torch.Tensor, w_r: torch.Tensor) -> None:
        """Keep this batch's per-sample gaps and weights until the trainer reports the step."""
        gap, w_r = gap.detach(), w_r.detach()
        counts = None
        if self.bound is not None:
            # clamp first: histc drops values outside [min, max], we want them in the end bins
            counts = torch.histc(gap.float().clamp(-self.bound, self.bound), self.bins, -self.bound, self.bound)
        self._pending = (gap.mean(), w_r.mean(), counts)

    def on_step(self, info) -> None:
        """Trainer callback: commit the staged batch (one sync per step)."""
        if self._pending is None:
            return
        g, w, counts = self._pending
        self.gap.append(float(g))
        self.w_reverse.append(float(w))
        if counts is not None:
            epoch = int(getattr(info, "epoch", 0) or 0)
            row = self.hist.setdefault(epoch, [0] * self.bins)
            for i, c in enumerate(counts.round().long().tolist()):
                row[i] += c
        self._pending = None

    def edges(self) -> list[float]:
        """Bin edges of the histograms (empty without a bound)."""
        if self.bound is None:
            return []
        return np.linspace(-self.bound, self.bound, self.bins + 1).tolist()

    def state_dict(self) -> dict:
        return {"gap": self.gap, "w_reverse": self.w_reverse, "bound": self.bound, "bins": self.bins,
                "hist": {str(k): v for k, v in self.hist.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.gap, self.w_reverse = list(state["gap"]), list(state["w_reverse"])
        self.bound, self.bins = state.get("bound", self.bound), int(state.get("bins", self.bins))
        self.hist = {int(k): list(v) for k, v in state.get("hist", {}).items()}

    def export(self, max_epochs: int = 5) -> dict[str, Any]:
        """The log for a result: per-step series, bin edges and the histograms of at most
        ``max_epochs`` epochs (first, last and evenly spaced between) to keep records small."""
        epochs = sorted(self.hist)
        if len(epochs) > max_epochs:
            pick = np.unique(np.linspace(0, len(epochs) - 1, max_epochs).round().astype(int))
            epochs = [epochs[i] for i in pick]
        return {"gap": list(self.gap), "w_reverse": list(self.w_reverse), "edges": self.edges(),
                "hist": {str(e): self.hist[e] for e in epochs}}


def check_kappa(kappa: float, hard: bool = False) -> None:
    """κ must be a positive finite number (κ → ∞ is the ``hard`` switch, asked for by name)."""
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not (kappa > 0 and math.isfinite(kappa)):
        raise ValueError(f"bdkd kappa must be a positive finite number, got {kappa!r} "
                         "(use hard=True for the step-function limit)")
    if not isinstance(hard, bool):
        raise ValueError(f"bdkd hard must be True or False, got {hard!r}")


def _pair(setup: StudentSetup) -> OnlinePair:
    if not setup.teacher_arch:
        raise ValueError("online distillation needs setup.teacher_arch (the architecture trained alongside)")
    torch.manual_seed(setup.seed + 10_000)  # the teacher's own initialisation, fixed per seed
    teacher = models.create(setup.teacher_arch, num_classes=setup.num_classes, **setup.teacher_kwargs)
    student = setup.new_student()
    check_pair(teacher, student, setup.train.images.shape[-1])
    return OnlinePair(teacher, student)


Term = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def online_loss(student_term: Term, teacher_term: Term):
    """The pair's loss_fn: [CE(s, y) + student_term(s, t̂)] + [CE(t, y) + teacher_term(t, ŝ)].

    A hat marks a detached partner, so each network's gradient comes from its own bracket
    only; returns the student's logits (what the trainer scores)."""
    def loss_fn(m: OnlinePair, x: torch.Tensor, y: torch.Tensor):
        t, s = m.teacher(x).float(), m.student(x).float()
        loss_s = F.cross_entropy(s, y) + student_term(s, t.detach())
        loss_t = F.cross_entropy(t, y) + teacher_term(t, s.detach())
        return loss_s + loss_t, s
    return loss_fn


def _online(setup: StudentSetup, tag: str, terms: tuple[Term, Term], log: BalanceLog) -> FitResult:
    pair = _pair(setup)
    log.bound = math.log(setup.num_classes)

    def teacher_acc(m: OnlinePair) -> dict[str, float]:
        return {"teacher_acc": evaluate(m.teacher, setup.test)["acc"]}

    res = _fit_student_model(setup, pair, online_loss(*terms), tag, callbacks=[log], extra_eval=teacher_acc)
    res.extra["balance"] = log.export()
    return res


def _stage_balance(log: BalanceLog | None, s: torch.Tensor, t: torch.Tensor, T: float, kappa: float,
                   hard: bool) -> None:
    if log is None:
        return
    with torch.no_grad():
        gap = D.entropy(s, T) - D.entropy(t, T)
        log.stage(gap, D.bdkd_weights(s, t, kappa, hard, T)[1])


def dml_terms(temperature: float, log: BalanceLog | None = None) -> tuple[Term, Term]:
    """(student term τ²·KL(p_T‖p_S), teacher term τ²·KL(p_S‖p_T)). ``log`` records the gap and
    the w_R that BD-KD's default rule (κ = 5) would assign; DML does not apply it."""
    T = temperature

    def student_term(s, t):
        _stage_balance(log, s, t, T, 5.0, False)
        return T * T * D.kl_div(t, s, T)

    return student_term, lambda t, s: T * T * D.kl_div(s, t, T)


def bdkd_terms(temperature: float, kappa: float, hard: bool, log: BalanceLog | None = None) -> tuple[Term, Term]:
    """(student term ``bdkd_student_loss``, teacher term τ²·KL(p_T‖p_S))."""
    check_kappa(kappa, hard)
    T = temperature

    def student_term(s, t):
        _stage_balance(log, s, t, T, kappa, hard)
        return D.bdkd_student_loss(s, t, T, kappa, hard)

    return student_term, lambda t, s: T * T * D.kl_div(t, s, T)


@register_arm("dml", {"temperature": 3.0})
def dml_arm(setup: StudentSetup, temperature: float) -> FitResult:
    """Deep mutual learning: each network distils from the other (forward KL for the student)."""
    log = BalanceLog()
    return _online(setup, "dml", dml_terms(temperature, log), log)


@register_arm("bdkd", {"temperature": 3.0, "kappa": 5.0, "hard": False})
def bdkd_arm(setup: StudentSetup, temperature: float, kappa: float, hard: bool) -> FitResult:
    """BD-KD: entropy-gap-balanced forward/reverse KL for the student; reverse KL for the teacher."""
    log = BalanceLog()
    terms = bdkd_terms(temperature, kappa, hard, log)
    return _online(setup, "bdkd-hard" if hard else f"bdkd-k{kappa:g}", terms, log)


# --------------------------------------------------------------------------- chapter 37
Arms = dict[str, tuple[str, dict[str, Any]]]


def chapter_arms(temperature: float, kappa: float, with_hard: bool = False,
                 kappa_ablation: Sequence[float] = ()) -> Arms:
    """label → (arm, full hyper-parameters) for chapter 37: CE, DML, BD-KD (κ), optionally the
    hard switch and BD-KD at other κ. Every value is checked here, before any training."""
    check_kappa(kappa)
    if not isinstance(with_hard, bool):
        raise ValueError(f"with_hard must be True or False, got {with_hard!r}")
    extra = list(kappa_ablation)
    for k in extra:
        check_kappa(k)
    if len(set(extra)) != len(extra) or kappa in extra:
        raise ValueError(f"kappa_ablation must list distinct values other than kappa={kappa}: {extra}")
    spec: Arms = {"CE": ("ce", {}), "DML": ("dml", {"temperature": temperature}),
                  "BD-KD": ("bdkd", {"temperature": temperature, "kappa": kappa})}
    if with_hard:
        spec["BD-KD hard"] = ("bdkd", {"temperature": temperature, "kappa": kappa, "hard": True})
    for k in extra:
        spec[f"BD-KD κ={k:g}"] = ("bdkd", {"temperature": temperature, "kappa": float(k)})
    return kd_compare.check_arms(spec)


def run_chapter(run, data, arms: Arms, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Train every (seed, arm) on the protocol (no fixed teacher: online arms train their own);
    each result gets the student's metrics and, for online arms, the teacher's under "teacher".
    Results keep the trained model under "model"."""
    results = kd_compare.run_arms(run, data, None, arms, seeds, keep_models=True)
    test = data.loader("test", 512, run.device)
    for r in results:
        if isinstance(r["model"], OnlinePair):
            r["teacher"] = kd_compare.evaluate_student(r["model"].teacher, test)
    return results


def log_seed_metrics(run, results: list[dict[str, Any]]) -> None:
    """Per seed: every arm's student top-1 / ECE / NLL / mean confidence, the online teachers'
    too, and the three claim metrics (paired by seed)."""
    by = {(r["method"], r["seed"]): r for r in results}
    for (label, seed), r in by.items():
        run.log(seed, **{f"{k}_{label}": r[k] for k in ("top1", "ece", "nll", "confidence")})
        if "teacher" in r:
            run.log(seed, **{f"teacher_{k}_{label}": v for k, v in r["teacher"].items()})
    for seed in sorted({s for _, s in by}):
        ce, dml, bd = by[("CE", seed)], by[("DML", seed)], by[("BD-KD", seed)]
        run.log(seed, ece_dml_minus_bdkd=dml["ece"] - bd["ece"], bdkd_minus_dml=bd["top1"] - dml["top1"],
                bdkd_minus_ce=bd["top1"] - ce["top1"], dml_minus_ce=dml["top1"] - ce["top1"])


def record_results(results: list[dict[str, Any]], max_points: int = 400) -> list[dict[str, Any]]:
    """The results for the record: no models, per-step balance series averaged down to at most
    ``max_points`` points (a paper-tier run has ~10⁵ steps)."""
    out = []
    for r in kd_compare.jsonable_results(results):
        bal = r.get("extra", {}).get("balance")
        if bal is not None:
            bal = {**bal, "gap": _coarsen(bal["gap"], max_points), "w_reverse": _coarsen(bal["w_reverse"], max_points),
                   "steps_per_point": max(1, math.ceil(len(bal["gap"]) / max_points))}
            r = {**r, "extra": {**r["extra"], "balance": bal}}
        out.append(r)
    return out


def _coarsen(values: Sequence[float], max_points: int) -> list[float]:
    """Means of consecutive chunks so that at most ``max_points`` remain."""
    v = np.asarray(values, dtype=float)
    k = max(1, math.ceil(v.size / max_points))
    n = v.size // k * k
    head = v[:n].reshape(-1, k).mean(1).tolist() if n else []
    return head + ([float(v[n:].mean())] if n < v.size else [])


def summary_markdown(results: list[dict[str, Any]], labels: Sequence[str]) -> str:
    """Mean ± std over seeds of student (and online teacher) top-1, ECE, NLL, confidence."""
    ms = metrics.mean_std_text

    lines = ["| arm | student top-1 % | student ECE % | student NLL | student conf. % | teacher top-1 % "
             "| teacher ECE % | train s / run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label in labels:
        runs = [r for r in results if r["method"] == label]
        teach = [r["teacher"] for r in runs if "teacher" in r]
        t_top = ms([t["top1"] for t in teach]) if teach else "—"
        t_ece = ms([t["ece"] for t in teach]) if teach else "—"
        lines.append(f"| {label} (n={len(runs)}) | {ms([r['top1'] for r in runs])} | {ms([r['ece'] for r in runs])} "
                     f"| {ms([r['nll'] for r in runs])} | {ms([r['confidence'] for r in runs])} | {t_top} | {t_ece} "
                     f"| {np.mean([r['train_s'] for r in runs]):.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
def plot_reliability(probs_by_label: dict[str, tuple[torch.Tensor, torch.Tensor]], setting: str,
                     n_bins: int = 15, title: str = "Reliability of the student"):
    """One reliability diagram per arm (accuracy vs confidence per bin; ECE with its bin count
    in the panel title) with the bin counts beneath, drawn like ``repro.plots.reliability``."""
    labels = list(probs_by_label)
    fig, axes = new_figure(ncols=len(labels), nrows=2, width=3.0 * len(labels) + 0.6, height=4.4,
                           squeeze=False, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    data: dict[str, Any] = {}
    for j, label in enumerate(labels):
        ax, ax_n = axes[0][j], axes[1][j]
        probs, y = probs_by_label[label]
        b = metrics.reliability_bins(probs, y, n_bins)
        edges, count = b["edges"], b["count"]
        centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        ok = count > 0
        acc, conf = np.nan_to_num(b["accuracy"]), np.nan_to_num(b["confidence"])
        ax.bar(centers[ok], acc[ok], width=width, color="C0", edgecolor="white", linewidth=0.5, label="accuracy")
        ax.bar(centers[ok], (conf - acc)[ok], bottom=acc[ok], width=width, color="C1", alpha=0.35,
               edgecolor="C1", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}: ECE {100 * b['ece']:.2f}% ({n_bins} bins)", fontsize=10)
        ax_n.bar(centers, count, width=width, color="0.55", edgecolor="white", linewidth=0.5)
        ax_n.set_xlabel("confidence (max probability)")
        data[label] = {"edges": edges.tolist(), "accuracy": b["accuracy"].tolist(),
                       "confidence": b["confidence"].tolist(), "count": count.tolist(), "ece": b["ece"]}
    axes[0][0].set_ylabel("accuracy")
    axes[1][0].set_ylabel("count")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"diagrams": data, "n_bins": n_bins, "setting": setting})


def plot_accuracy_ece(results: list[dict[str, Any]], labels: Sequence[str], setting: str):
    """Left: ECE against top-1, one dot per run (students filled, online teachers hollow).
    Right: mean confidence against top-1; above the diagonal = over-confident."""
    fig, (a, b) = new_figure(ncols=2, width=9.0)
    pts: dict[str, Any] = {}
    for i, label in enumerate(labels):
        runs = [r for r in results if r["method"] == label]
        c = f"C{i % 10}"
        st = {k: [r[k] for r in runs] for k in ("top1", "ece", "confidence")}
        a.plot(st["top1"], st["ece"], "o", color=c, label=f"{label} student")
        b.plot(st["top1"], st["confidence"], "o", color=c, label=f"{label} student")
        pts[label] = {"seeds": [r["seed"] for r in runs], "student": st}
        teach = [r["teacher"] for r in runs if "teacher" in r]
        if teach:
            tt = {k: [t[k] for t in teach] for k in ("top1", "ece", "confidence")}
            a.plot(tt["top1"], tt["ece"], "o", mfc="none", color=c, label=f"{label} teacher")
            b.plot(tt["top1"], tt["confidence"], "o", mfc="none", color=c)
            pts[label]["teacher"] = tt
    a.set_xlabel("test top-1 (%)")
    a.set_ylabel("ECE (%, 15 bins)")
    a.set_title("Calibration vs accuracy, every run")
    a.legend(fontsize=7)
    lo, hi = b.get_xlim()
    lo, hi = min(lo, b.get_ylim()[0]), max(hi, b.get_ylim()[1])
    b.plot([lo, hi], [lo, hi], "--", color="0.4", linewidth=1)
    b.set_xlabel("test top-1 (%)")
    b.set_ylabel("mean confidence (%)")
    b.set_title("Over-confident above the diagonal")
    annotate_setting(fig, setting)
    return fig, jsonable({"runs": pts, "setting": setting})


def _hist_density(counts: Sequence[int], edges: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    return c / max(c.sum(), 1.0) / np.diff(edges)


def plot_balance(results: list[dict[str, Any]], labels: Sequence[str], setting: str, window: int = 20,
                 first_epoch_for: Sequence[str] = ("DML", "BD-KD")):
    """Left: per-sample entropy gap H_S − H_T seen by the loss in the last training epoch of
    each labelled arm (and the first epoch, dotted, for ``first_epoch_for``). Right: mean reverse-KL weight w_R per step (smoothed) for the BD-KD
    arms, and for DML the weight BD-KD's rule would give (dotted: not applied)."""
    fig, (a, b) = new_figure(ncols=2, width=9.6)
    data: dict[str, Any] = {}
    lo, hi = np.inf, -np.inf
    for i, label in enumerate(labels):
        runs = [r for r in results if r["method"] == label and "balance" in r.get("extra", {})]
        if not runs:
            continue
        c = f"C{i % 10}"
        edges = np.asarray(runs[0]["extra"]["balance"]["edges"])
        data[label] = {}
        if edges.size:
            ep = sorted(int(e) for e in runs[0]["extra"]["balance"]["hist"])
            # the first epoch only for DML and BD-KD (the rest would crowd the panel)
            shown = [(ep[-1], "-")] + ([(ep[0], ":")] if len(ep) > 1 and label in first_epoch_for else [])
            for e, style in shown:
                # pooled over seeds: the same epochs are exported for every seed of an arm
                counts = np.sum([r["extra"]["balance"]["hist"][str(e)] for r in runs], axis=0)
                dens = _hist_density(counts, edges)
                a.stairs(dens, edges, color=c, linestyle=style, label=f"{label}, epoch {e + 1}")
                nz = np.nonzero(counts)[0]
                if nz.size:
                    lo, hi = min(lo, edges[nz[0]]), max(hi, edges[nz[-1] + 1])
                data[label][f"epoch_{e + 1}"] = {"counts": counts.tolist(), "edges": edges.tolist()}
        for r in runs:
            wr = np.asarray(r["extra"]["balance"]["w_reverse"], dtype=float)
            k = max(1, min(window, wr.size // 5))
            smooth = np.convolve(wr, np.ones(k) / k, mode="valid")
            b.plot(np.arange(smooth.size) + k, smooth, color=c, linestyle=":" if r["arm"] == "dml" else "-",
                   alpha=0.8, label=f"{label}" + (" (not applied)" if r["arm"] == "dml" else "") if r is runs[0] else None)
        data[label]["mean_w_reverse"] = {str(r["seed"]): float(np.mean(r["extra"]["balance"]["w_reverse"]))
                                         for r in runs}
    if np.isfinite(lo):
        pad = 0.05 * (hi - lo)
        a.set_xlim(lo - pad, hi + pad)
    a.axvline(0, color="0.4", linewidth=1)
    a.set_xlabel("per-sample H(p_S) − H(p_T) at τ (nats)")
    a.set_ylabel("density (training batches, seeds pooled)")
    a.set_title("Entropy gap: student less sure → right of 0")
    a.legend(fontsize=7)
    b.axhline(0.5, color="0.4", linewidth=1, linestyle=":")
    b.set_ylim(0, 1)
    b.set_xlabel("training step")
    b.set_ylabel("batch-mean reverse-KL weight w_R")
    b.set_title("Share of the mode-seeking (reverse) KL")
    b.legend(fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({"arms": data, "window": window, "setting": setting})


def plot_curves(results: list[dict[str, Any]], labels: Sequence[str], setting: str):
    """Student (left) and online teacher (right) test top-1 per epoch; mean and min–max over seeds."""
    hist = {label: [r["history"] for r in results if r["method"] == label] for label in labels}
    fig, data = training_curves(hist, ys=("test_acc", "teacher_acc"), setting=setting,
                                title="Student (left) and online teacher (right) during training")
    fig.axes[0].set_ylabel("student test top-1 (%)")
    fig.axes[1].set_ylabel("online teacher test top-1 (%)")
    return fig, data


def _quantiles(counts: Sequence[int], edges: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Quantiles of a histogram, linear within a bin."""
    c = np.cumsum(np.asarray(counts, dtype=float))
    if c[-1] == 0:
        return [float("nan")] * len(qs)
    cdf = np.concatenate([[0.0], c / c[-1]])
    return [float(np.interp(q, cdf, edges)) for q in qs]


def balance_markdown(results: list[dict[str, Any]], labels: Sequence[str]) -> str:
    """Per arm: the mean reverse-KL weight over training (mean ± std over seeds) and the
    5th / 50th / 95th percentiles of the last epoch's per-sample entropy gap (seeds pooled)."""
    lines = ["| arm | mean w_R over training | last-epoch gap H_S − H_T: 5% / 50% / 95% (nats) |",
             "| --- | --- | --- |"]
    for label in labels:
        runs = [r for r in results if r["method"] == label and "balance" in r.get("extra", {})]
        if not runs:
            continue
        w = [float(np.mean(r["extra"]["balance"]["w_reverse"])) for r in runs]
        bal0 = runs[0]["extra"]["balance"]
        gap = "—"
        if bal0["edges"] and bal0["hist"]:
            last = str(max(int(e) for e in bal0["hist"]))
            counts = np.sum([r["extra"]["balance"]["hist"][last] for r in runs], axis=0)
            gap = " / ".join(f"{v:+.3f}" for v in _quantiles(counts, bal0["edges"], (0.05, 0.5, 0.95)))
        note = " (not applied)" if runs[0]["arm"] == "dml" else ""
        lines.append(f"| {label} | {np.mean(w):.3f} ± {np.std(w, ddof=1) if len(w) > 1 else 0.0:.3f}{note} | {gap} |")
    return "\n".join(lines)
