"""What the training family's parameters build: the data subset, the typed config every arm
starts from, the ``repro.train.TrainConfig`` it gives, and the sweep's jobs.

An arm of this family is a function ``arm(config, data, seed, checkpoint_dir, device) -> Job``
registered with ``@repro.arms.arm(name, family="training", config=...)``. A chapter lists
the settings it trains as ``label → (arm name, config)`` (labels are identifiers: they name
the sweep's rows and the claims' arms) and :func:`jobs` turns them into the jobs of
``repro.sweep.sweep(run, jobs, seeds)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import arms as _arms
from ...sweep import Job, JobFn
from ...train import TrainConfig
from ..common import DataConfig, data_subset  # noqa: F401  (re-exported)

FAMILY = "training"


@dataclass
class TrainingConfig:
    """What every arm of the family reads: the network and its SGD recipe (each method's
    config adds its own fields)."""

    model: str = "cnn3"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


def train_config(cfg: TrainingConfig, **kw: Any) -> TrainConfig:
    """``repro.train.TrainConfig`` with the config's epochs, lr, momentum and weight decay;
    ``kw`` sets (or replaces) any other field (schedule, milestones, grad_clip, desc…)."""
    base = dict(epochs=int(cfg.epochs), lr=float(cfg.lr), momentum=float(cfg.momentum),
                weight_decay=float(cfg.weight_decay))
    return TrainConfig(**{**base, **kw})


def jobs(arms: Mapping[str, tuple[str, Any]], data: Any, device: Any = "cpu") -> dict[str, JobFn]:
    """``label → (arm name, config)`` → ``label → job(seed, checkpoint_dir) -> Job`` for
    ``repro.sweep.sweep``. Every arm name must be registered in the family (ParameterError
    listing its arms otherwise) and every label an identifier (checked by the sweep)."""
    out: dict[str, JobFn] = {}
    for label, (name, cfg) in arms.items():
        impl = _arms.get(FAMILY, name).impl

        def job(seed: int, checkpoint_dir: Path | None, impl=impl, cfg=cfg) -> Job:
            return impl(cfg, data, seed, checkpoint_dir, device)
        out[label] = job
    return out
