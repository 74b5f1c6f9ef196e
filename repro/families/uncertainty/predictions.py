"""Cached predictions: a trained model's logits and features on every evaluation set.

A chapter of the family trains each model once per tier, setting and seed, then runs its
analyses (conformal sets, abstention, OOD scores) on the stored outputs, which takes
seconds and can be re-run freely. The artifact (``ArtifactStore("predictions")``) is keyed
by a hash of the arm, its config, the seed, the content of every evaluation set and the data
checksum: the same setting finds it again, any change builds a new one. A missing artifact is
built with progress bars (training resumes from its checkpoints); a stored one is never
replaced silently, and one whose recorded data checksum differs from the data in use is an
error before any analysis.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import arms as _arms
from ...artifacts import ArtifactError, ArtifactStore
from ...data import TensorLoader
from ...train import WORK, dry_run
from .protocol import FAMILY, Trained

STORE = ArtifactStore("predictions")


@dataclass
class EvalSet:
    """One evaluation set: uint8 images [N, 3, S, S], labels [N] (−1 for OOD images) and
    whether its features are kept (distance detectors need them; corrupted copies of the
    test set usually only need logits)."""

    images: torch.Tensor
    labels: torch.Tensor
    features: bool = True

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Outputs:
    """A model's outputs on one evaluation set: logits [N, C] (float32), features [N, D]
    (float32, or None when not kept) and labels [N] (−1 for OOD)."""

    logits: np.ndarray
    labels: np.ndarray
    features: np.ndarray | None = None

    @property
    def probs(self) -> np.ndarray:
        """Softmax of the logits, in float64 (conformal sets sum them)."""
        z = self.logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


@dataclass
class Predictions:
    """Every evaluation set's outputs of one trained model, with what it cost to make."""

    sets: dict[str, Outputs]
    info: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    built_now: bool = False

    def __getitem__(self, name: str) -> Outputs:
        if name not in self.sets:
            raise KeyError(f"no evaluation set {name!r}; this artifact has {', '.join(self.sets)}")
        return self.sets[name]

    @property
    def train_s(self) -> float:
        return float(self.info.get("train_s", 0.0))

    @property
    def train_images(self) -> int:
        return int(self.info.get("train_images", 0))


@torch.no_grad()
def outputs(model: torch.nn.Module, s: EvalSet, device: Any = "cpu", batch_size: int = 500) -> Outputs:
    """Run ``model`` (eval mode, fp32) over one evaluation set."""
    model.eval()
    labels = s.labels.clamp(min=0)  # the loader wants class indices; the real labels are kept below
    loader = TensorLoader(s.images, labels, batch_size, device, train=False)
    logits, feats = [], []
    for x, _ in loader:
        # model(x) rather than head(features): a prototype model's logits do not come from a head
        logits.append(model(x).float().cpu())
        if s.features:
            feats.append(model.features(x).float().cpu())
        WORK["eval_batches"] += 1
    return Outputs(torch.cat(logits).numpy(), s.labels.numpy().astype(np.int64),
                   torch.cat(feats).numpy() if s.features else None)


def _one_batch(s: EvalSet, size: int = 500) -> EvalSet:
    """At most ``size`` images of a set, every class kept (detectors fitted on the training
    set need each class): the first ``size // classes`` images of each class, or the first
    ``size`` images of an unlabelled (OOD) set."""
    y = s.labels
    if len(y) <= size or bool((y < 0).all()):
        return EvalSet(s.images[:size], y[:size], s.features)
    classes = torch.unique(y[y >= 0])
    per = max(1, size // len(classes))
    idx = torch.cat([torch.nonzero(y == c).flatten()[:per] for c in classes])
    idx = idx.sort().values
    return EvalSet(s.images[idx], y[idx], s.features)


def _save(folder: Path, sets: Mapping[str, Outputs]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, o in sets.items():
        arrays[f"{name}.logits"] = o.logits.astype(np.float32)
        arrays[f"{name}.labels"] = o.labels
        if o.features is not None:
            arrays[f"{name}.features"] = o.features.astype(np.float32)
    np.savez(folder / "predictions.npz", **arrays)


def _load(folder: Path, info: dict[str, Any]) -> dict[str, Outputs]:
    with np.load(folder / "predictions.npz") as z:
        return {name: Outputs(z[f"{name}.logits"], z[f"{name}.labels"],
                              z[f"{name}.features"] if f"{name}.features" in z.files else None)
                for name in info["sets"]}


def cached(arm: str, cfg: Any, data: Any, seed: int, sets: Mapping[str, EvalSet],
           checkpoint_dir: Path | None = None, device: Any = "cpu", label: str | None = None) -> Predictions:
    """The outputs of arm ``arm`` (config ``cfg``, seed ``seed``) on every set in ``sets``:
    loaded from the artifact store, or trained and computed now (resuming from
    ``checkpoint_dir``) and stored.

    Raises ArtifactError when a stored artifact records another data checksum than
    ``data.checksum`` or lacks a requested set.
    """
    impl = _arms.get(FAMILY, arm).impl
    if dry_run():  # one batch of every set, as every evaluation in a dry run
        sets = {n: _one_batch(s) for n, s in sets.items()}
    spec = {"arm": arm, "config": dataclasses.asdict(cfg), "seed": int(seed),
            "data": {k: v for k, v in data.info.items() if k != "seed"} | {"classes": data.classes},
            "sets": {name: [s.digest(), bool(s.features)] for name, s in sets.items()}}
    key = STORE.key(spec, data.checksum)

    def build(work: Path) -> tuple[dict[str, Outputs], dict[str, Any]]:
        torch.manual_seed(seed)
        trained: Trained = impl(cfg, data, seed, checkpoint_dir, device)
        outs = {name: outputs(trained.model, s, device) for name, s in sets.items()}
        _save(work, outs)
        info = {"spec": spec, "sets": list(outs), "data_checksum": data.checksum,
                "train_s": sum(f.train_seconds for f in trained.fits),
                "train_images": sum(f.train_images for f in trained.fits),
                "history": [h for f in trained.fits for h in f.history], **trained.info}
        return outs, json.loads(json.dumps(info, default=str))

    def load(folder: Path, info: dict[str, Any]) -> dict[str, Outputs]:
        if info.get("data_checksum") != data.checksum:
            raise ArtifactError(f"cached predictions from another data checksum "
                                f"({info.get('data_checksum')} ≠ {data.checksum})")
        missing = [n for n in sets if n not in info.get("sets", [])]
        if missing:
            raise ArtifactError(f"cached predictions lack the set(s) {', '.join(missing)}")
        return _load(folder, info)

    art = STORE.get(f"{arm}-{label or 'model'}-s{seed}", key, build, load)
    return Predictions(art.value, art.info, key, art.built_now)
