"""Chapter 32, PubDef (Sitawarin, Chang, Huang, Altoyan & Wagner, "PubDef: Defending Against
Transfer Attacks From Public Models", ICLR 2024): train against pre-computed transfer examples
from a few public models instead of white-box adversarial training.

The paper's public zoo (24 CIFAR-100 models from torch.hub, HuggingFace and RobustBench) cannot
be downloaded here, so the chapter trains its own zoo (:func:`zoo`), every model by the family's
``standard`` arm so that the comparison chapter loads the same checkpoints:

* seen (PubDef trains against them): ``std``, a standard network of the family's architecture;
  ``fgsm_at``, the same network trained by FGSM with a random start (fast AT, ε = ``at_eps``);
* held out (PubDef never sees them): ``std_seed2``, ``std``'s recipe with another seed; and
  ``arch``, a standard network of another architecture (``heldout_model``).

Three targets (:func:`arm_configs`), every one by the :mod:`.arms.pubdef` arm (which trains it,
runs the family's white-box evaluation with its sanity checks, and the transfer evaluation of
:mod:`.transfer`): ``standard`` (undefended), ``at`` (the family's white-box adversarial
training, ``at_*``) and ``pubdef`` (the standard target fine-tuned for ``ft_epochs`` on clean
images plus PGD transfer images from the seen sources, pre-computed once). Every target is
attacked with the same stored transfer images: every attack of ``transfer_attacks`` crafted on
every source, on ``transfer_images`` test images that contain the white-box evaluation's
``eval_images`` (so a transfer attack can be checked against the white-box one on them).

:func:`guards` makes the transfer claims inconclusive when the evidence cannot carry them: a
failed sanity check of any target, a transfer attack stronger than the white-box one, or the
ceiling effect the card warns about — transfer attacks that barely hurt the *undefended* target
(any defence would then look robust).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...arms import make_config
from ...errors import ParameterError
from ...sweep import SweepResult
from ...tables import markdown_table
from .arms import pubdef as _pubdef_arm  # noqa: F401  (registers the arm)
from .arms.pubdef import PubDefConfig, PubDefTraining
from .attacks import AttackSpec
from .evaluate import EvalConfig
from .protocol import RobustConfig, adv_config, build_model, robust_config
from .transfer import Source, TransferConfig, plot_clean_vs_transfer, plot_transfer_heatmap
from . import tables
from .tables import count, fmt, seed_mean

#: The three targets, in the order they train and appear in tables and figures.
TARGETS = ("standard", "at", "pubdef")
#: Names of the seen (training) and held-out sources of :func:`zoo`.
SEEN = ("std", "fgsm_at")
HELD_OUT = ("std_seed2", "arch")
#: Offsets of each source's seed from ``zoo_seed``.
_SEED_OFFSET = {"std": 0, "fgsm_at": 1, "std_seed2": 2, "arch": 3}


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """The family's white-box evaluation of every target: PGD at ``eval_eps`` (``attack_steps``
    steps) on ``eval_images`` test images, with the sanity checks (Square, ``square_queries``)."""
    spec = AttackSpec("pgd", norm="Linf", eps=float(params["eval_eps"]), steps=int(params["attack_steps"]),
                      seed=int(params["eval_seed"]))
    return EvalConfig(attacks=(spec,), images=int(params["eval_images"]), seed=int(params["eval_seed"]),
                      square_queries=int(params["square_queries"]))


def zoo(params: Mapping[str, Any]) -> tuple[list[Source], list[Source]]:
    """(seen sources, held-out sources) of the chapter's zoo (module docstring), each a
    recipe of the ``standard`` arm: the protocol's SGD recipe for ``zoo_epochs`` epochs (0:
    ``epochs``) on ``zoo_model`` (empty: ``model``) of width ``zoo_width`` (0: ``width``),
    seeds ``zoo_seed`` + 0…3."""
    epochs = int(params["zoo_epochs"]) or int(params["epochs"])
    if epochs < 1:
        raise ParameterError(f"zoo_epochs must be ≥ 0 (0: epochs), got {params['zoo_epochs']}")
    model = str(params["zoo_model"] or params["model"])
    width = int(params["zoo_width"]) if params["zoo_width"] else int(params["width"])
    seed = int(params["zoo_seed"])
    if seed < 0:
        raise ParameterError(f"zoo_seed must be ≥ 0, got {seed}")

    def cfg(title: str, **kw: Any) -> RobustConfig:
        return robust_config(params, title, **{"model": model, "width": width, "epochs": epochs, **kw})
    fast_at = adv_config(params, method="fgsm_rs", step_size=None)
    seen = [Source("std", cfg("source std"), seed + _SEED_OFFSET["std"], "standard"),
            Source("fgsm_at", cfg("source fgsm_at", adv=fast_at), seed + _SEED_OFFSET["fgsm_at"], "adversarial")]
    held = [Source("std_seed2", cfg("source std_seed2"), seed + _SEED_OFFSET["std_seed2"], "standard"),
            Source("arch", cfg("source arch", model=str(params["heldout_model"]), width=0),
                   seed + _SEED_OFFSET["arch"], "architecture")]
    return seen, held


def transfer_config(params: Mapping[str, Any]) -> TransferConfig:
    """Every attack of ``transfer_attacks`` (L∞, ε = ``eval_eps``, ``transfer_steps`` steps,
    each attack's own step-size rule) on every source of :func:`zoo`, on ``transfer_images``
    test images that contain the white-box evaluation's subset (``eval_images``, drawn by
    ``eval_seed``; ``transfer_images`` 0: that subset itself)."""
    names = list(params["transfer_attacks"])
    if not names:
        raise ParameterError("transfer_attacks must name at least one attack")
    n_test = int(params["classes"]) * (int(params["test_per_class"]) or 100)
    images, wb = int(params["transfer_images"]), int(params["eval_images"])
    if images and not wb <= images <= n_test:
        raise ParameterError(f"transfer_images must be 0 (the white-box subset) or between eval_images ({wb}) and "
                             f"the {n_test} test images, got {images}")
    attacks = tuple(AttackSpec(str(a), norm="Linf", eps=float(params["eval_eps"]), steps=int(params["transfer_steps"]),
                               seed=int(params["eval_seed"])) for a in names)
    seen, held = zoo(params)
    return TransferConfig(sources=(*seen, *held), attacks=attacks, seen=tuple(s.name for s in seen),
                          images=images or wb, seed=int(params["eval_seed"]), contains=wb if images else 0)


def defence(params: Mapping[str, Any]) -> PubDefTraining:
    """PubDef's training: PGD (``train_attack_steps`` steps, ε = ``eval_eps``) on the seen
    sources, ``train_copies`` copies per image, ``pubdef_mode``, ``pubdef_weights``."""
    seen, _ = zoo(params)
    spec = AttackSpec("pgd", norm="Linf", eps=float(params["eval_eps"]), steps=int(params["train_attack_steps"]),
                      seed=int(params["zoo_seed"]))
    return PubDefTraining(sources=tuple(seen), attack=spec, copies=int(params["train_copies"]),
                          mode=str(params["pubdef_mode"]), weights=tuple(params["pubdef_weights"]))


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, PubDefConfig]]:
    """``label → ("pubdef", config)`` for the three targets (:data:`TARGETS`). Every setting
    is checked here (ParameterError before any work)."""
    ev, tc = eval_config(params), transfer_config(params)
    ft_epochs, ft_lr = int(params["ft_epochs"]), float(params["ft_lr"]) or float(params["lr"])
    if ft_epochs < 1:
        raise ParameterError(f"ft_epochs must be ≥ 1, got {ft_epochs}")
    drop = params["min_transfer_drop"]
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 100:
        raise ParameterError(f"min_transfer_drop must be in [0, 100] points, got {drop!r}")
    check_sources_differ(params)
    check_networks(params)
    start = robust_config(params, "standard")

    def target(title: str, **kw: Any) -> PubDefConfig:
        return make_config(PubDefConfig, params, title=title, eval=ev, transfer=tc, **kw)
    return {
        "standard": ("pubdef", target("standard")),
        "at": ("pubdef", target("white-box AT", adv=adv_config(params))),
        "pubdef": ("pubdef", target("PubDef", init=start, epochs=ft_epochs, lr=ft_lr, warmup_epochs=0.0,
                                    defence=defence(params))),
    }


def comparison_models(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """The chapter's PubDef target for the family comparison (chapter 46), as ``label →
    (builder, config)``, with the config trained here, so the comparison loads it from the
    shared checkpoints."""
    return {"pubdef": ("pubdef", arm_configs(params)["pubdef"][1])}


# -- results ------------------------------------------------------------------------------------------------
def _title(result: SweepResult, arm: str) -> str:
    jobs = result.of(arm)
    return (jobs[0]["extra"].get("title") or arm) if jobs else arm


def transfer_records(result: SweepResult, arms: Sequence[str] = TARGETS) -> dict[str, list[dict[str, Any]]]:
    """``title → [transfer record per seed]`` for the figures of :mod:`.transfer`."""
    return {_title(result, a): [j["extra"]["transfer"] for j in result.of(a) if j["extra"].get("transfer")]
            for a in arms if result.of(a)}


def clean_vs_transfer(result: SweepResult, setting: str):
    """The key figure: clean against worst-case transfer accuracy per target, seen and
    held-out sources apart (:func:`.transfer.plot_clean_vs_transfer`)."""
    return plot_clean_vs_transfer(transfer_records(result), setting)


def heatmap(result: SweepResult, setting: str):
    """Target × (source, attack) transfer accuracy (:func:`.transfer.plot_transfer_heatmap`)."""
    return plot_transfer_heatmap(transfer_records(result), setting)


def zoo_table(result: SweepResult) -> str:
    """One row per source: seen or held out, network, training, seed, test top-1, clean
    accuracy on the evaluation subset and its accuracy on its own adversarial images (the
    white-box attack it crafted: worst and best over the attacks; low means the crafting
    worked)."""
    jobs = [j for a in TARGETS for j in result.of(a) if j["extra"].get("zoo")]
    if not jobs:
        return "(no zoo)"
    zoo_rec = jobs[0]["extra"]["zoo"]
    seen = set(jobs[0]["extra"]["transfer"]["seen"])
    rows = []
    for name, z in zoo_rec.items():
        c = z["config"]
        adv = c.get("adv")
        train = "standard" if not adv else f"{adv['method']}, ε {adv['eps_255']:g}/255"
        net = c["model"] + (f" (width {c['width']})" if c["width"] else "")
        own = list((z.get("own_attack_acc") or {}).values())
        rows.append([f"`{name}`", "seen" if name in seen else "held out", net, train, str(c["epochs"]), str(z["seed"]),
                     fmt(z.get("top1")), fmt(z.get("clean_subset")),
                     f"{min(own):.1f} – {max(own):.1f}" if own else "—"])
    return markdown_table(["source", "PubDef", "network", "training", "epochs", "seed", "test top-1",
                           "clean (subset)", "acc. on own attacks"], rows, "lllllrrrr")


def summary_table(result: SweepResult) -> str:
    """One row per target: test top-1 per seed (mean), then means over seeds of the clean
    accuracy and the transfer numbers on the transfer subset (worst case over all, seen and
    held-out sources; mean over pairs; every pair at once), of the white-box PGD accuracy on
    the evaluation subset, and the training's gradient evaluations."""
    rows = []
    for arm in TARGETS:
        if not result.of(arm):
            continue
        top = list(result.per_seed("top1", arm).values())
        grads = seed_mean(result, "grad_evals", arm)
        pre = seed_mean(result, "grad_evals_precompute", arm)
        rows.append([f"`{arm}`", _title(result, arm), ", ".join(f"{v:.1f}" for v in top) + f" (**{np.mean(top):.1f}**)",
                     fmt(seed_mean(result, "transfer_clean", arm)), f"**{fmt(seed_mean(result, 'transfer_worst', arm))}**",
                     fmt(seed_mean(result, "transfer_worst_seen", arm)), fmt(seed_mean(result, "transfer_worst_heldout", arm)),
                     fmt(seed_mean(result, "transfer_mean", arm)), fmt(seed_mean(result, "transfer_union", arm)),
                     fmt(seed_mean(result, "robust_pgd", arm)), count(grads) + (f" + {count(pre)}" if pre else "")])
    return markdown_table(["arm", "target", "clean top-1 per seed (mean)", "clean", "worst transfer", "worst, seen",
                           "worst, held out", "mean transfer", "every pair", "white-box PGD", "grad. evals"],
                          rows, "llcrrrrrrrr")


