"""Chapter 29, Astroformer (R. Dagli, "Astroformer: More Data Might not be all you need for
Classification", ICLR 2023 workshop, arXiv 2304.05350): a CoAtNet-style hybrid whose stack is
C-C-C-T (three MBConv stages, one transformer stage) instead of CoAtNet's C-C-T-T, claimed to
suit the low-data regime better.

Both stacks are timm's ``MaxxVit`` with the same widths, depths, stem and head
(``repro.models.maxxvit_cifar``: ``astroformer_*`` / ``coatnet_*``), so only the block type of
stage 2 differs. A ResNet of the same stage layout is the CNN baseline: ``resnet8`` (one
BasicBlock per stage) given the hybrid's stem and stage widths, so its four stages run at the
same widths and map sizes as the hybrids' (:func:`resnet_filters`).

Every stack trains at two training-set sizes cut from the same classes and seed by
``protocol.data_subset``: ``full`` (the tier's ``per_class``, 0 = all 500) and ``low``
(``low_fraction`` of it, the card's 20 %). The low-data runs take the **same number of
optimiser steps** as the full-data runs (the card: "runs on a 20% subset use the same number
of steps"): their epochs and warm-up epochs are scaled by the ratio of steps per epoch
(:func:`equal_steps`), so a low-data network sees every image about five times as often,
not five times fewer updates.

Arms (:func:`arm_configs`), labelled ``<stack>_<size>``: ``ccct_low``, ``cctt_low``,
``ccct_full``, ``cctt_full``, then ``resnet_low``, ``resnet_full`` (if ``params["resnet"]``),
in the card's priority order. Every arm of a seed shares the seed (initial weights of its
network, batch order); the two sizes of a stack differ in data and schedule length.

The chapter's derived metric is the growth of the stack gap as data shrinks,
``gap_growth = (ccct_low − cctt_low) − (ccct_full − cctt_full)`` per seed
(:func:`gap_growth`), with its test-set sampling variance: all four networks are scored on the
same test images, so the variance is that of the per-image difference of differences
(:func:`correct_by_job`), or, without per-image results, the sum of the four binomial variances
(wider: it ignores the correlation).

Precision on the CPU: every arm keeps the family's fp32 (``cpu_bf16`` False). Interleaved
benchmark, one thread, 16 px, batch 128, images per CPU-second (medians of 4 rounds): training
``astroformer_micro`` 779 fp32 against 473 bf16, ``coatnet_micro`` 985 against 751 (the width-
matched ResNet 2 929 against 4 362); bf16 is faster only in evaluation at batch 1 000 (about
4 200 against 1 200 for the hybrids), which narrows the gap over a whole cpu-tier job but does
not reverse it beyond the benchmark's noise. All arms must share one precision.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from ... import models
from ...errors import ParameterError
from ...flops import count_params
from ...models import maxxvit_cifar  # noqa: F401  (registers astroformer_* / coatnet_*)
from ...models.maxxvit_cifar import MaxxVitCifar
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import JobFn, SweepResult
from ...tables import markdown_table
from ...train import predict
from ...verdicts import binomial_var
from . import protocol
from .protocol import ArchConfig, arch_config

STACKS = ("ccct", "cctt", "resnet")
HYBRIDS = ("ccct", "cctt")
DATA_SIZES = ("low", "full")
MODEL_SIZES = ("micro", "tiny")
TITLES = {"ccct": "C-C-C-T", "cctt": "C-C-T-T", "resnet": "ResNet"}
LONG_TITLES = {"ccct": "C-C-C-T (Astroformer)", "cctt": "C-C-T-T (CoAtNet)",
               "resnet": "ResNet, width-matched"}
#: the row "arm" that carries the difference of differences (a contrast, not a network)
CONTRAST = "ccct_vs_cctt"
GROWTH = "gap_growth"
CIFAR_PER_CLASS = 500


def label(stack: str, size: str) -> str:
    """The arm label of ``stack`` trained at data size ``size`` (``ccct_low``…)."""
    return f"{stack}_{size}"


def hybrid_model(stack: str, model_size: str) -> str:
    """The registered hybrid of one stack and size (``astroformer_micro``…)."""
    if stack not in HYBRIDS:
        raise ParameterError(f"unknown hybrid stack {stack!r}; stacks: {', '.join(HYBRIDS)}")
    if model_size not in MODEL_SIZES:
        raise ParameterError(f"unknown model size {model_size!r}; sizes: {', '.join(MODEL_SIZES)}")
    return f"{'astroformer' if stack == 'ccct' else 'coatnet'}_{model_size}"


# -- data sizes and the equal-steps schedule ---------------------------------------------------
def per_class_sizes(params: Mapping[str, Any]) -> dict[str, int]:
    """Training images per class at each data size: ``full`` = ``per_class`` (0 = all 500),
    ``low`` = round(``low_fraction`` · full), at least 1."""
    frac = float(params["low_fraction"])
    if not 0 < frac < 1:
        raise ParameterError(f"low_fraction must be in (0, 1), got {frac}")
    full = int(params["per_class"]) or CIFAR_PER_CLASS
    if not 1 <= full <= CIFAR_PER_CLASS:
        raise ParameterError(f"per_class must be in 0..{CIFAR_PER_CLASS}, got {params['per_class']}")
    return {"low": max(1, round(frac * full)), "full": full}


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimiser steps in one epoch over ``n_images``, as the training loader counts them
    (``repro.data.TensorLoader``: the last partial batch is dropped, unless the set is smaller
    than one batch, which then is one step)."""
    if n_images < 1 or batch_size < 1:
        raise ParameterError(f"need ≥ 1 image and batch size, got {n_images} and {batch_size}")
    return n_images // batch_size if n_images >= batch_size else 1


