"""Chapter 12, DAT (Zhang, Steele, Shavit, Wang & Yin, "Joint Discriminative-Generative
Modeling via Dual Adversarial Training", 2025): one network as a robust classifier and an
energy-based generator, trained by L2 adversarial training and then by DAT with BatchNorm
frozen (the method: :mod:`.arms.dat`).

Arms (:func:`arm_configs`), all the family's ``dat`` arm, each evaluated for robustness (L2
PGD at ``eval_eps`` with the family's sanity checks) and for generation (class-conditional
PGD samples judged by an independently trained classifier):

* ``standard`` — standard training (the ``standard`` arm's model, shared);
* ``at`` — stage 1 alone: L2 PGD adversarial training for ``at_epochs`` (shared);
* ``dat`` — ``at`` then ``dat_epochs`` of DAT with BatchNorm frozen (the paper's method);
* ``dat_bn`` — the same with BatchNorm in train mode (the paper's "BN issue");
* ``at_ft`` (``at_continued``) — ``at`` then ``dat_epochs`` of L2 AT alone with DAT's
  stage-2 recipe (frozen BN, lr, Nesterov): the control for the extra training DAT gets.

:func:`guards` flags robustness claims when a sanity check failed or adversarial training
did not make ``at`` more robust than ``standard``, and generation claims when the judge
classifier learned too little to judge samples.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ...arms import make_config
from ...errors import ParameterError
from ...modes import dry_run
from ...plots import image_grid
from ...plots.style import COLORS, annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from .arms import dat as _dat  # noqa: F401  (registers the "dat" arm)
from .arms.dat import DatConfig, EbmConfig, GenConfig, _forward, check_starts, dry_gen, eval_starts, generate
from .attacks import AttackSpec
from .evaluate import EvalConfig
from .protocol import RobustConfig, adv_config, robust_config
from .figures import spread
from . import tables
from .tables import count, fmt, seed_mean

#: Arm labels in training order, and their display names.
TITLES = {"standard": "standard training", "at": "L2 AT (stage 1)", "dat": "AT → DAT (BN frozen)",
          "dat_bn": "AT → DAT (BN train mode)", "at_ft": "AT → AT continued"}
#: Short arm names for bar-chart ticks.
SHORT = {"standard": "standard", "at": "AT", "dat": "DAT\nBN frozen", "dat_bn": "DAT\nBN train", "at_ft": "AT\ncontinued"}
#: Arms whose classifier is adversarially trained (robustness claims rest on them).
ADVERSARIAL = ("at", "dat", "dat_bn", "at_ft")
#: Arms trained by DAT (they have a curriculum).
DAT_ARMS = ("dat", "dat_bn")
#: The robust-accuracy metric of the chapter (the attack's key is ``pgd_l2``).
ROBUST = "robust_pgd_l2"
#: Generation metrics (claims on them are guarded by the judge's accuracy).
GEN_METRICS = ("gen_acc", "gen_fd", "gen_auc", "gen_conf")


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """L2 PGD at ``eval_eps`` (``attack_steps`` steps, step 2.5·ε/steps) on ``eval_images``
    test images, with the sanity checks (Square L2 with ``square_queries`` queries)."""
    spec = AttackSpec("pgd_l2", norm="L2", eps=float(params["eval_eps"]), steps=int(params["attack_steps"]),
                      seed=int(params["eval_seed"]))
    return EvalConfig(attacks=(spec,), images=int(params["eval_images"]), seed=int(params["eval_seed"]),
                      square_queries=int(params["square_queries"]))


def ebm_config(params: Mapping[str, Any]) -> EbmConfig:
    """Stage 2's EBM branch from the chapter's parameters."""
    return EbmConfig(sampling=str(params["sampling"]), step_size=float(params["sample_step"]),
                     t_start=int(params["t_start"]), t_max=int(params["t_max"]), auc_th=float(params["auc_th"]),
                     auc_window=int(params["auc_window"]), bce_weight=float(params["bce_weight"]),
                     starts=tuple(params["ood_starts"]), pool=int(params["ood_pool"]), pool_seed=int(params["data_seed"]))


def gen_config(params: Mapping[str, Any]) -> GenConfig:
    """The generation evaluation from the chapter's parameters."""
    return GenConfig(steps=int(params["gen_steps"]), step_size=float(params["gen_step_size"]),
                     per_class=int(params["gen_per_class"]), starts=tuple(params["ood_starts"]),
                     seed=int(params["eval_seed"]), judge_offset=int(params["judge_offset"]))


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, DatConfig]]:
    """``label → ("dat", DatConfig)`` for every arm (module docstring), in training order.
    Every setting is checked here (ParameterError before any work), the start images'
    availability included."""
    if params["at_norm"] != "L2":
        raise ParameterError(f"this chapter trains L2 adversarial training (the paper's threat model); "
                             f"at_norm must be 'L2', got {params['at_norm']!r}")
    at = adv_config(params, norm=str(params["at_norm"]))
    if at.method != "pgd":
        raise ParameterError(f"the paper's adversarial training is PGD (at_method = 'pgd'), got {at.method!r}")
    at_epochs = int(params["at_epochs"]) or int(params["epochs"])
    dat_epochs = int(params["dat_epochs"])
    if at_epochs < 1 or dat_epochs < 1:
        raise ParameterError(f"at_epochs (0: epochs) and dat_epochs must give ≥ 1 epoch, got {at_epochs}, {dat_epochs}")
    ev, gen, ebm = eval_config(params), gen_config(params), ebm_config(params)
    check_starts(ebm.starts)
    check_start_counts(params, ebm, gen)
    judge = robust_config(params, "judge (standard training, another seed)")
    common = dict(eval=ev, gen=gen, judge=judge)
    stage1 = robust_config(params, TITLES["at"], adv=at, epochs=at_epochs)
    stage2 = dict(init=stage1, adv=at, epochs=dat_epochs, lr=float(params["dat_lr"]), schedule="constant",
                  warmup_epochs=0.0, nesterov=bool(params["dat_nesterov"]), ema_decay=float(params["dat_ema"]),
                  grad_clip=0.0)

    def cfg(label: str, **kw: Any) -> tuple[str, DatConfig]:
        return "dat", make_config(DatConfig, params, title=TITLES[label], **common, **kw)

    arms = {"standard": cfg("standard"), "at": cfg("at", adv=at, epochs=at_epochs),
            "dat": cfg("dat", ebm=ebm, frozen_bn=True, **stage2)}
    arms["dat_bn"] = cfg("dat_bn", ebm=ebm, frozen_bn=False, **stage2)
    if params["at_continued"]:
        arms["at_ft"] = cfg("at_ft", frozen_bn=True, **stage2)
    return arms