def sanity_table(result: SweepResult) -> str:
    """The family's sanity table (``tables.sanity_table``) per target and seed, plus the
    transfer check: the worst transfer attack is not stronger than the white-box PGD."""
    def transfer_check(job: dict[str, Any]) -> str:
        tr = job["extra"].get("transfer") or {}
        return "—" if not tr else f"{tr['transfer_worst']:.1f} {'✗ FAILED' if tr.get('flags') else '✓'}"
    return tables.sanity_table(result, [a for a in TARGETS if result.of(a)], ("worst transfer ≥ PGD", transfer_check))


def ceiling(result: SweepResult, metric: str, min_drop: float, z: float = 2.0,
            arm: str = "standard") -> dict[str, Any] | None:
    """How far transfer attacks pull the undefended target down: ``drop`` = clean accuracy
    on the transfer subset minus ``metric`` (a worst-case transfer accuracy), mean over seeds. It
    passes when the drop is at least ``min_drop`` points and more than ``z`` binomial
    standard errors of the difference on the subset's ``n`` images. None without data."""
    clean, worst = seed_mean(result, "transfer_clean", arm), seed_mean(result, metric, arm)
    if clean is None or worst is None:
        return None
    n = min(j["extra"]["transfer"]["n"] for j in result.of(arm))
    pa, pb = min(max(clean / 100, 0.0), 1.0), min(max(worst / 100, 0.0), 1.0)
    se = 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / max(n, 1))
    need = max(float(min_drop), z * se)
    drop = clean - worst
    return {"metric": metric, "clean": clean, "transfer": worst, "drop": drop, "needed": need, "se": se, "n": n,
            "passed": drop >= need}


