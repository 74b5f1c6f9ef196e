"""What several families' protocols share: the seeded data subset a chapter trains on, a
content fingerprint of it, and the family-wide checkpoint folders through which chapters that
train the same model (and the comparison chapters) find it instead of training it again."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arms import make_config
from ..modes import fresh
from ..paths import checkpoints_dir


@dataclass
class DataConfig:
    """The seeded CIFAR-100 subset of a chapter (``classes``, ``per_class`` 0 = all 500,
    ``test_per_class`` 0 = all 100, ``image_size`` in px, ``data_seed``)."""

    classes: int = 100
    per_class: int = 0
    test_per_class: int = 0
    image_size: int = 32
    data_seed: int = 0


def data_subset(run: Any, per_class: int | None = None) -> Any:
    """The chapter's data (a ``repro.data.Dataset``) from its parameters, recorded in the run;
    ``per_class`` replaces the parameter (a chapter that trains at two data fractions)."""
    c = make_config(DataConfig, run.params)
    n = c.per_class if per_class is None else per_class
    return run.data(classes=c.classes, per_class=n or None, test_per_class=c.test_per_class or None,
                    image_size=c.image_size, seed=c.data_seed)


def tensor_fingerprint(*tensors: Any) -> str:
    """A content hash (20 hex digits) of tensors' bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def data_fingerprint(data: Any) -> str:
    """A content hash of a dataset's images and labels (train and test): two chapters that cut
    the same subset get the same fingerprint."""
    return tensor_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)


def shared_checkpoint_dir(run: Any, family: str, stem: str, key: list[Any]) -> Path:
    """``<checkpoints>/<family>/<tier>/<stem>-<digest>``: a checkpoint folder every chapter of
    ``family`` shares. The digest covers ``key`` (what makes the model: arm, recipe, data
    fingerprint, seed…), the package's source hash and, under ``repro run --fresh``, the run
    id, so a model is reused only by code that would train it identically. Its training cost
    is still counted in each record (``fit`` reports the cost of producing a model, resumed or
    not)."""
    parts: list[Any] = [family, *key, run.env["source_hash"]]
    if fresh():
        parts.append(run.run_id)
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return checkpoints_dir() / family / run.tier / f"{stem}-{digest}"
