"""A hash-keyed store for expensive things a run reuses: teachers, pretrained backbones,
reinforced-data stores, cached logits and features.

An artifact is a folder named ``<label>-<key>``, where the key hashes what defines it (a spec
as a dict), the data checksum and the package version: anything that asks for the same
artifact on the same data gets the same folder, and any change gets a new one. The folder holds
the artifact's files and a metadata JSON (with the key, checked on load).

Look-up order: ``artifacts/<kind>/`` in the checkout (small artifacts, ≤ 5 MB, may be
committed there), then the cache (``$REPRO_ARTIFACTS/<kind>``, default
``~/.cache/repro/artifacts/<kind>``; teachers keep ``$REPRO_TEACHERS``). A missing artifact is
built in a ``.build`` folder beside its target and renamed into place when complete, so a
half-built artifact is never found; a build interrupted midway resumes from whatever the
builder checkpointed in that folder. An artifact that fails to load is an error that says how
to rebuild it, never a silent substitute. In a dry run artifacts are built in a temporary
folder and never stored; under ``repro run --fresh`` they are rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import __version__
from .io import atomic_write_text
from .modes import dry_run, fresh
from .paths import cache_home, project_root

T = TypeVar("T")
COMMIT_LIMIT_BYTES = 5 * 1024 * 1024
ARTIFACTS_ENV = "REPRO_ARTIFACTS"


def _count_reuse(kind: str, key: str, info: dict[str, Any]) -> None:
    """A loaded artifact that records its training cost (``train_s`` or ``train_seconds``, and
    ``train_images``) is noted in the process's cost meter, so a run's record says what the
    models it reused cost to train (``cost.reused_train_s``, each artifact once)."""
    seconds = info.get("train_s", info.get("train_seconds"))
    if seconds:
        from .train import COST

        COST.reuse(f"{kind}/{key}", float(seconds), int(info.get("train_images", 0) or 0))


class ArtifactError(RuntimeError):
    """A stored artifact is unreadable or does not match its spec."""


@dataclass
class Artifact(Generic[T]):
    """A loaded or freshly built artifact: the object, its metadata and where it is stored
    (None for a dry run's)."""

    value: T
    key: str
    info: dict[str, Any]
    path: Path | None
    built_now: bool


class ArtifactStore:
    """The artifacts of one kind (``teachers``, ``backbones``, ``logits``…)."""

    def __init__(self, kind: str, cache_env: str | None = None, meta_name: str = "artifact.json") -> None:
        self.kind = kind
        self.cache_env = cache_env
        self.meta_name = meta_name

    # -- where -----------------------------------------------------------------------------
    def cache_dir(self) -> Path:
        if self.cache_env and os.environ.get(self.cache_env):
            return Path(os.environ[self.cache_env])
        if os.environ.get(ARTIFACTS_ENV):
            return Path(os.environ[ARTIFACTS_ENV]) / self.kind
        return cache_home() / "artifacts" / self.kind

    def committed_dir(self) -> Path:
        return project_root() / "artifacts" / self.kind

    @staticmethod
    def key(spec: dict[str, Any], data_checksum: str) -> str:
        """Content hash of spec + data checksum + package version."""
        blob = json.dumps({"spec": spec, "data": data_checksum, "repro": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def find(self, label: str, key: str) -> Path | None:
        """The stored folder of artifact ``label``/``key`` (committed first), or None."""
        for base in (self.committed_dir(), self.cache_dir()):
            folder = base / f"{label}-{key}"
            if (folder / self.meta_name).is_file():
                return folder
        return None

    # -- load or build ---------------------------------------------------------------------
    def get(self, label: str, key: str, build: Callable[[Path], tuple[T, dict[str, Any]]],
            load: Callable[[Path, dict[str, Any]], T], rebuild: bool = False) -> Artifact[T]:
        """Load artifact ``label``/``key``, or build and store it.

        build(work): makes the artifact, writes its files into ``work`` (it may checkpoint
        there and resume) and returns (object, metadata). load(folder, metadata): reads a
        stored one back. ``rebuild`` (or ``repro run --fresh``) replaces a stored artifact.
        """
        rebuild = rebuild or fresh()
        folder = None if rebuild else self.find(label, key)
        if folder is not None:
            try:
                info = json.loads((folder / self.meta_name).read_text())
                if info.get("key") != key:
                    raise ArtifactError(f"key {info.get('key')} ≠ {key}")
                value = load(folder, info)
                _count_reuse(self.kind, key, info)
                return Artifact(value, key, info, folder, built_now=False)
            except Exception as e:  # noqa: BLE001 — any failure means the artifact is unusable
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ArtifactError(
                    f"the stored {self.kind} artifact in {folder} cannot be used ({type(e).__name__}: {first}). "
                    f"Delete that folder to have it rebuilt on the next run, or run with --fresh.") from e
        if dry_run():
            work = Path(tempfile.mkdtemp(prefix=f"{self.kind}-"))
            try:
                value, info = build(work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return Artifact(value, key, {**info, "key": key, "dry_run": True}, None, built_now=True)
        target = self.cache_dir() / f"{label}-{key}"
        work = target.with_name(target.name + ".build")
        work.mkdir(parents=True, exist_ok=True)
        value, info = build(work)
        info = {**info, "key": key, "repro_version": __version__}
        atomic_write_text(work / self.meta_name, json.dumps(info, indent=1, default=str))
        if target.exists() and rebuild:
            shutil.rmtree(target)
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(work, ignore_errors=True)
            _count_reuse(self.kind, key, info)
            return Artifact(load(target, info), key, info, target, built_now=False)
        os.replace(work, target)
        return Artifact(value, key, info, target, built_now=True)

    # -- listing and committing ------------------------------------------------------------
    def stored(self) -> list[dict[str, Any]]:
        """Every stored artifact of this kind: where, folder, size and metadata."""
        out = []
        for where, base in (("committed", self.committed_dir()), ("cache", self.cache_dir())):
            for meta in sorted(base.glob(f"*/{self.meta_name}")):
                size = sum(f.stat().st_size for f in meta.parent.iterdir() if f.is_file())
                out.append({"where": where, "folder": str(meta.parent), "bytes": size,
                            "info": json.loads(meta.read_text())})
        return out

    def commit(self, folder: Path) -> Path:
        """Copy a cached artifact folder into ``artifacts/<kind>`` (refused above 5 MB)."""
        size = sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())
        if size > COMMIT_LIMIT_BYTES:
            raise ArtifactError(f"{Path(folder).name} is {size / 2**20:.1f} MB; only artifacts ≤ 5 MB are committed")
        dest = self.committed_dir() / Path(folder).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, dest)
        return dest
