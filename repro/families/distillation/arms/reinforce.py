"""Dataset reinforcement (Faghri et al., ICCV 2023): store teacher knowledge once, train any
student on it at the cost of ordinary training.

* ``build_store``: for every training image, ``views`` random augmentations — stored as their
  *parameters* (crop offsets and flip, int16) — and the teacher's top-k probabilities for each
  (class ids int16, probabilities fp16). The teacher runs once per view, here and never again.
* ``apply_views``: re-applies stored parameters; the result is bit-identical to the tensor the
  teacher saw (a test checks it).
* ``densify``: top-k → a full distribution, the leftover mass 1 − Σ top-k spread evenly over
  the other classes ("densify smooth").
* ``load_or_build_store``: the store is an artifact (``repro.artifacts.ArtifactStore("reinforced")``),
  keyed by teacher key, NS, k, padding, sampling seed and the data, with its build time and size.
* Arms: ``reinforced`` — each step, per image, a random stored view with probability ``p_view``
  (else the original image with a one-hot target), loss KL(target ‖ student), no CE term; the
  views reach ``fit`` through ``ReinforcedBatches``, which is both its batch plan and its loss.
  ``erm`` (ordinary training with label smoothing) and ``teacher_kl`` (the teacher in the loop,
  KL at T = 1, no CE) are the baselines. ``dr_plan`` / ``dr_jobs`` build chapter 18's sweep,
  extra student architectures included; ``cost_metrics`` gives its cost metrics per seed.

Augmentations are random crop (zero padding) and horizontal flip, the project's standard pair;
the paper adds RandAugment and random erasing (a deviation the chapter states).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ....artifacts import ArtifactStore
from ....arms import arm, make_config
from ....data.cifar import MEAN, STD
from ....io import save_torch
from ....losses import distillation as D
from ....sweep import Job, SweepResult
from ....train import WORK, AllBatches, FitResult, dry_run
from ..protocol import DistillConfig, StudentSetup, evaluate_student, fit_model, setup, teacher_loss_fn, train

STORE = ArtifactStore("reinforced")


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
        if dry_run():  # one batch of one view in all: a dry run checks the code path, not the store
            break
    return ReinforcedStore(params, ids, probs, pad, time.time() - t0, teacher_key)


def load_or_build_store(teacher: nn.Module, images: torch.Tensor, views: int, top_k: int, pad: int, seed: int = 0,
                        device: torch.device | str = "cpu", teacher_key: str = "",
                        data_checksum: str = "") -> tuple[ReinforcedStore, bool]:
    """The stored store for this teacher key, NS, k, padding, seed and data, or a freshly built
    (and stored) one; returns (store, loaded). A store is kept only when ``teacher_key`` names the
    teacher (a teacher without a key could be anything); a dry run never keeps one
    (``ArtifactStore`` builds it in a temporary folder)."""
    if not teacher_key:
        return build_store(teacher, images, views, top_k, pad, seed, device), False
    spec = {"teacher_key": teacher_key, "views": views, "top_k": top_k, "pad": pad, "seed": seed,
            "images": len(images)}

    def build(work: Path) -> tuple[ReinforcedStore, dict[str, Any]]:
        st = build_store(teacher, images, views, top_k, pad, seed, device, teacher_key=teacher_key)
        save_torch(work / "store.pt", {"params": st.params, "ids": st.ids, "probs": st.probs, "pad": st.pad})
        return st, {"spec": spec, "build_seconds": st.build_seconds, "bytes": st.nbytes}

    def load(folder: Path, info: dict[str, Any]) -> ReinforcedStore:
        blob = torch.load(folder / "store.pt", map_location="cpu", weights_only=True)
        if blob["params"].shape[0] != len(images):
            raise ValueError(f"the store holds {blob['params'].shape[0]} images, the training set {len(images)}")
        return ReinforcedStore(blob["params"], blob["ids"], blob["probs"], int(blob["pad"]),
                               float(info["build_seconds"]), teacher_key)

    art = STORE.get(f"v{views}-k{top_k}-pad{pad}-s{seed}", STORE.key(spec, data_checksum), build, load)
    return art.value, not art.built_now


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
    """A StudentSetup whose students start from a local state_dict (the paper's transfer setting)
    and that carries the reinforced store (the ``reinforced`` arm trains on it)."""

    weights: str = ""
    store: ReinforcedStore | None = None

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


def warm_start(setup: StudentSetup, weights: str, store: ReinforcedStore | None = None) -> StudentSetup:
    """``setup`` whose new students load ``weights`` and that carries ``store`` (neither: unchanged)."""
    if not weights and store is None:
        return setup
    fields = {f.name: getattr(setup, f.name) for f in dataclasses.fields(StudentSetup)}
    return WarmStartSetup(**fields, weights=weights, store=store)


def train_reinforced(setup: StudentSetup, store: ReinforcedStore, p_view: float = 0.99) -> FitResult:
    """A student trained only on stored views and targets (no teacher in the loop).

    ``fit`` gets a copy of the training loader that does not augment (the stored views are the
    augmentation) and a ``ReinforcedBatches`` as both its batch plan and its loss.
    """
    plan = ReinforcedBatches(store, setup.train.images, setup.train.labels, setup.num_classes, p_view, setup.seed)
    plain = copy.copy(setup.train)
    plain.augment = False
    s2 = dataclasses.replace(setup, train=plain)
    return fit_model(s2, s2.new_student(), plan, "reinforced", plan=plan)


def train_erm(setup: StudentSetup, label_smoothing: float = 0.1) -> FitResult:
    """Ordinary training with the same augmentation and label smoothing (the paper's ERM)."""
    s2 = dataclasses.replace(setup, cfg=dataclasses.replace(setup.cfg, label_smoothing=label_smoothing))
    return fit_model(s2, setup.new_student(), None, "erm")


def train_online(setup: StudentSetup) -> FitResult:
    """The teacher in the loop on every fresh augmentation: KL(teacher ‖ student) at T = 1, no CE
    — the reinforced objective with full distributions, at the price of a teacher forward per step."""
    fn = teacher_loss_fn(setup.teacher, lambda s, t, y: D.soft_target_loss(s, F.softmax(t, 1)), ce_weight=0.0)
    return fit_model(setup, setup.new_student(), fn, "online-kd")


# --------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class ERMConfig(DistillConfig):
    """The paper's ERM baseline: label smoothing of the cross-entropy."""

    erm_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.erm_smoothing < 1:
            raise ValueError(f"erm_smoothing must be in [0, 1), not {self.erm_smoothing}")


@arm("erm", family="distillation", config=ERMConfig)
def erm_arm(setup: StudentSetup, cfg: ERMConfig) -> FitResult:
    """Ordinary training with the same augmentation and label smoothing (the paper's ERM)."""
    return train_erm(setup, cfg.erm_smoothing)


@dataclass(frozen=True)
class ReinforcedConfig(DistillConfig):
    """Probability of training on a stored view (else the original image, one-hot)."""

    p_view: float = 0.99

    def __post_init__(self) -> None:
        if not 0 <= self.p_view <= 1:
            raise ValueError(f"p_view must be in [0, 1], not {self.p_view}")


@arm("reinforced", family="distillation", config=ReinforcedConfig)
def reinforced_arm(setup: StudentSetup, cfg: ReinforcedConfig) -> FitResult:
    """A student trained only on the stored views and targets of a reinforced store."""
    store = getattr(setup, "store", None)
    if store is None:
        raise ValueError("the reinforced arm trains on a stored dataset: pass warm_start(setup, weights, store)")
    return train_reinforced(setup, store, cfg.p_view)


@arm("teacher_kl", family="distillation", config=DistillConfig)
def teacher_kl_arm(setup: StudentSetup, cfg: DistillConfig) -> FitResult:
    """The teacher in the loop on every fresh augmentation: KL(teacher ‖ student) at T = 1, no CE."""
    return train_online(setup)


# --------------------------------------------------------------------------- chapter 18's sweep
def dr_plan(params: Mapping[str, Any] | None, extra_students: Sequence[str] = ()
            ) -> tuple[dict[str, tuple[str, DistillConfig, str | None]], dict[str, str]]:
    """Chapter 18's arms: label → (arm, config, student override or None) — ERM, reinforced and
    online KD for the protocol's student, ERM and reinforced for each extra student architecture
    (``erm_<name>``, ``reinforced_<name>``) — and each label's display name."""
    erm, rein = make_config(ERMConfig, params), make_config(ReinforcedConfig, params)
    plan: dict[str, tuple[str, DistillConfig, str | None]] = {
        "erm": ("erm", erm, None), "reinforced": ("reinforced", rein, None),
        "online_kd": ("teacher_kl", make_config(DistillConfig, params), None)}
    names = {"erm": "ERM", "reinforced": "reinforced", "online_kd": "online KD"}
    for name in extra_students:
        plan[f"erm_{name}"] = ("erm", erm, name)
        plan[f"reinforced_{name}"] = ("reinforced", rein, name)
        names[f"erm_{name}"], names[f"reinforced_{name}"] = f"ERM · {name}", f"reinforced · {name}"
    for label in plan:
        if not label.isidentifier():
            raise ValueError(f"extra student name gives the arm label {label!r}, which is not an identifier")
    return plan, names


def dr_jobs(device: Any, data, teacher: nn.Module, store: ReinforcedStore,
            plan: Mapping[str, tuple[str, DistillConfig, str | None]], student_weights: str = ""
            ) -> dict[str, Callable[[int, Path | None], Job]]:
    """label → sweep job: the protocol's setup for the seed with ``teacher`` (a plain module,
    trained once by the protocol or loaded from a file) and the store; the protocol's student
    starts from ``student_weights`` (if given), an extra student from scratch."""
    def make(name: str, cfg: DistillConfig, other: str | None):
        def job(seed: int, checkpoint_dir: Path | None) -> Job:
            base = setup(cfg, data, seed, device, teacher, checkpoint_dir)
            if other is None:
                s = warm_start(base, student_weights, store)
            else:
                s = warm_start(dataclasses.replace(base, student=other,
                                                   student_kwargs=extra_student_kwargs(other, data.image_size)), "", store)
            res = train(name, s, cfg)
            ev = evaluate_student(res.model, s.test)
            extra = {"arm": name, "student": s.student, "history": res.history, "images_per_s": res.images_per_s}
            return Job.from_fits([res], ev, n_test=s.test.num_samples, extra=extra, model=res.model)
        return job

    return {label: make(name, cfg, other) for label, (name, cfg, other) in plan.items()}


def extra_student_kwargs(name: str, image_size: int) -> dict[str, Any]:
    """Builder kwargs of an extra student: ViTs need the image side, the rest their defaults."""
    return {"img_size": image_size} if name.startswith("vit") else {}


def check_params(views: int, top_k: int, p_view: float, erm_smoothing: float, teacher_weights: str,
                 student_weights: str, extra_students: list[str], seeds: list[int], reliability_seed: int) -> None:
    """Reject bad chapter parameters before anything is built or trained."""
    from .... import models

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
    from .... import models

    model = models.create(arch, num_classes=num_classes, **arch_kwargs)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ValueError(f"{path} is not a state_dict of {arch} {arch_kwargs} with {num_classes} classes: {e}") from None
    return model.to(device).eval()


def overhead_pct(erm_history: list[dict[str, float]], other_history: list[dict[str, float]]) -> float:
    """Extra training time per epoch in % of ERM's, from the median epoch of each run
    (the median keeps one epoch slowed by a busy machine from deciding the comparison)."""
    erm = float(np.median([h["epoch_s"] for h in erm_history]))
    other = float(np.median([h["epoch_s"] for h in other_history]))
    return 100.0 * (other / erm - 1.0)


def cost_metrics(result: SweepResult, extra_students: Sequence[str] = (),
                 threshold_pct: float = 10.0) -> dict[int, dict[str, float]]:
    """The cost metrics per seed (``run.log_seeds`` logs them; the accuracy and calibration claims are read from the
    sweep's rows): the reinforced arm's extra time per epoch over ERM (``overhead_pct``) and its
    margin to the claimed ``threshold_pct`` (``cost_margin_pct``), online KD's overhead, and each
    extra student's."""
    hist = {(r["arm"], r["seed"]): r["extra"]["history"] for r in result.jobs}
    out: dict[int, dict[str, float]] = {}
    for seed in sorted({r["seed"] for r in result.jobs}):
        over = overhead_pct(hist[("erm", seed)], hist[("reinforced", seed)])
        values = {"cost_margin_pct": threshold_pct - over, "overhead_pct": over,
                  "online_overhead_pct": overhead_pct(hist[("erm", seed)], hist[("online_kd", seed)])}
        for name in extra_students:
            values[f"overhead_pct_{name}"] = overhead_pct(hist[(f"erm_{name}", seed)], hist[(f"reinforced_{name}", seed)])
        out[seed] = values
    return out
