"""The class-incremental loop: the config every learner starts from, the Learner base class and
``run_stream``.

``run_stream(stream, learner, seed)`` trains task after task and fills the accuracy matrix.
The network keeps one head over *all* the stream's classes; while task t trains, and when
the model is evaluated after it, only the logits of the classes seen so far count (the
usual single-head, task-agnostic protocol; unseen rows get no gradient from the loss).

After each task, in this order: ``post_train`` (e.g. weight aligning), evaluation (one row
of A), the exemplar-memory update (herding on the current features), and a frozen copy of
the model for the next task's distillation. Each task is checkpointed by ``fit``, and the
state after each task (model, previous model, memory, matrix) is saved, so an interrupted
stream resumes at the task it was in.

A learner is a :class:`Learner` subclass registered as an arm (``repro.arms.arm``) with an
:class:`IncrementalConfig` subclass for its settings; the shared baselines (fine-tuning,
replay, replay + KD, joint training) are in ``arms/baselines.py``.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ... import models
from ...io import save_torch
from ...losses.distillation import check_temperature
from ...losses.incremental import masked_ce
from ...train import TrainConfig, dry_run, fit, predict
from .memory import MODES, ExemplarMemory, extract_features
from .metrics import AccuracyMatrix
from .stream import Stream


@dataclass
class IncrementalConfig:
    """Network, schedule and memory of one incremental run (the same for every task unless
    noted). Built from a chapter's parameters with ``repro.arms.make_config``: a field takes
    the parameter of the same name."""

    arch: str = "resnet32"
    arch_width: int = 0               # width of cnn3-style models (0: the architecture's own)
    epochs: int = 170
    epochs_first: int = 0             # the first task's epochs (0: same as the others)
    lr: float = 0.1
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.35, 0.6, 0.82)
    batch_size: int = 128
    memory: int = 2000                # total exemplar budget (replay learners)
    memory_mode: str = "herding"      # herding | random
    kd_temperature: float = 2.0
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.memory < 0:
            raise ValueError(f"memory budget must be ≥ 0, not {self.memory}")
        if self.memory_mode not in MODES:
            raise ValueError(f"memory_mode must be one of {MODES}, not {self.memory_mode!r}")
        check_temperature("kd_temperature", self.kd_temperature)
        if self.epochs < 0 or self.epochs_first < 0:
            raise ValueError("epochs must be ≥ 0")
        if self.arch_width < 0:
            raise ValueError(f"arch_width must be ≥ 0, not {self.arch_width}")
        self.milestones = tuple(self.milestones)

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``repro.models.create`` beyond the class count."""
        return {"width": self.arch_width} if self.arch_width else {}

    def train_config(self, t: int, desc: str = "") -> TrainConfig:
        ep = self.epochs_first if (t == 0 and self.epochs_first) else self.epochs
        return TrainConfig(epochs=ep, lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule,
                           milestones=tuple(self.milestones), desc=desc)


