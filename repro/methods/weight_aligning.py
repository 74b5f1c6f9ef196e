"""Weight Aligning (WA; Zhao et al., "Maintaining Discrimination and Fairness in Class
Incremental Learning", CVPR 2020) on the family's replay + KD learner, and chapter 24's mechanics.

WA trains each task like iCaRL's base learner (new data + exemplars, cross-entropy over the
classes seen so far + distillation of the old classes' logits from the frozen previous model)
and then, with no extra parameters and no validation set, corrects the classifier's bias
toward the newest classes. With ``W`` the last FC layer's weight rows, ``old`` the classes seen
before task t and ``new`` task t's classes::

    γ = mean_{i ∈ old} ‖W_i‖₂ / mean_{j ∈ new} ‖W_j‖₂ ,      W_j ← γ·W_j  for j ∈ new

so the new classes' mean weight norm equals the old classes'. During training the FC weights are
clipped to be non-negative after every update (the paper's weight clipping: the features after
the last ReLU are non-negative, so with non-negative weights a row's norm tracks the size of
its logits).

Two ways to weight the distillation term are offered, because the reimplementations differ:

* ``kd_mode="paper"``: L = (1 − λ)·CE + λ·KD with λ = old / seen classes (the paper, as read by
  the FACIL-based reimplementations);
* ``kd_mode="pycil"``: L = CE + kd_weight·KD (PyCIL uses kd_weight = 2).

KD is the soft cross-entropy at temperature T on the old classes' logits
(``repro.incremental.learners.kd_old_classes``), as in PyCIL.

``WeightAligning(cfg, align=False, clip=False)`` is the same learner without WA: the chapter's
``replay_kd`` arm, with exactly WA's loss. In ``post_train`` every arm of this class records,
after each task, the per-class weight norms and the share of test predictions that land in the
newest task's classes, before and (for WA) after aligning; the figures are drawn from those.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..incremental.chapter import Factory, log_gain
from ..incremental.learners import FineTune, IncrementalConfig, ReplayKD, kd_old_classes, masked_ce
from ..incremental.stream import Stream
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import predict

KD_MODES = ("paper", "pycil")


# -- the mechanics ---------------------------------------------------------------------------

def head_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer whose rows are the per-class weight vectors: ``model.head`` or, for
    the two-FC models, its last ``nn.Linear``."""
    head = model.head
    if isinstance(head, nn.Linear):
        return head
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__}.head has no nn.Linear layer to align")
    return layers[-1]


def class_norms(weight: torch.Tensor, seen: int) -> torch.Tensor:
    """‖W_c‖₂ of the first ``seen`` rows (one per class), as float32 on the CPU."""
    return weight[:seen].detach().float().norm(dim=1).cpu()


def check_split(old: int, seen: int, rows: int) -> None:
    """``0 < old < seen ≤ rows``: WA needs old and new classes, inside the layer."""
    if not 0 < old < seen <= rows:
        raise ValueError(f"weight aligning needs 0 < old ({old}) < seen ({seen}) ≤ classes of the layer ({rows})")


def align_gamma(weight: torch.Tensor, old: int, seen: int) -> float:
    """γ = mean norm of rows 0..old−1 / mean norm of rows old..seen−1."""
    check_split(old, seen, weight.shape[0])
    norms = class_norms(weight, seen)
    new_mean = norms[old:].mean()
    if new_mean <= 0:
        raise ValueError("the new classes' weight vectors are all zero: γ is undefined")
    return float(norms[:old].mean() / new_mean)


@torch.no_grad()
def weight_align(layer: nn.Linear, old: int, seen: int, bias: bool = False) -> float:
    """Scale the new classes' rows (old..seen−1) of ``layer`` in place by γ; return γ.

    ``bias``: also scale their biases (PyCIL and the paper's formula leave biases alone).
    """
    gamma = align_gamma(layer.weight, old, seen)
    layer.weight[old:seen] *= gamma
    if bias and layer.bias is not None:
        layer.bias[old:seen] *= gamma
    return gamma


@torch.no_grad()
def clip_nonnegative(layer: nn.Linear) -> None:
    """The paper's weight clipping: negative FC weights become 0 (biases are left alone)."""
    layer.weight.clamp_(min=0.0)