def equal_steps(epochs: int, warmup_epochs: float, spe_full: int, spe_low: int) -> dict[str, Any]:
    """The low-data schedule with the full-data run's number of optimiser steps.

    ``epochs_low = round(epochs · spe_full / spe_low)`` (at least 1; exact when the ratio of
    steps per epoch is whole) and ``warmup_low = warmup_epochs · spe_full / spe_low`` (the same
    warm-up steps). Returns both and the steps of each run (``steps_full``, ``steps_low``)."""
    ratio = spe_full / spe_low
    e_low = max(1, round(epochs * ratio))
    return {"epochs_low": e_low, "warmup_low": float(warmup_epochs) * ratio, "ratio": ratio,
            "steps_full": epochs * spe_full, "steps_low": e_low * spe_low}


def schedule(params: Mapping[str, Any]) -> dict[str, Any]:
    """Per data size: images per class, training images, steps per epoch, epochs, warm-up
    epochs and total steps (:func:`equal_steps`)."""
    per = per_class_sizes(params)
    classes, batch = int(params["classes"]), int(params["batch_size"])
    n = {s: classes * per[s] for s in DATA_SIZES}
    spe = {s: steps_per_epoch(n[s], batch) for s in DATA_SIZES}
    eq = equal_steps(int(params["epochs"]), float(params["warmup_epochs"]), spe["full"], spe["low"])
    return {"full": {"per_class": per["full"], "images": n["full"], "steps_per_epoch": spe["full"],
                     "epochs": int(params["epochs"]), "warmup_epochs": float(params["warmup_epochs"]),
                     "steps": eq["steps_full"]},
            "low": {"per_class": per["low"], "images": n["low"], "steps_per_epoch": spe["low"],
                    "epochs": eq["epochs_low"], "warmup_epochs": eq["warmup_low"], "steps": eq["steps_low"]}}


# -- networks -----------------------------------------------------------------------------------
@torch.no_grad()
def stage_shapes(net: nn.Module, image_size: int) -> dict[str, Any]:
    """Output ``(channels, side)`` of the stem and of every stage for one ``image_size`` input
    (one forward pass in eval mode; the training flag is restored)."""
    was = net.training
    net.eval()
    try:
        x = net.stem(torch.zeros(1, 3, image_size, image_size))
        stem = (int(x.shape[1]), int(x.shape[-1]))
        stages = []
        for st in net.stages:
            x = st(x)
            stages.append((int(x.shape[1]), int(x.shape[-1])))
    finally:
        net.train(was)
    return {"stem": stem, "stages": stages}


