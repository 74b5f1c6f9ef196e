"""Chapter 21, CUDA (Sadasivan, Soltanolkotabi & Feizi, "CUDA: Convolution-based Unlearnable
Datasets", CVPR 2023): class-wise random 3×3 filters applied to the training images make a
dataset unlearnable.

Arms (:func:`arm_configs`), all the family's ``standard`` arm under one recipe, and all tested on
the same clean test images:

* ``clean`` — standard training (ERM) on the clean training set;
* ``cuda`` — ERM on the CUDA training set (every image filtered, ``mix`` = 1);
* ``cuda_mixNN`` — ERM with NN % of the training images filtered, one arm per partial
  fraction in ``params["fractions"]``;
* ``clean_partNN`` — the control of each partial arm: ERM on only the (100 − NN) % of the
  training images that arm leaves clean (do the filtered images hurt, or merely not help?);
* ``clean_at`` / ``cuda_at`` — adversarial training (the protocol's ``at_*`` recipe) on the
  clean and on the CUDA training set, for ``at_epochs`` epochs (0: ``epochs``).

The poison (``repro.data.poison``) is a pure function of the private ``key``: every seed trains
on the same poisoned set. ``clean``, ``cuda`` and the two AT arms are also evaluated under PGD
at ``eval_eps`` on a fixed subset of the clean test set, with the family's sanity checks
(:mod:`.evaluate`): :func:`guards` uses those numbers to make sure adversarial training did
produce robustness before the AT claims are judged.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ...data.poison import CudaPoison, apply_filters, cuda_filters
from ...errors import ParameterError
from ...plots import image_grid
from ...plots.style import COLORS, annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from .attacks import AttackSpec
from .evaluate import EvalConfig
from .protocol import RobustConfig, adv_config, robust_config
from .figures import spread
from .tables import count, hardening_flag, sanity_flags, seed_mean
from .tables import sanity_table as _sanity_table

#: The poisoned fraction whose claim the chapter judges (``cuda_mix50`` against ``clean``).
CLAIMED_FRACTION = 0.5
#: Arms evaluated under attack (the AT comparison and its ERM references).
EVALUATED = ("clean", "cuda", "clean_at", "cuda_at")
#: Arms trained adversarially; a claim resting on one is guarded by :func:`guards`.
ADVERSARIAL = ("clean_at", "cuda_at")


def pct(fraction: float) -> int:
    """A fraction as the whole percent its arm label carries (0.5 → 50)."""
    return int(round(100 * float(fraction)))


def mix_label(fraction: float) -> str:
    return f"cuda_mix{pct(fraction)}"


def part_label(fraction: float) -> str:
    return f"clean_part{pct(fraction)}"


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The partial poison fractions, each strictly between 0 and 1, distinct in whole percent,
    and containing the claimed 0.5 (ParameterError otherwise)."""
    out = [float(f) for f in fractions]
    bad = [f for f in out if not 0.0 < f < 1.0]
    if bad:
        raise ParameterError(f"fractions are the partial poison fractions, each in (0, 1) (0 is the clean arm, "
                             f"1 the CUDA arm): got {bad}")
    labels = [pct(f) for f in out]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"fractions {out} repeat at whole-percent resolution (the arm labels)")
    if pct(CLAIMED_FRACTION) not in labels:
        raise ParameterError(f"fractions must include {CLAIMED_FRACTION} (the poison-fraction claim is judged there), "
                             f"got {out}")
    return sorted(out)


