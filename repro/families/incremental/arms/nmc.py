"""Chapter 10 (nmc): a frozen pretrained backbone with a nearest-mean classifier (NMC) against
class-incremental learners that update the network (Janson et al., 2022, arXiv 2210.04428).
Arms ``nmc`` and ``probe``.

The NMC never trains. After task t it stores, for each of the task's classes c, the mean
μ_c of the (L2-normalised) frozen features of c's training images — the means themselves
are *not* re-normalised, as in the official script — and predicts
``argmin_c ‖f(x) − μ_c‖₂`` over every class seen so far. Within a run seed every learner of
the chapter starts from the same backbone:

* arm ``nmc`` (:class:`NMCConfig`): class means of the L2-normalised (labels ``nmc``) or raw
  (``nmc_raw``, ``normalize=False``) frozen features;
* arm ``probe`` (:class:`ProbeConfig`): a linear head on the same frozen features, trained task
  after task on the new data only (``probe_seq``: fine-tuning of the head) or on all data seen
  so far (``joint_probe``, ``joint=True``: the frozen backbone's non-continual upper reference);
* ``finetune`` / ``replay``: the whole pretrained network fine-tuned on each task (the
  family's baselines, started from the backbone by :func:`pretrained`).

The frozen-feature arms run on features extracted once per backbone (no augmentation,
:class:`FrozenFeatures`); the others go through the family's incremental loop. Every arm fills
the family's ``AccuracyMatrix`` and returns a ``StreamResult``.

The backbone is either a timm model (the paper: ViT-B/16 ImageNet-21k, from a local weights
file or downloaded by timm where there is network; images un-normalised and resized to the
model's input size, as the official script does) or — the default below the paper tier —
``"cifar"``: a network of the chapter's ``arch`` pretrained here, with labels, on the
*last* ``pretrain_classes`` classes of the class order. Those classes never enter the
evaluated stream: a protocol task that holds any of them is dropped (the gpu tier's
100-class stream keeps its first tasks).

A backbone pretrained here is part of what a seed's run draws at random, so **every run seed
pretrains its own** (pretraining seed = run seed), and that seed's learners all start from it:
the seed spread of a difference then covers the pretraining too. A timm backbone is one public
checkpoint, as in the paper, shared by every seed. :class:`SeedBackbones` hands out a seed's
backbone and frozen features, holding one seed's at a time. A pretrained network is an artifact
(``repro.artifacts.ArtifactStore("backbones")``), keyed by everything that defines it (its seed
included), the data checksum and the package version, so it is trained once per setting and
seed and reused.
"""
from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .... import models
from ....arms import arm
from ....artifacts import Artifact, ArtifactStore
from ....data import Dataset, incremental_tasks
from ....io import save_torch
from ....train import WORK, TrainConfig, dry_run, evaluate, fit
from ..learners import IncrementalConfig, Learner, StreamResult, matrix_row
from ..memory import class_means, extract_features
from ..metrics import AccuracyMatrix
from ..stream import Stream, StreamConfig
from ....models.timm_net import TimmNet
from .baselines import FAMILY

CIFAR = "cifar"
BACKBONES = ArtifactStore("backbones")


# -- configs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NMCConfig:
    """The nearest-mean classifier: class means of normalised or raw frozen features."""

    normalize: bool = True


@dataclass(frozen=True)
class ProbeConfig:
    """A linear head on frozen features (Adam, cosine to 0 within a task)."""

    probe_epochs: int = 30
    probe_lr: float = 0.01
    batch_size: int = 128
    joint: bool = False              # True: a fresh head per task on all data seen so far

    def __post_init__(self) -> None:
        if self.probe_epochs < 1 or self.probe_lr <= 0:
            raise ValueError("probe_epochs must be ≥ 1 and probe_lr > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, not {self.batch_size}")