def resnet_filters(model_size: str, image_size: int, num_classes: int) -> list[int]:
    """``resnet8``'s ``num_filters`` (stem, then the four stage widths) of the hybrids of one
    size: resnet8 has one BasicBlock per stage and halves the map from stage 1 on, so with
    these widths its stages run at the hybrids' widths and map sizes."""
    net = models.create(hybrid_model("ccct", model_size), num_classes=num_classes, img_size=image_size)
    sh = stage_shapes(net, image_size)
    return [sh["stem"][0], *(c for c, _ in sh["stages"])]


def _network(stack: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    size = params["model_size"]
    if stack == "resnet":
        return "resnet8", {"num_filters": resnet_filters(size, int(params["image_size"]), int(params["classes"]))}
    return hybrid_model(stack, size), {}


def stacks(params: Mapping[str, Any]) -> list[str]:
    """The stacks a run trains: both hybrids, and the ResNet if ``params["resnet"]``."""
    return [*HYBRIDS, "resnet"] if params["resnet"] else list(HYBRIDS)


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``label → ("standard", config)`` for every stack at both data sizes, in the card's
    priority order (the hybrids at low data, at full data, then the ResNet). The low-data
    configs have the full-data run's steps (:func:`schedule`); everything else is the
    family's recipe. A bad ``model_size`` or ``low_fraction`` → ParameterError."""
    sched = schedule(params)
    order = [(s, d) for d in DATA_SIZES for s in HYBRIDS]
    if params["resnet"]:
        order += [("resnet", d) for d in DATA_SIZES]
    out: dict[str, tuple[str, ArchConfig]] = {}
    nets = {s: _network(s, params) for s in stacks(params)}
    for stack, size in order:
        model, kw = nets[stack]
        pct = round(100 * sched[size]["per_class"] / sched["full"]["per_class"])
        out[label(stack, size)] = ("standard", arch_config(
            params, model, title=f"{TITLES[stack]} · {pct}%", model_kw=dict(kw),
            epochs=sched[size]["epochs"], warmup_epochs=sched[size]["warmup_epochs"]))
    return out


def jobs(arms: Mapping[str, tuple[str, ArchConfig]], data: Mapping[str, Any], device: Any = "cpu",
         run: Any = None) -> dict[str, JobFn]:
    """``protocol.jobs`` per data size (``data``: ``"low"``/``"full"`` → dataset), merged in
    the order of ``arms``. The two datasets must share their test set (same classes and
    seed): the claims compare the sizes on the same test images."""
    missing = [s for s in DATA_SIZES if s not in data]
    if missing:
        raise ParameterError(f"no dataset for size(s) {', '.join(missing)}")
    a, b = data["low"], data["full"]
    if not (torch.equal(a.y_test, b.y_test) and torch.equal(a.x_test, b.x_test)):
        raise ParameterError("the low- and full-data sets have different test sets (classes or data_seed differ)")
    out: dict[str, JobFn] = {}
    for size in DATA_SIZES:
        part = {k: v for k, v in arms.items() if k.endswith("_" + size)}
        out.update(protocol.jobs(part, data[size], device, run))
    return {k: out[k] for k in arms}


# -- structure ----------------------------------------------------------------------------------
_BLOCK_NAMES = {"MbConvBlock": "MBConv", "TransformerBlock2d": "Transformer", "BasicBlock": "BasicBlock"}


def structure(net: nn.Module, image_size: int) -> list[dict[str, Any]]:
    """Per part (stem, each stage, head: pooling, norm and classifier): its block types, output
    channels and map side, tokens of a transformer stage, and parameters (they add up to the
    network's)."""
    sh = stage_shapes(net, image_size)
    rows = [{"part": "stem", "blocks": "conv", "count": 1, "channels": sh["stem"][0], "side": sh["stem"][1],
             "params": count_params(net.stem)}]
    for i, (st, (c, side)) in enumerate(zip(net.stages, sh["stages"])):
        blocks = list(getattr(st, "blocks", st))
        names = sorted({_BLOCK_NAMES.get(type(b).__name__, type(b).__name__) for b in blocks})
        rows.append({"part": f"stage {i}", "blocks": "+".join(names), "count": len(blocks), "channels": c,
                     "side": side, "tokens": side * side if "Transformer" in names else None,
                     "params": count_params(st)})
    used = sum(r["params"] for r in rows)
    rows.append({"part": "head", "blocks": "pool+FC", "count": 1, "channels": None, "side": 1,
                 "params": count_params(net) - used})
    return rows


def networks(arms: Mapping[str, tuple[str, ArchConfig]], image_size: int, num_classes: int) -> dict[str, nn.Module]:
    """One untrained network per stack (from its full-data arm), for the structure figure."""
    out = {}
    for stack in STACKS:
        key = label(stack, "full")
        if key in arms:
            out[stack] = protocol.build_model(arms[key][1], num_classes, image_size, 0)
    return out


def structure_table(nets: Mapping[str, nn.Module], image_size: int) -> str:
    """Markdown: per network and stage, the blocks, width, map side (tokens of attention)
    and parameters."""
    rows = []
    for stack, net in nets.items():
        total = count_params(net)
        for r in structure(net, image_size):
            kind = r["blocks"] if r["part"] in ("stem", "head") else f"{r['count']} × {r['blocks']}"
            side = "—" if r["part"] == "head" else f"{r['side']}×{r['side']}" + (
                f" ({r['tokens']} tokens)" if r.get("tokens") else "")
            rows.append([LONG_TITLES[stack] if r["part"] == "stem" else "", r["part"], kind,
                         "—" if r["channels"] is None else r["channels"], side,
                         f"{r['params'] / 1e3:,.1f} k", f"{100 * r['params'] / total:.0f} %"])
        rows.append(["", "**total**", "", "", "", f"**{total / 1e3:,.1f} k**", ""])
    return markdown_table(["network", "part", "blocks", "width", "output map", "params", "share"], rows,
                          "lllrlrr")


_KIND_COLOR = {"conv": "0.85", "MBConv": "#56B4E9", "Transformer": "#E69F00", "BasicBlock": "#B0B0B0",
               "pool+FC": "0.85"}


def structure_figure(nets: Mapping[str, nn.Module], image_size: int, setting: str) -> tuple[Figure, dict]:
    """One row per network: stem, the four stages and the head as boxes coloured by block
    type (MBConv blue, transformer orange, BasicBlock grey), each with its blocks, output map
    (tokens for attention) and parameters."""
    names = list(nets)
    fig, axes = new_figure(nrows=len(names), width=7.2, height=1.3 * len(names) + 0.55, squeeze=False)
    data: dict[str, Any] = {}
    for i, stack in enumerate(names):
        ax = axes[i][0]
        rows = structure(nets[stack], image_size)
        data[stack] = rows
        ax.set_xlim(0, len(rows))
        ax.set_ylim(0, 1)
        ax.axis("off")
        ax.set_title(f"{LONG_TITLES[stack]}: {count_params(nets[stack]) / 1e3:,.0f} k parameters", fontsize=9,
                     loc="left")
        for j, r in enumerate(rows):
            ax.add_patch(FancyBboxPatch((j + 0.04, 0.03), 0.92, 0.94, boxstyle="round,pad=0.0,rounding_size=0.06",
                                        facecolor=_KIND_COLOR.get(r["blocks"], "0.85"), edgecolor="0.3",
                                        linewidth=0.8))
            if r["part"] == "stem":
                convs = sum(isinstance(m, nn.Conv2d) for m in nets[stack].stem.modules())
                lines = ["stem", f"{convs}× 3×3 conv", f"{r['side']}×{r['side']}, {r['channels']} ch"]
            elif r["part"] == "head":
                mlp = isinstance(nets[stack], MaxxVitCifar) and not isinstance(nets[stack].pre_logits, nn.Identity)
                lines = ["head", "pool, norm," if mlp else "pool, FC", "FC-tanh, FC" if mlp else ""]
            else:
                lines = [r["part"], f"{r['count']}× {r['blocks']}", f"{r['side']}×{r['side']}, {r['channels']} ch"]
            lines.append(f"{r['params'] / 1e3:,.1f} k")
            for k, (y, text) in enumerate(zip((0.8, 0.6, 0.4, 0.18), lines)):
                ax.text(j + 0.5, y, text, ha="center", va="center", fontsize=8,
                        color="0.25" if k == 3 else "black", fontweight="bold" if k == 0 else "normal")
            if j:
                ax.annotate("", xy=(j + 0.04, 0.5), xytext=(j - 0.04, 0.5),
                            arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8})
    annotate_setting(fig, setting)
    return fig, jsonable({"image_size": image_size, "parts": data, "setting": setting})


