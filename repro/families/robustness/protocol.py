"""What the robustness family's parameters build: the data subset, the typed config of one
trained model (network, SGD recipe, optional adversarial training, optional training-set
poison, optional robustness evaluation), its ``repro.train.TrainConfig``, and the sweep's jobs.

A chapter lists the models it trains as ``label → (arm name, RobustConfig)`` (labels are
identifiers: they name the sweep's rows and the claims' arms) and :func:`jobs` turns them into
the jobs of ``repro.sweep.sweep(run, jobs)``. Every config of one chapter comes from the same
resolved parameters through :func:`robust_config`, so the recipe is shared and arms differ only
in what the chapter varies (adversarial training, the poison, the network).

Bad input fails in :func:`jobs`, before the first job trains: an unknown arm or model, a
recipe out of range, an adversarial-training ε outside [0, 1], an unknown attack or norm or an
ε out of range in the evaluation's attacks (``repro.families.robustness.attacks.check_attack``),
a poison fraction outside [0, 1]. An attack on a model in train mode and images outside
[0, 1] are refused by the evaluation itself (:mod:`.evaluate`), also before any attack runs.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ... import arms as _arms
from ... import models
from ...arms import make_config
from ...data.poison import CudaPoison
from ...errors import ParameterError, check_number
from ...sweep import Job, JobFn
from ...train import TrainConfig
from .. import common
from ..common import DataConfig, data_fingerprint, data_subset  # noqa: F401  (re-exported)
from .evaluate import EvalConfig
from .training import AdvTrainConfig

FAMILY = "robustness"
SCHEDULES = ("cosine", "step", "constant", "linear")
#: What an arm trains on when its config carries a poison: every image ("all", the poisoned
#: ones included) or only the images the poison leaves clean ("unpoisoned": the control that
#: tells whether the poisoned images hurt or merely do not help).
TRAIN_ON = ("all", "unpoisoned")


@dataclass
class RobustConfig:
    """One trained model of the family.

    ``model``: a ``repro.models`` name; ``width``: the width of ``cnn3``-style networks (0:
    the architecture's own). The SGD recipe every arm of a chapter shares: ``epochs``,
    ``batch_size``, ``lr``, ``momentum``, ``weight_decay``, ``schedule`` (cosine, step or
    constant; ``milestones`` of the step schedule as fractions of training ≤ 1 or epochs > 1,
    ×``gamma``), ``warmup_epochs``, ``grad_clip`` (0: none); crop-and-flip augmentation (the
    loader's). ``adv``: adversarial training (:class:`.training.AdvTrainConfig`; None: plain
    CE). ``poison``: a training-set poison (``repro.data.poison.CudaPoison``; None: clean
    data) and ``train_on`` ("all" or "unpoisoned", :data:`TRAIN_ON`). ``eval``: the robustness
    evaluation after training (:class:`.evaluate.EvalConfig`; None: clean test accuracy only).
    ``init``: fine-tuning — the model starts from the weights the family's ``standard`` arm
    trains under this other config (same seed; trained once and shared, see :func:`jobs`), and
    this config's recipe is the fine-tuning's (None: from scratch). ``frozen_bn``: BatchNorm
    layers stay in eval mode during training (running statistics frozen). ``track_images``:
    after every epoch, clean and robust accuracy under the evaluation's white-box attack on
    the first ``track_images`` images of its fixed subset (0: none; needs ``eval``; it never
    changes the trained weights, so the recipe ignores it). ``title``: the arm's display name.
    """

    model: str = "resnet18"
    width: int = 0
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0
    adv: AdvTrainConfig | None = None
    poison: CudaPoison | None = None
    train_on: str = "all"
    eval: EvalConfig | None = None
    init: RobustConfig | None = None
    frozen_bn: bool = False
    track_images: int = 0
    title: str = ""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"{name} must be an integer ≥ 1, got {v!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 0:
            raise ParameterError(f"width must be an integer ≥ 0 (0: the architecture's own), got {self.width!r}")
        check_number("lr", self.lr, 0.0, lo_open=True)
        check_number("momentum", self.momentum, 0.0, 1.0)
        check_number("weight_decay", self.weight_decay, 0.0)
        check_number("warmup_epochs", self.warmup_epochs, 0.0)
        check_number("grad_clip", self.grad_clip, 0.0)
        check_number("gamma", self.gamma, 0.0, 1.0, lo_open=True)
        if self.schedule not in SCHEDULES:
            raise ParameterError(f"unknown schedule {self.schedule!r}: one of {', '.join(SCHEDULES)}")
        self.milestones = tuple(float(m) for m in self.milestones)
        if any(not math.isfinite(m) or m <= 0 for m in self.milestones):
            raise ParameterError(f"milestones must be > 0 (fractions ≤ 1 or epochs), got {list(self.milestones)}")
        if self.model not in models.available():
            raise ParameterError(f"unknown model {self.model!r}; available: {', '.join(models.available())}")
        for name, cls in (("adv", AdvTrainConfig), ("poison", CudaPoison), ("eval", EvalConfig)):
            v = getattr(self, name)
            if v is not None and not isinstance(v, cls):
                raise ParameterError(f"{name} must be a {cls.__name__} or None, got {type(v).__name__}")
        if self.init is not None and not isinstance(self.init, RobustConfig):
            raise ParameterError(f"init must be a RobustConfig or None, got {type(self.init).__name__}")
        if self.init is not None and self.init.model != self.model:
            raise ParameterError(f"init trains a {self.init.model}, but this config fine-tunes a {self.model}")
        if isinstance(self.track_images, bool) or not isinstance(self.track_images, int) or self.track_images < 0:
            raise ParameterError(f"track_images must be an integer ≥ 0, got {self.track_images!r}")
        if self.track_images and self.eval is None:
            raise ParameterError("track_images needs an evaluation (eval) whose attack it tracks")
        if self.train_on not in TRAIN_ON:
            raise ParameterError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {self.train_on!r}")
        if self.train_on != "all" and self.poison is None:
            raise ParameterError("train_on='unpoisoned' needs a poison to say which images it leaves clean")

    @property
    def adversarial(self) -> bool:
        """Whether the model is trained adversarially."""
        return self.adv is not None and self.adv.method != "none"

    def as_record(self) -> dict[str, Any]:
        """Every setting, nested configs as their own records."""
        return {"model": self.model, "width": self.width, "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "schedule": self.schedule, "milestones": list(self.milestones), "gamma": self.gamma,
                "warmup_epochs": self.warmup_epochs, "grad_clip": self.grad_clip,
                "adv": self.adv.as_record() if self.adv is not None else None,
                "poison": self.poison.as_record() if self.poison is not None else None, "train_on": self.train_on,
                "eval": self.eval.as_record() if self.eval is not None else None,
                "init": self.init.as_record() if self.init is not None else None, "frozen_bn": self.frozen_bn,
                "track_images": self.track_images, "title": self.title}

    def recipe(self) -> dict[str, Any]:
        """What determines the trained weights: every setting but the title and the
        evaluation (two arms that differ only there share one checkpoint)."""
        rec = self.as_record()
        rec.pop("title"), rec.pop("eval"), rec.pop("track_images")
        if self.init is not None:
            rec["init"] = self.init.recipe()
        return rec


def robust_config(params: Mapping[str, Any], title: str = "", **overrides: Any) -> RobustConfig:
    """A :class:`RobustConfig` with the recipe from a chapter's resolved ``params`` (fields
    of the same name) and ``overrides`` (``adv``, ``poison``, ``eval``, ``epochs``…)."""
    return make_config(RobustConfig, params, title=title, **overrides)


def adv_config(params: Mapping[str, Any], **overrides: Any) -> AdvTrainConfig:
    """The chapter's adversarial-training recipe from its ``at_*`` parameters: ``at_method``,
    ``at_eps``, ``at_steps`` (0: the method's default), ``at_step_size`` (0: the method's
    default)."""
    kw: dict[str, Any] = {"method": params["at_method"], "eps": params["at_eps"],
                          "steps": params["at_steps"] or None, "step_size": params["at_step_size"] or None}
    kw.update(overrides)
    if kw["method"] == "fgsm_rs":
        kw["steps"] = None  # FGSM takes exactly one step whatever at_steps says
    return AdvTrainConfig(**kw)


def build_model(cfg: RobustConfig, num_classes: int, seed: int) -> nn.Module:
    """The arm's network with seeded initial weights."""
    kw: dict[str, Any] = {"width": cfg.width} if cfg.width else {}
    torch.manual_seed(seed)
    try:
        return models.create(cfg.model, num_classes=num_classes, **kw)
    except TypeError as exc:
        raise ParameterError(f"{cfg.model}: {exc} (width applies to cnn3-style networks only)") from None


