"""Dataset reinforcement (Faghri et al., ICCV 2023): store teacher knowledge once, train any
student on it at the cost of ordinary training.

* ``build_store``: for every training image, ``views`` random augmentations — stored as their
  *parameters* (crop offsets and flip, int16) — and the teacher's top-k probabilities for each
  (class ids int16, probabilities fp16). The teacher runs once per view, here and never again.
* ``apply_views``: re-applies stored parameters; the result is bit-identical to the tensor the
  teacher saw (a test checks it).
* ``densify``: top-k → a full distribution, the leftover mass 1 − Σ top-k spread evenly over
  the other classes ("densify smooth").
* ``train_reinforced``: each step, per image, a random stored view with probability ``p_view``
  (else the original image with a one-hot target), loss KL(target ‖ student), no CE term.

Augmentations are random crop (zero padding) and horizontal flip, the project's standard pair;
the paper adds RandAugment and random erasing (a deviation the chapter states).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.cifar import MEAN, STD
from ..losses import distillation as D
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import AllBatches, FitResult, dry_run
from .distill import StudentSetup, _fit_student_model, teacher_loss_fn


def apply_views(images: torch.Tensor, params: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 images [B, 3, S, S] cropped at (dy, dx) after zero padding and flipped where
    ``flip`` = 1; params [B, 3] = (dy, dx, flip). Returns uint8 [B, 3, S, S]."""
    b, _, h, w = images.shape
    dev = images.device
    p = params.to(dev).long()
    xp = F.pad(images, (pad, pad, pad, pad))
    rows = p[:, 0:1] + torch.arange(h, device=dev)[None]
    cols = p[:, 1:2] + torch.arange(w, device=dev)[None]
    cols = torch.where(p[:, 2:3].bool(), cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None]
    return xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 → the float input the models were trained on (CIFAR-100 mean/std)."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def sample_params(n: int, pad: int, gen: torch.Generator) -> torch.Tensor:
    """n random (dy, dx, flip) triples, int16."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen)
    return torch.stack([dy, dx, flip], 1).to(torch.int16)


def densify(ids: torch.Tensor, probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sparse top-k [B, k] → dense [B, C]; the missing mass is spread evenly over the rest."""
    b, k = ids.shape
    p = probs.float()
    rest = (1 - p.sum(1, keepdim=True)).clamp_min(0) / max(1, num_classes - k)
    out = rest.expand(b, num_classes).clone()
    out.scatter_(1, ids.long(), p)
    return out / out.sum(1, keepdim=True)


@dataclass
class ReinforcedStore:
    """Stored views and sparse teacher targets for every training image."""

    params: torch.Tensor      # [N, V, 3] int16: dy, dx, flip
    ids: torch.Tensor         # [N, V, k] int16
    probs: torch.Tensor       # [N, V, k] float16
    pad: int
    build_seconds: float
    teacher_key: str

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.params, self.ids, self.probs))

    def describe(self) -> str:
        n, v, k = self.ids.shape
        return (f"{n} images × {v} views, top-{k} teacher probabilities: {self.nbytes / 2**20:.2f} MiB, "
                f"built in {self.build_seconds:.1f} s")


@torch.no_grad()
def build_store(teacher: nn.Module, images: torch.Tensor, views: int, top_k: int, pad: int, seed: int = 0,
                device: torch.device | str = "cpu", batch_size: int = 512, teacher_key: str = "") -> ReinforcedStore:
    """Run the teacher once on ``views`` random augmentations of every image and keep its top-k."""
    if views < 1 or top_k < 1:
        raise ValueError(f"views and top_k must be ≥ 1 (got {views}, {top_k})")
    t0 = time.time()
    n = len(images)
    gen = torch.Generator().manual_seed(seed)
    params = torch.stack([sample_params(n, pad, gen) for _ in range(views)], 1)
    k = min(top_k, teacher(torch.zeros(1, 3, *images.shape[-2:], device=device)).shape[1])
    ids = torch.zeros(n, views, k, dtype=torch.int16)
    probs = torch.zeros(n, views, k, dtype=torch.float16)
    teacher.eval()
    for v in range(views):
        for s in range(0, n, batch_size):
            sl = slice(s, min(n, s + batch_size))
            x = normalise(apply_views(images[sl].to(device), params[sl, v], pad))
            p = F.softmax(teacher(x).float(), 1)
            top = p.topk(k, dim=1)
            ids[sl, v] = top.indices.cpu().to(torch.int16)
            probs[sl, v] = top.values.cpu().to(torch.float16)
            if dry_run():
                break
    return ReinforcedStore(params, ids, probs, pad, time.time() - t0, teacher_key)