# -- results ------------------------------------------------------------------------------------
@torch.no_grad()
def correct_by_job(result: SweepResult, arms: Mapping[str, tuple[str, ArchConfig]], data: Any,
                 device: Any = "cpu") -> dict[tuple[str, int], torch.Tensor]:
    """``(arm, seed) → bool per test image`` (correct top-1) for every job that kept its model,
    evaluated in the precision its training evaluated in (so the mean is its ``top1``)."""
    loader = data.loader("test", 1000, device)
    out = {}
    for j in result.jobs:
        model = j.get("model")
        if model is None or j["arm"] not in arms:
            continue
        bf16 = protocol.train_config(arms[j["arm"]][1], device).bf16
        logits, y = predict(model, loader, bf16)
        out[(j["arm"], j["seed"])] = logits.argmax(1) == y
    return out


def gap_growth(result: SweepResult, correct: Mapping[tuple[str, int], torch.Tensor] | None = None,
               a: str = "ccct", b: str = "cctt") -> dict[int, dict[str, float]]:
    """Per seed with all four jobs: ``value`` = (a_low − b_low) − (a_full − b_full) in top-1
    points, ``n_test`` and ``test_var``, the test-set sampling variance of ``value``.

    With ``correct`` (:func:`correct_by_job`) for the four jobs of a seed, ``test_var`` is the
    variance of the per-image difference of differences over the N test images, divided by
    N (paired: the four networks are scored on the same images). Without it, the sum of the
    four binomial variances (independent test sets: wider)."""
    labels = [label(a, "low"), label(b, "low"), label(a, "full"), label(b, "full")]
    signs = (1.0, -1.0, -1.0, 1.0)
    tops = [result.per_seed("top1", x) for x in labels]
    n_test = {j["seed"]: j.get("n_test", 0) for j in result.jobs if j["arm"] == labels[0]}
    out = {}
    for seed in sorted(set.intersection(*(set(t) for t in tops))):
        value = sum(s * t[seed] for s, t in zip(signs, tops))
        keys = [(x, seed) for x in labels]
        if correct is not None and all(k in correct for k in keys):
            d = sum(s * 100.0 * correct[k].double() for s, k in zip(signs, keys))
            n = int(d.numel())
            var = float(d.var(unbiased=True)) / n if n > 1 else 0.0
        else:
            n = int(n_test.get(seed, 0))
            var = sum(binomial_var(t[seed], n) for t in tops)
        out[seed] = {"value": float(value), "n_test": n, "test_var": var}
    return out


