"""Chapter 10 (nmc): a frozen pretrained backbone with a nearest-mean classifier (NMC) against
class-incremental learners that update the network (Janson et al., 2022, arXiv 2210.04428).

The NMC never trains. After task t it stores, for each of the task's classes c, the mean
μ_c of the (L2-normalised) frozen features of c's training images — the means themselves
are *not* re-normalised, as in the official script — and predicts
``argmin_c ‖f(x) − μ_c‖₂`` over every class seen so far. Every learner of the chapter
starts from the same backbone:

* ``nmc`` / ``nmc_raw``: class means of the L2-normalised / raw frozen features;
* ``probe_seq``: a linear head on the same frozen features, trained task after task on the
  new data only (fine-tuning of the head);
* ``joint_probe``: a linear head on the frozen features trained on all data seen so far
  (the frozen backbone's non-continual upper reference);
* ``finetune`` / ``replay``: the whole pretrained network fine-tuned on each task (the
  family's shared ``FineTune`` / ``Replay``, with the backbone as initial weights).

The frozen-feature learners run on features extracted once (no augmentation); the others go
through the shared incremental loop. Every learner fills the family's ``AccuracyMatrix`` and
returns the same result rows as ``repro.incremental.chapter.run_learners``.

The backbone is either a timm model (the paper: ViT-B/16 ImageNet-21k, from a local weights
file or downloaded by timm where there is network; images un-normalised and resized to the
model's input size, as the official script does) or — the default below the paper tier —
``"cifar"``: a network of the chapter's ``arch`` pretrained here, with labels, on the
*last* ``pretrain_classes`` classes of the class order. Those classes never enter the
evaluated stream: a protocol task that holds any of them is dropped (the gpu tier's
100-class stream keeps its first tasks). The pretrained network is cached under the
checkpoint folder, keyed by everything that defines it, so it is trained once per setting.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator

from .. import models
from ..data import MEAN, STD, Dataset, class_order
from ..incremental.chapter import protocol_config, protocol_stream, run_learners
from ..families.incremental.arms.baselines import FineTune, Replay
from ..families.incremental.learners import IncrementalConfig, Learner
from ..families.incremental.memory import class_means, extract_features
from ..families.incremental.metrics import AccuracyMatrix
from ..families.incremental.stream import Stream
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import WORK, TrainConfig, dry_run, evaluate, fit

CIFAR = "cifar"
FROZEN = ("nmc", "nmc_raw", "probe_seq", "joint_probe")
TRAINED = ("finetune", "replay")
LEARNERS = FROZEN[:2] + ("probe_seq", "finetune", "replay", "joint_probe")


# -- parameters and classes ---------------------------------------------------------------------
def check_params(p: dict[str, Any]) -> None:
    """Raise ValueError for parameters that cannot work, before any data is read or trained."""
    if p["backbone"] == CIFAR:
        P = p["pretrain_classes"]
        if not 1 <= P <= 99:
            raise ValueError(f"pretrain_classes must be in 1..99 (classes left for the stream), not {P}")
        if p["pretrain_epochs"] < 1 or p["pretrain_lr"] <= 0:
            raise ValueError("pretrain_epochs must be ≥ 1 and pretrain_lr > 0")
        if p["pretrain_per_class"] < 0:
            raise ValueError(f"pretrain_per_class must be ≥ 0 (0: all 500), not {p['pretrain_per_class']}")
        if p["arch"] not in models.available():
            raise ValueError(f"unknown arch {p['arch']!r}; available: {', '.join(models.available())}")
    else:
        if p["weights"] and not Path(p["weights"]).expanduser().is_file():
            raise ValueError(f"weights file {p['weights']!r} does not exist")
        if not p["weights"] and not p["timm_pretrained"]:
            raise ValueError(
                f"backbone {p['backbone']!r} needs its pretrained weights: give weights=PATH (a state dict) or "
                f"timm_pretrained=True (downloads, needs network); backbone='cifar' pretrains one here instead")
    if p["probe_epochs"] < 1 or p["probe_lr"] <= 0:
        raise ValueError("probe_epochs must be ≥ 1 and probe_lr > 0")
    if p["epochs"] < 1:
        raise ValueError(f"epochs (fine-tuning epochs per task) must be ≥ 1, not {p['epochs']}")


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


def chapter_stream(run) -> tuple[Stream, list[int]]:
    """The evaluated stream and the pretraining classes (CIFAR-100 ids; [] for a timm backbone).

    The protocol's stream, less the tasks that hold pretraining classes (recorded in the
    run's notes, and in the figure captions through the data description)."""
    p = run.params
    check_params(p)
    stream = protocol_stream(run)
    if p["backbone"] != CIFAR:
        return stream, []
    full = class_order(p["order_seed"])
    pre, kept = pretrain_split(full, incremental_tasks_full(p), p["pretrain_classes"])
    if kept < stream.num_tasks:
        stream = restrict_stream(stream, kept)
        run.data_info["description"] = stream.data.describe()
    run.note(stream={"scenario": stream.scenario, "tasks": stream.num_tasks, "classes": stream.num_classes,
                     "order": stream.order, "pretrain_classes": pre})
    return stream, pre


