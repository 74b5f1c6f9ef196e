"""Teacher artifacts: train a teacher once per setting, store it under a content hash, reuse it.

A ``TeacherSpec`` names the architecture, the data subset and the training schedule. Its
key is a hash of the spec, the data checksum and the package version, so every chapter
that asks for the same teacher on the same data gets the same file, and any change gets
a new one. Look-up order: ``artifacts/teachers/`` in the checkout (small teachers, ≤ 5 MB,
may be committed there), then the cache ``$REPRO_TEACHERS`` (default
``~/.cache/repro/teachers``). A missing teacher is trained on the spot, with a progress bar
and resumable checkpoints, and stored atomically; it is never swapped for another one. A
stored teacher that fails to load raises an error that says how to rebuild it
(``get(..., rebuild=True)`` replaces it).

In a dry run (``REPRO_DRY_RUN=1``: one step per fit, for checking that a tier runs at all)
the teacher is built in a temporary folder and never stored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__, models
from .io import atomic_write_text, save_torch
from .paths import TEACHERS_ENV, project_root, teachers_dir
from .run import seed_everything
from .train import TrainConfig, dry_run, evaluate, fit, fresh

COMMIT_LIMIT_BYTES = 5 * 1024 * 1024


class TeacherError(RuntimeError):
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
        blob = json.dumps({"spec": self.as_dict(), "data": data_checksum, "repro": __version__},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

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


def cache_dir() -> Path:
    """``$REPRO_TEACHERS`` if set, else ``~/.cache/repro/teachers``."""
    return teachers_dir()


def committed_dir() -> Path:
    """``artifacts/teachers`` in the checkout (small teachers kept in git)."""
    return project_root() / "artifacts" / "teachers"


def _folder(base: Path, spec: TeacherSpec, key: str) -> Path:
    return base / f"{spec.label()}-{key}"


def _build_model(spec: TeacherSpec, num_classes: int) -> nn.Module:
    return models.create(spec.arch, num_classes=num_classes, **spec.arch_kwargs)


def _load(folder: Path, spec: TeacherSpec, key: str, num_classes: int, device: torch.device) -> Teacher:
    try:
        info = json.loads((folder / "teacher.json").read_text())
        state = torch.load(folder / "weights.pt", map_location=device, weights_only=True)
        if info.get("key") != key:
            raise TeacherError(f"key {info.get('key')} ≠ {key}")
        model = _build_model(spec, num_classes).to(device)
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 — any failure means the artifact is unusable
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TeacherError(
            f"the stored teacher in {folder} cannot be used ({type(e).__name__}: {first}). Delete that "
            f"folder to have it rebuilt (the next run trains it again), or call "
            f"repro.teachers.get(..., rebuild=True).") from e
    return Teacher(model.eval(), spec, key, info, folder, built_now=False)


def find(spec: TeacherSpec, data_checksum: str) -> Path | None:
    """Folder of a stored teacher for ``spec`` on this data, or None."""
    key = spec.key(data_checksum)
    for base in (committed_dir(), cache_dir()):
        folder = _folder(base, spec, key)
        if (folder / "teacher.json").is_file():
            return folder
    return None


def get(spec: TeacherSpec, data, device: torch.device | str = "cpu", rebuild: bool = False) -> Teacher:
    """The teacher for ``spec`` trained on ``data`` (a ``repro.data.Dataset``): load or train.

    ``data`` must be the subset the spec describes (its class count is checked). Training
    uses ``fit`` with checkpoints in the cache, so an interrupted build resumes.
    """
    device = torch.device(device)
    if data.num_classes != spec.classes:
        raise ValueError(f"teacher spec wants {spec.classes} classes but the data has {data.num_classes}")
    key = spec.key(data.checksum)
    rebuild = rebuild or fresh()  # repro run --fresh: an independent replication retrains its teacher too
    folder = None if rebuild else find(spec, data.checksum)
    if folder is not None:
        return _load(folder, spec, key, data.num_classes, device)
    return _train(spec, key, data, device, rebuild)


def _train(spec: TeacherSpec, key: str, data, device: torch.device, rebuild: bool = False) -> Teacher:
    dry = dry_run()
    target = None if dry else _folder(cache_dir(), spec, key)
    work = Path(tempfile.mkdtemp(prefix="teacher-")) if dry else target.with_name(target.name + ".build")
    seed_everything(spec.seed)
    model = _build_model(spec, data.num_classes)
    train = data.loader("train", spec.batch_size, device, seed=spec.seed)
    test = data.loader("test", 512, device)
    t0 = time.time()
    res = fit(model, train, test, spec.config(), checkpoint_dir=work / "ckpt")
    ev = evaluate(model, test)
    info = {"key": key, "spec": spec.as_dict(), "data_checksum": data.checksum, "repro_version": __version__,
            "test_acc": ev["acc"], "test_loss": ev["loss"], "train_seconds": res.train_seconds,
            "train_images": res.train_images, "wall_seconds": time.time() - t0,
            "params": sum(p.numel() for p in model.parameters()), "device": str(device),
            "history": res.history, "dry_run": dry}
    if dry:
        shutil.rmtree(work, ignore_errors=True)
        return Teacher(model.eval(), spec, key, info, None, built_now=True)
    work.mkdir(parents=True, exist_ok=True)
    save_torch(work / "weights.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_write_text(work / "teacher.json", json.dumps(info, indent=1, default=str))
    shutil.rmtree(work / "ckpt", ignore_errors=True)
    if target.exists() and rebuild:
        shutil.rmtree(target)
    if target.exists():  # another process finished first: keep theirs
        shutil.rmtree(work, ignore_errors=True)
        return _load(target, spec, key, data.num_classes, device)
    os.replace(work, target)
    return Teacher(model.eval(), spec, key, info, target, built_now=True)


def stored() -> list[dict[str, Any]]:
    """Every stored teacher (committed and cached): folder, size, accuracy, spec."""
    out = []
    for where, base in (("committed", committed_dir()), ("cache", cache_dir())):
        for meta in sorted(base.glob("*/teacher.json")):
            info = json.loads(meta.read_text())
            size = sum(f.stat().st_size for f in meta.parent.iterdir() if f.is_file())
            out.append({"where": where, "folder": str(meta.parent), "bytes": size,
                        "test_acc": info.get("test_acc"), "arch": info["spec"]["arch"],
                        "classes": info["spec"]["classes"], "key": info.get("key")})
    return out


def commit(teacher: Teacher) -> Path:
    """Copy a cached teacher into ``artifacts/teachers`` (refused above 5 MB)."""
    if teacher.path is None:
        raise TeacherError("a dry-run teacher is never stored")
    size = (teacher.path / "weights.pt").stat().st_size
    if size > COMMIT_LIMIT_BYTES:
        raise TeacherError(f"{teacher.path.name} is {size / 2**20:.1f} MB; only teachers ≤ 5 MB are committed")
    dest = _folder(committed_dir(), teacher.spec, teacher.key)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(teacher.path, dest)
    return dest