@dataclass(frozen=True)
class BackboneConfig:
    """Where the chapter's pretrained network comes from, and how it is pretrained here
    (``backbone='cifar'``: one network per run seed, pretrained with that seed)."""

    backbone: str = "vit_base_patch16_224.augreg_in21k"
    weights: str = ""
    timm_pretrained: bool = False
    arch: str = "resnet18"
    arch_width: int = 0
    pretrain_classes: int = 50
    pretrain_per_class: int = 0
    pretrain_epochs: int = 100
    pretrain_lr: float = 0.1
    quality_curve: bool = True
    weight_decay: float = 0.0005
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.backbone == CIFAR:
            if not 1 <= self.pretrain_classes <= 99:
                raise ValueError(f"pretrain_classes must be in 1..99 (classes left for the stream), "
                                 f"not {self.pretrain_classes}")
            if self.pretrain_epochs < 1 or self.pretrain_lr <= 0:
                raise ValueError("pretrain_epochs must be ≥ 1 and pretrain_lr > 0")
            if self.pretrain_per_class < 0:
                raise ValueError(f"pretrain_per_class must be ≥ 0 (0: all 500), not {self.pretrain_per_class}")
            if self.arch not in models.available():
                raise ValueError(f"unknown arch {self.arch!r}; available: {', '.join(models.available())}")
        else:
            if self.weights and not Path(self.weights).expanduser().is_file():
                raise ValueError(f"weights file {self.weights!r} does not exist")
            if not self.weights and not self.timm_pretrained:
                raise ValueError(
                    f"backbone {self.backbone!r} needs its pretrained weights: give weights=PATH (a state dict) or "
                    f"timm_pretrained=True (downloads, needs network); backbone='cifar' pretrains one here instead")

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return {"width": self.arch_width} if self.arch_width else {}

    @property
    def per_seed(self) -> bool:
        """True when every run seed gets its own backbone (pretrained here); False for a timm
        checkpoint, which all seeds share."""
        return self.backbone == CIFAR


def check_finetune(cfg: IncrementalConfig) -> None:
    """finetune/replay train the whole network for ``epochs`` per task: at least one."""
    if cfg.epochs < 1:
        raise ValueError(f"epochs (fine-tuning epochs per task) must be ≥ 1, not {cfg.epochs}")


# -- which classes pretrain the backbone -----------------------------------------------------------
def pretrain_split(order: Sequence[int], tasks: Sequence[Sequence[int]], pretrain_classes: int,
                   ) -> tuple[list[int], int]:
    """The pretraining classes and how many of the stream's tasks stay clear of them.

    order: the full 100-class order (CIFAR-100 ids); tasks: the stream's tasks as label
    blocks (label i = order[i]). The pretraining classes are the last ``pretrain_classes``
    of the order; the kept tasks are the leading ones whose labels all lie before them.
    Raises ValueError when a task straddles the boundary or fewer than two tasks are left.
    """
    if not 1 <= pretrain_classes < len(order):
        raise ValueError(f"pretrain_classes must be in 1..{len(order) - 1}, not {pretrain_classes}")
    cut = len(order) - pretrain_classes
    kept = 0
    for task in tasks:
        if max(task) < cut:
            kept += 1
        elif min(task) < cut:
            raise ValueError(f"a task holds labels {min(task)}..{max(task)} on both sides of the pretraining "
                             f"classes (labels ≥ {cut}); choose pretrain_classes so that {len(order)} − it "
                             f"falls on a task boundary")
        else:
            break
    if kept < 2:
        raise ValueError(f"pretraining on the last {pretrain_classes} classes leaves {kept} task(s) of the stream; "
                         "a class-incremental comparison needs at least 2")
    return list(order[cut:]), kept


def restrict_stream(stream: Stream, num_tasks: int) -> Stream:
    """The stream's first ``num_tasks`` tasks, with the images of the other classes dropped."""
    tasks = [list(t) for t in stream.tasks[:num_tasks]]
    K = sum(len(t) for t in tasks)
    if num_tasks == stream.num_tasks:
        return stream
    d = stream.data
    tr, te = d.y_train < K, d.y_test < K
    data = Dataset(x_train=d.x_train[tr], y_train=d.y_train[tr], x_test=d.x_test[te], y_test=d.y_test[te],
                   classes=d.classes[:K], class_names=d.class_names[:K], checksum=d.checksum,
                   test_name=d.test_name, info=dict(d.info))
    return Stream(data=data, order=stream.order[:K], tasks=tasks,
                  scenario=f"{stream.scenario}, first {num_tasks} tasks", order_seed=stream.order_seed)