def check_start_counts(params: Mapping[str, Any], ebm: EbmConfig, gen: GenConfig) -> None:
    """ParameterError, before any work, when a kind of start image would need more images
    than its source has: blur and shuffle are made from the training split (the pool) or the
    test split (the evaluation), CIFAR-10 gives each of the two half of its 10 000 test images."""
    classes = int(params["classes"])
    sources = {"train": classes * (int(params["per_class"]) or 500), "eval": classes * (int(params["test_per_class"]) or 100)}
    for split, kinds, n in (("train", ebm.starts, ebm.pool), ("eval", gen.starts, classes * gen.per_class)):
        share = math.ceil(n / len(kinds))
        for kind in kinds:
            limit = 5000 if kind == "cifar10" else sources[split] if kind in ("blur", "shuffle") else None
            if limit is not None and share > limit:
                what = "ood_pool" if split == "train" else "gen_per_class × classes"
                raise ParameterError(f"{what} asks for {share} {kind!r} start images; its source has {limit}")


# -- results --------------------------------------------------------------------------------------------------
def _title(result: SweepResult, arm: str) -> str:
    jobs = result.of(arm)
    return (jobs[0]["extra"].get("title") or arm) if jobs else arm


def summary_table(result: SweepResult) -> str:
    """One row per arm, means over seeds: clean-test top-1, clean and L2-PGD accuracy on the
    evaluation subset, the judge's accuracy on the class-conditional samples, the Fréchet
    distance of the samples (and of their starts) to real test images, the model's own AUC
    real vs samples, the curriculum's last T, and gradient evaluations."""
    rows = []
    for arm in result.arms():
        t = seed_mean(result, "T_final", arm)
        rows.append([f"`{arm}`", _title(result, arm), fmt(seed_mean(result, "top1", arm)),
                     fmt(seed_mean(result, "eval_clean", arm)), fmt(seed_mean(result, ROBUST, arm)),
                     fmt(seed_mean(result, "gen_acc", arm)), fmt(seed_mean(result, "gen_fd", arm), 2),
                     fmt(seed_mean(result, "gen_fd_start", arm), 2), fmt(seed_mean(result, "gen_auc", arm)),
                     "—" if t is None else f"{t:.1f}", count(seed_mean(result, "grad_evals", arm))])
    return markdown_table(["arm", "model", "test top-1", "clean (subset)", "L2 PGD", "samples judged as target",
                           "FD samples", "FD starts", "AUC real vs samples", "final T", "grad. evals"],
                          rows, "llrrrrrrrrr")