class _Current(AllBatches):
    """All batches, remembering the indices and position of the one being trained on."""

    def __init__(self) -> None:
        self.current: torch.Tensor | None = None
        self.epoch, self.batch = 0, 0

    def epoch_batches(self, loader, epoch: int):
        self.epoch = epoch
        for batch_id, idx in super().epoch_batches(loader, epoch):
            self.current, self.batch = idx, batch_id
            yield batch_id, idx


def train_reinforced(setup: StudentSetup, store: ReinforcedStore, p_view: float = 0.99) -> FitResult:
    """A student trained only on stored views and targets (no teacher in the loop)."""
    if not 0 <= p_view <= 1:
        raise ValueError(f"p_view must be in [0, 1], not {p_view}")
    if len(store.params) != setup.train.num_samples:
        raise ValueError("the store was built for a different training set")
    plan = _Current()
    images, labels = setup.train.images, setup.train.labels
    C = setup.num_classes
    views = store.params.shape[1]

    def loss_fn(model, x, y):
        idx = plan.current.cpu()
        g = torch.Generator().manual_seed(setup.seed * 1_000_003 + plan.epoch * 7919 + plan.batch)
        v = torch.randint(0, views, (len(idx),), generator=g)
        use = torch.rand(len(idx), generator=g) < p_view
        params = store.params[idx, v].clone()
        params[~use] = torch.tensor([store.pad, store.pad, 0], dtype=torch.int16)  # the original image
        xs = normalise(apply_views(images[plan.current], params, store.pad))
        target = densify(store.ids[idx, v], store.probs[idx, v], C).to(xs.device)
        target[~use.to(xs.device)] = F.one_hot(labels[plan.current][~use.to(xs.device)], C).float()
        s = model(xs)
        return D.soft_target_loss(s.float(), target), s

    return _fit_student_model(setup, setup.new_student(), loss_fn, "reinforced", plan=plan)


def train_erm(setup: StudentSetup, label_smoothing: float = 0.1) -> FitResult:
    """Ordinary training with the same augmentation and label smoothing (the paper's ERM)."""
    s2 = dataclasses.replace(setup, cfg=dataclasses.replace(setup.cfg, label_smoothing=label_smoothing))
    return _fit_student_model(s2, setup.new_student(), None, "erm")


def train_online(setup: StudentSetup) -> FitResult:
    """The teacher in the loop on every fresh augmentation: KL(teacher ‖ student) at T = 1, no CE
    — the reinforced objective with full distributions, at the price of a teacher forward per step."""
    fn = teacher_loss_fn(setup.teacher, lambda s, t, y: D.soft_target_loss(s, F.softmax(t, 1)), ce_weight=0.0)
    return _fit_student_model(setup, setup.new_student(), fn, "online-kd")


# --------------------------------------------------------------------------- corruptions
def corrupt(images: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """uint8 test images under a synthetic corruption of fixed severity (≈ CIFAR-C level 3)."""
    x = images.float() / 255
    if kind == "clean":
        out = x
    elif kind == "gaussian_noise":
        g = torch.Generator().manual_seed(seed)
        out = x + 0.08 * torch.randn(x.shape, generator=g).to(x.device)
    elif kind == "blur":
        k = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        k2 = (k[:, None] * k[None, :]) / 16
        out = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2.expand(3, 1, 3, 3).contiguous(), groups=3)
    elif kind == "contrast":
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - m) * 0.4 + m
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


