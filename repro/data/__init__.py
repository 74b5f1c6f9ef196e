"""CIFAR-100 data: the pickles on disk, seeded subsets and a device-resident loader.

Typical use::

    data = repro.data.load(classes=20, per_class=250, image_size=16, seed=0)
    train = data.loader("train", batch_size=128, device="cpu", seed=0)
    test = data.loader("test", batch_size=512, device="cpu")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cifar import (DATA_ENV, MEAN, STD, DataError, Split, default_root, download, ensure,
                    load_split, unpack_parts, verify)
from .cifar10 import download_cifar10, load_cifar10_test, unpack_cifar10, verify_cifar10, write_fake_cifar10
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_grid
from .fake import write_fake_cifar100
from .loader import TensorLoader, random_crop_flip, to_uint8_tensor
from .ood import OOD_DESCRIPTIONS, OOD_SETS, ood_images
from .splits import (ORDER_1993, SCENARIOS, balanced_indices, class_order, incremental_tasks,
                     pick_classes, relabel, scenario_tasks, train_val_split)

__all__ = [
    "DATA_ENV", "MEAN", "STD", "DataError", "Split", "default_root", "download", "ensure",
    "load_split", "unpack_parts", "verify", "write_fake_cifar100", "TensorLoader",
    "random_crop_flip", "to_uint8_tensor", "ORDER_1993", "SCENARIOS", "balanced_indices",
    "class_order", "incremental_tasks", "pick_classes", "relabel", "scenario_tasks",
    "train_val_split", "Dataset", "load", "load_cifar10_test", "download_cifar10", "verify_cifar10",
    "unpack_cifar10", "write_fake_cifar10", "CORRUPTIONS", "SEVERITIES", "corrupt", "corruption_grid", "OOD_SETS",
    "OOD_DESCRIPTIONS", "ood_images",
]


@dataclass
class Dataset:
    """A (sub)set of CIFAR-100 ready for ``TensorLoader``.

    x_train/x_test: uint8 [N, 3, S, S]; y_train/y_test: int64 [N] relabelled to
    0..num_classes-1 following ``classes`` (original CIFAR-100 ids).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[int]
    class_names: list[str]
    checksum: str
    test_name: str = "test"
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def describe(self) -> str:
        """One line for figure captions: classes × images, size, evaluation split."""
        per = self.info.get("per_class") or "all"
        return (f"CIFAR-100 {self.num_classes} classes × {per} img ({len(self.y_train)} train, "
                f"{len(self.y_test)} {self.test_name}) at {self.image_size} px")

    def loader(self, split: str, batch_size: int, device: str | torch.device = "cpu", seed: int = 0,
               **kw) -> TensorLoader:
        """A ``TensorLoader`` over ``train`` (shuffled, augmented) or ``test`` (neither)."""
        if split == "train":
            kw.setdefault("pad", max(1, round(4 * self.image_size / 32)))
            return TensorLoader(self.x_train, self.y_train, batch_size, device, train=True, seed=seed, **kw)
        if split == "test":
            return TensorLoader(self.x_test, self.y_test, batch_size, device, train=False, seed=seed, **kw)
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def load(classes: int | list[int] = 100, per_class: int | None = None, test_per_class: int | None = None,
         image_size: int = 32, seed: int = 0, validation: bool = False, root: Path | None = None) -> Dataset:
    """Load CIFAR-100 (verified) and cut the subset a tier asks for.

    classes: how many classes (chosen by a seeded permutation; 100 = all) or an explicit list.
    per_class: training images per class (seeded, balanced; None = all 500, or 450 with
    ``validation``). test_per_class: test images per class (None = all 100).
    validation: evaluate on a held-out 50-per-class slice of train (the 45k/5k split)
    instead of the test set — the split to tune on.
    """
    train, test = load_split("train", root), load_split("test", root)
    cls = pick_classes(classes, seed=seed) if isinstance(classes, int) else list(classes)
    if validation:
        # a tenth of each class: the usual 45k/5k on CIFAR-100
        per = int(np.bincount(train.labels).min())
        tr_idx, va_idx = train_val_split(train.labels, val_per_class=max(1, per // 10), seed=seed)
        pool_x, pool_y = train.images[tr_idx], train.labels[tr_idx]
        ev_x, ev_y, test_name = train.images[va_idx], train.labels[va_idx], "validation"
    else:
        pool_x, pool_y = train.images, train.labels
        ev_x, ev_y, test_name = test.images, test.labels, "test"
    tr = balanced_indices(pool_y, cls, per_class, seed=seed)
    te = balanced_indices(ev_y, cls, test_per_class, seed=seed)
    return Dataset(
        x_train=to_uint8_tensor(pool_x[tr], image_size),
        y_train=torch.from_numpy(relabel(pool_y[tr], cls)),
        x_test=to_uint8_tensor(ev_x[te], image_size),
        y_test=torch.from_numpy(relabel(ev_y[te], cls)),
        classes=cls,
        class_names=[train.classes[c] for c in cls],
        checksum=train.checksum,
        test_name=test_name,
        info={"per_class": per_class, "test_per_class": test_per_class, "seed": seed,
              "train_md5": train.checksum, "test_md5": test.checksum},
    )