def ceiling_table(result: SweepResult, min_drop: float) -> str:
    """The undefended target's clean accuracy, worst-case transfer accuracy and the drop,
    against the drop the guard requires (all sources, held-out sources)."""
    rows = []
    for metric, what in (("transfer_worst", "all sources"), ("transfer_worst_seen", "seen sources"),
                         ("transfer_worst_heldout", "held-out sources")):
        c = ceiling(result, metric, min_drop)
        if c is None:
            continue
        rows.append([what, f"{c['clean']:.1f}", f"{c['transfer']:.1f}", f"{c['drop']:.1f}", f"{c['needed']:.1f}",
                     "✓" if c["passed"] else "✗ ceiling effect"])
    return markdown_table(["standard target, worst case over", "clean", "worst transfer", "drop",
                           "drop needed", "transfer attacks bite"], rows, "lrrrrl")


def guards(result: SweepResult, claims: Sequence[Any], min_drop: float, z: float = 2.0) -> list[tuple[str, str]]:
    """``(claim key, reason)`` for each transfer claim (metric ``transfer_*``) the evidence
    cannot carry:

    * a failed white-box sanity check of any target, or a transfer attack that beats the
      white-box one (the robust numbers are not what they seem);
    * the ceiling effect: transfer attacks remove fewer than ``min_drop`` points (or fewer
      than ``z`` standard errors) of the undefended target's clean accuracy, worst case over
      all sources — and, for a claim on the held-out sources, over the held-out ones.

    One reason per claim (every failure joined): pass each to ``run.flag(reason, claim=key)``."""
    common: list[str] = []
    for arm in TARGETS:
        for j in result.of(arm):
            for f in (j["extra"].get("robustness") or {}).get("flags", []):
                common.append(f"{arm} seed {j['seed']}: {f}")
            for f in (j["extra"].get("transfer") or {}).get("flags", []):
                common.append(f"{arm} seed {j['seed']}: {f}")

    def bite(metric: str, what: str) -> list[str]:
        c = ceiling(result, metric, min_drop, z)
        if c is None or c["passed"]:
            return []
        return [f"ceiling effect: transfer attacks from the {what} remove only {c['drop']:.1f} points of the undefended "
                f"target's clean accuracy ({c['clean']:.1f}% → {c['transfer']:.1f}%, {c['n']} images; needed "
                f"{c['needed']:.1f}), so any defence looks robust to them"]
    overall = bite("transfer_worst", "zoo")
    out = []
    for c in claims:
        if not c.metric.startswith("transfer"):
            continue
        reasons = common + overall
        if c.metric.endswith("_heldout"):
            reasons = reasons + bite("transfer_worst_heldout", "held-out sources")
        elif c.metric.endswith("_seen"):
            reasons = reasons + bite("transfer_worst_seen", "seen sources")
        if reasons:
            out.append((c.key, "; ".join(reasons)))
    return out


