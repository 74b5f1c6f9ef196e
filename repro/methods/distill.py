"""Training a student: one entry point for every distillation method in the book.

A method is an *arm*: a function ``arm(setup, **hp) -> FitResult`` registered under a name.
The fixed-teacher arms (``ce``, ``kd``, ``nkd``, ``pld``, ``dist``) live here; arms that
change the model or train two networks (``uskd``, ``bdkd``, ``lsskd``, ``pskd``, …) register
themselves from their own modules. The comparison chapter runs any list of arms on one
``StudentSetup`` so every method sees the same pair, data, schedule and seeds.

Bad input fails before training: an unknown arm or hyper-parameter, a temperature ≤ 0, or a
teacher whose class count differs from the student's.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..data.loader import TensorLoader
from ..losses import distillation as D
from ..train import FitResult, LossFn, TrainConfig, fit


@dataclass
class StudentSetup:
    """Everything an arm needs besides its own hyper-parameters."""

    student: str                      # registry name
    student_kwargs: dict[str, Any]
    num_classes: int
    train: TensorLoader
    test: TensorLoader
    cfg: TrainConfig
    teacher: nn.Module | None = None  # fixed, trained teacher (None for teacher-free arms)
    teacher_arch: str | None = None   # for arms that train their own teacher (online KD)
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    seed: int = 0

    def new_student(self) -> nn.Module:
        """A freshly initialised student, seeded by ``seed`` (the same for every arm)."""
        torch.manual_seed(self.seed)
        return models.create(self.student, num_classes=self.num_classes, **self.student_kwargs)


Arm = Callable[..., FitResult]
ARMS: dict[str, Arm] = {}
ARM_DEFAULTS: dict[str, dict[str, Any]] = {}
# Modules that register further arms on import (kept lazy so importing this one stays cheap).
_ARM_MODULES = ("repro.methods.self_kd", "repro.methods.online_kd", "repro.methods.uskd")


def register_arm(name: str, defaults: dict[str, Any] | None = None) -> Callable[[Arm], Arm]:
    """Register ``fn(setup, **hp)`` as arm ``name``; ``defaults`` lists its hyper-parameters."""
    def deco(fn: Arm) -> Arm:
        ARMS[name] = fn
        ARM_DEFAULTS[name] = dict(defaults or {})
        return fn
    return deco


def _load_arm_modules() -> None:
    for mod in _ARM_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a family member not written yet
            if e.name != mod:
                raise


def available_arms() -> list[str]:
    """Names of every registered arm."""
    _load_arm_modules()
    return sorted(ARMS)


def arm_hyperparameters(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The arm's defaults updated with ``overrides``; unknown names or keys raise ``ValueError``."""
    _load_arm_modules()
    if name not in ARMS:
        raise ValueError(f"unknown distillation method {name!r}; choose from {', '.join(sorted(ARMS))}")
    hp = dict(ARM_DEFAULTS[name])
    extra = set(overrides or {}) - set(hp)
    if extra:
        raise ValueError(f"method {name!r} has no hyper-parameter(s) {sorted(extra)}; "
                         f"it takes {sorted(hp) or 'none'}")
    hp.update(overrides or {})
    for key in ("temperature", "tau_t"):
        if key in hp:
            D.check_temperature(f"{name}.{key}", hp[key])
    return hp


def check_pair(teacher: nn.Module, student: nn.Module, image_size: int = 32) -> int:
    """Return the shared class count, or raise ``ValueError`` if the two models' outputs differ."""
    def classes(m: nn.Module) -> int:
        was = m.training
        m.eval()
        dev = next(m.parameters()).device
        with torch.no_grad():
            out = m(torch.zeros(2, 3, image_size, image_size, device=dev))
        m.train(was)
        return out.shape[1]

    kt, ks = classes(teacher), classes(student)
    if kt != ks:
        raise ValueError(f"teacher predicts {kt} classes but the student predicts {ks}: "
                         "distillation needs the same label space")
    return ks


def train_arm(name: str, setup: StudentSetup, **overrides: Any) -> FitResult:
    """Validate ``name`` and its hyper-parameters, then train one student with that arm."""
    hp = arm_hyperparameters(name, overrides)
    return ARMS[name](setup, **hp)