def sanity_table(result: SweepResult) -> str:
    """The family's sanity table (``tables.sanity_table``): per arm and seed, clean and L2-PGD
    accuracy on the subset and each check (twice the steps, unbounded Linf PGD, Square L2)."""
    return tables.sanity_table(result, result.arms())


def guards(result: SweepResult, claims: Sequence[Any], chance_pct: float, z: float = 2.0) -> list[tuple[str, str]]:
    """``(claim key, reason)`` pairs for ``run.flag(reason, claim=key)``:

    * a claim on ``robust_pgd_l2`` when any arm's sanity check failed, or when adversarial
      training did not make ``at`` more robust than ``standard``: its L2-PGD accuracy (mean
      over seeds) must exceed the standard model's by more than ``z`` binomial standard errors
      of the difference. (At ε = 0.5 in L2 a standard CIFAR model keeps almost nothing, so
      the absolute comparison is the right one here, unlike chapter 21's small L∞ ε.)
    * a claim on a generation metric when the judge classifier's clean-test top-1 is not
      above chance by more than ``z`` binomial standard errors (its verdicts on samples would
      mean nothing), or when any of its arms has no generation numbers.
    """
    robust: list[str] = []
    for arm in result.arms():
        for j in result.of(arm):
            for f in (j["extra"].get("robustness") or {}).get("flags", []):
                robust.append(f"{arm} seed {j['seed']}: {f}")
    rob = {arm: seed_mean(result, ROBUST, arm) for arm in ("at", "standard")}
    if None not in rob.values():
        n = min(j["extra"]["robustness"]["n"] for j in result.of("at") + result.of("standard"))
        pa, pb = (min(max(rob[a] / 100, 0.0), 1.0) for a in ("at", "standard"))
        se = 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n + 1.0 / n ** 2)
        if rob["at"] <= rob["standard"] + z * se:
            robust.append(f"L2 adversarial training did not make `at` more robust than `standard`: {rob['at']:.1f}% vs "
                          f"{rob['standard']:.1f}% under L2 PGD (tolerance {z * se:.1f}, {n} images)")
    gen: list[str] = []
    for arm in result.arms():
        for j in result.of(arm):
            g = j["extra"].get("generation")
            if g is None:
                continue
            top = g["judge_top1"]
            se = 100 * math.sqrt((chance_pct / 100) * (1 - chance_pct / 100) / max(int(j.get("n_test") or 1), 1))
            if top <= chance_pct + z * se:
                gen.append(f"the judge classifier (seed {g['judge_seed']}) is at chance ({top:.1f}% vs "
                           f"{chance_pct:.1f}%): it cannot tell whether a sample shows its class")
    gen = sorted(set(gen))
    out = []
    for c in claims:
        why = []
        if c.metric == ROBUST:
            why += robust
        if c.metric in GEN_METRICS:
            why += gen
            missing = [a for a in (c.arm, c.baseline) if a and not result.per_seed(c.metric, a)]
            if missing:
                why.append(f"no {c.metric} for {', '.join(missing)}")
        if why:
            out.append((c.key, "; ".join(why)))
    return out


