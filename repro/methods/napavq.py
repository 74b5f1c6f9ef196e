"""NAPA-VQ (Malepathirana et al., ICCV 2023) and its PASS-style baseline: exemplar-free
class-incremental learning with class prototypes, on the family's incremental loop.

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
by PASS's Gaussian noise (``augment="gaussian"``) in the NAPA-VQ learner.

The trainer has one optimiser for all parameters. The official code moves the CVs with SGD
at lr 5 and the backbone with Adam at lr 1e-3; here every parameter uses AdamW, and the CVs
are stored as ``cv = m·θ`` so that Adam (whose steps do not depend on the gradient's scale)
moves them ``m = cv_lr_mult`` times faster than the backbone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..incremental.chapter import protocol_config
from ..families.incremental.arms.baselines import FineTune
from ..families.incremental.learners import IncrementalConfig, Learner
from ..families.incremental.memory import extract_features
from ..families.incremental.stream import Stream
from ..metrics import mean_std_text
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import TrainConfig

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


@dataclass(frozen=True)
class NapaParams:
    """The method's hyper-parameters (the official code's values are the defaults)."""

    rotations: int = 4          # label augmentation by 90° rotations (1: none)
    temperature: float = 0.1    # T of every CE on logits (linear or −distance)
    kd_weight: float = 10.0     # weight of ‖f(x) − f_old(x)‖₂
    proto_weight: float = 10.0  # weight of the CE on the old classes' pseudo-features
    cv_lr_mult: float = 100.0   # CVs = m·θ: they move m times faster than the backbone under Adam
    na_k: int = 15              # a winning CV gets edges to its k nearest CVs
    na_eps: float = 0.9         # edge decay per encounter of a winning CV
    na_age: int = 10            # edges below na_eps**na_age are removed
    na: bool = True             # use the NA loss (an ablation switches it off)
    augment: str = "neighbour"  # neighbour (NA-PA) or gaussian (PASS's noise)

    def __post_init__(self) -> None:
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


def feature_kd(f: torch.Tensor, f_old: torch.Tensor) -> torch.Tensor:
    """‖f − f_old‖₂ over the whole batch (Frobenius norm, not a mean: the official term)."""
    return torch.linalg.vector_norm((f - f_old).float())


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


def na_loss(z: torch.Tensor, labels: torch.Tensor, cvs: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The neighbourhood-aware loss: mean over the batch of
    ``relu(d²(z, cv_y) − Σ_j w_j d²(z, cv_j))`` over the neighbours j of CV y (edge > 0, y
    itself excluded), with ``w = softmax_j(−0.001·d²)`` held constant. A CV without
    neighbours leaves ``relu(d²(z, cv_y))`` (the official code's behaviour)."""
    d2 = torch.cdist(z.float(), cvs.float()) ** 2                     # [B, M]
    M = cvs.shape[0]
    d_pos = d2.gather(1, labels[:, None]).squeeze(1)
    nb = edges[labels][:, :M] > 0
    nb[torch.arange(len(labels), device=nb.device), labels] = False
    with torch.no_grad():
        logits = torch.where(nb, -0.001 * d2, torch.full_like(d2, -math.inf))
        w = torch.softmax(logits, dim=1).nan_to_num(0.0)              # all-−inf rows → 0
    return F.relu(d_pos - (w * d2).sum(1)).mean()


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