class Learner:
    """Fine-tuning: each task trains on its own data with CE over the classes seen so far.

    What a subclass may change: ``build`` (the network), ``loss_fn`` (task t's loss),
    ``post_train`` (after task t's training, before its evaluation; returns that task's extras),
    ``metrics`` (scalars read from a finished stream, beyond the accuracy matrix's), the flags
    below, and ``state_dict``/``load_state_dict`` for whatever it keeps between tasks.
    """

    name = "finetune"
    uses_memory = False
    uses_old_model = False
    sees_all_data = False

    def __init__(self, cfg: IncrementalConfig) -> None:
        self.cfg = cfg
        self.old_model: nn.Module | None = None
        self.stream: Stream | None = None

    def setup(self, stream: Stream) -> None:
        """Called once by ``run_stream`` before anything is built: the stream to learn."""
        self.stream = stream

    def build(self, num_classes: int) -> nn.Module:
        return models.create(self.cfg.arch, num_classes=num_classes, **self.cfg.arch_kwargs)

    def loss_fn(self, t: int, seen: int, seen_before: int):
        def fn(model, x, y):
            logits = model(x)
            return masked_ce(logits, y, seen), logits[:, :seen]
        return fn

    def post_train(self, model: nn.Module, t: int, stream: Stream) -> dict[str, Any]:
        """Called after task t's training, before its evaluation; returns facts to keep."""
        return {}

    def metrics(self, result: "StreamResult") -> dict[str, float]:
        """Scalars of a finished stream beyond the accuracy matrix's (e.g. read from extras)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class StreamResult:
    """One (learner, seed) run over a stream."""

    learner: str
    seed: int
    matrix: AccuracyMatrix
    histories: list[list[dict[str, float]]]
    train_s: float
    memory_sizes: list[int]
    extras: list[dict[str, Any]]
    model: nn.Module | None = None
    train_images: int = 0

    def summary(self) -> dict[str, float]:
        """AIA, last, forgetting and the final old/new split (``AccuracyMatrix.summary``)."""
        return self.matrix.summary()

    def extra(self) -> dict[str, Any]:
        """What a sweep job keeps beside its metrics: the matrix, the accuracy after each task,
        the memory sizes and the per-task extras (no model, no per-epoch histories)."""
        return {"A": self.matrix.rows, "task_sizes": list(self.matrix.task_sizes),
                "acc_after": self.matrix.acc_after(), "memory_sizes": self.memory_sizes, "extras": self.extras}


@torch.no_grad()
def evaluate_row(model: nn.Module, stream: Stream, t: int, device: torch.device | str) -> list[float]:
    """A[t, j] for j ≤ t: accuracy (%) per task, predicting over the classes seen after task t."""
    seen = stream.seen(t)
    logits, y = predict(model, stream.test_loader(range(t + 1), device=device))
    return matrix_row(logits[:, :seen].argmax(1), y, stream, t)


def matrix_row(pred: torch.Tensor, y: torch.Tensor, stream: Stream, t: int) -> list[float]:
    """A[t, j] for j ≤ t from predictions ``pred`` of the test images with labels ``y``."""
    row = []
    for j in range(t + 1):
        mask = torch.isin(y, torch.tensor(stream.tasks[j]))
        row.append(100.0 * (pred[mask] == y[mask]).float().mean().item() if mask.any() else float("nan"))
    return row


def run_stream(stream: Stream, learner: Learner, seed: int, device: torch.device | str = "cpu",
               checkpoint_dir: str | Path | None = None, progress: bool = True,
               label: str | None = None) -> StreamResult:
    """Train ``learner`` over every task of ``stream`` and return its accuracy matrix.

    ``label``: the learner's name in progress bars and in the result (default ``learner.name``).
    """
    label = label or learner.name
    device = torch.device(device)
    ckpt = Path(checkpoint_dir) if checkpoint_dir and not dry_run() else None
    learner.setup(stream)
    torch.manual_seed(seed)
    model = learner.build(stream.num_classes).to(device)
    memory = ExemplarMemory(learner.cfg.memory if learner.uses_memory else 0,
                            learner.cfg.memory_mode if learner.uses_memory else "none", seed=seed)
    matrix = AccuracyMatrix(stream.test_sizes())
    histories: list[list[dict]] = []
    extras: list[dict] = []
    memory_sizes: list[int] = []
    train_s, train_images, start = 0.0, 0, 0
    if ckpt is not None:  # resume after the last finished task
        done = sorted(ckpt.glob("after_task*.pt"), key=lambda p: int(p.stem.removeprefix("after_task")))
        if done:
            st = torch.load(done[-1], map_location=device, weights_only=False)
            model.load_state_dict(st["model"])
            if st["old_model"] is not None:
                learner.old_model = learner.build(stream.num_classes).to(device)
                learner.old_model.load_state_dict(st["old_model"])
                learner.old_model.eval()
            memory.load_state_dict(st["memory"])
            learner.load_state_dict(st["learner"])
            matrix = AccuracyMatrix.from_state(st["matrix"])
            histories, extras, memory_sizes, train_s = st["histories"], st["extras"], st["memory_sizes"], st["train_s"]
            train_images = st.get("train_images", 0)
            start = st["task"] + 1
    for t in range(start, stream.num_tasks):
        seen, seen_before = stream.seen(t), (stream.seen(t - 1) if t else 0)
        if learner.sees_all_data:
            idx = torch.cat([stream.train_indices(j) for j in range(t + 1)])
        else:
            idx = stream.train_indices(t)
            if learner.uses_memory and len(memory):
                idx = torch.cat([idx, memory.indices()])
        train = stream.train_loader(idx, learner.cfg.batch_size, device, seed=seed * 1000 + t)
        cfg = learner.cfg.train_config(t, desc=f"{label} s{seed} task {t + 1}/{stream.num_tasks}")
        cfg.progress = progress
        res = fit(model, train, None, cfg, loss_fn=learner.loss_fn(t, seen, seen_before),
                  checkpoint_dir=ckpt / f"task{t}" if ckpt else None)
        train_s += res.train_seconds
        train_images += res.train_images
        histories.append(res.history)
        extra = learner.post_train(model, t, stream)
        matrix.add_row(evaluate_row(model, stream, t, device))
        if learner.uses_memory:
            new = stream.tasks[t]
            pos = stream.train_indices(t)
            memory.update(stream.data.y_train[pos], pos, new,
                          lambda p: extract_features(model, stream.data.x_train[p], device))
        memory_sizes.append(len(memory))
        extras.append(extra)
        if learner.uses_old_model:
            learner.old_model = copy.deepcopy(model).eval()
            for p in learner.old_model.parameters():
                p.requires_grad_(False)
        if ckpt is not None:
            save_torch(ckpt / f"after_task{t}.pt", {
                "task": t, "model": model.state_dict(), "memory": memory.state_dict(),
                "old_model": learner.old_model.state_dict() if learner.old_model is not None else None,
                "learner": learner.state_dict(), "matrix": matrix.state_dict(), "histories": histories,
                "extras": extras, "memory_sizes": memory_sizes, "train_s": train_s, "train_images": train_images,
                "config": asdict(learner.cfg)})
    return StreamResult(label, seed, matrix, histories, train_s, memory_sizes, extras, model, train_images)