def metrics_by_seed(result: SweepResult) -> dict[int, dict[str, float]]:
    """Per seed, not judged: the ResNet gap ``ccct_minus_resnet_low`` / ``_full`` and its
    growth ``gap_growth_resnet`` (low minus full), where the ResNet was trained."""
    out: dict[int, dict[str, float]] = {}
    for size in DATA_SIZES:
        for seed, v in result.paired("top1", label("ccct", size), label("resnet", size)).items():
            out.setdefault(seed, {})[f"ccct_minus_resnet_{size}"] = v
    for seed, v in out.items():
        if len(v) == 2:
            v["gap_growth_resnet"] = v["ccct_minus_resnet_low"] - v["ccct_minus_resnet_full"]
    return out


def size_curve(result: SweepResult, sched: Mapping[str, Mapping[str, Any]], setting: str) -> tuple[Figure, dict]:
    """Left: test top-1 against training images per class, one line per stack (mean over
    seeds, dots per seed). Right: C-C-C-T minus C-C-T-T per seed at each size (thin lines join
    a seed's two sizes; the thick line is the mean): a line falling to the right is a gap that
    grows as data shrinks."""
    fig, axes = new_figure(ncols=2, width=7.2, height=3.2)
    xs = {s: sched[s]["per_class"] for s in DATA_SIZES}
    order = ["low", "full"]
    data: dict[str, Any] = {"per_class": xs, "top1": {}, "gap": {}}
    ax = axes[0]
    for i, stack in enumerate(STACKS):
        per = {s: result.per_seed("top1", label(stack, s)) for s in order}
        if not all(per.values()):
            continue
        means = [float(np.mean(list(per[s].values()))) for s in order]
        for s in order:
            ax.scatter([xs[s]] * len(per[s]), list(per[s].values()), color=f"C{i}", alpha=0.45, s=14)
        ax.plot([xs[s] for s in order], means, color=f"C{i}", marker="o", label=LONG_TITLES[stack])
        data["top1"][stack] = {s: per[s] for s in order}
    ax.set_xscale("log")
    ax.set_xticks([xs[s] for s in order], [f"{xs[s]}" for s in order])
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(loc="best")
    ax = axes[1]
    gaps = {s: result.paired("top1", label("ccct", s), label("cctt", s)) for s in order}
    seeds = sorted(set(gaps["low"]) & set(gaps["full"]))
    for seed in seeds:
        ax.plot([xs[s] for s in order], [gaps[s][seed] for s in order], color="0.6", linewidth=0.9, marker=".")
    if seeds:
        ax.plot([xs[s] for s in order], [float(np.mean([gaps[s][k] for k in seeds])) for s in order], color="C0",
                linewidth=2.2, marker="o", label=f"mean of {len(seeds)} seeds")
        ax.legend(loc="best")
    ax.axhline(0, color="0.3", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xticks([xs[s] for s in order], [f"{xs[s]}" for s in order])
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log)")
    ax.set_ylabel("C-C-C-T − C-C-T-T (points)")
    data["gap"] = {s: gaps[s] for s in order}
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting})