# --------------------------------------------------------------------------- networks
class CodingVectors(nn.Module):
    """Learnable coding vectors ``cv = m·θ`` (one per (class, rotation)), the first
    ``n_frozen`` of which are replaced by a frozen copy, and the Neural-Gas edge matrix."""

    def __init__(self, num_cvs: int, dim: int, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.lr_mult = float(lr_mult)
        # cv ~ N(0, I) as in the official code, whatever the multiplier
        self.theta = nn.Parameter(torch.randn(num_cvs, dim) / self.lr_mult)
        self.register_buffer("frozen", torch.zeros(num_cvs, dim))
        self.register_buffer("n_frozen", torch.zeros((), dtype=torch.long))
        self.register_buffer("edges", torch.eye(num_cvs))

    def vectors(self) -> torch.Tensor:
        """All CVs [num_cvs, dim]: frozen rows first, then the live ones."""
        n = int(self.n_frozen)
        live = self.theta * self.lr_mult
        return torch.cat([self.frozen[:n], live[n:]]) if n else live

    @torch.no_grad()
    def freeze(self, n: int) -> None:
        """Freeze the first ``n`` CVs at their current values (rows already frozen stay as they
        were: weight decay may since have moved their unused parameters)."""
        old = int(self.n_frozen)
        if n < old:
            raise ValueError(f"{old} CVs are frozen already; cannot freeze only {n}")
        self.frozen[old:n] = self.theta[old:n] * self.lr_mult
        self.n_frozen.fill_(n)


class CVNet(nn.Module):
    """A backbone's features and a coding-vector classifier over (class, rotation)."""

    def __init__(self, backbone: nn.Module, num_classes: int, rotations: int, lr_mult: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.head = nn.Identity()  # its linear head is not used
        self.rotations = rotations
        self.num_classes = num_classes
        self.cv = CodingVectors(num_classes * rotations, backbone.num_features, lr_mult)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores: minus the distance between the L2-normalised feature and rotation-0 CVs."""
        z = F.normalize(self.features(x).float(), dim=1)
        cv0 = F.normalize(self.cv.vectors()[:: self.rotations].float(), dim=1)
        return -torch.cdist(z, cv0)  # argmax = nearest_cv(features, rotation-0 CVs)


class RotationNet(nn.Module):
    """A backbone whose linear head has R·C outputs; ``forward`` returns the rotation-0 ones."""

    def __init__(self, backbone: nn.Module, rotations: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.rotations = rotations

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def all_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.backbone.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_logits(self.features(x))[:, :: self.rotations]


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

    def __init__(self, cfg: IncrementalConfig, hp: NapaParams | None = None) -> None:
        if cfg.memory != 0:
            raise ValueError(f"{type(self).__name__} is exemplar-free: its config needs memory=0, not {cfg.memory}")
        super().__init__(cfg)
        self.hp = hp or NapaParams()
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


# --------------------------------------------------------------------------- chapter helpers
def necil_config(run, **overrides: Any) -> NecilConfig:
    """The protocol's schedule with no exemplar memory, AdamW and the later tasks' lr factor."""
    base = asdict(protocol_config(run, memory=0))
    p = run.params
    base.update(optimizer=p.get("optimizer", "adamw"), lr_later_factor=p.get("lr_later_factor", 0.1), **overrides)
    base["milestones"] = tuple(base["milestones"])
    return NecilConfig(**base)


def napa_params(run, **overrides: Any) -> NapaParams:
    """NapaParams from the run's parameters of the same names; ``overrides`` win."""
    names = {f.name for f in fields(NapaParams)}
    kw = {k: run.params[k] for k in names if k in run.params}
    kw.update(overrides)
    return NapaParams(**kw)


def ablation_overrides(name: str) -> dict[str, Any]:
    """The NapaParams change of one named ablation."""
    table = {"no_na": {"na": False}, "gaussian_pa": {"augment": "gaussian"}}
    if name not in table:
        raise ValueError(f"unknown ablation {name!r}: choose from {sorted(table)}")
    return table[name]


def chapter_learners(run, ablations: Sequence[str] = ()) -> dict[str, Any]:
    """label → factory: finetune, pass, napavq and the named ablations (labels
    ``napavq_no_na``, ``napavq_gaussian_pa``). Every hyper-parameter is checked here, before
    any training."""
    hp = napa_params(run)
    out: dict[str, Any] = {"finetune": FineTune,
                           "pass": lambda cfg: PassLearner(cfg, hp),
                           "napavq": lambda cfg: NapaVQ(cfg, hp)}
    for name in ablations:
        hp_a = NapaParams(**{**asdict(hp), **ablation_overrides(name)})
        out[f"napavq_{name}"] = _named(f"napavq_{name}", hp_a)
    return out


def _named(label: str, hp: NapaParams):
    """A NapaVQ factory whose learner carries ``label`` as its name (progress bars, records)."""
    def factory(cfg: IncrementalConfig) -> NapaVQ:
        learner = NapaVQ(cfg, hp)
        learner.name = label
        return learner
    return factory


def log_claim_metrics(run, results: list[dict[str, Any]]) -> None:
    """Per seed, paired: NAPA-VQ's AIA and last-accuracy gains over PASS, PASS's forgetting
    minus NAPA-VQ's, and the ablations' gaps to full NAPA-VQ (unjudged)."""
    by = {(r["method"], r["seed"]): r["summary"] for r in results}
    for (m, s), summ in by.items():
        if m != "napavq" or ("pass", s) not in by:
            continue
        ps = by[("pass", s)]
        run.log(s, aia_napavq_minus_pass=summ["aia"] - ps["aia"],
                last_napavq_minus_pass=summ["last"] - ps["last"],
                forgetting_pass_minus_napavq=ps["forgetting"] - summ["forgetting"])
        if ("finetune", s) in by:
            run.log(s, aia_pass_minus_finetune=ps["aia"] - by[("finetune", s)]["aia"])
        for (m2, s2), a in by.items():
            if s2 == s and m2.startswith("napavq_"):
                run.log(s, **{f"aia_napavq_minus_{m2}": summ["aia"] - a["aia"]})
    for r in results:  # NAPA-VQ read out by plain Euclidean distance (diagnostic)
        acc = [e["acc_euclidean"] for e in r.get("extras", []) if "acc_euclidean" in e]
        if acc and len(acc) == len(r["extras"]):
            run.log(r["seed"], **{f"aia_{r['method']}_euclidean": float(np.mean(acc)),
                                  f"last_{r['method']}_euclidean": acc[-1]})


def inference_markdown(results: list[dict[str, Any]], labels: Sequence[str]) -> str:
    """AIA and last accuracy of the NAPA-VQ learners under the official inference (nearest
    normalised CV) and under plain Euclidean distance, mean ± std over seeds."""
    ms = mean_std_text
    lines = ["| learner | AIA %, normalised (official) | AIA %, Euclidean | last %, normalised | last %, Euclidean |",
             "| --- | --- | --- | --- | --- |"]
    for label in labels:
        runs = [r for r in results if r["method"] == label and r["extras"] and "acc_euclidean" in r["extras"][0]]
        if not runs:
            continue
        eu = [[e["acc_euclidean"] for e in r["extras"]] for r in runs]
        lines.append(f"| {label} | {ms([r['summary']['aia'] for r in runs])} | {ms([np.mean(a) for a in eu])} "
                     f"| {ms([r['summary']['last'] for r in runs])} | {ms([a[-1] for a in eu])} |")
    return "\n".join(lines)


def graph_markdown(results: list[dict[str, Any]], labels: Sequence[str]) -> str:
    """Edges and mean degree of the class graph after each task (mean over seeds)."""
    lines = []
    for label in labels:
        runs = [r for r in results if r["method"] == label]
        if not runs or "graph_edges" not in runs[0]["extras"][0]:
            continue
        T = len(runs[0]["extras"])
        deg = [np.mean([r["extras"][t]["graph_mean_degree"] for r in runs]) for t in range(T)]
        lines.append(f"| {label} | " + " | ".join(f"{d:.1f}" for d in deg) + " |")
    if not lines:
        return ""
    T = len(next(r for r in results if r["method"] in labels)["extras"])
    head = "| learner | " + " | ".join(f"after task {t + 1}" for t in range(T)) + " |"
    return "\n".join([head, "| --- |" + " --- |" * T] + lines)


@torch.no_grad()
def pca_2d(x: torch.Tensor, fit_on: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project rows of ``x`` on the two leading principal axes of ``fit_on`` (default ``x``);
    returns (projection [N, 2], mean, axes [D, 2])."""
    ref = (x if fit_on is None else fit_on).double()
    mu = ref.mean(0)
    _, _, Vh = torch.linalg.svd(ref - mu, full_matrices=False)
    axes = Vh[:2].T
    return ((x.double() - mu) @ axes).float(), mu, axes


@torch.no_grad()
def plot_neighbourhood(model: CVNet, stream: Stream, setting: str, max_classes: int = 20,
                       per_class: int = 30, device: torch.device | str = "cpu",
                       title: str = "What NAPA-VQ learns: features, coding vectors and their neighbour graph"):
    """Left: a 2-D PCA of L2-normalised test features (dots) of the first ``max_classes``
    classes and their rotation-0 CVs (stars), with the CV graph's edges between them (line
    width ∝ edge strength). Right: the class graph (edges between rotation-0 CVs) of every
    class, ordered by task."""
    R = model.rotations
    C = stream.num_classes
    shown = min(max_classes, C)
    idx = stream.test_indices(range(stream.num_tasks))
    y = stream.data.y_test[idx]
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(shown)])
    feats = F.normalize(extract_features(model, stream.data.x_test[idx[keep]], device), dim=1)
    ys = y[keep]
    cv0 = F.normalize(model.cv.vectors().detach().float().cpu()[::R][:shown], dim=1)
    P, mu, axes = pca_2d(torch.cat([feats, cv0]), fit_on=feats)
    pf, pc = P[: len(feats)], P[len(feats):]
    E_all = class_graph(model.cv.edges, C, R)
    E = E_all[:shown, :shown]
    fig, (ax, ax2) = new_figure(ncols=2, width=10.0, height=4.4)
    tab20 = __import__("matplotlib").colormaps["tab20"]
    # tab20 comes in light/dark pairs: take the ten dark ones first so neighbours differ
    cmap = lambda c: tab20([*range(0, 20, 2), *range(1, 20, 2)][c % 20])
    for c in range(shown):
        m = ys == c
        ax.scatter(pf[m, 0], pf[m, 1], s=6, color=cmap(c % 20), alpha=0.45, linewidths=0)
    for i in range(shown):
        for j in range(i + 1, shown):
            if E[i, j] > 0:
                ax.plot(pc[[i, j], 0], pc[[i, j], 1], color="0.25", lw=0.4 + 1.6 * float(E[i, j]), alpha=0.7, zorder=2)
    ax.scatter(pc[:, 0], pc[:, 1], marker="*", s=110, c=[cmap(c % 20) for c in range(shown)], edgecolors="black",
               linewidths=0.6, zorder=3)
    for c in range(shown):
        ax.annotate(str(c), pc[c].tolist(), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"classes 0–{shown - 1}: test features (dots), CVs (★), edges", fontsize=9)
    im = ax2.imshow(E_all.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    bounds = np.cumsum([len(t) for t in stream.tasks])[:-1] - 0.5
    for b in bounds:
        ax2.axhline(b, color="tab:red", lw=0.5)
        ax2.axvline(b, color="tab:red", lw=0.5)
    ax2.grid(False)
    ax2.set_xlabel("class (label, in task order)")
    ax2.set_ylabel("class")
    ax2.set_title("edge strength between rotation-0 CVs (red: task boundaries)", fontsize=9)
    fig.colorbar(im, ax=ax2, shrink=0.8, label="edge strength")
    fig.suptitle(title)
    annotate_setting(fig, setting)
    deg = (E_all > 0).sum(1).float()
    same_task = [(stream.task_of(i) == stream.task_of(j)) for i in range(C) for j in range(C) if i < j and E_all[i, j] > 0]
    data = {"class_graph": E_all, "pca_cvs": pc, "pca_features_mean": pf.mean(0), "shown_classes": shown,
            "mean_degree": float(deg.mean()), "edges": int((E_all > 0).sum()) // 2,
            "fraction_edges_within_task": float(np.mean(same_task)) if same_task else float("nan"),
            "setting": setting}
    return fig, jsonable(data)


def record_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results for the record, without models or per-epoch histories."""
    drop = {"model", "learner_obj", "histories"}
    return [{k: v for k, v in r.items() if k not in drop} for r in results]


def describe_learners(labels: Sequence[str]) -> str:
    """One line per learner for the setup cell."""
    text = {"finetune": "fine-tuning, linear head, CE over the seen classes, no KD (the lower bound)",
            "pass": "PASS-style: linear head over (class, rotation), Gaussian prototype augmentation, feature KD",
            "napavq": "NAPA-VQ: coding vectors, NA loss, neighbour-aware prototype augmentation, feature KD"}
    text.update({f"napavq_{k}": v for k, v in ABLATIONS.items()})
    return "\n".join(f"  {label:<20} {text.get(label, '')}" for label in labels)


__all__ = ["ABLATIONS", "CVNet", "CodingVectors", "NapaParams", "NapaVQ", "NecilConfig", "PassLearner",
           "RotationNet", "chapter_learners", "class_graph", "feature_kd", "graph_stats", "log_claim_metrics",
           "inference_markdown", "na_loss", "napa_params", "nearest_cv", "necil_config", "neighbour_interpolation", "pass_radius", "pca_2d",
           "plot_neighbourhood", "rotate_batch", "update_edges"]