# -- figures --------------------------------------------------------------------------------------------------
def first_seed_models(result: SweepResult) -> tuple[int, dict[str, torch.nn.Module]]:
    """The lowest seed and its trained model per arm (from ``sweep(..., keep_models=True)``);
    every other seed's model is dropped from ``result`` to free memory."""
    seeds = sorted({j["seed"] for j in result.jobs})
    if not seeds:
        raise ParameterError("the sweep has no jobs")
    models = {}
    for j in result.jobs:
        m = j.pop("model", None)
        if j["seed"] == seeds[0] and m is not None:
            models[j["arm"]] = m.eval()
    return seeds[0], models


def _to_uint8(x01: torch.Tensor) -> torch.Tensor:
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8)


def sample_grid(models: Mapping[str, torch.nn.Module], data: Any, gen: GenConfig, device: Any, setting: str,
                classes: int = 10) -> tuple[Figure, dict]:
    """Key figure: for the first ``classes`` classes (columns), the start image (top row) and
    the class-conditional sample each arm's model draws from it (one row per arm): the
    same starts and the same ``gen.steps`` steps of f_y ascent for every arm."""
    starts, labels = eval_starts(gen, data)   # labels 0, 1, …, K−1, 0, 1, …: the first K starts, one per class
    gen = dry_gen(gen)
    k = min(classes, data.num_classes)
    s01, target = starts[:k].float() / 255.0, labels[:k]
    rows, names, own = [_to_uint8(s01)], ["start"], {}
    for arm, model in models.items():
        x = generate(model, s01, target, gen, device)
        p = torch.softmax(torch.as_tensor(_logits(model, x, device)), 1)
        own[arm] = [round(float(v), 3) for v in p.gather(1, target.view(-1, 1)).squeeze(1)]
        rows.append(_to_uint8(x))
        names.append(TITLES.get(arm, arm).replace(" (", "\n("))
    cols = [data.class_names[c].replace("_", " ")[:9] for c in range(k)]
    fig, fig_data = image_grid(rows, names, cols, setting=setting)
    fig_data.update(classes=[data.class_names[c] for c in range(k)], steps=gen.steps, step_size=gen.step_size,
                    own_prob_of_target=own, start_kinds=list(gen.starts))
    return fig, fig_data


def _bars(ax: Any, result: SweepResult, arms: Sequence[str], metric: str, color: str, offset: float,
          width: float, label: str) -> dict[str, Any]:
    out = {}
    for i, arm in enumerate(arms):
        vals = list(result.per_seed(metric, arm).values())
        if not vals:
            continue
        s = spread(vals)
        x = i + offset
        ax.bar([x], [s["mean"]], width=width, color=color, alpha=0.8, label=label if not out else None)
        ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]], color="0.2",
                    capsize=2, linewidth=0.8)
        ax.scatter([x] * s["n"], s["values"], s=9, color="0.15", zorder=3, linewidths=0)
        out[arm] = s
    return out


def _arm_ticks(ax: Any, result: SweepResult, arms: Sequence[str]) -> None:
    ax.set_xticks(range(len(arms)), [SHORT.get(a, a) for a in arms], fontsize=8)