def schedule_table(sched: Mapping[str, Mapping[str, Any]], data: Mapping[str, Any], batch_size: int) -> str:
    """Markdown: per data size the images, epochs, warm-up and optimiser steps, the steps
    counted from the actual training loader."""
    rows = []
    for s in ("full", "low"):
        n = len(data[s].y_train)
        spe = len(data[s].loader("train", batch_size))
        if n != sched[s]["images"] or spe != sched[s]["steps_per_epoch"]:
            raise ParameterError(f"{s}: the data has {n} images and {spe} steps per epoch, the schedule "
                                 f"assumed {sched[s]['images']} and {sched[s]['steps_per_epoch']}")
        rows.append([s, f"{sched[s]['per_class']} × {data[s].num_classes} = {n:,}", spe, sched[s]["epochs"],
                     f"{sched[s]['warmup_epochs']:g}", f"{spe * sched[s]['epochs']:,}"])
    return markdown_table(["data size", "train images", "steps / epoch", "epochs", "warm-up epochs",
                           "optimiser steps"], rows, "lrrrrr")



def cost_scatter(result: SweepResult, setting: str, metric: str = "top1") -> tuple[Figure, dict]:
    """Top-1 against parameters (left) and forward MFLOPs per image (right): one colour per
    network, a filled marker for the full set and an open one for the subset, at the mean over
    seeds with min–max bars (the family's ``figures.cost_scatter``, grouped by network)."""
    fig, axes = new_figure(ncols=2, width=7.2, height=3.3, sharey=True)
    points = []
    for i, stack in enumerate(STACKS):
        for size in DATA_SIZES:
            arm = label(stack, size)
            acc = list(result.per_seed(metric, arm).values())
            if not acc:
                continue
            m, lo, hi = float(np.mean(acc)), float(np.min(acc)), float(np.max(acc))
            p = float(np.mean(list(result.per_seed("params", arm).values())))
            f = float(np.mean(list(result.per_seed("mflops", arm).values())))
            title = result.of(arm)[0]["extra"].get("title", arm)
            points.append({"arm": arm, "title": title, "params": p, "mflops": f, "mean": m, "min": lo, "max": hi,
                           "per_seed": acc})
            style = {"color": f"C{i}", "marker": "o" if size == "full" else "s", "markersize": 6, "capsize": 3,
                     "markerfacecolor": f"C{i}" if size == "full" else "white", "linestyle": "none"}
            for ax, x in zip(axes, (p / 1e3, f)):
                ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], label=title, **style)
    axes[0].set_xlabel("parameters (thousands)")
    axes[1].set_xlabel("forward MFLOPs per image")
    axes[0].set_ylabel("test top-1 (%)")
    if points:
        axes[0].legend(loc="best", ncol=1)
    annotate_setting(fig, setting)
    return fig, jsonable({"metric": metric, "points": points, "setting": setting, "bars": "min-max over seeds",
                          "markers": "filled: full set; open: subset"})
