"""Chapter 46, the family's synthesis: every kind of model the robustness chapters train
(standard, adversarially trained, adversarially fine-tuned, mixed, self-ensembled, trained
against transfer attacks, dual-adversarially trained), evaluated with the same attacks, at the
same ε, on the same test images, with the same sanity checks.

Each model comes from its own chapter's ``comparison_models(params)`` (``label → (builder,
config)``), with that chapter's parameters at the same tier (the reader's explicit overrides of
this chapter passed on where the chapter has the parameter). It is therefore exactly the
network that chapter trains. The family's ``compare`` arm (:mod:`.arms.compare`) builds it with
the chapter's builder and evaluates it with this chapter's one evaluation (EOT for stochastic
models). When the chapter ran at the same tier
and commit, the model is loaded from the family's shared checkpoints instead of being trained
again; its training cost is still counted. A chapter whose data differ from this chapter's is
left out with a note, because its models were not tested on these images.

:data:`MODELS` lists the models: ``label → (chapter slug, display name)``.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ParameterError, check_choices
from ...papers import load_spec
from ...sweep import SweepResult
from ...tables import markdown_table
from .attacks import AttackSpec
from .evaluate import EvalConfig
from .protocol import DataConfig, RobustConfig
from .tables import attack_keys, count, sanity_flags, seed_mean


def compared(source: str, cfg: RobustConfig, ev: EvalConfig, title: str, eot: int) -> tuple[str, RobustConfig]:
    from .arms import compare  # the arm module imports this package: imported here, not at the top
    return compare.compared(source, cfg, ev, title, eot)

#: label → (chapter slug, display name). ``standard`` is the reference of every claim.
MODELS: dict[str, tuple[str, str]] = {
    "standard": ("advft", "standard training"),
    "pgd_at": ("advft", "PGD-AT from scratch (40)"),
    "advft": ("advft", "adversarial fine-tuning (40)"),
    "fgsm_at": ("adasmooth", "FGSM-AT, fast (03's h)"),
    "adasmooth": ("adasmooth", "adaptive smoothing (03)"),
    "crossmax": ("crossmax", "multi-resolution CrossMax (25)"),
    "pubdef": ("pubdef", "PubDef fine-tuning (32)"),
    "dat": ("dat", "L2 AT → DAT (12)"),
}
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig))


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """The one evaluation every model gets: PGD, APGD-CE and APGD-T (top ``apgd_targets``
    classes) at ``eval_eps`` with ``attack_steps`` steps, PGD at each extra radius of
    ``curve_eps_255``, on ``eval_images`` fixed test images, with the sanity checks on the PGD
    at ``eval_eps`` (Square with ``square_queries`` queries). ``eot_samples`` gradient samples
    per step are used for models that are stochastic (a chapter's ``comparison_models`` sets
    them; deterministic models need one)."""
    eps, steps, seed = float(params["eval_eps"]), int(params["attack_steps"]), int(params["eval_seed"])
    targets = int(params["apgd_targets"])
    if isinstance(params["apgd_targets"], bool) or targets < 1:
        raise ParameterError(f"apgd_targets must be an integer ≥ 1, got {params['apgd_targets']!r}")
    specs = [AttackSpec("pgd", eps=eps, steps=steps, seed=seed),
             AttackSpec("apgd_ce", eps=eps, steps=steps, seed=seed),
             AttackSpec("apgd_t", eps=eps, steps=steps, seed=seed, target_classes=targets)]
    extra = sorted({float(e) for e in params["curve_eps_255"]})
    if any(not 0 < e <= 255 for e in extra):
        raise ParameterError(f"curve_eps_255 are radii in 1/255 units, each in (0, 255]: got {extra}")
    specs += [AttackSpec("pgd", eps=e / 255, steps=steps, seed=seed, label=f"pgd_{e:g}")
              for e in extra if abs(e / 255 - eps) > 1e-9]
    return EvalConfig(attacks=tuple(specs), images=int(params["eval_images"]), seed=seed,
                      square_queries=int(params["square_queries"]), sanity_attack="pgd")


def chapter_params(slug: str, tier: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """A chapter's resolved parameters at ``tier``, with those of ``explicit`` (this
    chapter's overrides) that the chapter also has."""
    spec = load_spec(slug)
    return spec.resolve(tier, {k: v for k, v in explicit.items() if k in spec.params})