def kd_balance(seen_before: int, seen: int) -> float:
    """λ = old classes / seen classes, the paper's weight of the KD term (0 at the first task)."""
    if not 0 <= seen_before < seen:
        raise ValueError(f"need 0 ≤ seen_before ({seen_before}) < seen ({seen})")
    return seen_before / seen


def new_class_share(logits: torch.Tensor, seen_before: int, seen: int) -> float:
    """Share (%) of the images whose prediction over the first ``seen`` classes falls in the
    newest classes ``seen_before..seen−1``."""
    pred = logits[:, :seen].argmax(1)
    return 100.0 * ((pred >= seen_before) & (pred < seen)).float().mean().item()


def check_kd_mode(kd_mode: str) -> None:
    if kd_mode not in KD_MODES:
        raise ValueError(f"kd_mode must be one of {KD_MODES}, not {kd_mode!r}")


class WeightAligning(ReplayKD):
    """Replay + KD (+ weight clipping during training) + weight aligning after each task t ≥ 1.

    ``align=False, clip=False`` gives the replay + KD baseline with the same loss; every
    combination is allowed (e.g. aligning without clipping). ``kd_mode`` weights the KD term
    (see the module docstring); ``align_bias`` also scales the new classes' biases by γ.
    """

    name = "wa"

    def __init__(self, cfg: IncrementalConfig, align: bool = True, clip: bool = True, kd_mode: str = "paper",
                 align_bias: bool = False) -> None:
        check_kd_mode(kd_mode)
        super().__init__(cfg)
        self.align, self.clip, self.kd_mode, self.align_bias = align, clip, kd_mode, align_bias

    def loss_fn(self, t: int, seen: int, seen_before: int):
        old_model, T = self.old_model, self.cfg.kd_temperature
        lam = kd_balance(seen_before, seen)
        clip, kd_mode, kd_weight = self.clip, self.kd_mode, self.cfg.kd_weight

        def fn(model, x, y):
            if clip:
                # Clipping before each forward = clipping after each update (fit has no
                # post-step hook); post_train clips once more after the last update.
                clip_nonnegative(head_linear(model))
            logits = model(x)
            ce = masked_ce(logits, y, seen)
            if old_model is None or seen_before == 0:
                return ce, logits[:, :seen]
            with torch.no_grad():
                old = old_model(x)
            kd = kd_old_classes(logits, old, seen_before, T)
            loss = (1 - lam) * ce + lam * kd if kd_mode == "paper" else ce + kd_weight * kd
            return loss, logits[:, :seen]
        return fn

    @torch.no_grad()
    def post_train(self, model: nn.Module, t: int, stream: Stream) -> dict[str, Any]:
        """Clip, align (t ≥ 1), and record norms and the new-class prediction share before and
        after aligning (test images of every seen class, predicting over the seen classes)."""
        layer = head_linear(model)
        if self.clip:
            clip_nonnegative(layer)
        seen, seen_before = stream.seen(t), (stream.seen(t - 1) if t else 0)
        device = next(model.parameters()).device
        loader = stream.test_loader(range(t + 1), device=device)
        sizes = stream.test_sizes()
        true_share = 100.0 * sizes[t] / sum(sizes[: t + 1])
        norms_before = class_norms(layer.weight, seen)
        logits, _ = predict(model, loader)
        share_before = new_class_share(logits, seen_before, seen)
        out: dict[str, Any] = {"task": t, "seen": seen, "seen_before": seen_before, "true_share": true_share,
                               "norms_before": norms_before.tolist(), "share_before": share_before,
                               "gamma": None, "norms_after": norms_before.tolist(), "share_after": share_before,
                               "bias_before": None if layer.bias is None else layer.bias[:seen].float().cpu().tolist()}
        if t > 0:
            out["norm_ratio_before"] = float(norms_before[seen_before:].mean() / norms_before[:seen_before].mean())
        if self.align and t > 0:
            out["gamma"] = weight_align(layer, seen_before, seen, bias=self.align_bias)
            out["norms_after"] = class_norms(layer.weight, seen).tolist()
            logits, _ = predict(model, loader)
            out["share_after"] = new_class_share(logits, seen_before, seen)
        return out