def incremental_tasks_full(p: dict[str, Any]) -> list[list[int]]:
    """The protocol's tasks over its ``classes`` (labels), without loading any data."""
    from ..data import incremental_tasks
    from ..families.incremental.stream import parse_scenario

    base, inc = parse_scenario(p["scenario"])
    return incremental_tasks(list(range(p["classes"])), base, inc)


# -- nearest-mean classifier ----------------------------------------------------------------------
def nmc_predict(features: torch.Tensor, means: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Index of the nearest mean (Euclidean) for every feature row."""
    f = F.normalize(features.float(), dim=1) if normalize else features.float()
    # Squared distances in float64: ties between nearly equal means should not depend on rounding.
    d = torch.cdist(f.double(), means.double())
    return d.argmin(1)


def _row(pred: torch.Tensor, y: torch.Tensor, stream: Stream, t: int) -> list[float]:
    row = []
    for j in range(t + 1):
        mask = torch.isin(y, torch.tensor(stream.tasks[j]))
        row.append(100.0 * (pred[mask] == y[mask]).float().mean().item() if mask.any() else float("nan"))
    return row


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
        matrix.add_row(_row(pred, stream.data.y_test[idx], stream, t))
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
        matrix.add_row(_row(pred, stream.data.y_test[te], stream, t))
    return matrix, secs


def stream_features(model: nn.Module, stream: Stream, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (un-augmented, eval mode) of the stream's training and test images."""
    return (extract_features(model, stream.data.x_train, device),
            extract_features(model, stream.data.x_test, device))


def result_row(method: str, seed: int, stream: Stream, matrix: AccuracyMatrix, train_s: float,
               wall_s: float) -> dict[str, Any]:
    """A result row shaped like ``run_learners``' (summary, A, acc_after…)."""
    return {"method": method, "seed": seed, "order_seed": stream.order_seed, "learner": method, "A": matrix.rows,
            "task_sizes": list(matrix.task_sizes), "acc_after": matrix.acc_after(),
            "summary": {**matrix.summary(), "train_s": train_s}, "memory_sizes": [0] * stream.num_tasks,
            "extras": [{} for _ in matrix.rows], "histories": [], "train_s": train_s, "wall_s": wall_s}


# -- backbones ----------------------------------------------------------------------------------------
class TimmNet(nn.Module):
    """A timm model as a ``repro.models`` network: ``features`` (pooled pre-logits), ``dropout``, ``head``.

    The stream's loader normalises images with the CIFAR mean/std; like the official script,
    the backbone sees them un-normalised ([0, 1]) and resized to its input side."""

    def __init__(self, body: nn.Module, num_classes: int, size: int) -> None:
        super().__init__()
        self.body, self.size = body, size
        self.dropout = nn.Identity()
        self.head = nn.Linear(body.num_features, num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.std + self.mean
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


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


def backbone_folder(key: dict[str, Any]) -> Path:
    """Cache folder of a pretrained backbone, keyed by everything that defines it."""
    from ..paths import checkpoints_dir
    from ..provenance import source_hash

    blob = json.dumps({**key, "code": source_hash()}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return checkpoints_dir() / "nmc-backbones" / f"{key['arch']}-c{len(key['classes'])}-{digest}"


def cifar_backbone(run, stream: Stream, pretrain_ids: list[int]) -> Backbone:
    """``arch`` trained with labels on ``pretrain_ids`` (classes outside the stream), cached.

    With ``quality_curve`` every pretraining epoch also records the NMC's accuracy on the
    evaluated stream (AIA and last), for the pretraining-quality figure: an observation,
    never used to choose anything."""
    from .. import data as _data
    from ..run import seed_everything

    p = run.params
    kw = {"width": p["arch_width"]} if p["arch_width"] else {}
    pre = _data.load(classes=pretrain_ids, per_class=p["pretrain_per_class"] or None,
                     test_per_class=p["test_per_class"] or None, image_size=p["image_size"], seed=p["data_seed"])
    if set(pre.classes) & set(stream.data.classes):
        raise RuntimeError("pretraining classes overlap the evaluated stream")  # pretrain_split rules this out
    key = {"arch": p["arch"], "arch_kwargs": kw, "classes": pretrain_ids, "per_class": p["pretrain_per_class"],
           "image_size": p["image_size"], "data_seed": p["data_seed"], "epochs": p["pretrain_epochs"],
           "lr": p["pretrain_lr"], "weight_decay": p["weight_decay"], "batch_size": p["batch_size"],
           "seed": p["pretrain_seed"], "data": pre.checksum, "quality_curve": p["quality_curve"],
           "stream": [stream.order, stream.scenario, p["per_class"], p["test_per_class"]]}
    folder = backbone_folder(key)
    seed_everything(p["pretrain_seed"])
    model = models.create(p["arch"], num_classes=len(pretrain_ids), **kw)
    cfg = TrainConfig(epochs=p["pretrain_epochs"], lr=p["pretrain_lr"], weight_decay=p["weight_decay"],
                      schedule="cosine", desc=f"pretrain {p['arch']} on {len(pretrain_ids)} classes")

    def quality(m: nn.Module) -> dict[str, float]:
        mat = nmc_stream(stream, *stream_features(m, stream, run.device))
        return {"nmc_aia": mat.average_incremental(), "nmc_last": mat.last()}

    t0 = time.time()
    res = fit(model, pre.loader("train", p["batch_size"], run.device, seed=p["pretrain_seed"]),
              pre.loader("test", 512, run.device), cfg, checkpoint_dir=None if dry_run() else folder,
              extra_eval=quality if p["quality_curve"] else None)
    ev = evaluate(model, pre.loader("test", 512, run.device))
    info = {"source": "pretrained here", "arch": p["arch"], "arch_kwargs": kw, "classes": pretrain_ids,
            "data": pre.describe(), "test_acc": ev["acc"], "train_s": res.train_seconds,
            "train_images": res.train_images, "epochs": p["pretrain_epochs"], "cached": res.resumed_from_epoch is not None,
            "wall_s": time.time() - t0, "params": sum(q.numel() for q in model.parameters()),
            "history": res.history, "folder": str(folder)}

    def build(num_classes: int) -> nn.Module:
        return models.create(p["arch"], num_classes=num_classes, **kw)

    return Backbone(f"{p['arch']} pretrained on {len(pretrain_ids)} CIFAR-100 classes", _without_head(model.state_dict()),
                    build, info)


def chapter_backbone(run, stream: Stream, pretrain_ids: list[int]) -> Backbone:
    """The backbone the parameters name (pretrained here, or a timm model's weights)."""
    p = run.params
    if p["backbone"] == CIFAR:
        return cifar_backbone(run, stream, pretrain_ids)
    return timm_backbone(p["backbone"], p["weights"], p["timm_pretrained"])


# -- learners -------------------------------------------------------------------------------------------
def pretrained(base: type[Learner], backbone: Backbone) -> Callable[[IncrementalConfig], Learner]:
    """A factory of ``base`` learners whose network starts from ``backbone`` (a fresh head)."""

    class FromBackbone(base):  # type: ignore[valid-type, misc]
        def build(self, num_classes: int) -> nn.Module:
            return backbone.make(num_classes)

    FromBackbone.__name__ = f"Pretrained{base.__name__}"
    return FromBackbone


def run_chapter(run, stream: Stream, backbone: Backbone, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every learner over the stream: the frozen-feature ones on features extracted once,
    fine-tuning and replay through the shared loop (checkpointed per task)."""
    p = run.params
    t0 = time.time()
    f_train, f_test = stream_features(backbone.frozen(), stream, run.device)
    extract_s = time.time() - t0
    run.note(features={"dim": int(f_train.shape[1]), "extract_s": round(extract_s, 2)})
    results: list[dict[str, Any]] = []
    for label, normalize in (("nmc", True), ("nmc_raw", False)):
        t0 = time.time()
        mat = nmc_stream(stream, f_train, f_test, normalize)
        wall = time.time() - t0
        # deterministic given the backbone: the same row for every seed, so gains pair by seed
        results += [result_row(label, s, stream, mat, 0.0, wall) for s in seeds]
    for label, joint in (("probe_seq", False), ("joint_probe", True)):
        for s in seeds:
            t0 = time.time()
            mat, secs = probe_stream(stream, f_train, f_test, joint, p["probe_epochs"], p["probe_lr"],
                                     p["batch_size"], s)
            results.append(result_row(label, s, stream, mat, secs, time.time() - t0))
    cfg = protocol_config(run)
    results += run_learners(run, stream, {"finetune": pretrained(FineTune, backbone),
                                          "replay": pretrained(Replay, backbone)}, cfg, seeds)
    order = {m: i for i, m in enumerate(LEARNERS)}
    return sorted(results, key=lambda r: (order[r["method"]], r["seed"]))


# -- figures -------------------------------------------------------------------------------------------
def plot_pretraining(info: dict[str, Any], final: dict[str, float], setting: str):
    """Backbone quality during pretraining: its own test accuracy on the pretraining classes
    and the NMC's AIA / last accuracy on the evaluated stream, after every epoch.

    ``final``: other learners' AIA with the final backbone (mean over seeds), drawn as
    horizontal references."""
    hist = info.get("history", [])
    ep = np.array([h["epoch"] for h in hist])
    fig, ax = new_figure(width=7.6, height=3.4)
    data: dict[str, Any] = {"epoch": ep}
    if hist and "test_acc" in hist[0]:
        acc = np.array([h.get("test_acc", np.nan) for h in hist])
        ax.plot(ep, acc, "s--", color="0.4", label="backbone top-1 on its own pretraining classes")
        data["pretrain_test_acc"] = acc
    if hist and "nmc_aia" in hist[0]:
        for k, style, lab in (("nmc_aia", "o-", "NMC AIA on the stream"), ("nmc_last", "^-", "NMC last on the stream")):
            v = np.array([h[k] for h in hist])
            ax.plot(ep, v, style, label=lab)
            data[k] = v
    for i, (lab, v) in enumerate(final.items()):
        ax.axhline(v, color=f"C{i + 2}", lw=1.2, ls=":", label=f"{lab}, AIA (final backbone)")
    data["references"] = final
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Does NMC's accuracy follow the backbone's quality?")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the curves cross the whole panel
    annotate_setting(fig, setting)
    return fig, jsonable(data)


def backbone_markdown(backbone: Backbone, stream: Stream) -> str:
    """One paragraph on the backbone: where it comes from, its accuracy and cost."""
    i = backbone.info
    if i.get("source") == "pretrained here":
        return (f"Backbone: **{i['arch']}** ({i['params']:,} parameters) pretrained here with labels on "
                f"{len(i['classes'])} CIFAR-100 classes outside the stream ({i['data']}), {i['epochs']} epochs: "
                f"top-1 {i['test_acc']:.1f}% on those classes' test images, {i['train_s']:.0f} s of training "
                f"({'loaded from the cache' if i['cached'] else 'trained in this run'}). "
                f"Evaluated stream: {stream.describe()}.")
    return (f"Backbone: **{backbone.name}** ({i['params']:,} parameters, weights from {i['source']}), input "
            f"{i['input_size']} px. Evaluated stream: {stream.describe()}.")
