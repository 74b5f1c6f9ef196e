"""Chapter 01 (OCA): backward-compatible representations for retrieval.

An *old* embedding model is trained on the first half of the classes, *new* models on all of
them. Retrieval compares a query feature with gallery features by cosine similarity. A new
model is **backward compatible** with the old one when its query features, matched against a
gallery the *old* model indexed, retrieve better than the old model does on its own gallery
(new/old > old/old): the gallery then never has to be re-embedded ("backfilling").

The arms (all new models share the backbone family, data and schedule):

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

Shapes: images ``x: [B, 3, S, S]``; features ``f: [B, D]``; ``P: [K, embed_dim]``.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.patches import Rectangle
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations

from .. import models
from ..families.incremental.memory import class_means, extract_features
from ..families.incremental.stream import Stream
from ..metrics import mean_std_text
from ..plots.style import COLORS, annotate_setting, jsonable, new_figure
from ..train import TrainConfig, dry_run, fit, predict

ARMS = ("independent", "bct", "oca", "oca_no_ortho")
TRANSFORMS = ("none", "orthogonal")
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


class EmbeddingNet(nn.Module):
    """Backbone → linear projection → L2 normalisation = the retrieval feature ``f``.

    ``transform="none"``: logits = V f. ``"orthogonal"``: z = W f + b with W kept orthogonal
    (PyTorch's orthogonal parametrization), logits = V z. V is bias-free in both cases.
    """

    def __init__(self, arch: str, num_classes: int, dim: int, transform: str = "none",
                 arch_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, not {transform!r}")
        self.backbone = models.create(arch, num_classes=num_classes, **dict(arch_kwargs or {}))
        self.backbone.head = nn.Identity()  # only backbone.features is used
        width = self.backbone.num_features
        self.dim, self.transform_kind = dim, transform
        self.proj = nn.Linear(width, dim)
        self.transform = (parametrizations.orthogonal(nn.Linear(dim, dim)) if transform == "orthogonal"
                          else nn.Identity())
        self.classifier = nn.Linear(dim, num_classes, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] → the retrieval feature f: [B, dim], unit norm."""
        return F.normalize(self.proj(self.backbone.features(x)), dim=1)

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """f: [B, dim] → logits [B, K] (through the orthogonal layer if there is one)."""
        return self.classifier(self.transform(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def ortho_error(self) -> float:
        """‖WᵀW − I‖_F of the orthogonal layer (0 without one)."""
        if self.transform_kind != "orthogonal":
            return 0.0
        W = self.transform.weight.detach().float()
        return float(torch.linalg.matrix_norm(W.T @ W - torch.eye(W.shape[1], device=W.device)))


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


def influence_loss(f_old: torch.Tensor, P: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """CE of normalize(f_old)·Pᵀ: the new feature classified by the old model's pseudo-classifier."""
    return F.cross_entropy(F.normalize(f_old, dim=1) @ P.T, y, label_smoothing=label_smoothing)


def alignment_loss(f_old: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of 1 − cos(f_old, P[y]): pulls each feature toward its class prototype in the old space."""
    return (1.0 - F.cosine_similarity(f_old, P[y], dim=1)).mean()


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
# the chapter's runs


def _train(role: str, cfg: CompatConfig, stream: Stream, idx: torch.Tensor, num_classes: int, seed: int,
           run, P: torch.Tensor | None = None) -> tuple[EmbeddingNet, dict[str, Any]]:
    torch.manual_seed(seed)  # same backbone initialisation for every arm of a seed
    model = build(cfg, num_classes, role).to(run.device)
    train = stream.train_loader(idx, cfg.batch_size, run.device, seed=seed)
    tc = cfg.train_config(desc=f"{role} s{seed}")
    res = fit(model, train, None, tc, loss_fn=loss_fn(role, cfg, P), checkpoint_dir=run.checkpoint_dir(role, seed))
    return model, {"train_s": res.train_seconds, "history": res.history}


def _accuracy(model: EmbeddingNet, stream: Stream, num_classes: int, device) -> float:
    """Top-1 (%) of the model's own classifier on the test images of its classes."""
    from ..data.loader import TensorLoader

    keep = stream.data.y_test < num_classes
    loader = TensorLoader(stream.data.x_test[keep], stream.data.y_test[keep], 512, device, train=False)
    logits, y = predict(model, loader)
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


def run_chapter(run, stream: Stream, cfg: CompatConfig, arms: Sequence[str], seeds: Sequence[int]
                ) -> list[dict[str, Any]]:
    """Per seed: train the old model (first half of the classes), its pseudo-classifier, then
    every new arm (all classes), and score the compatibility matrix on the test set.

    Returns one row per (seed, arm) with the pairs' metrics, and one ``old`` row per seed.
    Each training job is checkpointed under ``run.checkpoint_dir(role, seed)``."""
    arms = check_arms(arms)
    K = stream.num_classes
    n_old = old_classes(K)
    y_train = stream.data.y_train
    old_idx = torch.nonzero(y_train < n_old).flatten()
    new_idx = torch.arange(len(y_train))
    x_test, y_test = stream.data.x_test, stream.data.y_test
    out: list[dict[str, Any]] = []
    for seed in seeds:
        t0 = time.time()
        old, info = _train("old", cfg, stream, old_idx, n_old, seed, run)
        P = pseudo_classifier(old, stream.data.x_train, y_train, K, run.device, cfg.pseudo_classifier)
        f_old = extract_features(old, x_test, run.device)
        oo = retrieval_metrics(f_old, y_test, f_old, y_test)
        out.append({"method": "old", "seed": seed, "pairs": {"old_old": oo},
                    "acc": _accuracy(old, stream, n_old, run.device), "train_s": info["train_s"],
                    "wall_s": time.time() - t0, "classes": n_old})
        for arm in arms:
            t0 = time.time()
            model, info = _train(arm, cfg, stream, new_idx, K, seed, run, P)
            f_new = extract_features(model, x_test, run.device)
            out.append({"method": arm, "seed": seed, "pairs": compatibility_matrix(f_old, f_new, y_test),
                        "acc": _accuracy(model, stream, K, run.device), "train_s": info["train_s"],
                        "wall_s": time.time() - t0, "classes": K, "dim": model.dim,
                        "ortho_error": model.ortho_error(),
                        "feature_var": f_new.var(0).tolist()})
    return out


def _by(results: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["method"], r["seed"]): r for r in results}


def log_seed_metrics(run, results: list[dict[str, Any]]) -> None:
    """Per seed: every pair's mAP and top-1 per arm, classification top-1, and the paired
    differences the claims judge (mAP points)."""
    by = _by(results)
    for r in results:
        s, m = r["seed"], r["method"]
        if m == "old":
            run.log(s, map_old_old=r["pairs"]["old_old"]["map"], top1_old_old=r["pairs"]["old_old"]["top1"],
                    acc_old=r["acc"])
            continue
        vals = {f"{k}_{m}_{p}": r["pairs"][p][k] for p in ("new_old", "new_new") for k in ("map", "top1")}
        vals[f"acc_{m}"] = r["acc"]
        oo = by[("old", s)]["pairs"]["old_old"]["map"]  # the same old model for every arm of a seed
        vals[f"map_{m}_new_old_minus_old_old"] = r["pairs"]["new_old"]["map"] - oo
        run.log(s, **vals)
    seeds = sorted({r["seed"] for r in results})
    for s in seeds:
        oca, ind, bct = by.get(("oca", s)), by.get(("independent", s)), by.get(("bct", s))
        if oca and ind:
            run.log(s, map_oca_new_new_minus_independent=oca["pairs"]["new_new"]["map"] - ind["pairs"]["new_new"]["map"])
        if oca and bct:
            run.log(s, map_oca_minus_bct_new_new=oca["pairs"]["new_new"]["map"] - bct["pairs"]["new_new"]["map"])
        abl = by.get(("oca_no_ortho", s))
        if oca and abl:
            run.log(s, map_oca_minus_no_ortho_new_new=oca["pairs"]["new_new"]["map"] - abl["pairs"]["new_new"]["map"],
                    map_oca_minus_no_ortho_new_old=oca["pairs"]["new_old"]["map"] - abl["pairs"]["new_old"]["map"])


def summary_markdown(results: list[dict[str, Any]], arms: Sequence[str]) -> str:
    """Mean ± std over seeds: mAP and CMC top-1 of each pair, classification top-1, ‖WᵀW − I‖,
    training time. The old model's row holds old/old."""
    lines = ["| model | old/old mAP | new/old mAP | new/new mAP | new/old top-1 | new/new top-1 "
             "| classifier top-1 % | ‖WᵀW − I‖ | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in ["old", *arms]:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        p = lambda pair, k: mean_std_text([r["pairs"][pair][k] for r in rs if pair in r["pairs"]], ".1f")
        ortho = "—" if m == "old" else mean_std_text([r["ortho_error"] for r in rs], ".1e")
        lines.append(f"| {m} (n={len(rs)}) | {p('old_old', 'map')} | {p('new_old', 'map')} | {p('new_new', 'map')} "
                     f"| {p('new_old', 'top1')} | {p('new_new', 'top1')} | {mean_std_text([r['acc'] for r in rs], '.1f')} | {ortho} "
                     f"| {np.mean([r['train_s'] for r in rs]):.1f} |")
    return "\n".join(lines)


def record_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results for the record (feature variances kept, they are short)."""
    return jsonable(results)


def config_from(params: Mapping[str, Any]) -> CompatConfig:
    """A CompatConfig from a run's parameters (the names are the same)."""
    names = [f for f in CompatConfig.__dataclass_fields__]
    return CompatConfig(**{k: params[k] for k in names if k in params})


# --------------------------------------------------------------------------------------------
# figures


def mean_pairs(results: list[dict[str, Any]], arm: str, key: str = "map") -> dict[str, float]:
    """Mean over seeds of each pair's metric for one arm; old/old from the old model rows."""
    rs = [r for r in results if r["method"] == arm]
    olds = [r for r in results if r["method"] == "old"]
    out = {"old_old": float(np.mean([r["pairs"]["old_old"][key] for r in olds]))}
    for p in ("new_old", "new_new", "old_new"):
        out[p] = float(np.mean([r["pairs"][p][key] for r in rs]))
    return out


def plot_compatibility(results: list[dict[str, Any]], arms: Sequence[str], setting: str, key: str = "map"):
    """One 2×2 compatibility matrix per arm (rows: query model, columns: gallery model), mean
    over seeds. The old-query/new-gallery cell is not a deployment case and is left blank.
    A green frame marks new/old > old/old (compatible), a red one the opposite."""
    mats = {a: mean_pairs(results, a, key) for a in arms}
    vmax = max(max(v for k, v in m.items() if k != "old_new") for m in mats.values())
    fig, axes = new_figure(ncols=len(arms), width=2.6 * len(arms) + 1.0, height=3.0, squeeze=False)
    im = None
    for ax, arm in zip(axes[0], arms):
        m = mats[arm]
        A = np.array([[m["old_old"], np.nan], [m["new_old"], m["new_new"]]])
        im = ax.imshow(np.ma.masked_invalid(A), vmin=0, vmax=vmax, cmap="viridis")
        for i in range(2):
            for j in range(2):
                if np.isfinite(A[i, j]):
                    ax.text(j, i, f"{A[i, j]:.1f}", ha="center", va="center", fontsize=9,
                            color="white" if A[i, j] < 0.6 * vmax else "black")
        ok = m["new_old"] > m["old_old"]
        ax.add_patch(Rectangle((-0.5, 0.5), 1, 1, fill=False, linewidth=2.5,
                               edgecolor=COLORS[2] if ok else COLORS[1]))
        ax.set_xticks([0, 1], ["old", "new"])
        ax.set_yticks([0, 1], ["old", "new"])
        ax.set_xlabel("gallery model")
        ax.grid(False)
        ax.set_title(arm, fontsize=10)
    axes[0][0].set_ylabel("query model")
    fig.colorbar(im, ax=list(axes[0]), label=f"{'mAP' if key == 'map' else key} (%)", shrink=0.85)
    fig.suptitle(f"Compatibility matrix ({'mAP' if key == 'map' else key}, mean over seeds)")
    annotate_setting(fig, setting)
    return fig, jsonable({"matrices": mats, "metric": key, "setting": setting})


def plot_pairs(results: list[dict[str, Any]], arms: Sequence[str], setting: str):
    """Left: new/old and new/new mAP per arm (bars: mean, dots: seeds), old/old as a line.
    Right: the trade-off, compatibility gain (new/old − old/old) against new/new, per run."""
    fig, (a, b) = new_figure(ncols=2, width=9.6, height=3.6)
    olds = {r["seed"]: r["pairs"]["old_old"]["map"] for r in results if r["method"] == "old"}
    oo = float(np.mean(list(olds.values())))
    x = np.arange(len(arms))
    data: dict[str, Any] = {"old_old": olds, "arms": {}}
    for j, (pair, label) in enumerate((("new_old", "new/old (old gallery)"), ("new_new", "new/new"))):
        vals = [[r["pairs"][pair]["map"] for r in results if r["method"] == arm] for arm in arms]
        a.bar(x + (j - 0.5) * 0.38, [np.mean(v) for v in vals], width=0.36, color=COLORS[j], alpha=0.85, label=label)
        for i, v in enumerate(vals):
            a.scatter(np.full(len(v), x[i] + (j - 0.5) * 0.38), v, color="black", s=10, zorder=3)
    a.axhline(oo, color="0.3", linestyle="--", linewidth=1.2, label="old/old")
    a.set_xticks(x, arms, rotation=15)
    a.set_ylabel("mAP (%)")
    a.set_title("Retrieval per arm")
    a.legend(fontsize=8)
    for i, arm in enumerate(arms):
        rs = [r for r in results if r["method"] == arm]
        gx = [r["pairs"]["new_old"]["map"] - olds[r["seed"]] for r in rs]
        gy = [r["pairs"]["new_new"]["map"] for r in rs]
        b.scatter(gx, gy, color=COLORS[i % len(COLORS)], s=28, label=arm)
        b.scatter([np.mean(gx)], [np.mean(gy)], color=COLORS[i % len(COLORS)], marker="X", s=80, edgecolor="black")
        data["arms"][arm] = {"gain": gx, "new_new": gy, "seeds": [r["seed"] for r in rs]}
    b.axvline(0, color="0.3", linewidth=1)
    b.set_xlabel("compatibility gain: new/old − old/old (mAP pts)")
    b.set_ylabel("new/new mAP (%)")
    b.set_title("Compatible (right of 0) and good (up)")
    b.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting})


def plot_feature_variance(results: list[dict[str, Any]], arms: Sequence[str], embed_dim: int, setting: str):
    """Per-dimension variance of the retrieval feature f over the test images (mean over
    seeds), for the arms with extra dimensions: are the extra ones used?"""
    arms = [a for a in arms if any(r["method"] == a and r["dim"] > embed_dim for r in results)]
    fig, ax = new_figure(width=6.4, height=3.2)
    data: dict[str, Any] = {}
    for i, arm in enumerate(arms):
        v = np.mean([r["feature_var"] for r in results if r["method"] == arm], axis=0)
        ax.plot(np.arange(len(v)), v, color=COLORS[i % len(COLORS)], label=arm, linewidth=1.2)
        data[arm] = {"variance": v, "old_part_share": float(v[:embed_dim].sum() / v.sum()) if v.sum() > 0 else None}
    ax.axvspan(embed_dim - 0.5, max([len(d["variance"]) for d in data.values()], default=embed_dim) - 0.5,
               color="0.85", alpha=0.6, label="extra dimensions")
    ax.set_xlabel("feature dimension")
    ax.set_ylabel("variance over test images")
    ax.set_title("Does the new model use its extra dimensions?")
    ax.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"arms": data, "embed_dim": embed_dim, "setting": setting})