# -- the chapter -----------------------------------------------------------------------------

def check_params(kd_mode: str, kd_weight: float, norm_seed: int, seeds: Sequence[int]) -> None:
    """The chapter's own parameters, before any data is read."""
    check_kd_mode(kd_mode)
    if kd_weight < 0:
        raise ValueError(f"kd_weight must be ≥ 0, not {kd_weight}")
    if norm_seed not in seeds:
        raise ValueError(f"norm_seed={norm_seed} must be one of seeds={list(seeds)}")


def chapter_learners(kd_mode: str = "paper", clip: bool = True, align_bias: bool = False,
                     with_align_only: bool = False) -> dict[str, Factory]:
    """The labelled arms: fine-tuning, replay + KD (WA's loss, no clipping, no aligning), WA
    (clipping + aligning) and, optionally, aligning without clipping (``wa_noclip``)."""
    check_kd_mode(kd_mode)
    make = functools.partial(WeightAligning, kd_mode=kd_mode, align_bias=align_bias)
    arms: dict[str, Factory] = {
        "finetune": FineTune,
        "replay_kd": functools.partial(make, align=False, clip=False),
        "wa": functools.partial(make, align=True, clip=clip),
    }
    if with_align_only and clip:
        arms["wa_noclip"] = functools.partial(make, align=True, clip=False)
    return arms


def last_extra(result: Mapping[str, Any]) -> dict[str, Any]:
    """The post_train record of the last task of one run ({} for arms that keep none)."""
    return result["extras"][-1] if result.get("extras") else {}


def bias_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """After the last task: excess share of predictions in the newest classes (predicted −
    true, pts; after aligning where the arm aligns) and the new/old mean weight-norm excess
    before aligning (%, 100·(ratio − 1)), averaged over tasks t ≥ 1 and at the last task."""
    ex = last_extra(result)
    if not ex or "norm_ratio_before" not in ex:
        return {}
    ratios = [e["norm_ratio_before"] for e in result["extras"] if "norm_ratio_before" in e]
    return {"new_share_excess": ex["share_after"] - ex["true_share"],
            "new_share_excess_unaligned": ex["share_before"] - ex["true_share"],
            "norm_excess_last": 100.0 * (ex["norm_ratio_before"] - 1.0),
            "norm_excess_mean": 100.0 * (float(np.mean(ratios)) - 1.0)}


def log_chapter_metrics(run, results: list[dict[str, Any]]) -> None:
    """The claim metrics, per seed and paired by seed: WA's AIA and last-accuracy gains over
    replay + KD (and over fine-tuning, and aligning-only's, unjudged), each arm's bias numbers,
    and the bias reduction |excess(replay_kd)| − |excess(wa)|."""
    labels = list(dict.fromkeys(r["method"] for r in results))
    for key in ("aia", "last"):
        log_gain(run, results, "wa", "replay_kd", key)
        log_gain(run, results, "wa", "finetune", key)
        if "wa_noclip" in labels:
            log_gain(run, results, "wa_noclip", "replay_kd", key)
    excess: dict[tuple[str, int], float] = {}
    for r in results:
        b = bias_metrics(r)
        if b:
            run.log(r["seed"], **{f"{k}_{r['method']}": v for k, v in b.items()})
            excess[(r["method"], r["seed"])] = b["new_share_excess"]
    for (m, s), e in excess.items():
        if m == "wa" and ("replay_kd", s) in excess:
            run.log(s, new_share_bias_replay_kd_minus_wa=abs(excess[("replay_kd", s)]) - abs(e))