def train_config(cfg: RobustConfig, **kw: Any) -> TrainConfig:
    """The family's recipe as a ``repro.train.TrainConfig`` (``kw`` sets any other field)."""
    base = dict(epochs=int(cfg.epochs), optimizer="sgd", lr=float(cfg.lr), momentum=float(cfg.momentum),
                weight_decay=float(cfg.weight_decay), schedule=cfg.schedule, milestones=tuple(cfg.milestones),
                gamma=float(cfg.gamma), warmup_epochs=float(cfg.warmup_epochs),
                grad_clip=float(cfg.grad_clip) or None, frozen_bn=bool(cfg.frozen_bn))
    return TrainConfig(**{**base, **kw})


#: ``(config, seed, own=False, of="") → checkpoint folder`` of a model a job trains: its own
#: (``own``), another arm's (``of``) or a ``standard`` model it builds on (None: no checkpoints).
CheckpointFor = Callable[..., "Path | None"]


def shared_checkpoint_dir(run: Any, arm: str, cfg: RobustConfig, fingerprint: str, seed: int) -> Path:
    """The family's checkpoint folder of the model ``arm`` trains under ``cfg``, shared by
    every chapter.

    Keyed by the recipe (:meth:`RobustConfig.recipe`: the evaluation and the title do not
    count), the data's content, the seed and the package's source hash (plus the run id under
    ``repro run --fresh``), so the comparison chapter, and chapters whose baselines coincide
    (a standard and a PGD-AT network of the same recipe), find a finished job and load it
    instead of training it again. Its training cost is still counted in the record (``fit``
    reports the cost of producing a model, resumed or not)."""
    return common.shared_checkpoint_dir(run, FAMILY, f"{arm}-{cfg.model}-s{seed}",
                                        [arm, cfg.recipe(), fingerprint, seed])


