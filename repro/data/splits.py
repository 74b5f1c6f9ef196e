"""Seeded subsets, the train/validation split, class orders and class-incremental tasks."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The class order used by iCaRL, PyCIL and most class-incremental papers on CIFAR-100:
# numpy.random.seed(1993); numpy.random.permutation(100). Stored explicitly so that it
# does not depend on numpy's legacy generator staying the same.
ORDER_1993: tuple[int, ...] = (
    68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38,
    58, 70, 77, 1, 85, 19, 17, 50, 28, 53, 13, 81, 45, 82, 6, 59, 83, 16, 15, 44,
    91, 41, 72, 60, 79, 52, 20, 10, 31, 54, 37, 95, 14, 71, 96, 98, 97, 2, 64, 66,
    42, 22, 35, 86, 24, 34, 87, 21, 99, 0, 88, 27, 18, 94, 11, 12, 47, 25, 30, 46,
    62, 69, 36, 61, 7, 63, 75, 5, 32, 4, 51, 48, 73, 93, 39, 67, 29, 49, 57, 33,
)


def class_order(seed: int | None = 1993, num_classes: int = 100) -> list[int]:
    """A permutation of the classes: seed 1993 → the common order, other seeds → seeded."""
    if seed == 1993 and num_classes == 100:
        return list(ORDER_1993)
    if seed is None:
        return list(range(num_classes))
    return np.random.default_rng(seed).permutation(num_classes).tolist()


def pick_classes(num: int, seed: int = 0, num_classes: int = 100) -> list[int]:
    """``num`` distinct classes, chosen by a seeded permutation (sorted for readability)."""
    if not 1 <= num <= num_classes:
        raise ValueError(f"num classes must be in 1..{num_classes}, got {num}")
    if num == num_classes:
        return list(range(num_classes))
    return sorted(np.random.default_rng(seed).permutation(num_classes)[:num].tolist())


def balanced_indices(labels: np.ndarray, classes: Sequence[int], per_class: int | None,
                     seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` seeded samples of each class (all if None), in data order."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            if per_class > len(idx):
                raise ValueError(f"class {c} has {len(idx)} samples, asked for {per_class}")
            idx = np.sort(rng.choice(idx, size=per_class, replace=False))
        out.append(idx)
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def train_val_split(labels: np.ndarray, val_per_class: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-class stratified split; the default gives the usual 45k/5k on CIFAR-100."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if val_per_class >= len(idx):
            raise ValueError(f"class {c} has {len(idx)} samples; cannot hold out {val_per_class}")
        val.append(rng.choice(idx, size=val_per_class, replace=False))
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def relabel(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Map original class ids to 0..len(classes)-1 in the given order."""
    lut = np.full(int(max(max(classes), labels.max())) + 1, -1, dtype=np.int64)
    lut[np.asarray(classes)] = np.arange(len(classes))
    out = lut[labels]
    if (out < 0).any():
        raise ValueError("labels contain classes outside the given list")
    return out


SCENARIOS = {"B0-Inc10": (0, 10), "B0-Inc5": (0, 5), "B0-Inc20": (0, 20),
             "B50-Inc10": (50, 10), "B50-Inc5": (50, 5), "B50-Inc25": (50, 25)}


def incremental_tasks(order: Sequence[int], base: int = 0, increment: int = 10) -> list[list[int]]:
    """Split a class order into tasks: an optional base task of ``base`` classes, then
    tasks of ``increment`` classes. Every class appears in exactly one task."""
    order = list(order)
    if len(set(order)) != len(order):
        raise ValueError("class order repeats a class")
    if base < 0 or increment <= 0:
        raise ValueError(f"base must be ≥ 0 and increment > 0 (got {base}, {increment})")
    if base > len(order) or (len(order) - base) % increment:
        raise ValueError(f"{len(order)} classes cannot be split into base {base} + tasks of {increment}")
    tasks = [order[:base]] if base else []
    tasks += [order[i:i + increment] for i in range(base, len(order), increment)]
    return tasks


def scenario_tasks(name: str, order: Sequence[int]) -> list[list[int]]:
    """Tasks of a named scenario such as ``B0-Inc10`` or ``B50-Inc5``."""
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return incremental_tasks(order, *SCENARIOS[name])
