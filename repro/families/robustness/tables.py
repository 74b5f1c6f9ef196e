"""Tables, curves and guards every robustness chapter reads from a sweep: the attacks each job's
evaluation ran (``extra["robustness"]``, written by :mod:`.evaluate`), its sanity report, and
the robust accuracy per ε.

* :func:`robustness_table` — per arm: adversarial training, gradient evaluations, clean top-1,
  and clean / robust accuracy under each attack on the fixed evaluation subset (mean over
  seeds, the worst case last).
* :func:`sanity_table` — per evaluated job, each sanity check's number and whether it passed.
* :func:`eps_curves` — ``label → {ε: [robust accuracy per seed]}`` for
  :func:`.figures.plot_robust_vs_eps`, from every attack of one kind (PGD at several radii).
* :func:`sanity_flags` and :func:`hardening_flag` — reasons to make a claim inconclusive: a
  failed sanity check, or adversarial training that did not make a model harder to attack.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...sweep import SweepResult
from ...tables import markdown_table


def seed_mean(result: SweepResult, metric: str, arm: str) -> float | None:
    """The mean over seeds of ``arm``'s ``metric``; None when it has no value."""
    vals = list(result.per_seed(metric, arm).values())
    return float(np.mean(vals)) if vals else None


def fmt(x: float | None, digits: int = 1) -> str:
    """A table cell: the number to ``digits`` decimals, "—" for None or a non-finite value."""
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def count(x: float | None) -> str:
    """A gradient-evaluation count in k / M."""
    if x is None:
        return "—"
    return f"{x / 1e6:.2f} M" if x >= 1e6 else (f"{x / 1e3:.0f} k" if x >= 1e4 else f"{x:.0f}")


def evaluated_arms(result: SweepResult) -> list[str]:
    """The arms whose jobs carry a robustness evaluation, in sweep order."""
    return [a for a in result.arms() if any(j["extra"].get("robustness") for j in result.of(a))]


def attack_keys(result: SweepResult, arm: str) -> list[str]:
    """The attack keys of ``arm``'s evaluation, in the order they ran."""
    for j in result.of(arm):
        rob = j["extra"].get("robustness")
        if rob:
            return list(rob["robust"])
    return []


def adv_label(cfg: dict[str, Any]) -> str:
    """One phrase for a job's training: plain, or its adversarial training (and fine-tuning)."""
    adv = cfg.get("adv")
    if not adv or adv.get("method") == "none":
        at = "plain"
    else:
        steps = adv.get("steps") or 1
        at = f"{adv['method']} {adv.get('norm', 'Linf')} ε {adv['eps'] * 255:.3g}/255, {steps} step{'s' * (steps > 1)}"
    if cfg.get("init"):
        at = f"fine-tune ({at}) of a {adv_label(cfg['init'])} model"
    return at


def robustness_table(result: SweepResult, arms: Sequence[str] | None = None, cost_metric: str = "grad_evals") -> str:
    """One row per arm: its training, gradient evaluations (attack steps and any init model
    included), clean-test top-1 over the whole test split, and on the evaluation subset the
    clean accuracy, robust accuracy per attack and the worst case per image over the attacks at
    the main ε (means over seeds; "upper bound" marks numbers from attacks not adapted to the
    model)."""
    arms = list(arms) if arms is not None else result.arms()
    keys: list[str] = []
    for a in arms:
        keys += [k for k in attack_keys(result, a) if k not in keys]
    rows = []
    for a in arms:
        jobs = result.of(a)
        if not jobs:
            continue
        cfg = jobs[0]["extra"]["config"]
        rob = [j["extra"].get("robustness") for j in jobs]
        upper = any(r and r.get("upper_bound") for r in rob)

        def cell(metric: str) -> str:
            m = seed_mean(result, metric, a)
            return "—" if m is None else f"{m:.1f}" + ("*" if upper and metric.startswith("robust") else "")
        rows.append([f"`{a}`", jobs[0]["extra"].get("title") or a, adv_label(cfg), count(seed_mean(result, cost_metric, a)),
                     cell("top1"), cell("eval_clean"), *[cell(f"robust_{k}") for k in keys], cell("robust_worst")])
    note = "" if not any("*" in c for r in rows for c in r) else \
        "\n\n\\* upper bound: the attacks were not adapted to the model (see its sanity report)."
    return markdown_table(["arm", "model", "training", "grad. evals", "test top-1", "subset clean",
                           *[f"{k}" for k in keys], "worst"], rows, "lllr" + "r" * (3 + len(keys))) + note