def jobs(arms: Mapping[str, tuple[str, RobustConfig]], data: Any, device: Any = "cpu",
         run: Any = None) -> dict[str, JobFn]:
    """``label → (arm name, config)`` → ``label → job(seed, checkpoint_dir) -> Job`` for
    ``repro.sweep.sweep``. Checked here, before any job trains: every arm name is registered
    in the family (ParameterError listing its arms otherwise), every config is a
    :class:`RobustConfig` (whose own checks cover the recipe, the adversarial-training ε and
    the poison), every evaluation attack passes ``check_attack`` (unknown attack or norm, ε
    out of range), the evaluation asks for no more images than the test set has, and every
    network builds. With ``run``, every model a job trains keeps its checkpoints in the
    family's shared folders (:func:`checkpoint_folders`), so a model two chapters (or the
    comparison chapter) train under the same recipe is trained once."""
    out: dict[str, JobFn] = {}
    fingerprint = data_fingerprint(data) if run is not None else ""
    for label, (name, cfg) in arms.items():
        impl = _arms.get(FAMILY, name).impl
        if not isinstance(cfg, RobustConfig):
            raise ParameterError(f"{label}: the robustness family's arms take a RobustConfig, got {type(cfg).__name__}")
        if cfg.eval is not None:
            cfg.eval.check()
            n_test = len(data.y_test)
            if cfg.eval.images > n_test:
                raise ParameterError(f"{label}: the evaluation asks for {cfg.eval.images} images but the test set "
                                     f"has {n_test}")
        build_model(cfg, data.num_classes, 0)  # a bad model setting fails here

        def job(seed: int, checkpoint_dir: Path | None, impl=impl, cfg=cfg, name=name) -> Job:
            return impl(cfg, data, seed, checkpoint_dir, device,
                        checkpoints=checkpoint_folders(run, fingerprint, checkpoint_dir, name))
        out[label] = job
    return out


def checkpoint_folders(run: Any, fingerprint: str, job_dir: Path | None, arm: str) -> CheckpointFor:
    """``where(cfg, seed, own=False, of="")``: the checkpoint folder of a model a job of
    ``arm`` trains. ``own``: the job's own model (keyed by ``arm``); ``of``: the model another
    arm trains under ``cfg`` (e.g. the comparison chapter loading a chapter's trained model);
    otherwise a model the job builds on, trained by the ``standard`` arm under ``cfg`` (a
    fine-tuning's start, a zoo of source models). With ``run`` these are the family's shared folders (:func:`shared_checkpoint_dir`),
    so every chapter that needs the same model trains it once; without it, the job's own
    folder from the sweep and sub-folders of it named by the recipe. No folder (None) when
    the sweep gives the job none."""
    def where(cfg: RobustConfig, seed: int, own: bool = False, of: str = "") -> Path | None:
        if job_dir is None:
            return None
        key = of or (arm if own else "standard")
        if run is not None:
            return shared_checkpoint_dir(run, key, cfg, fingerprint, seed)
        if own and not of:
            return job_dir
        digest = hashlib.sha256(json.dumps([key, cfg.recipe(), seed], sort_keys=True, default=str).encode()).hexdigest()[:12]
        return job_dir / f"{key}-{cfg.model}-s{seed}-{digest}"
    return where
