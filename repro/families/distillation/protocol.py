"""The distillation protocol: what its parameters build, and the config every arm starts from.

``DistillConfig`` holds the protocol's parameters (``repro/papers/protocols/distillation.toml``:
the data subset, the teacher/student pair and the schedule); every arm's config subclasses it
and adds the arm's own hyper-parameters. From a config this module builds

* the data (``data``), the shared teacher (``teacher_spec`` / ``teacher``), and
* one seed's ``StudentSetup`` (``setup``): seeded loaders, the student, the schedule, the
  checkpoint folder — everything an arm needs besides its own hyper-parameters;

and turns labelled arms with their configs into sweep jobs (``jobs``, ``sweep``): each job
trains one arm for one seed and evaluates the student (top-1, ECE, NLL, mean confidence, on
``n_test`` test images).

An arm is a function ``arm(setup, cfg) -> FitResult`` registered with
``@repro.arms.arm(name, family="distillation", config=...)`` in a module of ``arms/``; the
helpers it trains with (``fit_student``, ``teacher_loss_fn``, ``check_pair``) are here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import arms as registry
from ... import metrics, models
from ...data.loader import TensorLoader
from ...sweep import Job, SweepResult
from ...sweep import sweep as run_sweep
from ...train import FitResult, LossFn, TrainConfig, fit, predict

FAMILY = "distillation"


# --------------------------------------------------------------------------- typed config
@dataclass(frozen=True)
class DistillConfig:
    """The protocol's parameters (defaults: the paper tier); every arm's config extends it."""

    classes: int = 100
    per_class: int = 0
    test_per_class: int = 0
    image_size: int = 32
    data_seed: int = 0
    teacher: str = "resnet56"
    teacher_width: int = 0
    teacher_epochs: int = 240
    student: str = "resnet20"
    student_width: int = 0
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 0.0005
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)


def _width(width: int) -> dict[str, Any]:
    return {"width": width} if width else {}


def train_config(cfg: DistillConfig, epochs: int | None = None, desc: str = "") -> TrainConfig:
    """The TrainConfig every method of the family trains with (SGD, momentum 0.9)."""
    return TrainConfig(epochs=cfg.epochs if epochs is None else epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       schedule=cfg.schedule, milestones=tuple(cfg.milestones), desc=desc)


# --------------------------------------------------------------------------- data and teacher
def data(run, cfg: DistillConfig | None = None):
    """The protocol's data subset (recorded in the run)."""
    cfg = cfg or registry.make_config(DistillConfig, run.params)
    return run.data(classes=cfg.classes, per_class=cfg.per_class or None, test_per_class=cfg.test_per_class or None,
                    image_size=cfg.image_size, seed=cfg.data_seed)


def teacher_spec(cfg: DistillConfig):
    """The TeacherSpec the protocol's parameters name."""
    from .teachers import TeacherSpec

    tc = train_config(cfg, epochs=cfg.teacher_epochs)
    train = {k: v for k, v in tc.__dict__.items() if k not in ("desc", "progress", "checkpoint_every_s")}
    train["milestones"] = list(train["milestones"])
    return TeacherSpec(arch=cfg.teacher, arch_kwargs=_width(cfg.teacher_width), classes=cfg.classes,
                       per_class=cfg.per_class or None, test_per_class=cfg.test_per_class or None,
                       image_size=cfg.image_size, data_seed=cfg.data_seed, train=train, batch_size=cfg.batch_size,
                       seed=0)


def teacher(run, data):
    """Load (or train once and store) the protocol's teacher; its accuracy and cost go in the record."""
    from . import teachers

    t = teachers.get(teacher_spec(registry.make_config(DistillConfig, run.params)), data, run.device)
    run.note(teacher={"arch": t.spec.label(), "key": t.key, "test_acc": t.test_acc, "built_now": t.built_now,
                      "train_seconds": t.info.get("train_seconds"), "params": t.info.get("params"),
                      "stored_at": str(t.path) if t.path else None})
    print(f"teacher {t.spec.label()} [{t.key}]: test top-1 {t.test_acc:.1f}% "
          f"({'trained now' if t.built_now else 'loaded'}, {t.info.get('train_seconds', 0):.0f} s to train)")
    return t


# --------------------------------------------------------------------------- one seed's setup
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


def setup(cfg: DistillConfig, data, seed: int, device: torch.device | str = "cpu", teacher: nn.Module | None = None,
          checkpoint_dir: Path | None = None) -> StudentSetup:
    """A StudentSetup for one seed: seeded loaders, the protocol's student and schedule."""
    return StudentSetup(
        student=cfg.student, student_kwargs=_width(cfg.student_width), num_classes=data.num_classes,
        train=data.loader("train", cfg.batch_size, device, seed=seed), test=data.loader("test", 512, device),
        cfg=train_config(cfg), teacher=teacher, teacher_arch=cfg.teacher, teacher_kwargs=_width(cfg.teacher_width),
        checkpoint_dir=checkpoint_dir, seed=seed)


# --------------------------------------------------------------------------- training helpers
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


def need_teacher(setup: StudentSetup, name: str) -> nn.Module:
    if setup.teacher is None:
        raise ValueError(f"method {name!r} distils from a trained teacher; pass one in StudentSetup.teacher")
    return setup.teacher


def fit_student(setup: StudentSetup, loss_fn: LossFn | None, tag: str) -> FitResult:
    """Train a fresh student (checked against the teacher's label space, if any) with ``loss_fn``."""
    student = setup.new_student()
    if setup.teacher is not None:
        setup.teacher.to(setup.train.device)
        check_pair(setup.teacher, student.to(setup.train.device), setup.train.images.shape[-1])
    return fit_model(setup, student, loss_fn, tag)