def finetune_curve(result: SweepResult) -> dict[str, Any]:
    """Clean test top-1 per fine-tuning epoch of PubDef (mean over seeds), for the text."""
    runs = [j["extra"]["history"] for j in result.of("pubdef")]
    if not runs:
        return {}
    epochs = sorted(set.intersection(*[{int(r["epoch"]) for r in h if "test_acc" in r} for h in runs]))
    return {"epoch": epochs, "test_acc": [float(np.mean([next(r["test_acc"] for r in h if int(r["epoch"]) == e)
                                                         for h in runs])) for e in epochs]}


def check_networks(params: Mapping[str, Any]) -> None:
    """ParameterError, before any training, if a zoo network cannot classify the chapter's
    images (e.g. a VGG with five poolings at 16 px): each is built and run on two blank images."""
    import torch

    size, classes = int(params["image_size"]), int(params["classes"])
    seen, held = zoo(params)
    for s in (*seen, *held):
        model = build_model(s.config, classes, 0).eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, 3, size, size))
        except (RuntimeError, ValueError) as exc:
            raise ParameterError(f"source {s.name}: {s.config.model} cannot take {size}-px images "
                                 f"({str(exc).splitlines()[0]})") from None
        if tuple(out.shape) != (2, classes):
            raise ParameterError(f"source {s.name}: {s.config.model} gives logits of shape {tuple(out.shape)}")


def check_sources_differ(params: Mapping[str, Any]) -> None:
    """ParameterError if a source would be the standard target itself (same recipe and seed
    as one of the run's seeds): the transfer attack would be a white-box one."""
    seen, held = zoo(params)
    start = robust_config(params)
    seeds = set(int(s) for s in params["seeds"])
    for s in (*seen, *held):
        if s.config.recipe() == start.recipe() and s.seed in seeds:
            raise ParameterError(f"source {s.name} is the standard target of seed {s.seed} (same recipe and seed): "
                                 "choose a zoo_seed outside the run's seeds")
