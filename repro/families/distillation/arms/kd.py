"""The fixed-teacher arms: CE alone, Hinton KD, NKD, PLD and DIST.

Each trains the protocol's student from the protocol's frozen teacher; the losses are in
``repro.losses.distillation``. Hyper-parameters are prefixed with the arm's name, so a
chapter parameter of the same name (``nkd_temperature``, ``pld_tau_t``…) sets them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ....arms import arm
from ....losses import distillation as D
from ....train import FitResult
from ..protocol import DistillConfig, StudentSetup, fit_student, need_teacher, teacher_loss_fn


@arm("ce", family="distillation", config=DistillConfig)
def ce_arm(setup: StudentSetup, cfg: DistillConfig) -> FitResult:
    """The student alone: cross-entropy on the labels."""
    return fit_student(setup, None, "ce")


@dataclass(frozen=True)
class KDConfig(DistillConfig):
    """Hinton KD: ce_weight·CE + kd_weight·T²·KL (CRD-repo weights 0.1 / 0.9, T = 4)."""

    kd_temperature: float = 4.0
    kd_ce_weight: float = 0.1
    kd_weight: float = 0.9

    def __post_init__(self) -> None:
        D.check_temperature("kd_temperature", self.kd_temperature)


@arm("kd", family="distillation", config=KDConfig)
def kd_arm(setup: StudentSetup, cfg: KDConfig) -> FitResult:
    """Hinton KD: ce_weight·CE + kd_weight·T²·KL (CRD-repo weights 0.1 / 0.9, T = 4)."""
    t = need_teacher(setup, "kd")
    T, w = cfg.kd_temperature, cfg.kd_weight
    fn = teacher_loss_fn(t, lambda s, tl, y: w * D.kd_loss(s, tl, T), cfg.kd_ce_weight)
    return fit_student(setup, fn, "kd")


@dataclass(frozen=True)
class NKDConfig(DistillConfig):
    """NKD's τ and γ (CIFAR-100 config of the official code: τ = 3, γ = 3.5)."""

    nkd_temperature: float = 3.0
    nkd_gamma: float = 3.5

    def __post_init__(self) -> None:
        D.check_temperature("nkd_temperature", self.nkd_temperature)


@arm("nkd", family="distillation", config=NKDConfig)
def nkd_arm(setup: StudentSetup, cfg: NKDConfig) -> FitResult:
    """CE + NKD (CIFAR-100 config of the official code: τ = 3, γ = 3.5)."""
    t = need_teacher(setup, "nkd")
    fn = teacher_loss_fn(t, lambda s, tl, y: D.nkd_loss(s, tl, y, cfg.nkd_temperature, cfg.nkd_gamma))
    return fit_student(setup, fn, "nkd")


@dataclass(frozen=True)
class PLDConfig(DistillConfig):
    """PLD's teacher temperature τ_T."""

    pld_tau_t: float = 1.0

    def __post_init__(self) -> None:
        D.check_temperature("pld_tau_t", self.pld_tau_t)


@arm("pld", family="distillation", config=PLDConfig)
def pld_arm(setup: StudentSetup, cfg: PLDConfig) -> FitResult:
    """PLD alone (no CE term), teacher temperature τ_T."""
    t = need_teacher(setup, "pld")
    tau = cfg.pld_tau_t
    fn = teacher_loss_fn(t, lambda s, tl, y: D.pld_loss(s, tl, y, tau), ce_weight=0.0)
    return fit_student(setup, fn, f"pld-tau{tau:g}")


@dataclass(frozen=True)
class DISTConfig(DistillConfig):
    """DIST's τ, β (inter-class) and γ (intra-class) weights."""

    dist_temperature: float = 4.0
    dist_beta: float = 2.0
    dist_gamma: float = 2.0

    def __post_init__(self) -> None:
        D.check_temperature("dist_temperature", self.dist_temperature)


@arm("dist", family="distillation", config=DISTConfig)
def dist_arm(setup: StudentSetup, cfg: DISTConfig) -> FitResult:
    """CE + DIST (α = 1, β = 2, γ = 2, τ = 4 as in the PLD paper's baseline)."""
    t = need_teacher(setup, "dist")
    fn = teacher_loss_fn(t, lambda s, tl, y: D.dist_loss(s, tl, cfg.dist_temperature, cfg.dist_beta, cfg.dist_gamma))
    return fit_student(setup, fn, "dist")


# --------------------------------------------------------------------------- chapter 15's plan
def pld_label(tau_t: float, claim_tau_t: float | None = None) -> str:
    """The arm label of PLD at ``tau_t``: ``pld`` for the temperature the claims judge, else
    ``pld_tau<τ>`` (``pld_tau1``, ``pld_tau0_5``)."""
    if claim_tau_t is not None and float(tau_t) == float(claim_tau_t):
        return "pld"
    return f"pld_tau{float(tau_t):g}".replace(".", "_").replace("-", "m")


def pld_plan(tau_ts, claim_tau_t: float, params=None) -> tuple[dict[str, tuple[str, DistillConfig]], dict[str, str]]:
    """Chapter 15's arms — CE, KD, DIST (their defaults: KD CE 0.1 + KL 0.9 at T 4; DIST β 2,
    γ 2 at τ 4) and one PLD per τ_T, the judged one labelled ``pld`` — with their configs built
    from ``params``, and each label's display name (``PLD τ=4``).

    Raises ``ValueError`` before any training for an empty or repeated τ_T list, a claim τ_T
    that is not trained, or a non-positive temperature.
    """
    from ....arms import get, make_config

    taus = [float(t) for t in tau_ts]
    if not taus:
        raise ValueError("tau_ts must list at least one PLD teacher temperature")
    if len(set(taus)) != len(taus):
        raise ValueError(f"tau_ts must not repeat: {list(tau_ts)}")
    if float(claim_tau_t) not in taus:
        raise ValueError(f"claim_tau_t={claim_tau_t} must be one of tau_ts={list(tau_ts)}")
    arms = {name: (name, make_config(get("distillation", name).config, params)) for name in ("ce", "kd", "dist")}
    names = {"ce": "CE", "kd": "KD", "dist": "DIST"}
    for t in taus:
        label = pld_label(t, claim_tau_t)
        arms[label] = ("pld", make_config(PLDConfig, params, pld_tau_t=t))
        names[label] = f"PLD τ={t:g}"
    return arms, names
