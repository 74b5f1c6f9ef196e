"""The checks that run with every robustness result, after the literature on evaluating
defences (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Athalye et al. 2018,
"Obfuscated Gradients Give a False Sense of Security"):

(a) **more steps**: running the white-box attack for more iterations never raises robust
    accuracy (beyond sampling noise); if it does, the attack had not converged or the loss
    surface is masked;
(b) **unbounded**: with ε = 1 (Linf) the attacker can draw any image, so robust accuracy must
    reach ~0%; if it does not, gradients do not lead anywhere;
(c) **black-box**: a gradient-free attack (Square) or a transfer attack is never stronger than
    the white-box one; if it is, the white-box gradients are masked.

A failed check makes the claim inconclusive: ``report.flags()`` gives one line per failure, to
pass to ``run.flag(...)``. Separately, a robust accuracy measured by an attack that was not
adapted to the defence (EOT for randomness, BPDA for non-differentiable parts) is only an
upper bound on the true robust accuracy: ``report.upper_bound``.

Tolerances are binomial: two accuracies on the same n images differ "beyond noise" when the
gap exceeds z·√(p(1−p)/n) (in points; at least one image), p being the reference accuracy.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

from ...errors import ParameterError
from .attacks import ATTACKS, AttackSpec, _percent, check_attack, clean_correct, robust_correct

#: Highest accuracy (%) an unbounded attack may leave and still count as "~0%" (at least one image).
UNBOUNDED_MAX_ACC = 1.0


def binomial_tolerance(acc_pct: float, n: int, z: float = 2.0) -> float:
    """z binomial standard errors of an accuracy of ``acc_pct`` % on ``n`` images, in points,
    and never less than one image (100/n)."""
    p = min(max(acc_pct / 100.0, 0.0), 1.0)
    return max(100.0 * z * math.sqrt(p * (1.0 - p) / n), 100.0 / n)


@dataclass
class Check:
    """One sanity check: its numbers (accuracies in %, the tolerance in points), whether it
    passed and a one-line reason."""

    name: str
    passed: bool
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass
class SanityReport:
    """The checks run with one robustness result.

    n: images evaluated; clean: clean accuracy (%); white_box: the reported robust accuracy
    (%) and ``white_box_spec`` the attack that measured it; checks: (a) ``more_steps``, (b)
    ``unbounded``, (c) ``black_box`` (and one ``transfer:<name>`` per transfer set); adaptive:
    whether that attack was adapted to the defence; upper_bound: the reported number is only an
    upper bound (the attack was not adaptive), with ``adaptive_note`` saying why.
    """

    n: int
    clean: float
    white_box: float
    white_box_spec: dict[str, Any]
    checks: list[Check]
    adaptive: bool
    adaptive_note: str = ""
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def upper_bound(self) -> bool:
        """True when the robust accuracy came from a non-adaptive attack."""
        return not self.adaptive

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def flags(self) -> list[str]:
        """One line per failed check (each makes the claim inconclusive)."""
        return [f"sanity check failed ({c.name}): {c.reason}" for c in self.checks if not c.passed]

    def as_record(self) -> dict[str, Any]:
        """JSON-able record of the report."""
        return {**asdict(self), "upper_bound": self.upper_bound, "passed": self.passed}


def is_stochastic(model: nn.Module, images01: torch.Tensor, atol: float = 1e-6) -> bool:
    """Whether two forward passes of ``model`` on the same images give different logits."""
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), images01.device)
    x = images01.to(device, torch.float32)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        a, b = model(x), model(x)
    return not torch.allclose(a, b, atol=atol, rtol=0.0)


def _more_steps_spec(spec: AttackSpec, factor: int) -> AttackSpec:
    """The longer attack of check (a): the same attack with ``factor``× the steps, or for
    FGSM (no steps) PGD at the same ε with 10 steps."""
    if not ATTACKS[spec.name].steps:
        return AttackSpec("pgd", norm=spec.norm, eps=spec.eps, steps=10, seed=spec.seed, label="more_steps")
    return replace(spec, steps=int(spec.steps) * factor, label="more_steps")


def run_sanity_checks(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor, white_box: AttackSpec, *,
                      black_box: AttackSpec | None = None, transfer: dict[str, torch.Tensor] | None = None,
                      unbounded: AttackSpec | None = None, steps_factor: int = 2, adaptive: bool = False,
                      batch_size: int = 256, z: float = 2.0) -> SanityReport:
    """Run checks (a)–(c) for the robust accuracy that ``white_box`` measures on these images.

    black_box: the gradient-free attack of (c) (default: Square at the same norm and ε, 1000
    queries); transfer: adversarial images made on surrogate models, aligned with
    ``images01``, each compared with the white-box number like the black-box one;
    unbounded: the attack of (b) (default: Linf PGD with ε = 1, max(10, steps) steps and the
    white-box EOT samples); steps_factor: (a) compares ``steps`` with ``steps_factor``·steps;
    adaptive: the caller's statement that ``white_box`` is adapted to the defence (True for a
    deterministic, differentiable model; for a stochastic one it also needs EOT samples, which
    is checked here). Every attack is checked before any runs.
    """
    if steps_factor < 2:
        raise ParameterError(f"steps_factor must be ≥ 2, got {steps_factor}")
    check_attack(white_box)
    if not ATTACKS[white_box.name].white_box:
        raise ParameterError(f"{white_box.name} is not a white-box attack: sanity checks need one to test")
    longer = _more_steps_spec(white_box, steps_factor)
    if black_box is None:
        black_box = AttackSpec("square", norm=white_box.norm, eps=white_box.eps, steps=1000, seed=white_box.seed)
    if unbounded is None:
        unbounded = AttackSpec("pgd", norm="Linf", eps=1.0, steps=max(10, white_box.effective_steps()),
                               eot_samples=white_box.eot_samples, seed=white_box.seed)
    for spec in (longer, black_box, unbounded):
        check_attack(spec)
    if ATTACKS[black_box.name].white_box:
        raise ParameterError(f"black_box must be a gradient-free attack, not {black_box.name}")
    if black_box.eps != white_box.eps or black_box.norm != white_box.norm:
        raise ParameterError("black_box must use the white-box attack's norm and eps to be comparable")
    for name, adv in (transfer or {}).items():
        if adv.shape != images01.shape:
            raise ParameterError(f"transfer set {name!r} has shape {tuple(adv.shape)}, not {tuple(images01.shape)}")

    note = "declared adaptive by the caller" if adaptive else "attack not declared adaptive to the defence"
    if adaptive and white_box.eot_samples == 1 and is_stochastic(model, images01[:batch_size]):
        adaptive, note = False, "the model is stochastic and the white-box attack uses no EOT samples"

    clean = clean_correct(model, images01, labels, batch_size)
    n = len(clean)
    wb = robust_correct(model, images01, labels, white_box, batch_size)
    wb_acc = _percent(wb)
    checks: list[Check] = []

    # (a) more steps never raise robust accuracy
    more_acc = _percent(robust_correct(model, images01, labels, longer, batch_size))
    tol = binomial_tolerance(wb_acc, n, z)
    ok = more_acc <= wb_acc + tol
    checks.append(Check(
        "more_steps", ok,
        (f"{longer.name}-{longer.effective_steps()} gives {more_acc:.1f}% vs {wb_acc:.1f}% at "
         f"{white_box.effective_steps()} steps (tolerance {tol:.1f} pp)")
        + ("" if ok else ": more steps raised robust accuracy, the attack has not converged or gradients are masked"),
        {"steps": white_box.effective_steps(), "acc": wb_acc, "more_steps": longer.effective_steps(),
         "more_steps_acc": more_acc, "tolerance": tol}))

    # (b) an unbounded attack reaches ~0%
    unb_acc = _percent(robust_correct(model, images01, labels, unbounded, batch_size))
    limit = max(UNBOUNDED_MAX_ACC, 100.0 / n)
    ok = unb_acc <= limit
    checks.append(Check(
        "unbounded", ok,
        f"{unbounded.name} at {unbounded.norm} eps = {unbounded.eps:g} leaves {unb_acc:.1f}% (limit {limit:.1f}%)"
        + ("" if ok else ": an unbounded attack should reach ~0%, gradients do not lead to misclassification"),
        {"eps": float(unbounded.eps), "acc": unb_acc, "limit": limit}))

    # (c) black-box / transfer attacks are not stronger than white-box
    others = {"black_box": _percent(robust_correct(model, images01, labels, black_box, batch_size))}
    for name, adv in (transfer or {}).items():
        others[f"transfer:{name}"] = _transfer_accuracy(model, images01, adv, labels, clean, batch_size)
    for name, acc in others.items():
        ok = acc >= wb_acc - tol
        what = black_box.name if name == "black_box" else name
        checks.append(Check(
            name, ok,
            f"{what} gives {acc:.1f}% vs white-box {white_box.name} {wb_acc:.1f}% (tolerance {tol:.1f} pp)"
            + ("" if ok else ": a black-box or transfer attack beats the white-box one, gradients are masked"),
            {"acc": acc, "white_box_acc": wb_acc, "tolerance": tol}))

    specs = {"white_box": white_box.as_record(), "more_steps": longer.as_record(),
             "unbounded": unbounded.as_record(), "black_box": black_box.as_record()}
    return SanityReport(n=n, clean=_percent(clean), white_box=wb_acc, white_box_spec=white_box.as_record(),
                        checks=checks, adaptive=adaptive, adaptive_note=note, specs=specs)


@torch.no_grad()
def _transfer_accuracy(model: nn.Module, images01: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor,
                       clean: torch.Tensor, batch_size: int) -> float:
    """Accuracy (%) on transfer images (robust = correct clean and on the transfer image)."""
    n = len(clean)  # a dry run evaluated only the first batch
    adv_correct = clean_correct(model, adv[:n], labels[:n], batch_size)
    return _percent(clean & adv_correct)