def protocol_tasks(scfg: StreamConfig) -> list[list[int]]:
    """The protocol's tasks over its ``classes`` (labels), without loading any data."""
    from ..stream import parse_scenario

    base, inc = parse_scenario(scfg.scenario)
    return incremental_tasks(list(range(scfg.classes)), base, inc)


# -- nearest-mean classifier ----------------------------------------------------------------------
def nmc_predict(features: torch.Tensor, means: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Index of the nearest mean (Euclidean) for every feature row."""
    f = F.normalize(features.float(), dim=1) if normalize else features.float()
    # Squared distances in float64: ties between nearly equal means should not depend on rounding.
    d = torch.cdist(f.double(), means.double())
    return d.argmin(1)


def nmc_stream(stream: Stream, f_train: torch.Tensor, f_test: torch.Tensor, normalize: bool = True,
               ) -> AccuracyMatrix:
    """Class means task after task; A[t, j] predicting over the classes seen after task t.

    f_train/f_test: frozen features of ``stream.data.x_train``/``x_test``, row-aligned."""
    matrix = AccuracyMatrix(stream.test_sizes())
    means = torch.zeros(0, f_train.shape[1], dtype=torch.float32)
    for t in range(stream.num_tasks):
        new = stream.tasks[t]
        # labels are positions in the class order, so the means stay in label order
        means = torch.cat([means, class_means(f_train, stream.data.y_train, new, normalize)])
        idx = stream.test_indices(range(t + 1))
        pred = nmc_predict(f_test[idx], means, normalize)
        matrix.add_row(matrix_row(pred, stream.data.y_test[idx], stream, t))
    return matrix


# -- linear probes on frozen features --------------------------------------------------------------
def train_probe(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, seen: int, epochs: int, lr: float,
                batch_size: int, seed: int) -> float:
    """Adam on CE over the first ``seen`` logits of ``head(x)``; returns the seconds spent.
    A dry run takes one step, as ``fit`` does there."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    steps = epochs * -(-len(y) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            loss = F.cross_entropy(head(x[idx])[:, :seen], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            WORK["train_steps"] += 1
            if dry_run():
                return time.perf_counter() - t0
    return time.perf_counter() - t0


def probe_stream(stream: Stream, f_train: torch.Tensor, f_test: torch.Tensor, joint: bool, epochs: int,
                 lr: float, batch_size: int, seed: int) -> tuple[AccuracyMatrix, float]:
    """A linear head on L2-normalised frozen features, over the stream.

    joint=False: one head trained on each task's new data in turn (sequential fine-tuning of
    the head); joint=True: a fresh head per task trained on all data seen so far.
    Returns the matrix and the training seconds."""
    xtr, xte = F.normalize(f_train.float(), dim=1), F.normalize(f_test.float(), dim=1)
    ytr = stream.data.y_train
    matrix = AccuracyMatrix(stream.test_sizes())
    torch.manual_seed(seed)
    head = nn.Linear(xtr.shape[1], stream.num_classes)
    secs = 0.0
    for t in range(stream.num_tasks):
        seen = stream.seen(t)
        if joint:
            torch.manual_seed(seed * 1000 + t)
            head = nn.Linear(xtr.shape[1], stream.num_classes)
            idx = torch.cat([stream.train_indices(j) for j in range(t + 1)])
        else:
            idx = stream.train_indices(t)
        secs += train_probe(head, xtr[idx], ytr[idx], seen, epochs, lr, batch_size, seed * 1000 + t)
        te = stream.test_indices(range(t + 1))
        with torch.no_grad():
            pred = head(xte[te])[:, :seen].argmax(1)
        matrix.add_row(matrix_row(pred, stream.data.y_test[te], stream, t))
    return matrix, secs


def stream_features(model: nn.Module, stream: Stream, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (un-augmented, eval mode) of the stream's training and test images."""
    return (extract_features(model, stream.data.x_train, device),
            extract_features(model, stream.data.x_test, device))


# -- the frozen-feature arms ------------------------------------------------------------------------
@dataclass
class FrozenFeatures:
    """A stream and the frozen features of its training and test images (row-aligned)."""

    stream: Stream
    f_train: torch.Tensor
    f_test: torch.Tensor
    extract_s: float = 0.0


def frozen_features(model: nn.Module, stream: Stream, device: torch.device | str) -> FrozenFeatures:
    """Extract the features of ``stream`` once with a frozen model."""
    t0 = time.time()
    f_train, f_test = stream_features(model, stream, device)
    return FrozenFeatures(stream, f_train, f_test, time.time() - t0)


def _frozen_result(label: str, seed: int, stream: Stream, matrix: AccuracyMatrix, train_s: float) -> StreamResult:
    T = stream.num_tasks
    return StreamResult(label, seed, matrix, [], train_s, [0] * T, [{} for _ in range(T)])


@arm("nmc", family=FAMILY, config=NMCConfig)
def nearest_mean(features: FrozenFeatures, cfg: NMCConfig, seed: int, label: str = "nmc") -> StreamResult:
    """Nearest class mean on frozen features: no training, so the matrix depends on the
    features alone (on the seed only through a per-seed backbone)."""
    mat = nmc_stream(features.stream, features.f_train, features.f_test, cfg.normalize)
    return _frozen_result(label, seed, features.stream, mat, 0.0)


@arm("probe", family=FAMILY, config=ProbeConfig)
def linear_probe(features: FrozenFeatures, cfg: ProbeConfig, seed: int, label: str = "probe") -> StreamResult:
    """A linear head on frozen features, sequential (new data only) or joint (all data seen)."""
    mat, secs = probe_stream(features.stream, features.f_train, features.f_test, cfg.joint, cfg.probe_epochs,
                             cfg.probe_lr, cfg.batch_size, seed)
    return _frozen_result(label, seed, features.stream, mat, secs)


# the chapter's labels: label → (arm, config overrides); finetune/replay start from the backbone
PLAN: dict[str, tuple[str, dict[str, Any]]] = {
    "nmc": ("nmc", {"normalize": True}),
    "nmc_raw": ("nmc", {"normalize": False}),
    "probe_seq": ("probe", {"joint": False}),
    "finetune": ("finetune", {}),
    "replay": ("replay", {}),
    "joint_probe": ("probe", {"joint": True}),
}
FROZEN_ARMS = ("nmc", "probe")


# -- backbones ----------------------------------------------------------------------------------------
@dataclass
class Backbone:
    """The chapter's pretrained network: ``make(C)`` gives a copy with a fresh C-class head."""

    name: str
    state: dict[str, torch.Tensor]           # backbone weights, without the head
    build: Callable[[int], nn.Module]
    info: dict[str, Any] = field(default_factory=dict)

    def make(self, num_classes: int) -> nn.Module:
        """A fresh network: pretrained features, a randomly initialised ``num_classes`` head."""
        model = self.build(num_classes)
        missing, unexpected = model.load_state_dict(self.state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise RuntimeError(f"backbone weights do not fit {self.name}: missing {missing}, unexpected {unexpected}")
        return model

    def frozen(self, num_classes: int = 1) -> nn.Module:
        """The backbone for feature extraction: eval mode, no gradients."""
        model = self.make(num_classes).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model


def _without_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith("head.")}


def timm_backbone(name: str, weights: str = "", pretrained: bool = False) -> Backbone:
    """A timm model's backbone, from a state-dict file (its classifier is dropped) or timm's download."""
    import timm

    def body() -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=0)

    if weights:
        sd = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        b = body()
        own = b.state_dict()
        sd = {k: v for k, v in sd.items() if k in own}  # drops the classifier ("head.*", "fc.*")
        missing = sorted(set(own) - set(sd))
        if missing:
            raise ValueError(f"{weights}: no weights for {len(missing)} tensors of {name} (e.g. {missing[:3]})")
        b.load_state_dict(sd)
        source = str(weights)
    elif pretrained:
        b = timm.create_model(name, pretrained=True, num_classes=0)
        source = "timm download"
    else:
        raise ValueError(f"backbone {name!r} needs weights=PATH or timm_pretrained=True")
    size = int(b.pretrained_cfg.get("input_size", (3, 224, 224))[-1])

    def build(num_classes: int) -> nn.Module:
        return TimmNet(body(), num_classes, size)

    state = {f"body.{k}": v.detach().cpu().clone() for k, v in b.state_dict().items()}
    return Backbone(name, state, build, {"source": source, "input_size": size,
                                         "params": sum(v.numel() for v in b.parameters())})


def _seed_all(seed: int) -> None:
    """Seed Python, numpy and torch (what a run seeds before a job) before the pretraining."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pretrain_key(cfg: BackboneConfig, scfg: StreamConfig, stream: Stream, pretrain_ids: list[int],
                 seed: int) -> dict[str, Any]:
    """Everything that defines a backbone pretrained here with ``seed`` (the artifact's spec; the
    store adds the data checksum and the package version)."""
    return {"arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs, "classes": list(pretrain_ids),
            "per_class": cfg.pretrain_per_class, "image_size": scfg.image_size, "data_seed": scfg.data_seed,
            "epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr, "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size, "seed": int(seed), "quality_curve": cfg.quality_curve,
            "stream": [stream.order, stream.scenario, scfg.per_class, scfg.test_per_class]}


def cifar_backbone(cfg: BackboneConfig, scfg: StreamConfig, stream: Stream, pretrain_ids: list[int], seed: int,
                   device: torch.device | str = "cpu") -> Artifact[Backbone]:
    """``cfg.arch`` trained with labels on ``pretrain_ids`` (CIFAR-100 classes outside the
    stream) with ``seed`` (initial weights, data order, augmentation), from the backbones store:
    trained once per setting and seed and loaded afterwards.

    With ``quality_curve`` every pretraining epoch also records the NMC's accuracy on the
    evaluated stream (AIA and last), for the pretraining-quality figure: an observation,
    never used to choose anything."""
    from .... import data as _data

    pre = _data.load(classes=pretrain_ids, per_class=cfg.pretrain_per_class or None,
                     test_per_class=scfg.test_per_class or None, image_size=scfg.image_size, seed=scfg.data_seed)
    if set(pre.classes) & set(stream.data.classes):
        raise RuntimeError("pretraining classes overlap the evaluated stream")  # pretrain_split rules this out
    kw = cfg.arch_kwargs
    name = f"{cfg.arch} pretrained on {len(pretrain_ids)} CIFAR-100 classes (seed {seed})"

    def build_net(num_classes: int) -> nn.Module:
        return models.create(cfg.arch, num_classes=num_classes, **kw)

    def build(work: Path) -> tuple[Backbone, dict[str, Any]]:
        _seed_all(seed)
        model = models.create(cfg.arch, num_classes=len(pretrain_ids), **kw)
        tc = TrainConfig(epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, weight_decay=cfg.weight_decay,
                         schedule="cosine", desc=f"pretrain {cfg.arch} on {len(pretrain_ids)} classes, seed {seed}")

        def quality(m: nn.Module) -> dict[str, float]:
            mat = nmc_stream(stream, *stream_features(m, stream, device))
            return {"nmc_aia": mat.average_incremental(), "nmc_last": mat.last()}

        t0 = time.time()
        res = fit(model, pre.loader("train", cfg.batch_size, device, seed=seed),
                  pre.loader("test", 512, device), tc, checkpoint_dir=work / "fit",
                  extra_eval=quality if cfg.quality_curve else None)
        ev = evaluate(model, pre.loader("test", 512, device))
        state = _without_head(model.state_dict())
        save_torch(work / "backbone.pt", state)
        shutil.rmtree(work / "fit", ignore_errors=True)  # the resumable fit's checkpoint: done with
        info = {"source": "pretrained here", "name": name, "seed": int(seed), "arch": cfg.arch, "arch_kwargs": kw,
                "classes": list(pretrain_ids), "data": pre.describe(), "test_acc": ev["acc"],
                "train_s": res.train_seconds, "train_images": res.train_images, "epochs": cfg.pretrain_epochs,
                "wall_s": time.time() - t0, "params": sum(q.numel() for q in model.parameters()),
                "history": res.history}
        return Backbone(name, state, build_net, info), info

    def load(folder: Path, info: dict[str, Any]) -> Backbone:
        state = torch.load(folder / "backbone.pt", map_location="cpu", weights_only=True)
        return Backbone(name, state, build_net, dict(info))

    key = BACKBONES.key(pretrain_key(cfg, scfg, stream, pretrain_ids, seed), pre.checksum)
    art = BACKBONES.get(f"{cfg.arch}-c{len(pretrain_ids)}-s{seed}", key, build, load)
    art.value.info.update(built_now=art.built_now, key=art.key, stored_at=str(art.path) if art.path else None)
    return art


# -- one backbone per run seed ------------------------------------------------------------------------
@contextmanager
def rng_preserved() -> Iterator[None]:
    """Python's, numpy's and torch's random states (every CUDA device's too) restored on exit."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class SeedBackbones:
    """The backbone and its frozen features of each run seed, one seed's held at a time.

    ``load(seed)`` gives a seed's :class:`Backbone`. With ``per_seed`` every seed has its own
    (a backbone pretrained here with that seed); without, ``load`` is called once and its
    backbone and features serve every seed (a timm checkpoint). Asking for another seed drops
    the one held before loading the next, so at most one seed's network and features are in
    memory (a sweep runs all arms of a seed before the next). Preparing a seed — pretraining
    or loading its backbone, extracting its features — leaves the random states as they were,
    so a job's result does not depend on whether it was the one that prepared its seed.
    """

    def __init__(self, load: Callable[[int], Backbone], stream: Stream, device: torch.device | str,
                 per_seed: bool = True, name: str = "") -> None:
        self._load = load
        self.stream = stream
        self.device = device
        self.per_seed = per_seed
        self.name = name
        self.loads = 0                                  # backbones loaded so far (a test's probe)
        self._held: tuple[int | None, Backbone, FrozenFeatures] | None = None

    def key(self, seed: int) -> int | None:
        """What a seed's backbone is keyed by: the seed, or None when every seed shares one."""
        return int(seed) if self.per_seed else None

    @property
    def held(self) -> list[int | None]:
        """The keys of the backbones in memory: none or one."""
        return [] if self._held is None else [self._held[0]]

    def get(self, seed: int) -> tuple[Backbone, FrozenFeatures]:
        """The seed's backbone and its frozen features of the stream's images."""
        k = self.key(seed)
        if self._held is None or self._held[0] != k:
            self._held = None                           # the previous seed's go first
            with rng_preserved():
                bb = self._load(int(seed))
                self.loads += 1
                model = bb.frozen().to(self.device)
                feats = frozen_features(model, self.stream, self.device)
                del model
            self._held = (k, bb, feats)
        return self._held[1], self._held[2]

    def backbone(self, seed: int) -> Backbone:
        return self.get(seed)[0]

    def features(self, seed: int) -> FrozenFeatures:
        return self.get(seed)[1]


# -- learners that start from the backbone -----------------------------------------------------------
def pretrained(base: type[Learner], backbone: Backbone) -> Callable[[IncrementalConfig], Learner]:
    """A factory of ``base`` learners whose network starts from ``backbone`` (a fresh head)."""

    class FromBackbone(base):  # type: ignore[valid-type, misc]
        def build(self, num_classes: int) -> nn.Module:
            return backbone.make(num_classes)

    FromBackbone.__name__ = f"Pretrained{base.__name__}"
    return FromBackbone