CORRUPTIONS = ("clean", "gaussian_noise", "blur", "contrast")


@torch.no_grad()
def corruption_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1 (%) on the test images under each corruption."""
    model.eval()
    out = {}
    for kind in CORRUPTIONS:
        xc = corrupt(images, kind)
        correct = 0
        for s in range(0, len(xc), 512):
            logits = model(normalise(xc[s:s + 512].to(device)))
            correct += int((logits.argmax(1).cpu() == labels[s:s + 512].cpu()).sum())
        out[kind] = 100.0 * correct / len(xc)
    return out


# --------------------------------------------------------------------------- figures
def plot_time_curves(results: list[dict[str, Any]], labels: list[str], setting: str):
    """Test accuracy against cumulative training seconds (left) and against epochs (right)."""
    fig, (a, b) = new_figure(ncols=2, width=9.0)
    data: dict[str, Any] = {}
    for i, label in enumerate(labels):
        for r in [r for r in results if r["method"] == label]:
            t = np.cumsum([h["epoch_s"] for h in r["history"]])
            acc = [h["test_acc"] for h in r["history"]]
            ep = [h["epoch"] for h in r["history"]]
            kw = {"color": f"C{i}", "marker": "o", "markersize": 3, "alpha": 0.85,
                  "label": label if r["seed"] == min(x["seed"] for x in results) else None}
            a.plot(t, acc, **kw)
            b.plot(ep, acc, **kw)
            data[f"{label} s{r['seed']}"] = {"seconds": t, "epoch": ep, "test_acc": acc}
    a.set_xlabel("cumulative training seconds")
    b.set_xlabel("epoch")
    for ax in (a, b):
        ax.set_ylabel("student test top-1 (%)")
    a.set_title("Accuracy for the time spent")
    b.set_title("Accuracy per epoch")
    a.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"runs": data, "setting": setting})


def plot_views(images: torch.Tensor, store: ReinforcedStore, index: int, class_names: list[str], setting: str,
               n: int = 4):
    """One training image and ``n`` of its stored views, each with its top-3 teacher labels."""
    fig, axes = new_figure(ncols=n + 1, width=2.1 * (n + 1), height=2.6)
    img = images[index:index + 1]
    views = [img] + [apply_views(img, store.params[index, v:v + 1], store.pad) for v in range(min(n, store.params.shape[1]))]
    info = []
    for j, (ax, v) in enumerate(zip(axes, views)):
        ax.imshow(v[0].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        if j == 0:
            ax.set_title("original", fontsize=8)
            continue
        ids, ps = store.ids[index, j - 1][:3].tolist(), store.probs[index, j - 1][:3].float().tolist()
        ax.set_title("\n".join(f"{class_names[c][:12]} {p:.2f}" for c, p in zip(ids, ps)), fontsize=7)
        info.append({"params": store.params[index, j - 1].tolist(), "top3": list(zip(ids, ps))})
    annotate_setting(fig, setting)
    return fig, jsonable({"index": index, "views": info, "setting": setting})


def plot_corruptions(acc: dict[str, dict[int, dict[str, float]]], setting: str):
    """Mean top-1 per corruption for each arm (dots = seeds)."""
    fig, ax = new_figure(width=6.0)
    labels = list(acc)
    width = 0.8 / len(labels)
    data = {}
    for i, label in enumerate(labels):
        per = acc[label]
        means = [np.mean([per[s][k] for s in per]) for k in CORRUPTIONS]
        xs = np.arange(len(CORRUPTIONS)) + (i - (len(labels) - 1) / 2) * width
        ax.bar(xs, means, width=width, color=f"C{i}", alpha=0.7, label=label)
        for s in per:
            ax.plot(xs, [per[s][k] for k in CORRUPTIONS], ".", color="0.2", markersize=3)
        data[label] = {k: m for k, m in zip(CORRUPTIONS, means)}
    ax.set_xticks(range(len(CORRUPTIONS)), [c.replace("_", " ") for c in CORRUPTIONS])
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy under synthetic corruptions (severity ≈ 3)")
    ax.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"means": data, "setting": setting})
