"""Chapter 01 (OCA): backward-compatible representations for retrieval; arms ``independent``,
``bct``, ``oca`` and ``oca_no_ortho`` (config :class:`CompatConfig`).

An *old* embedding model is trained on the first half of the classes, *new* models on all of
them. Retrieval compares a query feature with gallery features by cosine similarity. A new
model is **backward compatible** with the old one when its query features, matched against a
gallery the *old* model indexed, retrieve better than the old model does on its own gallery
(new/old > old/old): the gallery then never has to be re-embedded ("backfilling").

The arms (all new models share the backbone family, data and schedule; :class:`OldModel` is the
model they are made compatible with, trained per seed before them):

* ``independent`` — CE only, no compatibility: the quality reference (new/new) whose new/old
  retrieval is expected to collapse;
* ``bct`` — BCT-style: CE plus an *influence* loss, the new feature classified by the frozen
  old model's pseudo-classifier ``P`` (``bct_weight``·CE(normalize(f)·Pᵀ, y));
* ``oca`` — Ricci et al. (2024), as in their code: the embedding grows by ``extra_dim``
  dimensions, an orthogonal layer ``z = W f + b`` sits between the L2-normalised feature ``f``
  and a bias-free classifier, and the first ``embed_dim`` coordinates of ``f`` are pulled to the
  old space by the influence loss and a cosine alignment to the class prototype ``P[y]``;
* ``oca_no_ortho`` — ablation: OCA's losses and extra dimensions without the orthogonal layer.

The retrieval feature of every model is ``f`` (before the orthogonal layer). When query and
gallery features differ in size, both are truncated to the smaller one before the cosine
(new/old compares ``f[:, :embed_dim]`` with the old feature), as in the official evaluation.

The network is ``repro.layers.compatible.EmbeddingNet``. Shapes: images ``x: [B, 3, S, S]``; features ``f: [B, D]``; ``P: [K, embed_dim]``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .... import models
from ....arms import arm
from ....layers.compatible import EmbeddingNet
from ....losses.incremental import alignment_loss, influence_loss
from ....train import FitResult, TrainConfig, dry_run, fit, predict
from ..memory import class_means, extract_features
from ..stream import Stream
from .baselines import FAMILY

ARMS = ("independent", "bct", "oca", "oca_no_ortho")
PSEUDO_CLASSIFIERS = ("means", "old_head")
PAIRS = ("old_old", "new_old", "new_new", "old_new")  # query model _ gallery model
TOPK = (1, 5)


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class CompatConfig:
    """Architecture, schedule and loss weights shared by the old model and every new arm."""

    arch: str = "resnet18"
    arch_width: int = 0               # width of cnn3-style models (0: the architecture's own)
    embed_dim: int = 128              # the old model's (and the compatible part's) feature size
    extra_dim: int = 32               # OCA's extra dimensions
    epochs: int = 100
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 3.05e-5
    warmup_epochs: float = 5.0
    batch_size: int = 64
    label_smoothing: float = 0.1
    w_cls: float = 5.0                # OCA: weight of the main CE
    w_influence: float = 10.0         # OCA: weight of the influence CE through P
    w_align: float = 5.0              # OCA: weight of 1 − cos(f_old, P[y])
    bct_weight: float = 10.0          # BCT: weight of the influence CE (its main CE has weight 1)
    pseudo_classifier: str = "means"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, not {v!r}")
        if not isinstance(self.extra_dim, int) or isinstance(self.extra_dim, bool) or self.extra_dim < 0:
            raise ValueError(f"extra_dim must be an integer ≥ 0, not {self.extra_dim!r}")
        if self.arch_width < 0:
            raise ValueError(f"arch_width must be ≥ 0, not {self.arch_width}")
        if self.arch not in models.available():
            raise ValueError(f"unknown arch {self.arch!r}; available: {', '.join(models.available())}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")
        for name in ("w_cls", "w_influence", "w_align", "bct_weight", "weight_decay", "warmup_epochs"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be finite and ≥ 0, not {v}")
        if self.pseudo_classifier not in PSEUDO_CLASSIFIERS:
            raise ValueError(f"pseudo_classifier must be one of {PSEUDO_CLASSIFIERS}, not {self.pseudo_classifier!r}")
        self.train_config()  # optimizer, lr: the trainer's own checks, before any training

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return {"width": self.arch_width} if self.arch_width else {}

    def train_config(self, desc: str = "") -> TrainConfig:
        """The trainer's settings: the official cosine schedule with linear warm-up."""
        return TrainConfig(epochs=self.epochs, optimizer=self.optimizer, lr=self.lr,
                           weight_decay=self.weight_decay, schedule="cosine", warmup_epochs=self.warmup_epochs,
                           label_smoothing=self.label_smoothing, desc=desc)