def teacher_loss_fn(teacher: nn.Module, term: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                    ce_weight: float = 1.0) -> LossFn:
    """loss = ce_weight·CE(s, y) + term(s, t, y), with t from the frozen ``teacher`` on the same batch."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            t = teacher(x).float()
        s = model(x)
        loss = term(s.float(), t, y)
        if ce_weight:
            loss = loss + ce_weight * F.cross_entropy(s, y)
        return loss, s
    return loss_fn


def _fit_student(setup: StudentSetup, loss_fn: LossFn | None, tag: str) -> FitResult:
    student = setup.new_student()
    if setup.teacher is not None:
        setup.teacher.to(setup.train.device)
        check_pair(setup.teacher, student.to(setup.train.device), setup.train.images.shape[-1])
    return _fit_student_model(setup, student, loss_fn, tag)


def _fit_student_model(setup: StudentSetup, model: nn.Module, loss_fn: LossFn | None, tag: str,
                       **fit_kw: Any) -> FitResult:
    """``fit`` one arm's model with the setup's loaders and schedule, checkpointed under ``tag``."""
    ckpt = setup.checkpoint_dir / tag if setup.checkpoint_dir else None
    cfg = TrainConfig(**{**setup.cfg.__dict__, "desc": f"{tag} s{setup.seed}"})
    return fit(model, setup.train, setup.test, cfg, loss_fn=loss_fn, checkpoint_dir=ckpt, **fit_kw)


def _need_teacher(setup: StudentSetup, name: str) -> nn.Module:
    if setup.teacher is None:
        raise ValueError(f"method {name!r} distils from a trained teacher; pass one in StudentSetup.teacher")
    return setup.teacher


@register_arm("ce")
def ce_arm(setup: StudentSetup) -> FitResult:
    """The student alone: cross-entropy on the labels."""
    return _fit_student(setup, None, "ce")


@register_arm("kd", {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9})
def kd_arm(setup: StudentSetup, temperature: float, ce_weight: float, kd_weight: float) -> FitResult:
    """Hinton KD: ce_weight·CE + kd_weight·T²·KL (CRD-repo weights 0.1 / 0.9, T = 4)."""
    t = _need_teacher(setup, "kd")
    fn = teacher_loss_fn(t, lambda s, tl, y: kd_weight * D.kd_loss(s, tl, temperature), ce_weight)
    return _fit_student(setup, fn, "kd")


@register_arm("nkd", {"temperature": 3.0, "gamma": 3.5})
def nkd_arm(setup: StudentSetup, temperature: float, gamma: float) -> FitResult:
    """CE + NKD (CIFAR-100 config of the official code: τ = 3, γ = 3.5)."""
    t = _need_teacher(setup, "nkd")
    fn = teacher_loss_fn(t, lambda s, tl, y: D.nkd_loss(s, tl, y, temperature, gamma))
    return _fit_student(setup, fn, "nkd")


@register_arm("pld", {"tau_t": 1.0})
def pld_arm(setup: StudentSetup, tau_t: float) -> FitResult:
    """PLD alone (no CE term), teacher temperature τ_T."""
    t = _need_teacher(setup, "pld")
    fn = teacher_loss_fn(t, lambda s, tl, y: D.pld_loss(s, tl, y, tau_t), ce_weight=0.0)
    return _fit_student(setup, fn, f"pld-tau{tau_t:g}")


@register_arm("dist", {"temperature": 4.0, "beta": 2.0, "gamma": 2.0})
def dist_arm(setup: StudentSetup, temperature: float, beta: float, gamma: float) -> FitResult:
    """CE + DIST (α = 1, β = 2, γ = 2, τ = 4 as in the PLD paper's baseline)."""
    t = _need_teacher(setup, "dist")
    fn = teacher_loss_fn(t, lambda s, tl, y: D.dist_loss(s, tl, temperature, beta, gamma))
    return _fit_student(setup, fn, "dist")


# --------------------------------------------------------------------------- the shared protocol
def _width(width: int) -> dict[str, Any]:
    return {"width": width} if width else {}


def protocol_config(params: dict[str, Any], epochs: int | None = None, desc: str = "") -> TrainConfig:
    """The TrainConfig every method of the family trains with (SGD, momentum 0.9)."""
    return TrainConfig(epochs=params["epochs"] if epochs is None else epochs, lr=params["lr"],
                       weight_decay=params["weight_decay"], schedule=params["schedule"],
                       milestones=tuple(params["milestones"]), desc=desc)


def protocol_data(run):
    """The protocol's data subset (recorded in the run)."""
    p = run.params
    return run.data(classes=p["classes"], per_class=p["per_class"] or None,
                    test_per_class=p["test_per_class"] or None, image_size=p["image_size"], seed=p["data_seed"])


def teacher_spec(params: dict[str, Any]):
    """The TeacherSpec the protocol's parameters name."""
    from ..teachers import TeacherSpec

    cfg = protocol_config(params, epochs=params["teacher_epochs"])
    train = {k: v for k, v in cfg.__dict__.items() if k not in ("desc", "progress", "checkpoint_every_s")}
    train["milestones"] = list(train["milestones"])
    return TeacherSpec(arch=params["teacher"], arch_kwargs=_width(params["teacher_width"]),
                       classes=params["classes"], per_class=params["per_class"] or None,
                       test_per_class=params["test_per_class"] or None, image_size=params["image_size"],
                       data_seed=params["data_seed"], train=train, batch_size=params["batch_size"], seed=0)


def protocol_teacher(run, data):
    """Load (or train once and store) the protocol's teacher; its accuracy and cost go in the record."""
    from .. import teachers

    t = teachers.get(teacher_spec(run.params), data, run.device)
    run.note(teacher={"arch": t.spec.label(), "key": t.key, "test_acc": t.test_acc, "built_now": t.built_now,
                      "train_seconds": t.info.get("train_seconds"), "params": t.info.get("params"),
                      "stored_at": str(t.path) if t.path else None})
    print(f"teacher {t.spec.label()} [{t.key}]: test top-1 {t.test_acc:.1f}% "
          f"({'trained now' if t.built_now else 'loaded'}, {t.info.get('train_seconds', 0):.0f} s to train)")
    return t


def protocol_setup(run, data, seed: int, teacher=None) -> StudentSetup:
    """A StudentSetup for one seed: seeded loaders, the protocol's student and schedule."""
    p = run.params
    return StudentSetup(
        student=p["student"], student_kwargs=_width(p["student_width"]), num_classes=data.num_classes,
        train=data.loader("train", p["batch_size"], run.device, seed=seed),
        test=data.loader("test", 512, run.device), cfg=protocol_config(p),
        teacher=None if teacher is None else teacher.model,
        teacher_arch=p["teacher"], teacher_kwargs=_width(p["teacher_width"]),
        checkpoint_dir=run.checkpoint_dir("seed", seed), seed=seed)