def poison(params: Mapping[str, Any], mix: float = 1.0) -> CudaPoison:
    """The chapter's CUDA poison (``key``, ``blur``) at fraction ``mix``."""
    return CudaPoison(key=int(params["key"]), blur=float(params["blur"]), mix=float(mix))


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """PGD at ``eval_eps`` (``attack_steps`` steps) on ``eval_images`` clean test images, with
    the sanity checks (Square with ``square_queries`` queries)."""
    spec = AttackSpec("pgd", norm="Linf", eps=float(params["eval_eps"]), steps=int(params["attack_steps"]),
                      seed=int(params["eval_seed"]))
    return EvalConfig(attacks=(spec,), images=int(params["eval_images"]), seed=int(params["eval_seed"]),
                      square_queries=int(params["square_queries"]))


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """``label → ("standard", config)`` for every arm of the chapter (module docstring), in the
    order they train. Every setting is checked here (ParameterError before any work)."""
    fractions = check_fractions(params["fractions"])
    ev = eval_config(params)
    at = adv_config(params)
    at_epochs = int(params["at_epochs"]) or int(params["epochs"])
    if at_epochs < 0:
        raise ParameterError(f"at_epochs must be ≥ 0 (0: epochs), got {at_epochs}")
    full = poison(params, 1.0)
    arms: dict[str, tuple[str, RobustConfig]] = {
        "clean": ("standard", robust_config(params, "clean (ERM)", eval=ev)),
        "cuda": ("standard", robust_config(params, "CUDA (ERM)", poison=full, eval=ev)),
    }
    for f in fractions:
        arms[mix_label(f)] = ("standard", robust_config(params, f"CUDA {pct(f)}% (ERM)", poison=poison(params, f)))
        arms[part_label(f)] = ("standard", robust_config(params, f"clean {100 - pct(f)}% only (ERM)",
                                                         poison=poison(params, f), train_on="unpoisoned"))
    arms["clean_at"] = ("standard", robust_config(params, "clean (AT)", adv=at, epochs=at_epochs, eval=ev))
    arms["cuda_at"] = ("standard", robust_config(params, "CUDA (AT)", adv=at, poison=full, epochs=at_epochs, eval=ev))
    return arms


