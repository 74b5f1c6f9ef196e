"""NAPA-VQ (Malepathirana et al., ICCV 2023) and its PASS-style baseline: exemplar-free
class-incremental learning with class prototypes, on the family's incremental loop (chapter
07). Arms ``pass`` and ``napavq`` (config :class:`NapaConfig`) and ``necil_finetune``
(fine-tuning with the same optimiser and schedule, config :class:`NecilConfig`); the networks
are in ``repro.layers.coding_vectors``, the losses in ``repro.losses.incremental``.

Both learners see only the current task's images (no exemplar memory) and keep, per old
class, one *prototype*: the mean feature of its training images under the model at the end
of its task. While a later task trains, pseudo-features of old classes are made from the
prototypes and classified alongside the real images; the features of the current images
are distilled from the frozen previous model (``‖f(x) − f_old(x)‖₂`` over the batch, PASS's
and NAPA-VQ's ``torch.dist`` term). With ``rotations = R > 1`` every image is also seen in
R rotations by 90° with label ``y·R + k``, so the networks learn R·C "classes" (PASS's
self-supervised label augmentation); only the rotation-0 classes are predicted at test time.

* **PASS-style** (``PassLearner``): a linear head over the R·C classes, CE at temperature T;
  pseudo-features ``p_c + r·N(0, I)`` with r the average within-class feature spread of the
  first task (PASS's radius), labelled ``c·R``.
* **NAPA-VQ** (``NapaVQ``): the classifier is one learnable *coding vector* (CV) per
  (class, rotation); logits are minus the Euclidean distances to the CVs, CE at T
  (``L_dce``). A Neural-Gas-style edge matrix over the CVs records which CVs are each
  other's neighbours in feature space (``update_edges``). The neighbourhood-aware loss
  ``na_loss`` asks each feature to be closer to its own CV than to the weighted mean of its
  class's neighbour CVs, and the pseudo-features interpolate an old prototype toward one of
  its neighbours' prototypes: ``a = γ·p_c + (1 − γ)·p_n``, γ ~ U(½, 1) (NA-PA). The old
  classes' CVs are frozen (``CodingVectors.freeze``). Inference: nearest rotation-0 CV after
  L2-normalising features and CVs.

The ablations switch off the NA loss (``na=False``) or replace the neighbour interpolation
by PASS's Gaussian noise (``augment="gaussian"``) in the NAPA-VQ learner's config.

The trainer has one optimiser for all parameters. The official code moves the CVs with SGD
at lr 5 and the backbone with Adam at lr 1e-3; here every parameter uses AdamW, and the CVs
are stored as ``cv = m·θ`` so that Adam (whose steps do not depend on the gradient's scale)
moves them ``m = cv_lr_mult`` times faster than the backbone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .... import models
from ....arms import arm
from ....layers.coding_vectors import CVNet, RotationNet
from ....losses.incremental import feature_kd, na_loss
from ....train import TrainConfig
from ..learners import IncrementalConfig, Learner, StreamResult
from ..memory import extract_features
from ..stream import Stream
from .baselines import FAMILY, FineTune

AUGMENTS = ("neighbour", "gaussian")
ABLATIONS = {"no_na": "NAPA-VQ without the NA loss", "gaussian_pa": "NAPA-VQ with PASS's Gaussian prototype augmentation"}


# --------------------------------------------------------------------------- configuration
@dataclass
class NecilConfig(IncrementalConfig):
    """The family's schedule plus what the exemplar-free learners change: the optimiser, and
    the learning rate of the tasks after the first (×``lr_later_factor``, as the official
    code's 0.1)."""

    optimizer: str = "adamw"
    lr_later_factor: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if not self.lr_later_factor > 0:
            raise ValueError(f"lr_later_factor must be > 0, not {self.lr_later_factor}")

    def train_config(self, t: int, desc: str = "") -> TrainConfig:
        cfg = super().train_config(t, desc)
        cfg.optimizer = self.optimizer
        if t > 0:
            cfg.lr = self.lr * self.lr_later_factor
        return cfg


@dataclass
class NapaConfig(NecilConfig):
    """The exemplar-free schedule plus the prototype learners' hyper-parameters (the official
    code's values are the defaults; ``kd_weight`` weighs the feature distillation)."""

    kd_weight: float = 10.0     # weight of ‖f(x) − f_old(x)‖₂
    rotations: int = 4          # label augmentation by 90° rotations (1: none)
    temperature: float = 0.1    # T of every CE on logits (linear or −distance)
    proto_weight: float = 10.0  # weight of the CE on the old classes' pseudo-features
    cv_lr_mult: float = 100.0   # CVs = m·θ: they move m times faster than the backbone under Adam
    na_k: int = 15              # a winning CV gets edges to its k nearest CVs
    na_eps: float = 0.9         # edge decay per encounter of a winning CV
    na_age: int = 10            # edges below na_eps**na_age are removed
    na: bool = True             # use the NA loss (an ablation switches it off)
    augment: str = "neighbour"  # neighbour (NA-PA) or gaussian (PASS's noise)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.rotations, int) or not 1 <= self.rotations <= 4:
            raise ValueError(f"rotations must be an integer in 1..4 (multiples of 90°), not {self.rotations!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.kd_weight < 0 or self.proto_weight < 0:
            raise ValueError("kd_weight and proto_weight must be ≥ 0")
        if not self.cv_lr_mult > 0:
            raise ValueError(f"cv_lr_mult must be > 0, not {self.cv_lr_mult}")
        if self.na_k < 1:
            raise ValueError(f"na_k must be ≥ 1, not {self.na_k}")
        if not 0 < self.na_eps < 1:
            raise ValueError(f"na_eps must be in (0, 1), not {self.na_eps}")
        if self.na_age < 1:
            raise ValueError(f"na_age must be ≥ 1, not {self.na_age}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, not {self.augment!r}")

    @property
    def e_min(self) -> float:
        return self.na_eps ** self.na_age


# --------------------------------------------------------------------------- pieces
def rotate_batch(x: torch.Tensor, y: torch.Tensor, rotations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in ``rotations`` rotations by k·90°: row ``b·R + k`` is ``rot90(x[b], k)``
    with label ``y[b]·R + k``."""
    if rotations == 1:
        return x, y
    xr = torch.stack([torch.rot90(x, k, (2, 3)) for k in range(rotations)], 1).flatten(0, 1)
    yr = (y[:, None] * rotations + torch.arange(rotations, device=y.device)).flatten()
    return xr, yr


def pass_radius(features: torch.Tensor, labels: torch.Tensor) -> float:
    """PASS's radius: √(mean over classes of trace(Σ_c) / D), Σ_c the unbiased class covariance."""
    D = features.shape[1]
    tr = []
    for c in labels.unique():
        fc = features[labels == c].double()
        if len(fc) < 2:
            continue
        tr.append(fc.var(0, unbiased=True).sum().item() / D)
    if not tr:
        raise ValueError("the radius needs a class with at least two images")
    return math.sqrt(float(np.mean(tr)))


@torch.no_grad()
def update_edges(edges: torch.Tensor, z: torch.Tensor, cvs: torch.Tensor, k: int, eps: float,
                 e_min: float) -> torch.Tensor:
    """One Neural-Gas step of the edge matrix over the first ``M = len(cvs)`` CVs, in place.

    For each feature in ``z`` its nearest CV *wins* and gets edges of strength 1 to its k
    nearest CVs (itself included). Each win also ages the winner's edges by ``eps``; an edge
    that was refreshed ``r`` times in a batch where its CV won ``w`` times keeps
    ``eps^(w − r)`` (the official batched rule). Edges below ``e_min`` are removed and the
    matrix is symmetrised by averaging. Returns the updated ``[M, M]`` block.
    """
    M = cvs.shape[0]
    k = min(k, M)
    knn = torch.cdist(z.float(), cvs.float()).topk(k, dim=1, largest=False).indices  # [B, k], nearest first
    win = knn[:, 0]
    visits = torch.bincount(win, minlength=M).to(edges.dtype)
    close = torch.zeros(M, M, dtype=edges.dtype, device=edges.device)
    close.index_put_((win[:, None].expand(-1, k).reshape(-1), knn.reshape(-1)),
                     torch.ones(knn.numel(), dtype=edges.dtype, device=edges.device), accumulate=True)
    ages = (visits[:, None] - close).clamp(min=0)
    E = torch.maximum(edges[:M, :M], (close > 0).to(edges.dtype)) * eps ** ages
    E = torch.where(E < e_min, torch.zeros_like(E), E)
    E = (E + E.T) / 2
    edges[:M, :M] = E
    return E


def neighbour_interpolation(rows: torch.Tensor, edges: torch.Tensor, protos: torch.Tensor,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """NA-PA pseudo-features: for each CV index in ``rows`` pick one of its neighbours
    uniformly among the non-zero entries of its edge row (itself included, as its diagonal
    is 1), and return ``γ·p_row + (1 − γ)·p_neighbour`` with γ ~ U(½, 1), and the neighbours.
    ``edges`` is the ``[M, M]`` block of the CVs that have prototypes."""
    mask = (edges[rows] > 0).float()
    if (mask.sum(1) == 0).any():
        raise ValueError("a CV has no edge at all (its diagonal must be 1)")
    nb = torch.multinomial(mask, 1, generator=generator).squeeze(1)
    gamma = 0.5 + 0.5 * torch.rand(len(rows), 1, device=protos.device, generator=generator)
    return gamma * protos[rows] + (1 - gamma) * protos[nb], nb


@torch.no_grad()
def class_means(model: nn.Module, stream: Stream, t: int, rotations: int,
                device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features of task t's training images in every rotation (un-augmented, eval mode):
    returns (means [n·R, D] in the order of ``labels``, labels ``c·R + k``, and the rotation-0
    features with their class labels stacked as ``(features, class)`` for the radius)."""
    pos = stream.train_indices(t)
    imgs, y = stream.data.x_train[pos], stream.data.y_train[pos]
    means, labels, feats0 = [], [], None
    for k in range(rotations):
        f = extract_features(model, torch.rot90(imgs, k, (2, 3)).contiguous(), device)
        if k == 0:
            feats0 = f
        for c in stream.tasks[t]:
            means.append(f[y == c].mean(0))
            labels.append(c * rotations + k)
    return torch.stack(means), torch.tensor(labels), (feats0, y)


# --------------------------------------------------------------------------- learners
class _PrototypeLearner(Learner):
    """What PASS and NAPA-VQ share: rotations, feature KD, stored prototypes and the radius."""

    uses_old_model = True

    def __init__(self, cfg: NapaConfig) -> None:
        if not isinstance(cfg, NapaConfig):
            raise TypeError(f"{type(self).__name__} needs a NapaConfig, not {type(cfg).__name__}")
        if cfg.memory != 0:
            raise ValueError(f"{type(self).__name__} is exemplar-free: its config needs memory=0, not {cfg.memory}")
        super().__init__(cfg)
        self.hp = cfg
        self.protos: torch.Tensor | None = None   # [C·R, D] rows filled once computed
        self.has_proto: torch.Tensor | None = None
        self.radius: float | None = None

    def _store(self, means: torch.Tensor, labels: torch.Tensor, total: int) -> None:
        if self.protos is None:
            self.protos = torch.zeros(total, means.shape[1])
            self.has_proto = torch.zeros(total, dtype=torch.bool)
        self.protos[labels] = means
        self.has_proto[labels] = True

    def _common(self, model, x, y, seen_before):
        """Rotated batch, its features, and the KD term (0 in the first task)."""
        xr, yr = rotate_batch(x, y, self.hp.rotations)
        z = model.features(xr)
        kd = z.new_zeros(()).float()
        if self.old_model is not None and seen_before > 0 and self.hp.kd_weight > 0:
            with torch.no_grad():
                z_old = self.old_model.features(xr)
            kd = feature_kd(z, z_old)
        return xr, yr, z, kd

    def state_dict(self) -> dict:
        return {"protos": self.protos, "has_proto": self.has_proto, "radius": self.radius}

    def load_state_dict(self, state: dict) -> None:
        self.protos, self.has_proto, self.radius = state["protos"], state["has_proto"], state["radius"]


@arm("pass", family=FAMILY, config=NapaConfig)
class PassLearner(_PrototypeLearner):
    """PASS-style: linear head over (class, rotation), Gaussian prototype augmentation, feature KD."""

    name = "pass"

    def build(self, num_classes: int) -> nn.Module:
        R = self.hp.rotations
        return RotationNet(models.create(self.cfg.arch, num_classes=num_classes * R, **self.cfg.arch_kwargs), R)

    def loss_fn(self, t: int, seen: int, seen_before: int):
        hp, R = self.hp, self.hp.rotations
        M = seen * R

        def fn(model, x, y):
            xr, yr, z, kd = self._common(model, x, y, seen_before)
            logits = model.all_logits(z)[:, :M].float()
            loss = F.cross_entropy(logits / hp.temperature, yr) + hp.kd_weight * kd
            if seen_before > 0 and hp.proto_weight > 0:
                c = torch.randint(seen_before, (len(x),), device=z.device)
                p = self.protos.to(z.device)[c * R]
                a = p + self.radius * torch.randn_like(p)
                logits_a = model.all_logits(a.to(z.dtype))[:, :M].float()
                loss = loss + hp.proto_weight * F.cross_entropy(logits_a / hp.temperature, c * R)
            return loss, logits[::R, ::R]
        return fn

    def post_train(self, model: nn.Module, t: int, stream: Stream) -> dict[str, Any]:
        # PASS keeps rotation-0 prototypes only and measures the radius in the first task
        device = next(model.parameters()).device
        means, labels, (f0, y0) = class_means(model, stream, t, 1, device)
        self._store(means, labels * self.hp.rotations, stream.num_classes * self.hp.rotations)
        if t == 0:
            self.radius = pass_radius(f0, y0)
        return {"radius": self.radius}


@arm("napavq", family=FAMILY, config=NapaConfig)
class NapaVQ(_PrototypeLearner):
    """NAPA-VQ: coding-vector classifier, Neural-Gas edges, NA loss, neighbour-aware prototype
    augmentation, feature KD, frozen old CVs."""

    name = "napavq"

    def build(self, num_classes: int) -> nn.Module:
        backbone = models.create(self.cfg.arch, num_classes=1, **self.cfg.arch_kwargs)
        return CVNet(backbone, num_classes, self.hp.rotations, self.hp.cv_lr_mult)

    def loss_fn(self, t: int, seen: int, seen_before: int):
        hp, R = self.hp, self.hp.rotations
        M, M_old = seen * R, seen_before * R

        cache: dict[str, torch.Tensor] = {}

        def fn(model, x, y):
            head = model.cv
            if int(head.n_frozen) != M_old:
                head.freeze(M_old)  # the old classes' CVs stop moving from this task on
            xr, yr, z, kd = self._common(model, x, y, seen_before)
            z = z.float()
            cvs = head.vectors()[:M].float()
            d = torch.cdist(z, cvs)
            loss = F.cross_entropy(-d / hp.temperature, yr) + hp.kd_weight * kd
            update_edges(head.edges, z.detach(), cvs.detach(), hp.na_k, hp.na_eps, hp.e_min)
            if hp.na:
                loss = loss + na_loss(z, yr, cvs, head.edges)
            if seen_before > 0 and hp.proto_weight > 0:
                rows = torch.randint(seen_before, (len(x),), device=z.device) * R
                if "protos" not in cache:  # moved to the device once per task
                    cache["protos"] = self.protos.to(z.device)
                protos = cache["protos"]
                if hp.augment == "neighbour":
                    a, _ = neighbour_interpolation(rows, head.edges[:M, :M], protos[:M])
                else:
                    p = protos[rows]
                    a = p + self.radius * torch.randn_like(p)
                loss = loss + hp.proto_weight * F.cross_entropy(-torch.cdist(a, cvs) / hp.temperature, rows)
                update_edges(head.edges, a, cvs.detach(), hp.na_k, hp.na_eps, hp.e_min)
                if hp.na:
                    loss = loss + na_loss(a, rows, cvs, head.edges)
            return loss, -d[::R, ::R]
        return fn

    def post_train(self, model: nn.Module, t: int, stream: Stream) -> dict[str, Any]:
        # Prototypes of task t's classes under the final model, and of task t+1's classes under
        # the same model: the official code computes the latter at the start of task t+1 with
        # the old model, so that an old class's neighbour among the new classes has one.
        device = next(model.parameters()).device
        R, total = self.hp.rotations, stream.num_classes * self.hp.rotations
        means, labels, (f0, y0) = class_means(model, stream, t, R, device)
        self._store(means, labels, total)
        if t == 0:
            self.radius = pass_radius(f0, y0)
        if t + 1 < stream.num_tasks:
            means, labels, _ = class_means(model, stream, t + 1, R, device)
            self._store(means, labels, total)
        return {**graph_stats(model.cv.edges, stream.seen(t), R),
                "acc_euclidean": euclidean_accuracy(model, stream, t, device)}

    def metrics(self, result: StreamResult) -> dict[str, float]:
        """AIA and last accuracy under the plain Euclidean readout (a diagnostic)."""
        return euclidean_metrics(result.extras)


def nearest_cv(z: torch.Tensor, cvs: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Index of the nearest CV of each feature, after L2-normalising both (the official
    inference) or by plain Euclidean distance (what L_dce trains)."""
    z, cvs = z.float(), cvs.float()
    if normalise:
        z, cvs = F.normalize(z, dim=1), F.normalize(cvs, dim=1)
    return torch.cdist(z, cvs).argmin(1)


@torch.no_grad()
def euclidean_accuracy(model: CVNet, stream: Stream, t: int, device: torch.device | str) -> float:
    """Top-1 (%) on the test images of the classes seen after task t when a test image goes
    to the nearest rotation-0 CV by plain Euclidean distance (a diagnostic, not the official
    inference)."""
    idx = stream.test_indices(range(t + 1))
    z = extract_features(model, stream.data.x_test[idx], device)
    cv0 = model.cv.vectors().detach().float().cpu()[:: model.rotations][: stream.seen(t)]
    pred = nearest_cv(z, cv0, normalise=False)
    return 100.0 * (pred == stream.data.y_test[idx]).float().mean().item()


def graph_stats(edges: torch.Tensor, seen: int, rotations: int) -> dict[str, float]:
    """Edges among the rotation-0 CVs of the ``seen`` classes: their number and mean degree
    (self-loops excluded)."""
    E = class_graph(edges, seen, rotations)
    n = int((E > 0).sum().item()) // 2
    return {"graph_edges": n, "graph_mean_degree": 2 * n / seen if seen else 0.0}


def class_graph(edges: torch.Tensor, seen: int, rotations: int) -> torch.Tensor:
    """The ``[seen, seen]`` block of the edge matrix between rotation-0 CVs, diagonal zeroed."""
    idx = torch.arange(seen) * rotations
    E = edges.detach().cpu()[idx][:, idx].clone()
    E.fill_diagonal_(0)
    return E


def euclidean_metrics(extras: list[dict[str, Any]]) -> dict[str, float]:
    """``aia_euclidean`` and ``last_euclidean`` from the per-task extras of a NAPA-VQ stream
    ({} unless every task recorded its Euclidean readout)."""
    acc = [e["acc_euclidean"] for e in extras if "acc_euclidean" in e]
    if not acc or len(acc) != len(extras):
        return {}
    return {"aia_euclidean": float(np.mean(acc)), "last_euclidean": acc[-1]}


@arm("necil_finetune", family=FAMILY, config=NecilConfig)
class NecilFineTune(FineTune):
    """Fine-tuning with the exemplar-free chapters' optimiser and later-task learning rate."""


def ablation_overrides(name: str) -> dict[str, Any]:
    """The NapaConfig change of one named ablation."""
    table = {"no_na": {"na": False}, "gaussian_pa": {"augment": "gaussian"}}
    if name not in table:
        raise ValueError(f"unknown ablation {name!r}: choose from {sorted(table)}")
    return table[name]


def chapter_plan(ablations: Sequence[str] = ()) -> dict[str, tuple[str, dict[str, Any]]]:
    """The chapter's labelled arms (label → (arm, config overrides)), all exemplar-free:
    finetune, pass, napavq and the named ablations (labels ``napavq_no_na``,
    ``napavq_gaussian_pa``)."""
    plan: dict[str, tuple[str, dict[str, Any]]] = {"finetune": ("necil_finetune", {"memory": 0}),
                                                   "pass": ("pass", {"memory": 0}),
                                                   "napavq": ("napavq", {"memory": 0})}
    for name in ablations:
        plan[f"napavq_{name}"] = ("napavq", {"memory": 0, **ablation_overrides(name)})
    return plan


def describe_learners(labels: Sequence[str]) -> str:
    """One line per learner for the setup cell."""
    text = {"finetune": "fine-tuning, linear head, CE over the seen classes, no KD (the lower bound)",
            "pass": "PASS-style: linear head over (class, rotation), Gaussian prototype augmentation, feature KD",
            "napavq": "NAPA-VQ: coding vectors, NA loss, neighbour-aware prototype augmentation, feature KD"}
    text.update({f"napavq_{k}": v for k, v in ABLATIONS.items()})
    return "\n".join(f"  {label:<20} {text.get(label, '')}" for label in labels)