def clean_vs_robust_bars(result: SweepResult, setting: str, eps: float, steps: int) -> tuple[Figure, dict]:
    """Clean and L2-PGD accuracy on the evaluation subset per arm: bars at the mean over
    seeds, min–max whiskers, one dot per seed."""
    arms = [a for a in result.arms() if result.per_seed(ROBUST, a)]
    fig, ax = new_figure(width=6.4, height=3.5)
    clean = _bars(ax, result, arms, "eval_clean", COLORS[0], -0.2, 0.38, "clean")
    rob = _bars(ax, result, arms, ROBUST, COLORS[1], 0.2, 0.38, f"L2 PGD-{steps}, ε = {eps:g}")
    _arm_ticks(ax, result, arms)
    ax.set_ylabel("accuracy on the evaluation subset (%)")
    ax.set_ylim(0, max(10.0, max([s["max"] for s in clean.values()] or [10.0])) * 1.25)
    ax.legend(loc="upper right", fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"clean": clean, "robust": rob, "eps": eps, "attack_steps": steps, "setting": setting,
                          "bars": "mean over seeds, whiskers min-max, dots per seed"})


def generation_bars(result: SweepResult, setting: str, chance: float) -> tuple[Figure, dict]:
    """Two panels per arm: the share of class-conditional samples the independent judge
    classifies as their target class (chance dotted), and the Fréchet distance of the
    samples to real test images in the judge's feature space (the starts' distance dashed)."""
    arms = [a for a in result.arms() if result.per_seed("gen_acc", a)]
    fig, axes = new_figure(ncols=2, width=7.2, height=3.5, squeeze=False)
    ax1, ax2 = axes[0]
    acc = _bars(ax1, result, arms, "gen_acc", COLORS[2], 0.0, 0.6, "samples")
    ax1.axhline(chance, color="0.4", linestyle=":", linewidth=1, label="chance")
    ax1.set_ylabel("samples judged as their class (%)")
    ax1.set_ylim(0, max(10.0, max([s["max"] for s in acc.values()] or [10.0])) * 1.25)
    ax1.legend(loc="upper left", fontsize=8)
    fd = _bars(ax2, result, arms, "gen_fd", COLORS[3], 0.0, 0.6, "samples")
    start = seed_mean(result, "gen_fd_start", arms[0]) if arms else None
    if start is not None:
        ax2.axhline(start, color="0.4", linestyle="--", linewidth=1, label="start images")
        ax2.legend(loc="upper right", fontsize=8)
    ax2.set_ylabel("Fréchet distance to real test images")
    for ax in (ax1, ax2):
        _arm_ticks(ax, result, arms)
    annotate_setting(fig, setting)
    return fig, jsonable({"gen_acc": acc, "gen_fd": fd, "gen_fd_start": start, "chance": chance, "setting": setting})