def arm_configs(params: Mapping[str, Any], explicit: Mapping[str, Any] | None = None
                ) -> tuple[dict[str, tuple[str, RobustConfig]], dict[str, str]]:
    """``(label → (arm, config), left_out)`` for each name in ``params["models"]``
    (:data:`MODELS`): the model as its chapter trains it at this tier, evaluated with
    :func:`eval_config`. ``left_out``: label → why a model is not compared (its chapter's data
    differ). Unknown names and a list without ``standard`` → ParameterError."""
    names = check_choices(list(params["models"]), MODELS, "model")
    if "standard" not in names:
        raise ParameterError(f"models {names} lack 'standard', the reference of every claim")
    needed = sorted({a for c in load_spec("robcompare").claims for a in (c.arm, c.baseline) if a} - set(names))
    if needed:
        raise ParameterError(f"models {names} lack {needed}, which the chapter's claims compare")
    ev = eval_config(params)
    explicit = dict(explicit or {})
    ours = {k: params[k] for k in DATA_FIELDS}
    out: dict[str, tuple[str, RobustConfig]] = {}
    left_out: dict[str, str] = {}
    by_chapter: dict[str, dict[str, tuple[str, RobustConfig]]] = {}
    for n in names:
        slug, title = MODELS[n]
        p = chapter_params(slug, params["tier"], explicit)
        theirs = {k: p[k] for k in DATA_FIELDS}
        if theirs != ours:
            diff = ", ".join(f"{k} {theirs[k]!r} (here {ours[k]!r})" for k in DATA_FIELDS if theirs[k] != ours[k])
            left_out[n] = f"chapter {slug} trains on other data at this tier: {diff}"
            continue
        if slug not in by_chapter:
            module = importlib.import_module(f"repro.families.robustness.{slug}")
            by_chapter[slug] = module.comparison_models(p)
        source, cfg = by_chapter[slug][n]
        out[n] = compared(source, cfg, ev, title, int(params["eot_samples"]))
    return out, left_out


def leaderboard(result: SweepResult, attacks: Sequence[str] | None = None) -> str:
    """One row per model, sorted by worst-case robust accuracy: clean-test top-1, clean and
    robust accuracy per attack on the evaluation subset (``attacks``; default: every attack
    any model met, transfers from surrogates included), the worst case, whether the numbers
    are only upper bounds (a non-adaptive attack, or a failed sanity check), and the training cost in gradient evaluations (means over seeds)."""
    if attacks is None:
        attacks = []
        for a in result.arms():
            attacks += [k for k in attack_keys(result, a) if k not in attacks]
    rows = []
    order = sorted(result.arms(), key=lambda a: -(seed_mean(result, "robust_worst", a) or -1.0))
    for a in order:
        jobs = result.of(a)
        rob = [j["extra"].get("robustness") or {} for j in jobs]
        upper = "yes" if any(r.get("upper_bound") for r in rob) else "no"
        if any(r.get("flags") for r in rob):
            upper = "yes: a check failed"  # masked gradients: the attacks overestimate robustness
        cells = [seed_mean(result, m, a) for m in ("top1", "eval_clean", *[f"robust_{k}" for k in attacks], "robust_worst")]
        rows.append([f"`{a}`", jobs[0]["extra"].get("title") or a,
                     *["—" if c is None else f"{c:.1f}" for c in cells], upper,
                     count(seed_mean(result, "grad_evals", a))])
    return markdown_table(["model", "", "test top-1", "subset clean", *attacks, "worst", "upper bound",
                           "grad. evals"], rows, "ll" + "r" * (3 + len(attacks)) + "lr")


def guards(result: SweepResult, claims: Sequence[Any]) -> list[tuple[str, str]]:
    """``(claim key, reason)`` for each claim whose arm or baseline failed a sanity check, or
    whose numbers are only upper bounds (an attack not adapted to the model)."""
    out = []
    for c in claims:
        reasons = sanity_flags(result, [a for a in (c.arm, c.baseline) if a and result.of(a)])
        for a in (c.arm, c.baseline):
            if a and any((j["extra"].get("robustness") or {}).get("upper_bound") for j in result.of(a)):
                reasons.append(f"{a}: robust accuracy is an upper bound (attack not adapted to the model)")
        if reasons:
            out.append((c.key, "; ".join(reasons)))
    return out