def fit_model(setup: StudentSetup, model: nn.Module, loss_fn: LossFn | None, tag: str, **fit_kw: Any) -> FitResult:
    """``fit`` one arm's model with the setup's loaders and schedule, checkpointed under ``tag``."""
    ckpt = setup.checkpoint_dir / tag if setup.checkpoint_dir else None
    cfg = TrainConfig(**{**setup.cfg.__dict__, "desc": f"{tag} s{setup.seed}"})
    return fit(model, setup.train, setup.test, cfg, loss_fn=loss_fn, checkpoint_dir=ckpt, **fit_kw)


# --------------------------------------------------------------------------- evaluation
def evaluate_student(model: nn.Module, test) -> dict[str, float]:
    """Top-1 (%), ECE (%, 15 bins), NLL and mean confidence of a trained student on ``test``."""
    logits, y = predict(model, test)
    probs = logits.softmax(1)
    return {"top1": metrics.top1(logits, y), "ece": 100 * metrics.ece(probs, y, n_bins=15),
            "nll": F.cross_entropy(logits, y).item(), "confidence": 100 * probs.max(1).values.mean().item()}


@torch.no_grad()
def test_probs(model: nn.Module, test) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities [N, C] and labels [N] of a trained student on ``test``."""
    logits, y = predict(model, test)
    return logits.softmax(1), y


# --------------------------------------------------------------------------- arms → sweep jobs
def arm_config(name: str, params: Mapping[str, Any] | None = None, **overrides: Any):
    """Arm ``name``'s config from the chapter's parameters plus overrides (ParameterError for an
    unknown arm, field or ill-typed value, ValueError for an out-of-range one)."""
    return registry.make_config(registry.get(FAMILY, name).config, params, **overrides)


def train(name: str, setup: StudentSetup, cfg: DistillConfig | None = None) -> FitResult:
    """Train one student with arm ``name`` (config: the arm's defaults unless given)."""
    a = registry.get(FAMILY, name)
    if cfg is None:
        cfg = registry.make_config(a.config)
    elif not isinstance(cfg, a.config):
        raise TypeError(f"arm {name!r} takes a {a.config.__name__}, not a {type(cfg).__name__}")
    return a.impl(setup, cfg)


Arms = Mapping[str, tuple[str, DistillConfig]]


def jobs(run, data, teacher, arms: Arms, metrics: Callable[[nn.Module, Any], dict[str, float]] | None = None
         ) -> dict[str, Callable[[int, Path | None], Job]]:
    """label → sweep job training arm (name, config) for a seed on the protocol's setup.

    ``teacher``: the protocol's fixed teacher (a ``teachers.Teacher`` or a bare module; None for
    chapters without one). The Job's metrics are the student's top-1, ECE, NLL and mean
    confidence on the ``n_test`` test images; ``extra`` keeps the arm name, history, throughput
    and whatever the arm adds (its ``FitResult.extra``). ``metrics(model, test)`` may add further
    metrics of the trained model (an online teacher's, for instance). Labels must be identifiers
    (they name the rows).
    """
    t_model = getattr(teacher, "model", teacher)
    for label, (name, cfg) in arms.items():
        a = registry.get(FAMILY, name)
        if not isinstance(cfg, a.config):
            raise TypeError(f"{label}: arm {name!r} takes a {a.config.__name__}, not a {type(cfg).__name__}")

    def make(name: str, cfg: DistillConfig):
        def job(seed: int, checkpoint_dir: Path | None) -> Job:
            s = setup(cfg, data, seed, run.device, t_model, checkpoint_dir)
            res = train(name, s, cfg)
            ev = evaluate_student(res.model, s.test)
            if metrics is not None:
                ev.update(metrics(res.model, s.test))
            extra = {"arm": name, "history": res.history, "images_per_s": res.images_per_s,
                     "resumed": res.resumed_from_epoch is not None, **res.extra}
            return Job.from_fits([res], ev, n_test=s.test.num_samples, extra=extra, model=res.model)
        return job

    return {label: make(name, cfg) for label, (name, cfg) in arms.items()}


def sweep(run, data, teacher, arms: Arms, seeds: Sequence[int] | None = None, keep_models: bool = False,
          **kw: Any) -> SweepResult:
    """Train every (seed, labelled arm) with ``repro.sweep.sweep``; the rows go into the record."""
    return run_sweep(run, jobs(run, data, teacher, arms, **kw), seeds, keep_models=keep_models)


def configs(params: Mapping[str, Any], arms: Mapping[str, tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, Any]]:
    """label → (arm, overrides) to label → (arm, config built from ``params`` + overrides)."""
    return {label: (name, arm_config(name, params, **over)) for label, (name, over) in arms.items()}


def hyperparameters(cfg: DistillConfig) -> dict[str, Any]:
    """An arm config's own fields (those beyond the protocol's), for printing and the record."""
    base = {f.name for f in dataclasses.fields(DistillConfig)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in base}


def comparison_arms(methods: Sequence[str], params: Mapping[str, Any], base: str = "ce") -> dict[str, tuple[str, Any]]:
    """label → (arm, config) for a comparison of registered arms under their own names, each
    config built from the chapter's ``params``; the ``base`` arm is required, none may repeat."""
    if base not in methods:
        raise ValueError(f"the comparison needs the {base!r} baseline in methods")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat: {list(methods)}")
    return {m: (m, arm_config(m, params)) for m in methods}