def check_arms(arms: Sequence[str]) -> list[str]:
    """Distinct known arm names, in the given order."""
    arms = list(arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown or len(set(arms)) != len(arms) or not arms:
        raise ValueError(f"arms must be distinct names from {ARMS}, not {arms}")
    return arms


def chapter_arms(ablation: bool) -> list[str]:
    """The arms a run trains: the three of the claim, plus the no-orthogonal ablation if asked."""
    if not isinstance(ablation, bool):
        raise ValueError(f"ablation must be true or false, not {ablation!r}")
    return ["independent", "bct", "oca"] + (["oca_no_ortho"] if ablation else [])


def old_classes(num_classes: int) -> int:
    """The old model's classes: the first half of the class order (50 of 100)."""
    if num_classes < 2:
        raise ValueError(f"an old/new split needs at least 2 classes, not {num_classes}")
    return num_classes // 2


# --------------------------------------------------------------------------------------------
# the model


def build(cfg: CompatConfig, num_classes: int, role: str) -> EmbeddingNet:
    """The network of a role: ``old`` / ``independent`` / ``bct`` (embed_dim, no transform),
    ``oca`` (embed_dim + extra_dim, orthogonal), ``oca_no_ortho`` (embed_dim + extra_dim, none)."""
    if role in ("old", "independent", "bct"):
        return EmbeddingNet(cfg.arch, num_classes, cfg.embed_dim, "none", cfg.arch_kwargs)
    if role == "oca":
        return EmbeddingNet(cfg.arch, num_classes, cfg.embed_dim + cfg.extra_dim, "orthogonal", cfg.arch_kwargs)
    if role == "oca_no_ortho":
        return EmbeddingNet(cfg.arch, num_classes, cfg.embed_dim + cfg.extra_dim, "none", cfg.arch_kwargs)
    raise ValueError(f"unknown role {role!r}; one of old, {', '.join(ARMS)}")


# --------------------------------------------------------------------------------------------
# the pseudo-classifier and the losses


def pseudo_classifier(old: EmbeddingNet, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      device: torch.device | str = "cpu", mode: str = "means") -> torch.Tensor:
    """P: [K, embed_dim], the frozen old model's stand-in classifier over all K new classes.

    ``means`` (the official code, for BCT and OCA alike): the class means of the old model's
    normalised features of the new training images (un-augmented). ``old_head`` (the BCT
    paper): the old classifier's rows for the classes it was trained on, the class means for
    the others."""
    if mode not in PSEUDO_CLASSIFIERS:
        raise ValueError(f"pseudo_classifier must be one of {PSEUDO_CLASSIFIERS}, not {mode!r}")
    P = class_means(extract_features(old, images, device), labels.cpu(), range(num_classes))
    if mode == "old_head":
        head = old.classifier.weight.detach().float().cpu()
        P[: head.shape[0]] = head
    return P


def loss_fn(role: str, cfg: CompatConfig, P: torch.Tensor | None = None):
    """The trainer's ``loss_fn(model, x, y) → (loss, logits)`` of a role.

    old / independent: CE_ls. bct: CE_ls + bct_weight·influence. oca / oca_no_ortho:
    w_cls·CE_ls + w_influence·influence(f[:, :embed_dim]) + w_align·alignment(f[:, :embed_dim])."""
    ls = cfg.label_smoothing
    if role in ("old", "independent"):
        def plain(model, x, y):
            logits = model(x)
            return F.cross_entropy(logits, y, label_smoothing=ls), logits
        return plain
    if P is None:
        raise ValueError(f"the {role} arm needs the old model's pseudo-classifier P")
    if P.shape[1] != cfg.embed_dim:
        raise ValueError(f"P has {P.shape[1]} columns, the old feature {cfg.embed_dim}")
    if role == "bct":
        def bct(model, x, y):
            f = model.features(x)
            logits = model.classify(f)
            Pd = P.to(f.device, f.dtype)
            return F.cross_entropy(logits, y, label_smoothing=ls) + cfg.bct_weight * influence_loss(f, Pd, y, ls), logits
        return bct
    if role in ("oca", "oca_no_ortho"):
        d = cfg.embed_dim

        def oca(model, x, y):
            f = model.features(x)
            logits = model.classify(f)
            f_old, Pd = f[:, :d], P.to(f.device, f.dtype)
            loss = (cfg.w_cls * F.cross_entropy(logits, y, label_smoothing=ls)
                    + cfg.w_influence * influence_loss(f_old, Pd, y, ls)
                    + cfg.w_align * alignment_loss(f_old, Pd, y))
            return loss, logits
        return oca
    raise ValueError(f"unknown role {role!r}; one of old, {', '.join(ARMS)}")


# --------------------------------------------------------------------------------------------
# retrieval


def match_dims(query: torch.Tensor, gallery: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate both feature sets to the smaller size and L2-normalise (the official rule):
    [Q, a], [G, b] → [Q, m], [G, m] with m = min(a, b)."""
    m = min(query.shape[1], gallery.shape[1])
    return F.normalize(query[:, :m].float(), dim=1), F.normalize(gallery[:, :m].float(), dim=1)


@torch.no_grad()
def retrieval_metrics(query: torch.Tensor, yq: torch.Tensor, gallery: torch.Tensor, yg: torch.Tensor,
                      leave_one_out: bool = True, topk: Sequence[int] = TOPK,
                      chunk: int = 1024) -> dict[str, float]:
    """mAP and CMC top-k (%) of cosine retrieval.

    query: [Q, a], gallery: [G, b] (truncated to the common size, see ``match_dims``).
    A gallery item is relevant when it has the query's label. AP of a query = the mean, over
    its relevant items, of the precision at the rank of each; CMC top-k = share of queries
    with a relevant item among the first k. ``leave_one_out``: query i and gallery item i are
    the same image (Q = G), so item i is left out of query i's ranking. Ties keep gallery
    order. Queries without any relevant item are left out (their number is returned). A dry
    run ranks the first ``chunk`` queries only.
    """
    if len(query) != len(yq) or len(gallery) != len(yg):
        raise ValueError("features and labels differ in length")
    if leave_one_out and len(query) != len(gallery):
        raise ValueError("leave-one-out needs the same images as queries and gallery (Q = G)")
    q, g = match_dims(query, gallery)
    yq, yg = yq.cpu(), yg.cpu()
    aps, hits, kept = [], {k: [] for k in topk}, 0
    ranks = torch.arange(1, len(g) + 1, dtype=torch.float32)
    for s in range(0, len(q), chunk):
        sims = q[s: s + chunk] @ g.T                                 # [c, G]
        rel = yq[s: s + chunk, None] == yg[None, :]                  # [c, G]
        if leave_one_out:
            rows = torch.arange(len(sims))
            sims[rows, rows + s] = float("-inf")
            rel[rows, rows + s] = False
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices
        r = torch.gather(rel, 1, order).float()                      # relevance in rank order
        if leave_one_out:
            r = r[:, :-1]  # the left-out image is ranked last
        n_rel = r.sum(1)
        ok = n_rel > 0
        prec = r.cumsum(1) / ranks[: r.shape[1]]
        aps.append(((prec * r).sum(1)[ok] / n_rel[ok]))
        for k in topk:
            hits[k].append((r[ok, :k].sum(1) > 0).float())
        kept += int(ok.sum())
        if dry_run():
            break
    out = {"map": 100.0 * torch.cat(aps).mean().item() if kept else float("nan")}
    for k in topk:
        out[f"top{k}"] = 100.0 * torch.cat(hits[k]).mean().item() if kept else float("nan")
    out["queries"] = kept
    return out


def compatibility_matrix(old_feats: torch.Tensor, new_feats: torch.Tensor, labels: torch.Tensor
                         ) -> dict[str, dict[str, float]]:
    """Retrieval metrics of every (query model, gallery model) pair over one image set,
    leave-one-out: ``old_old``, ``new_old`` (new queries, old gallery), ``new_new``, ``old_new``."""
    feats = {"old": old_feats, "new": new_feats}
    return {f"{a}_{b}": retrieval_metrics(feats[a], labels, feats[b], labels) for a, b in
            (p.split("_") for p in PAIRS)}


# --------------------------------------------------------------------------------------------
# the models: the old one and the arms


class OldModel:
    """The old model: ``embed_dim`` features, CE on the first half of the classes."""

    role = "old"

    def __init__(self, cfg: CompatConfig) -> None:
        self.cfg = cfg

    def build(self, num_classes: int) -> EmbeddingNet:
        return build(self.cfg, num_classes, self.role)

    def loss_fn(self, P: torch.Tensor | None = None):
        return loss_fn(self.role, self.cfg, P)


@arm("independent", family=FAMILY, config=CompatConfig)
class Independent(OldModel):
    """A new model trained with CE only: the quality reference, not made compatible."""

    role = "independent"


@arm("bct", family=FAMILY, config=CompatConfig)
class BCT(OldModel):
    """BCT-style: CE plus the influence loss through the old model's pseudo-classifier."""

    role = "bct"


@arm("oca", family=FAMILY, config=CompatConfig)
class OCA(OldModel):
    """OCA: extra dimensions, an orthogonal layer before the classifier, influence + alignment."""

    role = "oca"


@arm("oca_no_ortho", family=FAMILY, config=CompatConfig)
class OCANoOrtho(OldModel):
    """OCA's losses and extra dimensions without the orthogonal layer (ablation)."""

    role = "oca_no_ortho"


def train_model(model_def: OldModel, stream: Stream, idx: torch.Tensor, num_classes: int, seed: int,
                device: torch.device | str = "cpu", checkpoint_dir: str | Path | None = None,
                P: torch.Tensor | None = None) -> tuple[EmbeddingNet, FitResult]:
    """Train one model (old or new) on the training images ``idx``: the same backbone
    initialisation and batches for every model of a seed."""
    cfg = model_def.cfg
    torch.manual_seed(seed)  # same backbone initialisation for every arm of a seed
    model = model_def.build(num_classes).to(device)
    train = stream.train_loader(idx, cfg.batch_size, device, seed=seed)
    tc = cfg.train_config(desc=f"{model_def.role} s{seed}")
    res = fit(model, train, None, tc, loss_fn=model_def.loss_fn(P), checkpoint_dir=checkpoint_dir)
    return model, res


def accuracy(model: EmbeddingNet, stream: Stream, num_classes: int, device: torch.device | str = "cpu") -> float:
    """Top-1 (%) of the model's own classifier on the test images of its classes."""
    from ....data.loader import TensorLoader

    keep = stream.data.y_test < num_classes
    loader = TensorLoader(stream.data.x_test[keep], stream.data.y_test[keep], 512, device, train=False)
    logits, y = predict(model, loader)
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


def old_metrics(pairs: dict[str, dict[str, float]], acc: float) -> dict[str, float]:
    """The old model's per-seed numbers: its retrieval against its own (the old) gallery."""
    oo = pairs["old_old"]
    return {"map_old_gallery": oo["map"], "top1_old_gallery": oo["top1"], "map_own_gallery": oo["map"],
            "top1_own_gallery": oo["top1"], "acc": acc}


def new_metrics(pairs: dict[str, dict[str, float]], acc: float) -> dict[str, float]:
    """A new model's per-seed numbers: its queries against the old model's gallery (new/old), and
    against its own (new/new); the old model's row of the same seed is the baseline of the first."""
    return {"map_old_gallery": pairs["new_old"]["map"], "top1_old_gallery": pairs["new_old"]["top1"],
            "map_own_gallery": pairs["new_new"]["map"], "top1_own_gallery": pairs["new_new"]["top1"], "acc": acc}


def chapter_plan(ablation: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """The new models a run trains (label → (arm, config overrides)): the three of the claim,
    plus the no-orthogonal ablation if asked."""
    return {a: (a, {}) for a in chapter_arms(ablation)}