def sanity_table(result: SweepResult, arms: Sequence[str] | None = None,
                 extra: tuple[str, Callable[[dict[str, Any]], str]] | None = None) -> str:
    """Per evaluated job: the white-box attack the checks test, its robust accuracy, and each
    check (more steps never helps, an unbounded attack reaches ~0%, a black-box attack — and a
    transfer attack from a surrogate, where a job has one — is not stronger than the white-box
    one) with its number and ✓ or ✗. ``extra``: (header, job → cell), a chapter's own check as
    one more column."""
    jobs = [(a, j) for a in (arms if arms is not None else evaluated_arms(result)) for j in result.of(a)
            if ((j["extra"].get("robustness") or {}).get("sanity"))]
    transfer = any(c["name"].startswith("transfer:") for _, j in jobs
                   for c in j["extra"]["robustness"]["sanity"]["checks"])
    rows = []
    for a, j in jobs:
        rob = j["extra"]["robustness"]
        san = rob["sanity"]
        checks = {c["name"]: c for c in san["checks"]}
        spec = san.get("white_box_spec") or {}
        name = spec.get("label") or spec.get("name") or ""
        wb = san.get("white_box", checks.get("more_steps", {}).get("numbers", {}).get("acc"))

        def cell(c: dict[str, Any] | None, num: str) -> str:
            return "—" if c is None else f"{c['numbers'][num]:.1f} {'✓' if c['passed'] else '✗ FAILED'}"
        row = [f"`{a}`", str(j["seed"]), str(rob["n"]), f"{rob['clean']:.1f}",
               "—" if wb is None else f"{name} {wb:.1f}".strip(), cell(checks.get("more_steps"), "more_steps_acc"),
               cell(checks.get("unbounded"), "acc"), cell(checks.get("black_box"), "acc")]
        if transfer:
            cells = [f"{k.split(':', 1)[1]} {cell(c, 'acc')}" for k, c in checks.items() if k.startswith("transfer:")]
            row.append("; ".join(cells) or "—")
        rows.append(row + ([extra[1](j)] if extra else []))
    head = ["arm", "seed", "images", "clean", "white-box", "2× steps", "unbounded (ε = 1)", "Square (black box)"]
    head += ["transfer from a surrogate"] * transfer + ([extra[0]] if extra else [])
    return markdown_table(head, rows, "lrrrrrrr" + "r" * (len(head) - 8))


def eps_curves(result: SweepResult, arms: Sequence[str], attack: str = "pgd",
               labels: dict[str, str] | None = None) -> dict[str, dict[float, list[float]]]:
    """``label → {ε: [robust accuracy per seed]}``: every attack named ``attack`` in each arm's
    evaluation gives one ε (its recorded radius); ε = 0 is the subset's clean accuracy. Attacks
    crafted on a surrogate (``transfer_from``) are not the model's own curve and are left out."""
    out: dict[str, dict[float, list[float]]] = {}
    for a in arms:
        per: dict[float, list[float]] = {}
        for j in result.of(a):
            rob = j["extra"].get("robustness")
            if not rob:
                continue
            per.setdefault(0.0, []).append(rob["clean"])
            for key, spec in rob["attacks"].items():
                if spec["name"] == attack and not spec.get("transfer_from"):
                    per.setdefault(float(spec["eps"]), []).append(rob["robust"][key])
        if len(per) > 1:
            out[(labels or {}).get(a, a)] = per
    return out


def sanity_flags(result: SweepResult, arms: Sequence[str] | None = None) -> list[str]:
    """One line per failed sanity check (or non-adaptive, upper-bound evaluation flag) of the
    given arms' jobs."""
    out = []
    for a in (arms if arms is not None else evaluated_arms(result)):
        for j in result.of(a):
            for f in (j["extra"].get("robustness") or {}).get("flags", []):
                out.append(f"{a} seed {j['seed']}: {f}")
    return out


def hardening_flag(result: SweepResult, at_arm: str, ref_arm: str, attack: str = "pgd",
                   z: float = 2.0) -> str | None:
    """Why ``at_arm`` cannot be vouched for as adversarially trained, or None: the attack
    must remove fewer points of clean accuracy from it than from the plainly trained
    ``ref_arm`` (clean − robust on the evaluation subset, mean over seeds), by more than ``z``
    binomial standard errors of the difference. (Absolute robust accuracy would not do: at a
    small ε a standard model keeps much of its accuracy, and adversarial training trades clean
    accuracy for robustness.)"""
    drops = {}
    for a in (at_arm, ref_arm):
        c, r = seed_mean(result, "eval_clean", a), seed_mean(result, f"robust_{attack}", a)
        if c is None or r is None:
            return None
        drops[a] = c - r
    n = min(j["extra"]["robustness"]["n"] for j in result.of(at_arm) + result.of(ref_arm))
    pa, pb = (min(max(drops[a] / 100, 0.0), 1.0) for a in (at_arm, ref_arm))
    se = 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n + 1.0 / n ** 2)
    if drops[at_arm] >= drops[ref_arm] - z * se:
        return (f"adversarial training did not make {at_arm} harder to attack than {ref_arm}: {attack} removes "
                f"{drops[at_arm]:.1f} points of its clean accuracy vs {drops[ref_arm]:.1f} "
                f"(tolerance {z * se:.1f}, {n} images)")
    return None