def bias_markdown(results: list[dict[str, Any]], labels: Sequence[str] | None = None) -> str:
    """Mean over seeds, after the last task, of the bias numbers of each arm that records them."""
    labels = list(labels or dict.fromkeys(r["method"] for r in results))
    lines = ["| learner | new/old weight-norm excess before aligning, last task % | same, mean over tasks % "
             "| γ at the last task | predictions in the newest classes: before aligning / after / true % |",
             "| --- | --- | --- | --- | --- |"]
    for label in labels:
        runs = [r for r in results if r["method"] == label and bias_metrics(r)]
        if not runs:
            continue
        ex = [last_extra(r) for r in runs]
        b = [bias_metrics(r) for r in runs]
        g = [e["gamma"] for e in ex if e["gamma"] is not None]
        gamma = f"{np.mean(g):.3f}" if g else "—"
        lines.append(f"| {label} (n={len(runs)}) | {np.mean([x['norm_excess_last'] for x in b]):+.1f} "
                     f"| {np.mean([x['norm_excess_mean'] for x in b]):+.1f} | {gamma} "
                     f"| {np.mean([e['share_before'] for e in ex]):.1f} / {np.mean([e['share_after'] for e in ex]):.1f}"
                     f" / {np.mean([e['true_share'] for e in ex]):.1f} |")
    return "\n".join(lines)


