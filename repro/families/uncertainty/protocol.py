"""What the uncertainty family's parameters build: the data, the typed config every model arm
starts from, and the arm contract.

An arm of this family is a *trained model*: a function registered with
``@repro.arms.arm(name, family="uncertainty", config=...)``::

    def train(cfg, data, seed, checkpoint_dir, device) -> Trained

whose model follows the package's convention: ``model.features(x)`` gives the features that
distance-based detectors score (``[B, D]``) and ``model(x)`` gives class logits (``[B, C]``)
for the logit-based ones. The chapter never keeps the model: it asks
:func:`repro.families.uncertainty.predictions.cached` for the model's logits and features on
every evaluation set, which trains it only when no artifact for that setting exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ...arms import make_config
from ...train import FitResult, TrainConfig

FAMILY = "uncertainty"


@dataclass
class DataConfig:
    """The seeded CIFAR-100 subset of a chapter.

    classes: in-distribution classes (100 = all); per_class: training images per class
    (0 = all that remain after the calibration split); calib_per_class: training images per
    class held out for calibration (0 = none); test_per_class: test images per class (0 = all
    100); held_out: extra classes whose test images form the semantic-shift OOD set (0 =
    none); image_size in px; data_seed picks classes and images.
    """

    classes: int = 100
    per_class: int = 0
    calib_per_class: int = 0
    test_per_class: int = 0
    held_out: int = 0
    image_size: int = 32
    data_seed: int = 0


@dataclass
class ModelConfig:
    """What every model arm reads: the network and its SGD recipe (each method's config adds
    its own fields)."""

    model: str = "resnet18"      # a repro.models name
    width: int = 0               # width of cnn3-style models (0: the architecture's own)
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0

    def model_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of ``repro.models.create``."""
        return {"width": int(self.width)} if self.width else {}


def train_config(cfg: ModelConfig, **kw: Any) -> TrainConfig:
    """``repro.train.TrainConfig`` with the config's recipe (SGD, cosine); ``kw`` replaces any
    field."""
    base = dict(epochs=int(cfg.epochs), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay),
                warmup_epochs=float(cfg.warmup_epochs), schedule="cosine", momentum=0.9)
    return TrainConfig(**{**base, **kw})


@dataclass
class Trained:
    """A trained model arm: the model (eval mode is set by the caller), the fits that made it
    (their cost is summed into the job's) and JSON-able facts for the record."""

    model: nn.Module
    fits: list[FitResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def data_config(params: dict[str, Any]) -> DataConfig:
    """The chapter's :class:`DataConfig` from its resolved parameters."""
    return make_config(DataConfig, params)


@dataclass
class FamilyData:
    """A chapter's data: the in-distribution ``Dataset`` (train without the calibration
    split, and its test set), the calibration split, and the held-out classes' test images
    (the semantic-shift OOD set; empty when ``held_out`` is 0)."""

    data: Any                      # repro.data.Dataset
    x_calib: Any                   # uint8 [N, 3, S, S]
    y_calib: Any                   # int64 [N]
    x_held_out: Any                # uint8 [M, 3, S, S]
    held_out_classes: list[int]


def load_data(run: Any, cfg: DataConfig) -> FamilyData:
    """The chapter's data from its :class:`DataConfig`, recorded in the run.

    Classes: a seeded pick of ``classes + held_out`` CIFAR-100 classes; the first ``classes``
    are in-distribution, the rest are only ever seen as OOD test images. The calibration split
    is ``calib_per_class`` training images per class, drawn before training and never trained
    on.
    """
    import numpy as np
    import torch

    from ...data import pick_classes, train_val_split
    from ...errors import ParameterError

    if cfg.classes < 2 or cfg.classes + cfg.held_out > 100:
        raise ParameterError(f"classes ({cfg.classes}) + held_out ({cfg.held_out}) must lie in 2..100")
    if cfg.calib_per_class < 0 or cfg.per_class < 0 or cfg.calib_per_class + cfg.per_class > 500:
        raise ParameterError("per_class + calib_per_class must lie in 0..500 (CIFAR-100 has 500 training images a class)")
    picked = pick_classes(cfg.classes + cfg.held_out, seed=cfg.data_seed)
    ind, out = picked[:cfg.classes], picked[cfg.classes:]
    per = (cfg.per_class + cfg.calib_per_class) if cfg.per_class else None
    ds = run.data(classes=ind, per_class=per, test_per_class=cfg.test_per_class or None,
                  image_size=cfg.image_size, seed=cfg.data_seed)
    run.data_info.update(held_out_classes=out,
                         calib_per_class=cfg.calib_per_class)
    x_cal = ds.x_train[:0]
    y_cal = ds.y_train[:0]
    if cfg.calib_per_class:
        tr, ca = train_val_split(ds.y_train.numpy(), val_per_class=cfg.calib_per_class, seed=cfg.data_seed)
        x_cal, y_cal = ds.x_train[ca], ds.y_train[ca]
        ds.x_train, ds.y_train = ds.x_train[tr], ds.y_train[tr]
        ds.info["per_class"] = int(np.bincount(ds.y_train.numpy()).min())
        ds.info["calib_per_class"] = cfg.calib_per_class
        run.data_info["description"] = ds.describe() + f", {len(y_cal)} calibration"
    x_out = ds.x_test[:0]
    if out:
        from ... import data as _data

        held = _data.load(classes=out, per_class=1, test_per_class=cfg.test_per_class or None,
                          image_size=cfg.image_size, seed=cfg.data_seed)
        x_out = held.x_test
    return FamilyData(ds, x_cal, y_cal, x_out, list(out))


def held_out_labels(n: int) -> Any:
    """Labels of OOD images: −1 (no in-distribution class)."""
    import torch

    return torch.full((n,), -1, dtype=torch.long)
