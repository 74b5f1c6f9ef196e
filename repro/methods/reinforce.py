"""Dataset reinforcement (Faghri et al., ICCV 2023): store teacher knowledge once, train any
student on it at the cost of ordinary training.

* ``build_store``: for every training image, ``views`` random augmentations — stored as their
  *parameters* (crop offsets and flip, int16) — and the teacher's top-k probabilities for each
  (class ids int16, probabilities fp16). The teacher runs once per view, here and never again.
* ``apply_views``: re-applies stored parameters; the result is bit-identical to the tensor the
  teacher saw (a test checks it).
* ``densify``: top-k → a full distribution, the leftover mass 1 − Σ top-k spread evenly over
  the other classes ("densify smooth").
* ``load_or_build_store``: the store is an artifact of its own, cached by teacher key, NS, k,
  padding and sampling seed, with its build time and size.
* ``train_reinforced``: each step, per image, a random stored view with probability ``p_view``
  (else the original image with a one-hot target), loss KL(target ‖ student), no CE term. The
  views reach ``fit`` through ``ReinforcedBatches``, which is both its batch plan and its loss.
* ``train_erm`` / ``train_online``: the baselines; ``run_students`` / ``log_metrics`` run the
  chapter's arms (and extra student architectures) and log the claims' metrics.

Augmentations are random crop (zero padding) and horizontal flip, the project's standard pair;
the paper adds RandAugment and random erasing (a deviation the chapter states).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.cifar import MEAN, STD
from ..losses import distillation as D
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import WORK, AllBatches, FitResult, dry_run
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
            WORK["eval_batches"] += 1
            if dry_run():
                break
    return ReinforcedStore(params, ids, probs, pad, time.time() - t0, teacher_key)


def store_path(cache_dir: Path, teacher_key: str, views: int, top_k: int, pad: int, seed: int) -> Path:
    """Where the store of one (teacher, NS, k, padding, sampling seed) is cached."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in teacher_key)[:80]
    return Path(cache_dir) / f"{safe}-v{views}-k{top_k}-pad{pad}-s{seed}.pt"


def load_or_build_store(cache_dir: Path | None, teacher: nn.Module, images: torch.Tensor, views: int, top_k: int,
                        pad: int, seed: int = 0, device: torch.device | str = "cpu",
                        teacher_key: str = "") -> tuple[ReinforcedStore, bool]:
    """The cached store for this teacher key, NS and k, or a freshly built (and cached) one.

    Returns (store, loaded). A store is cached only when ``teacher_key`` names the teacher
    (a teacher without a key could be anything) and never in a dry run (which builds one batch).
    """
    path = store_path(cache_dir, teacher_key, views, top_k, pad, seed) if cache_dir and teacher_key else None
    if path is not None and path.exists() and not dry_run():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["params"].shape[0] == len(images):
            return ReinforcedStore(blob["params"], blob["ids"], blob["probs"], int(blob["pad"]),
                                   float(blob["build_seconds"]), teacher_key), True
    store = build_store(teacher, images, views, top_k, pad, seed, device, teacher_key=teacher_key)
    if path is not None and not dry_run():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"params": store.params, "ids": store.ids, "probs": store.probs, "pad": store.pad,
                    "build_seconds": store.build_seconds}, tmp)
        tmp.replace(path)
    return store, False