def curriculum(result: SweepResult, setting: str, auc_th: float) -> tuple[Figure, dict]:
    """The DAT arms' curriculum over stage-2 steps: T (left) and the running AUC separating
    real images from the samples (right; ``auc_th`` dashed), one line per arm and seed."""
    fig, axes = new_figure(ncols=2, width=7.2, height=3.3, squeeze=False)
    ax1, ax2 = axes[0]
    data: dict[str, Any] = {}
    styles = ["-", "--", ":", "-."]
    for a, arm in enumerate(DAT_ARMS):
        for s, j in enumerate(result.of(arm)):
            cur = j["extra"].get("curriculum")
            if not cur:
                continue
            steps = np.arange(1, len(cur["T"]) + 1)
            lab = f"{TITLES[arm]}, seed {j['seed']}"
            ax1.plot(steps, cur["T"], color=COLORS[a], linestyle=styles[s % 4], label=lab, linewidth=1.2)
            ax2.plot(steps, cur["running_auc"], color=COLORS[a], linestyle=styles[s % 4], linewidth=1.0)
            data[f"{arm}/seed{j['seed']}"] = {"T": cur["T"], "running_auc": cur["running_auc"], "auc": cur["auc"],
                                              "steps_per_epoch": cur.get("steps_per_epoch")}
    from matplotlib.ticker import MaxNLocator

    ax2.axhline(auc_th, color="0.3", linestyle="--", linewidth=1, label=f"threshold {auc_th:g}")
    ax2.legend(loc="lower right", fontsize=7)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    top = max([max(c["T"]) for c in data.values() if c["T"]] or [1])
    ax1.set_ylim(-0.3, max(top, 1) * 1.35 + 0.5)   # room for the legend above the lines
    ax1.set_xlabel("stage-2 step")
    ax2.set_xlabel("stage-2 step")
    ax1.set_ylabel("sampling steps T")
    ax2.set_ylabel("running AUC, real vs samples")
    ax2.set_ylim(0.0, 1.02)
    if data:
        ax1.legend(loc="upper left", fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({"curves": data, "auc_th": auc_th, "setting": setting})


@torch.no_grad()
def _logits(model: torch.nn.Module, x01: torch.Tensor, device: Any) -> torch.Tensor:
    return _forward(model, x01, 500, lambda m, z: m(z), torch.device(device))


def _lse(model: torch.nn.Module, x01: torch.Tensor, device: Any) -> np.ndarray:
    return torch.logsumexp(_logits(model, x01, device), 1).numpy()


def energy_histograms(models: Mapping[str, torch.nn.Module], data: Any, gen: GenConfig, device: Any, setting: str,
                      n: int = 500) -> tuple[Figure, dict]:
    """Per arm (a panel each, two per row), histograms of logsumexp_y f(x)_y (the negative
    energy) on real test images, on the start images and on the class-conditional samples
    drawn from those starts; ``n`` images each, the first ``n`` evaluation starts."""
    starts, labels = eval_starts(gen, data)
    if dry_run():
        gen, n = dry_gen(gen), min(n, 16)
    s01 = starts[:n].float() / 255.0
    g = torch.Generator().manual_seed(gen.seed + 5)
    real01 = data.x_test[torch.randperm(len(data.y_test), generator=g)[:n]].float() / 255.0
    arms = list(models)
    ncols = 2 if len(arms) > 1 else 1
    nrows = max(1, math.ceil(len(arms) / ncols))
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=3.6 * ncols, height=2.6 * nrows + 0.3, squeeze=False)
    out: dict[str, Any] = {}
    for i, arm in enumerate(arms):
        ax = axes[i // ncols][i % ncols]
        model = models[arm]
        x_gen = generate(model, s01, labels[:n], gen, device)
        sets = {"real test": _lse(model, real01, device), "start (OOD)": _lse(model, s01, device),
                "generated": _lse(model, x_gen, device)}
        lo = min(float(v.min()) for v in sets.values())
        hi = max(float(v.max()) for v in sets.values())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        out[arm] = {}
        for (name, v), c in zip(sets.items(), (COLORS[0], "0.55", COLORS[1])):
            counts, _ = np.histogram(v, bins)
            ax.hist(v, bins, color=c, alpha=0.5, label=name)
            out[arm][name] = {"counts": counts.tolist(), "mean": float(v.mean()), "median": float(np.median(v))}
        out[arm]["bins"] = bins.round(4).tolist()
        ax.set_title(TITLES.get(arm, arm), fontsize=9)
        ax.set_xlabel("logsumexp f(x) (−energy)")
        if i % ncols == 0:
            ax.set_ylabel("images")
        if i == 0:
            ax.legend(loc="upper left", fontsize=7)
    for i in range(len(arms), nrows * ncols):
        axes[i // ncols][i % ncols].set_visible(False)
    annotate_setting(fig, setting)
    return fig, jsonable({"arms": out, "n": n, "steps": gen.steps, "setting": setting})


def comparison_models(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """The chapter's AT → DAT network (BN frozen) for the family comparison (chapter 46), as
    ``label → (builder, config)``, with the config trained here (shared checkpoints)."""
    return {"dat": ("dat", arm_configs(params)["dat"][1])}
