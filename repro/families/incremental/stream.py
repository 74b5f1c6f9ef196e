"""Class orders, scenarios and the task stream.

Labels are positions in the stream's class order: the stream's first class is label 0, so
task t owns a contiguous block of labels and "classes seen so far" is a prefix. The original
CIFAR-100 ids stay in ``Stream.order`` (the class-order seed is recorded apart from the run
seed). A scenario ``B{base}-Inc{inc}`` is a first task of ``base`` classes (none for B0) then
tasks of ``inc`` classes, applied to the first ``classes`` classes of the order, so the
reduced tiers use the same names (B0-Inc5 on 20 classes = 4 tasks of 5).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...data import Dataset, class_order, incremental_tasks
from ...data.loader import TensorLoader

_SCENARIO = re.compile(r"^B(\d+)-Inc(\d+)$")


def parse_scenario(name: str) -> tuple[int, int]:
    """``"B50-Inc10"`` → (50, 10); anything else raises ValueError."""
    m = _SCENARIO.match(name) if isinstance(name, str) else None
    if not m:
        raise ValueError(f"unknown scenario {name!r}: write B<base>-Inc<increment>, e.g. B0-Inc10 or B50-Inc5")
    return int(m.group(1)), int(m.group(2))


def check_tasks(tasks: Sequence[Sequence[int]], num_classes: int) -> None:
    """Raise ValueError unless the tasks are non-empty and cover 0..num_classes−1 exactly once."""
    seen: list[int] = [c for t in tasks for c in t]
    if any(len(t) == 0 for t in tasks):
        raise ValueError("a task has no classes")
    if sorted(seen) != list(range(num_classes)):
        dup = sorted({c for c in seen if seen.count(c) > 1})
        missing = sorted(set(range(num_classes)) - set(seen))
        extra = sorted(set(seen) - set(range(num_classes)))
        raise ValueError(f"the tasks must cover the {num_classes} classes exactly once "
                         f"(repeated {dup}, missing {missing}, unknown {extra})")


@dataclass(frozen=True)
class StreamConfig:
    """The protocol's stream parameters (defaults: the paper tier, CIFAR-100 B0-Inc10)."""

    classes: int = 100
    scenario: str = "B0-Inc10"
    order_seed: int = 1993
    per_class: int = 0               # training images per class (0: all 500)
    test_per_class: int = 0          # test images per class (0: all 100)
    image_size: int = 32
    data_seed: int = 0


@dataclass
class Stream:
    """A class-incremental stream over a loaded subset of CIFAR-100."""

    data: Dataset
    order: list[int]               # CIFAR-100 class ids, label i = order[i]
    tasks: list[list[int]]         # labels per task
    scenario: str
    order_seed: int | None

    def __post_init__(self) -> None:
        check_tasks(self.tasks, len(self.order))

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_classes(self) -> int:
        return len(self.order)

    def seen(self, t: int) -> int:
        """Number of classes seen after task t (labels 0..seen−1)."""
        return sum(len(x) for x in self.tasks[: t + 1])

    def task_of(self, label: int) -> int:
        for t, cls in enumerate(self.tasks):
            if label in cls:
                return t
        raise ValueError(f"label {label} is in no task")

    def train_indices(self, t: int) -> torch.Tensor:
        """Positions in ``data.x_train`` of task t's training images."""
        return torch.nonzero(torch.isin(self.data.y_train, torch.tensor(self.tasks[t]))).flatten()

    def test_indices(self, tasks: Sequence[int]) -> torch.Tensor:
        cls = torch.tensor([c for t in tasks for c in self.tasks[t]])
        return torch.nonzero(torch.isin(self.data.y_test, cls)).flatten()

    def test_sizes(self) -> list[int]:
        return [len(self.test_indices([t])) for t in range(self.num_tasks)]

    def train_loader(self, indices: torch.Tensor, batch_size: int, device: str | torch.device = "cpu",
                     seed: int = 0) -> TensorLoader:
        """Shuffled, augmented batches of the given training positions (task data + exemplars)."""
        pad = max(1, round(4 * self.data.image_size / 32))
        return TensorLoader(self.data.x_train[indices], self.data.y_train[indices], batch_size, device,
                            train=True, seed=seed, pad=pad)

    def test_loader(self, tasks: Sequence[int], batch_size: int = 512, device: str | torch.device = "cpu",
                    ) -> TensorLoader:
        idx = self.test_indices(tasks)
        return TensorLoader(self.data.x_test[idx], self.data.y_test[idx], batch_size, device, train=False)

    def describe(self) -> str:
        sizes = sorted({len(t) for t in self.tasks})
        order = "seed-1993 order" if self.order_seed == 1993 else f"order seed {self.order_seed}"
        return (f"{self.scenario}: {self.num_tasks} tasks ({'/'.join(map(str, sizes))} classes) over "
                f"{self.num_classes} classes, {order} · {self.data.describe()}")


def make_stream(classes: int = 100, scenario: str = "B0-Inc10", order_seed: int | None = 1993,
                per_class: int | None = None, test_per_class: int | None = None, image_size: int = 32,
                data_seed: int = 0, run=None, root=None) -> Stream:
    """Load the first ``classes`` classes of the order and cut them into the scenario's tasks.

    Errors (before any data is read): an unknown scenario name, or one that does not divide
    ``classes`` into whole tasks. ``run``: a ``repro.run.Run`` to record the data with.
    """
    base, inc = parse_scenario(scenario)
    if not 1 <= classes <= 100:
        raise ValueError(f"classes must be in 1..100, got {classes}")
    tasks = incremental_tasks(list(range(classes)), base, inc)
    order = class_order(order_seed)[:classes]
    kw = dict(classes=order, per_class=per_class, test_per_class=test_per_class, image_size=image_size,
              seed=data_seed)
    if run is not None:
        data = run.data(**kw)
    else:
        from ...data import load

        data = load(root=root, **kw)
    return Stream(data=data, order=order, tasks=tasks, scenario=scenario, order_seed=order_seed)