class ReinforcedBatches(AllBatches):
    """How stored views reach ``fit`` without touching it: a batch plan that is also the loss.

    ``fit`` asks its plan for the indices of each batch, fetches them from the loader and
    calls ``loss_fn(model, x, y)``. As the plan, this object hands ``fit`` the ordinary
    batches (all of them, in the loader's seeded order) and remembers the indices, epoch and
    position of the one in flight. As the loss, it then replaces ``x`` by the stored views of
    those indices and uses their stored targets. The loader it is paired with must not
    augment (``train_reinforced`` gives ``fit`` a non-augmenting copy), so ``x`` is the
    original image, used as is for the 1 − p_view of images that get no stored view.

    The choice of view is a pure function of (seed, epoch, batch position), so a resumed run
    draws the same views as an uninterrupted one.
    """

    def __init__(self, store: ReinforcedStore, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 p_view: float = 0.99, seed: int = 0) -> None:
        if not 0 <= p_view <= 1:
            raise ValueError(f"p_view must be in [0, 1], not {p_view}")
        if len(store.params) != len(images):
            raise ValueError(f"the store holds {len(store.params)} images, the training set {len(images)}: "
                             "it was built for a different training set")
        dev = images.device
        # the store moves to the images' device once, so a step does no host↔device copies
        self.params, self.ids, self.probs = store.params.to(dev), store.ids.to(dev), store.probs.to(dev)
        self.pad, self.images, self.labels = store.pad, images, labels
        self.num_classes, self.p_view, self.seed = num_classes, p_view, seed
        self.current: torch.Tensor | None = None
        self.epoch, self.batch_id = 0, 0

    def epoch_batches(self, loader, epoch: int):
        self.epoch = epoch
        for batch_id, idx in super().epoch_batches(loader, epoch):
            self.current, self.batch_id = idx, batch_id
            yield batch_id, idx

    def draw(self, n: int, epoch: int, batch_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(view index per image, whether it uses a stored view) for one batch of n images."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + batch_id)
        v = torch.randint(0, self.params.shape[1], (n,), generator=g)
        use = torch.rand(n, generator=g) < self.p_view
        return v.to(self.images.device), use.to(self.images.device)

    def batch(self, idx: torch.Tensor, x_orig: torch.Tensor, epoch: int, batch_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and dense targets for the images ``idx`` (x_orig: their normalised originals)."""
        v, use = self.draw(len(idx), epoch, batch_id)
        x = x_orig.clone()
        target = F.one_hot(self.labels[idx], self.num_classes).float()
        if use.any():
            iu, vu = idx[use], v[use]
            x[use] = normalise(apply_views(self.images[iu], self.params[iu, vu], self.pad)).to(x.dtype)
            target[use] = densify(self.ids[iu, vu], self.probs[iu, vu], self.num_classes)
        return x, target

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        if self.current is None:
            raise RuntimeError("ReinforcedBatches must be fit's plan as well as its loss")
        xs, target = self.batch(self.current, x, self.epoch, self.batch_id)
        s = model(xs)
        return D.soft_target_loss(s.float(), target), s


@dataclass
class WarmStartSetup(StudentSetup):
    """A StudentSetup whose students start from a local state_dict (the paper's transfer setting)."""

    weights: str = ""

    def new_student(self) -> nn.Module:
        model = super().new_student()
        if self.weights:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            missing, unexpected = model.load_state_dict(state, strict=False)
            # a pretrained head of another size is replaced; anything else must match
            if [k for k in missing + unexpected if not k.startswith("head.")]:
                raise ValueError(f"{self.weights} does not fit {self.student}: missing {missing}, "
                                 f"unexpected {unexpected}")
        return model


def warm_start(setup: StudentSetup, weights: str) -> StudentSetup:
    """``setup`` whose new students load ``weights`` (an empty string: unchanged)."""
    if not weights:
        return setup
    fields = {f.name: getattr(setup, f.name) for f in dataclasses.fields(setup)}
    return WarmStartSetup(**fields, weights=weights)


def train_reinforced(setup: StudentSetup, store: ReinforcedStore, p_view: float = 0.99) -> FitResult:
    """A student trained only on stored views and targets (no teacher in the loop).

    ``fit`` gets a copy of the training loader that does not augment (the stored views are the
    augmentation) and a ``ReinforcedBatches`` as both its batch plan and its loss.
    """
    plan = ReinforcedBatches(store, setup.train.images, setup.train.labels, setup.num_classes, p_view, setup.seed)
    plain = copy.copy(setup.train)
    plain.augment = False
    s2 = dataclasses.replace(setup, train=plain)
    return _fit_student_model(s2, s2.new_student(), plan, "reinforced", plan=plan)


def train_erm(setup: StudentSetup, label_smoothing: float = 0.1) -> FitResult:
    """Ordinary training with the same augmentation and label smoothing (the paper's ERM)."""
    s2 = dataclasses.replace(setup, cfg=dataclasses.replace(setup.cfg, label_smoothing=label_smoothing))
    return _fit_student_model(s2, setup.new_student(), None, "erm")


def train_online(setup: StudentSetup) -> FitResult:
    """The teacher in the loop on every fresh augmentation: KL(teacher ‖ student) at T = 1, no CE
    — the reinforced objective with full distributions, at the price of a teacher forward per step."""
    fn = teacher_loss_fn(setup.teacher, lambda s, t, y: D.soft_target_loss(s, F.softmax(t, 1)), ce_weight=0.0)
    return _fit_student_model(setup, setup.new_student(), fn, "online-kd")


# --------------------------------------------------------------------------- the chapter's runs
ARMS = ("ERM", "reinforced", "online KD")


def extra_student_kwargs(name: str, image_size: int) -> dict[str, Any]:
    """Builder kwargs of an extra student: ViTs need the image side, the rest their defaults."""
    return {"img_size": image_size} if name.startswith("vit") else {}


def check_params(views: int, top_k: int, p_view: float, erm_smoothing: float, teacher_weights: str,
                 student_weights: str, extra_students: list[str], seeds: list[int], reliability_seed: int) -> None:
    """Reject bad chapter parameters before anything is built or trained."""
    from .. import models

    if views < 1 or top_k < 1:
        raise ValueError(f"views and top_k must be ≥ 1 (got {views}, {top_k})")
    if not 0 <= p_view <= 1:
        raise ValueError(f"p_view must be in [0, 1], not {p_view}")
    if not 0 <= erm_smoothing < 1:
        raise ValueError(f"erm_smoothing must be in [0, 1), not {erm_smoothing}")
    for what, path in (("teacher_weights", teacher_weights), ("student_weights", student_weights)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{what}: no file at {path!r}")
    unknown = [n for n in extra_students if n not in models.available()]
    if unknown:
        raise ValueError(f"unknown extra_students {unknown}; available: {', '.join(models.available())}")
    if reliability_seed not in seeds:
        raise ValueError(f"reliability_seed {reliability_seed} is not one of the seeds {seeds}")


def weights_key(path: str, data_checksum: str) -> str:
    """A cache key for a teacher loaded from a file: its content and the data it reinforces."""
    import hashlib

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"weights-{digest}-{data_checksum[:8]}"


def load_teacher(path: str, arch: str, arch_kwargs: dict[str, Any], num_classes: int,
                 device: torch.device | str) -> nn.Module:
    """The protocol's teacher architecture with a local state_dict, in eval mode."""
    from .. import models

    model = models.create(arch, num_classes=num_classes, **arch_kwargs)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ValueError(f"{path} is not a state_dict of {arch} {arch_kwargs} with {num_classes} classes: {e}") from None
    return model.to(device).eval()


def run_students(run, data, teacher: nn.Module, store: ReinforcedStore, seeds: list[int], p_view: float,
                 erm_smoothing: float, student_weights: str = "",
                 extra_students: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every seed: the protocol's student by ERM, on the reinforced data and by online KD;
    each extra student architecture by ERM and on the reinforced data. One checkpointed job each.

    Returns one dict per (arm, seed): method label, student, seed, top-1/ECE/NLL, training
    seconds, per-epoch history and the model.
    """
    from . import distill, kd_compare

    results = []
    for seed in seeds:
        base = distill.protocol_setup(run, data, seed)
        base.teacher = teacher  # a plain module, whether trained once by the protocol or loaded from a file
        setup = warm_start(base, student_weights)
        jobs = [("ERM", setup, lambda s: train_erm(s, erm_smoothing)),
                ("reinforced", setup, lambda s: train_reinforced(s, store, p_view)),
                ("online KD", setup, train_online)]
        for name in extra_students:
            sx = dataclasses.replace(base, student=name, student_kwargs=extra_student_kwargs(name, data.image_size),
                                     checkpoint_dir=run.checkpoint_dir("seed", seed, name))
            jobs += [(f"ERM · {name}", sx, lambda s: train_erm(s, erm_smoothing)),
                     (f"reinforced · {name}", sx, lambda s: train_reinforced(s, store, p_view))]
        for label, s, train in jobs:
            res = train(s)
            ev = kd_compare.evaluate_student(res.model, s.test)
            results.append({"method": label, "student": s.student, "seed": seed, **ev,
                            "train_s": res.train_seconds, "images_per_s": res.images_per_s,
                            "history": res.history, "model": res.model})
    return results


def overhead_pct(erm_history: list[dict[str, float]], other_history: list[dict[str, float]]) -> float:
    """Extra training time per epoch in % of ERM's, from the median epoch of each run
    (the median keeps one epoch slowed by a busy machine from deciding the comparison)."""
    erm = float(np.median([h["epoch_s"] for h in erm_history]))
    other = float(np.median([h["epoch_s"] for h in other_history]))
    return 100.0 * (other / erm - 1.0)


def log_metrics(run, results: list[dict[str, Any]], extra_students: list[str] | tuple[str, ...] = (),
                threshold_pct: float = 10.0) -> None:
    """Log the claims' metrics per seed (paired by seed) and the raw numbers behind them."""
    by = {(r["method"], r["seed"]): r for r in results}
    for seed in sorted({r["seed"] for r in results}):
        erm, rein, onl = by[("ERM", seed)], by[("reinforced", seed)], by[("online KD", seed)]
        over = overhead_pct(erm["history"], rein["history"])
        values = {"reinforced_minus_erm": rein["top1"] - erm["top1"],
                  "ece_erm_minus_reinforced": erm["ece"] - rein["ece"],
                  "cost_margin_pct": threshold_pct - over, "overhead_pct": over,
                  "online_overhead_pct": overhead_pct(erm["history"], onl["history"]),
                  "transfer_top1": rein["top1"], "online_minus_erm": onl["top1"] - erm["top1"],
                  "reinforced_minus_online": rein["top1"] - onl["top1"]}
        for arm, r in (("erm", erm), ("reinforced", rein), ("online", onl)):
            values.update({f"top1_{arm}": r["top1"], f"ece_{arm}": r["ece"], f"train_s_{arm}": r["train_s"]})
        for name in extra_students:
            e, x = by[(f"ERM · {name}", seed)], by[(f"reinforced · {name}", seed)]
            values.update({f"reinforced_minus_erm_{name}": x["top1"] - e["top1"],
                           f"ece_erm_minus_reinforced_{name}": e["ece"] - x["ece"],
                           f"overhead_pct_{name}": overhead_pct(e["history"], x["history"])})
        run.log(seed, **values)


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
    if dry_run():  # one batch, as every evaluation in a dry run
        images, labels = images[:512], labels[:512]
    out = {}
    for kind in CORRUPTIONS:
        xc = corrupt(images, kind)
        correct = 0
        for s in range(0, len(xc), 512):
            logits = model(normalise(xc[s:s + 512].to(device)))
            correct += int((logits.argmax(1).cpu() == labels[s:s + 512].cpu()).sum())
            WORK["eval_batches"] += 1
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