# -- the poison itself, for the figures ----------------------------------------------------------------------
def class_examples(data: Any, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training image of each of the first ``classes`` classes: (uint8 images, labels)."""
    k = min(classes, data.num_classes)
    idx = [int((data.y_train == c).nonzero()[0]) for c in range(k) if bool((data.y_train == c).any())]
    sel = torch.as_tensor(idx, dtype=torch.long)
    return data.x_train[sel], data.y_train[sel]


def example_rows(data: Any, cfg: CudaPoison, classes: int = 7) -> tuple[list[torch.Tensor], list[str]]:
    """Rows for ``repro.plots.image_grid``: clean images (one per class), their CUDA versions
    and the difference CUDA − clean rescaled to [0, 255] per image; and the class names."""
    x, y = class_examples(data, classes)
    filters = cuda_filters(data.num_classes, cfg.key, cfg.blur, cfg.kernel)
    poisoned = apply_filters(x, y, filters)
    d = poisoned.float() - x.float()
    lo = d.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = d.flatten(1).amax(1).view(-1, 1, 1, 1)
    diff = ((d - lo) / (hi - lo).clamp_min(1e-6) * 255).round().clamp(0, 255).to(torch.uint8)
    names = [data.class_names[int(c)] for c in y]
    return [x, diff, poisoned], names


def poison_grid(data: Any, cfg: CudaPoison, setting: str, classes: int = 7) -> tuple[Figure, dict]:
    """Clean image, rescaled difference and CUDA image for the first ``classes`` classes."""
    rows, names = example_rows(data, cfg, classes)
    short = [n.replace("_", " ")[:9] for n in names]
    fig, fig_data = image_grid(rows, ["clean", "difference\n(rescaled)", "CUDA"], short, setting=setting)
    fig_data.update(classes=names, poison=cfg.as_record())
    return fig, fig_data


def filter_spectra(cfg: CudaPoison, class_names: Sequence[str], image_size: int, setting: str,
                   classes: int = 3) -> tuple[Figure, dict]:
    """The first ``classes`` (≤ 3) class filters (top: taps, written in) and the magnitude of
    their 2-D DFT at the image size (bottom, zero frequency in the centre, divided by the
    value at zero frequency): the filter multiplies each image's spectrum by this pattern."""
    k = max(1, min(classes, 3, len(class_names)))
    filters = cuda_filters(k, cfg.key, cfg.blur, cfg.kernel).numpy()
    fig, axes = new_figure(ncols=k, nrows=2, width=2.1 * k + 0.9, height=4.7, squeeze=False)
    spectra = []
    for j in range(k):
        w = filters[j]
        ax = axes[0][j]
        im = ax.imshow(w, cmap="viridis", vmin=0, vmax=1)
        for (a, b), v in np.ndenumerate(w):
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
        ax.set_title(str(class_names[j]).replace("_", " "), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        pad = np.zeros((image_size, image_size))
        pad[:w.shape[0], :w.shape[1]] = w
        mag = np.abs(np.fft.fftshift(np.fft.fft2(pad)))
        mag = mag / mag[image_size // 2, image_size // 2]
        spectra.append(mag)
        ax2 = axes[1][j]
        im2 = ax2.imshow(mag, cmap="magma", vmin=0, vmax=1, extent=(-0.5, 0.5, -0.5, 0.5))
        ax2.set_xticks([-0.5, 0, 0.5])
        ax2.set_yticks([-0.5, 0, 0.5])
        ax2.grid(False)
        ax2.set_xlabel("frequency (cycles/px)")
        if j == 0:
            ax2.set_ylabel("frequency")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="tap")
    fig.colorbar(im2, ax=axes[1].tolist(), shrink=0.8, label="|DFT| / DC")
    annotate_setting(fig, setting)
    return fig, jsonable({"filters": filters.tolist(), "classes": list(class_names[:k]), "image_size": image_size,
                          "spectra_abs_over_dc": [s.tolist() for s in spectra], "poison": cfg.as_record(),
                          "setting": setting})


# -- results ------------------------------------------------------------------------------------------------
def _title(result: SweepResult, arm: str) -> str:
    jobs = result.of(arm)
    return (jobs[0]["extra"].get("title") or arm) if jobs else arm


def _curve(result: SweepResult, arm: str, key: str) -> dict[str, Any] | None:
    """Mean and min–max over seeds of a history key per epoch (epochs every seed has)."""
    runs = [j["extra"]["history"] for j in result.of(arm)]
    if not runs:
        return None
    epochs = sorted(set.intersection(*[{int(r["epoch"]) for r in h if key in r} for h in runs]))
    if not epochs:
        return None
    vals = np.array([[next(r[key] for r in h if int(r["epoch"]) == e) for e in epochs] for h in runs], dtype=float)
    return {"epoch": epochs, "mean": vals.mean(0).tolist(), "min": vals.min(0).tolist(), "max": vals.max(0).tolist(),
            "n": len(runs)}


def arm_colours(arms: Sequence[str]) -> dict[str, str]:
    """One colour per arm, the same for the same training data: clean data blue (ERM and AT),
    CUDA data vermillion (ERM and AT), partial poisons and their controls from the rest."""
    out = {"clean": COLORS[0], "clean_at": COLORS[0], "cuda": COLORS[1], "cuda_at": COLORS[1]}
    rest = [c for c in COLORS if c not in (COLORS[0], COLORS[1])]
    for a in arms:
        if a not in out:
            out[a] = rest[len([k for k in out if k not in ("clean", "clean_at", "cuda", "cuda_at")]) % len(rest)]
    return out


def accuracy_vs_epoch(result: SweepResult, setting: str, chance: float,
                      panels: Mapping[str, Sequence[str]] | None = None) -> tuple[Figure, dict]:
    """Clean-test top-1 (solid: mean over seeds, min–max band) and accuracy on the training
    batches (dashed: poisoned where the set is, adversarial under AT) per epoch, one colour
    per training set (:func:`arm_colours`); one panel per group of arms (default: standard
    training | adversarial training); chance level dotted."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if panels is None:
        erm = [a for a in result.arms() if a not in ADVERSARIAL and not a.startswith("clean_part")]
        panels = {"standard training": erm, "adversarial training": [a for a in ADVERSARIAL if result.of(a)]}
    panels = {k: list(v) for k, v in panels.items() if v}
    fig, axes = new_figure(ncols=len(panels), width=3.6 * len(panels) + 0.3, height=3.6, sharey=True, squeeze=False)
    colour = arm_colours(result.arms())
    data: dict[str, Any] = {}
    for ax, (name, arms) in zip(axes[0], panels.items()):
        data[name] = {}
        for arm in arms:
            test, train = _curve(result, arm, "test_acc"), _curve(result, arm, "train_acc")
            if test is None:
                continue
            c = colour[arm]
            marker = "o" if len(test["epoch"]) <= 3 else None
            label = _title(result, arm) + (f" (n={test['n']})" if test["n"] > 1 else "")
            ax.plot(test["epoch"], test["mean"], color=c, marker=marker, label=label, zorder=3)
            if test["n"] > 1:
                ax.fill_between(test["epoch"], test["min"], test["max"], color=c, alpha=0.2, linewidth=0)
            if train is not None:
                ax.plot(train["epoch"], train["mean"], color=c, marker=marker, markerfacecolor="none",
                        linestyle="--", linewidth=1.1, zorder=2)
            data[name][arm] = {"title": _title(result, arm), "test_acc": test, "train_acc": train}
        ax.axhline(chance, color="0.5", linestyle=":", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.legend(loc="upper left", fontsize=8)
    styles = [Line2D([], [], color="0.3", label="clean test"),
              Line2D([], [], color="0.3", linestyle="--", linewidth=1.1, label="training batches"),
              Line2D([], [], color="0.5", linestyle=":", linewidth=1, label="chance")]
    last = axes[0][-1]
    arm_legend = last.get_legend()
    last.legend(handles=styles, loc="upper right", fontsize=8)
    if arm_legend is not None and len(panels) > 1:
        last.add_artist(arm_legend)
    elif arm_legend is not None:  # one panel: arms and styles in one legend
        last.legend(handles=[*last.get_legend_handles_labels()[0], *styles], loc="upper left", fontsize=8)
    axes[0][0].set_ylabel("accuracy (%)")
    annotate_setting(fig, setting)
    return fig, jsonable({"panels": data, "chance": chance, "band": "min-max over seeds", "setting": setting,
                          "solid": "clean-test top-1", "dashed": "accuracy on the training batches of each epoch "
                          "(augmented; poisoned and/or adversarial where the arm is)"})


def accuracy_vs_fraction(result: SweepResult, fractions: Sequence[float], setting: str,
                         chance: float) -> tuple[Figure, dict]:
    """Clean-test top-1 against the poisoned fraction of the training set (0: ``clean``, 1:
    ``cuda``), mean over seeds with min–max bars and a dot per seed; the controls that train
    only on the images each partial poison leaves clean drawn at the same fractions."""
    fig, ax = new_figure(width=4.8, height=3.4)
    main_x = [0.0, *fractions, 1.0]
    main_arms = ["clean", *[mix_label(f) for f in fractions], "cuda"]
    series: dict[str, Any] = {}
    for name, xs, arms, color, marker, dx in (
            ("all images, a fraction CUDA-filtered", main_x, main_arms, COLORS[1], "o", 0.0),
            ("control: only the unfiltered images", list(fractions), [part_label(f) for f in fractions], COLORS[0], "s", 0.015)):
        pts = []
        for x, arm in zip(xs, arms):
            vals = list(result.per_seed("top1", arm).values())
            if vals:
                pts.append((x, spread(vals), arm))
        if not pts:
            continue
        px = [p[0] + dx for p in pts]
        ax.plot(px, [p[1]["mean"] for p in pts], color=color, marker=marker, label=name, zorder=3)
        for x, s, _ in pts:
            ax.errorbar([x + dx], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]], color=color,
                        capsize=3, linewidth=1, zorder=3)
            ax.scatter([x + dx] * s["n"], s["values"], s=10, color=color, alpha=0.5, linewidths=0, zorder=4)
        series[name] = [{"fraction": x, "arm": a, **s} for x, s, a in pts]
    ax.axhline(chance, color="0.5", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("fraction of training images CUDA-filtered")
    ax.set_ylabel("clean-test top-1 (%)")
    ax.set_xticks(main_x, [f"{x:g}" for x in main_x])
    ax.set_ylim(0, max(ax.get_ylim()[1], 10.0) * 1.3)  # room for the legend above the points
    ax.legend(loc="upper right", fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"series": series, "chance": chance, "bars": "min-max over seeds", "setting": setting})


def clean_vs_robust_points(result: SweepResult, key: str = "pgd") -> list[dict[str, Any]]:
    """Points for the family's ``plot_clean_vs_robust``: per evaluated arm, clean and robust
    accuracy per seed on the evaluation subset."""
    out = []
    for arm in EVALUATED:
        jobs = [j for j in result.of(arm) if f"robust_{key}" in j["metrics"]]
        if jobs:
            out.append({"label": _title(result, arm), "clean": [j["metrics"]["eval_clean"] for j in jobs],
                        "robust": [j["metrics"][f"robust_{key}"] for j in jobs]})
    return out


def summary_table(result: SweepResult) -> str:
    """One row per arm: training data, adversarial training, images trained on, test top-1 per
    seed (mean), the last epoch's accuracy on the training batches, robust accuracy under PGD
    on the evaluation subset (evaluated arms) and gradient evaluations."""
    rows = []
    for arm in result.arms():
        jobs = result.of(arm)
        cfg = jobs[0]["extra"]["config"]
        poison = jobs[0]["extra"].get("poison")
        if poison is None:
            data = "clean"
        elif poison.get("train_on") == "unpoisoned":
            data = f"clean, {poison['train']} img (the {100 - pct(poison['mix'])}% left unfiltered)"
        else:
            data = f"{pct(poison['mix'])}% CUDA"
        adv = cfg.get("adv")
        at = "—" if not adv else f"{adv['method']}, ε {adv['eps']:g}, {adv['steps']} step{'s' if adv['steps'] > 1 else ''}"
        top = list(result.per_seed("top1", arm).values())
        rob = seed_mean(result, "robust_pgd", arm)
        rows.append([f"`{arm}`", data, at, f"{jobs[0]['extra']['train_images']}",
                     ", ".join(f"{v:.1f}" for v in top) + f" (**{np.mean(top):.1f}**)",
                     f"{seed_mean(result, 'train_acc', arm):.1f}", "—" if rob is None else f"{rob:.1f}",
                     count(seed_mean(result, 'grad_evals', arm))])
    return markdown_table(["arm", "training data", "adversarial training", "train img",
                           "clean-test top-1 per seed (mean)", "train-batch acc.", "robust acc. (PGD)",
                           "grad. evals"], rows, "lllrlrrr")


def sanity_table(result: SweepResult) -> str:
    """The family's sanity table (``tables.sanity_table``) for the evaluated arms."""
    return _sanity_table(result, [a for a in EVALUATED if result.of(a)])


def guards(result: SweepResult, claims: Sequence[Any], z: float = 2.0) -> list[tuple[str, str]]:
    """``(claim key, reason)`` for each claim that rests on an adversarially trained arm
    (:data:`ADVERSARIAL`) whose adversarial training cannot be vouched for: a failed sanity
    check in any evaluated arm (``tables.sanity_flags``), or an AT arm that PGD does not find
    harder to attack than the ERM arm trained on the same data (``tables.hardening_flag``:
    the points of clean accuracy the attack removes must be lower by more than ``z`` binomial
    standard errors). Pass each pair to ``run.flag(reason, claim=key)``: the claim becomes
    inconclusive."""
    reasons = sanity_flags(result, EVALUATED)
    for at_arm, erm_arm in (("clean_at", "clean"), ("cuda_at", "cuda")):
        why = hardening_flag(result, at_arm, erm_arm, z=z)
        if why:
            reasons.append(why)
    if not reasons:
        return []
    why = "; ".join(reasons)
    return [(c.key, why) for c in claims if c.arm in ADVERSARIAL or c.baseline in ADVERSARIAL]
