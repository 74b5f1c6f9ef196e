"""Teacher artifacts: train a teacher once per setting, store it under a content hash, reuse it.

A ``TeacherSpec`` names the architecture, the data subset and the training schedule. Its
key is a hash of the spec, the data checksum and the package version, so every chapter
that asks for the same teacher on the same data gets the same file, and any change gets
a new one. Look-up order: ``artifacts/teachers/`` in the checkout (small teachers, ≤ 5 MB,
may be committed there), then the cache ``$REPRO_TEACHERS`` (default
``~/.cache/repro/artifacts/teachers``). Storage is ``repro.artifacts.ArtifactStore``'s. A missing teacher is trained on the spot, with a progress bar
and resumable checkpoints, and stored atomically; it is never swapped for another one. A
stored teacher that fails to load raises an error that says how to rebuild it
(``get(..., rebuild=True)`` replaces it).

In a dry run (``REPRO_DRY_RUN=1``: one step per fit, for checking that a tier runs at all)
the teacher is built in a temporary folder and never stored.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ... import models
from ...artifacts import ArtifactError, ArtifactStore
from ...io import save_torch
from ...paths import TEACHERS_ENV
from ...run import seed_everything
from ...train import TrainConfig, dry_run, evaluate, fit


class TeacherError(ArtifactError):
    """A stored teacher is unreadable or does not match its spec."""


@dataclass(frozen=True)
class TeacherSpec:
    """What defines a teacher: architecture, data subset, schedule, seed."""

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: int = 100
    per_class: int | None = None
    test_per_class: int | None = None
    image_size: int = 32
    data_seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    batch_size: int = 128
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config(self) -> TrainConfig:
        """The TrainConfig this teacher is trained with (unknown fields raise TypeError)."""
        return TrainConfig(**{**self.train, "desc": f"teacher {self.arch}"})

    def key(self, data_checksum: str) -> str:
        """Content hash: spec + data checksum + package version."""
        return ArtifactStore.key(self.as_dict(), data_checksum)

    def label(self) -> str:
        """Short readable name used in folder names and captions."""
        kw = "".join(f"-{k}{v}" for k, v in sorted(self.arch_kwargs.items()))
        return f"{self.arch}{kw}-c{self.classes}-{self.image_size}px"


@dataclass
class Teacher:
    """A trained teacher: the model (eval mode), its spec and what training it cost."""

    model: nn.Module
    spec: TeacherSpec
    key: str
    info: dict[str, Any]
    path: Path | None
    built_now: bool

    @property
    def test_acc(self) -> float:
        return float(self.info["test_acc"])


STORE = ArtifactStore("teachers", cache_env=TEACHERS_ENV, meta_name="teacher.json")


def cache_dir() -> Path:
    """``$REPRO_TEACHERS`` if set, else ``~/.cache/repro/artifacts/teachers``."""
    return STORE.cache_dir()


def committed_dir() -> Path:
    """``artifacts/teachers`` in the checkout (small teachers kept in git)."""
    return STORE.committed_dir()


def _build_model(spec: TeacherSpec, num_classes: int) -> nn.Module:
    return models.create(spec.arch, num_classes=num_classes, **spec.arch_kwargs)


def find(spec: TeacherSpec, data_checksum: str) -> Path | None:
    """Folder of a stored teacher for ``spec`` on this data, or None."""
    return STORE.find(spec.label(), spec.key(data_checksum))


def get(spec: TeacherSpec, data, device: torch.device | str = "cpu", rebuild: bool = False) -> Teacher:
    """The teacher for ``spec`` trained on ``data`` (a ``repro.data.Dataset``): load or train.

    ``data`` must be the subset the spec describes (its class count is checked). Training
    uses ``fit`` with checkpoints in the artifact's build folder, so an interrupted build resumes.
    """
    device = torch.device(device)
    if data.num_classes != spec.classes:
        raise ValueError(f"teacher spec wants {spec.classes} classes but the data has {data.num_classes}")

    def load(folder: Path, info: dict[str, Any]) -> nn.Module:
        model = _build_model(spec, data.num_classes).to(device)
        model.load_state_dict(torch.load(folder / "weights.pt", map_location=device, weights_only=True))
        return model.eval()

    def build(work: Path) -> tuple[nn.Module, dict[str, Any]]:
        seed_everything(spec.seed)
        model = _build_model(spec, data.num_classes)
        train = data.loader("train", spec.batch_size, device, seed=spec.seed)
        test = data.loader("test", 512, device)
        t0 = time.time()
        res = fit(model, train, test, spec.config(), checkpoint_dir=work / "ckpt")
        ev = evaluate(model, test)
        info = {"spec": spec.as_dict(), "data_checksum": data.checksum,
                "test_acc": ev["acc"], "test_loss": ev["loss"], "train_seconds": res.train_seconds,
                "train_images": res.train_images, "wall_seconds": time.time() - t0,
                "params": sum(p.numel() for p in model.parameters()), "device": str(device),
                "history": res.history, "dry_run": dry_run()}
        save_torch(work / "weights.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
        shutil.rmtree(work / "ckpt", ignore_errors=True)
        return model.eval(), info

    try:
        art = STORE.get(spec.label(), spec.key(data.checksum), build, load, rebuild=rebuild)
    except ArtifactError as e:
        raise TeacherError(f"{e} (or call repro.families.distillation.teachers.get(..., rebuild=True))") from e
    return Teacher(art.value, spec, art.key, art.info, art.path, art.built_now)


def stored() -> list[dict[str, Any]]:
    """Every stored teacher (committed and cached): folder, size, accuracy, spec."""
    return [{"where": r["where"], "folder": r["folder"], "bytes": r["bytes"], "test_acc": r["info"].get("test_acc"),
             "arch": r["info"]["spec"]["arch"], "classes": r["info"]["spec"]["classes"], "key": r["info"].get("key")}
            for r in STORE.stored()]


def commit(teacher: Teacher) -> Path:
    """Copy a cached teacher into ``artifacts/teachers`` (refused above 5 MB)."""
    if teacher.path is None:
        raise TeacherError("a dry-run teacher is never stored")
    try:
        return STORE.commit(teacher.path)
    except ArtifactError as e:
        raise TeacherError(str(e).replace("artifacts ≤", "teachers ≤")) from e