def record_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results for the record: no models, no per-epoch histories (the extras stay)."""
    from ..incremental.chapter import jsonable_results

    return jsonable_results(results)


# -- figures ---------------------------------------------------------------------------------

OLD_COLOR, NEW_COLOR = "#56B4E9", "#CC79A7"  # class groups in the norm bars (not arm colours)


def arm_colors(results: list[dict[str, Any]]) -> dict[str, str]:
    """Colour of each arm: ``C{i}`` by order of appearance, as ``chapter.plot_curves`` draws them."""
    return {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(r["method"] for r in results))}


def _recording_arms(results: list[dict[str, Any]]) -> list[str]:
    return [m for m in dict.fromkeys(r["method"] for r in results)
            if any(r["method"] == m and bias_metrics(r) for r in results)]


def plot_norms(results: list[dict[str, Any]], seed: int, setting: str, label: str = "wa",
               baseline: str = "replay_kd"):
    """Left: per-class FC weight norms of ``label`` after the last task, before (wide, light)
    and after (narrow, dark) aligning, old classes and the newest task's in two colours, with
    ``baseline``'s final norms as a grey step line. Right: the new/old mean-norm ratio before
    aligning after each task, every arm that records it (mean over seeds, min–max band)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    run_ = next((r for r in results if r["method"] == label and r["seed"] == seed), None)
    if run_ is None or not last_extra(run_):
        raise ValueError(f"no {label!r} run with seed {seed} recording weight norms")
    ex = last_extra(run_)
    base = next((r for r in results if r["method"] == baseline and r["seed"] == seed), None)
    nb, na = np.asarray(ex["norms_before"]), np.asarray(ex["norms_after"])
    old, seen = ex["seen_before"], ex["seen"]
    fig, (ax, ax2) = new_figure(ncols=2, width=11.0, height=3.9, gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(seen)
    colors = np.where(x < old, OLD_COLOR, NEW_COLOR)
    ax.bar(x, nb, width=0.9, color=colors, alpha=0.35)
    ax.bar(x, na, width=0.45, color=colors)
    for lo, hi, c in ((0, old, OLD_COLOR), (old, seen, NEW_COLOR)):
        for arr, ls in ((nb, ":"), (na, "-")):
            ax.hlines(arr[lo:hi].mean(), lo - 0.5, hi - 0.5, colors="0.15", linestyles=ls, linewidth=1.1)
    data: dict[str, Any] = {"label": label, "seed": seed, "old": old, "seen": seen, "norms_before": nb,
                            "norms_after": na, "gamma": ex["gamma"]}
    handles = [Patch(color=OLD_COLOR, label=f"old classes (0–{old - 1})"),
               Patch(color=NEW_COLOR, label=f"last task's classes ({old}–{seen - 1})"),
               Patch(color="0.6", alpha=0.35, label="wide, light: before aligning"),
               Patch(color="0.6", label="narrow, dark: after aligning"),
               Line2D([], [], color="0.15", linestyle=":", label="group mean before"),
               Line2D([], [], color="0.15", label="group mean after")]
    top = max(nb.max(), na.max())
    if base is not None and last_extra(base):
        bn = np.asarray(last_extra(base)["norms_before"])
        ax.step(x, bn, where="mid", color="0.35", linewidth=1.0)
        handles.append(Line2D([], [], color="0.35", label=f"{baseline}, seed {seed} (never aligned)"))
        data["baseline_norms"] = bn
        top = max(top, bn.max())
    ax.set_ylim(0, top * 1.45)
    ax.legend(handles=handles, loc="upper center", ncol=3, fontsize=7)
    ticks = x if seen <= 25 else x[:: max(1, seen // 20)]
    ax.set_xticks(ticks)
    ax.set_xlabel("class label (stream order)")
    ax.set_ylabel("‖W_c‖₂ of the class's FC row")
    gtxt = f"γ = {ex['gamma']:.3f}" if ex["gamma"] is not None else "not aligned"
    ax.set_title(f"FC weight norms after the last task: {label}, seed {seed} ({gtxt})")
    ax.grid(axis="x", visible=False)
    colors_by_arm = arm_colors(results)
    ratios: dict[str, Any] = {}
    for m in _recording_arms(results):
        runs = [r for r in results if r["method"] == m and bias_metrics(r)]
        arr = np.asarray([[e["norm_ratio_before"] for e in r["extras"] if "norm_ratio_before" in e] for r in runs])
        seen_x = [e["seen"] for e in runs[0]["extras"] if "norm_ratio_before" in e]
        color = colors_by_arm[m]
        ax2.plot(seen_x, arr.mean(0), "o-", color=color, label=m)
        if len(arr) > 1:
            ax2.fill_between(seen_x, arr.min(0), arr.max(0), color=color, alpha=0.2, linewidth=0)
        ratios[m] = {"seen": seen_x, "mean": arr.mean(0), "min": arr.min(0), "max": arr.max(0), "n": len(arr)}
    ax2.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    ax2.set_xlabel("classes seen")
    ax2.set_ylabel("mean ‖W_new‖ / mean ‖W_old‖")
    ax2.set_title("Norm ratio after each task, before aligning")
    ax2.legend()
    data["ratios"] = ratios
    data["setting"] = setting
    annotate_setting(fig, setting)
    return fig, jsonable(data)


def plot_new_share(results: list[dict[str, Any]], setting: str):
    """Share of test predictions (all seen classes) that land in the newest task's classes
    after each task: every recording arm as evaluated (solid), the aligning arms also just
    before aligning (dotted), and the true share (mean over seeds, min–max band)."""
    colors_by_arm = arm_colors(results)
    fig, ax = new_figure(width=7.4, height=3.6)
    data: dict[str, Any] = {}
    truth = None
    for m in _recording_arms(results):
        runs = [r for r in results if r["method"] == m and bias_metrics(r)]
        extras = [[e for e in r["extras"] if e["task"] > 0] for r in runs]
        seen_x = [e["seen"] for e in extras[0]]
        truth = (seen_x, [e["true_share"] for e in extras[0]])
        color = colors_by_arm[m]
        aligns = any(e["gamma"] is not None for ex in extras for e in ex)
        after = np.asarray([[e["share_after"] for e in ex] for ex in extras])
        ax.plot(seen_x, after.mean(0), "o-", color=color, label=m + (" (after aligning)" if aligns else ""))
        if len(after) > 1:
            ax.fill_between(seen_x, after.min(0), after.max(0), color=color, alpha=0.2, linewidth=0)
        d = {"seen": seen_x, "after": after.mean(0)}
        if aligns:
            before = np.asarray([[e["share_before"] for e in ex] for ex in extras])
            ax.plot(seen_x, before.mean(0), "s:", color=color, alpha=0.8, label=f"{m} before aligning")
            d["before"] = before.mean(0)
        data[m] = d
    if truth is not None:
        ax.plot(truth[0], truth[1], "k--", linewidth=1.0, label="true share")
        data["true_share"] = {"seen": truth[0], "share": truth[1]}
        ax.set_xticks(truth[0])
    ax.set_ylim(0, 100)
    ax.set_xlabel("classes seen")
    ax.set_ylabel("predictions in the newest task's classes (%)")
    ax.set_title("Bias toward the new classes (test images of all seen classes)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    data["setting"] = setting
    annotate_setting(fig, setting)
    return fig, jsonable(data)
