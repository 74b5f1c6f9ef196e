"""A tiny fake CIFAR-100 in the real on-disk format, for tests that must run without data."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .cifar import FAKE_MARKER, FOLDER


def write_fake_cifar100(root: Path, train_per_class: int = 5, test_per_class: int = 2,
                        num_classes: int = 100, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` with random pixels.

    Same keys, dtypes and layout as the official pickles (data: uint8 [N, 3072] CHW-flat,
    fine_labels/coarse_labels: lists of int, filenames, batch_label). Each class gets a
    distinct mean colour so a model can actually learn it in a smoke test.
    A ``FAKE`` marker file is written beside them: the set loads only where the
    ``REPRO_ALLOW_FAKE_DATA=1`` environment variable says a test wants it.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / FOLDER).mkdir(parents=True, exist_ok=True)
    base = rng.integers(40, 215, size=(num_classes, 3))
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(num_classes), per)
        rng.shuffle(labels)
        noise = rng.normal(0, 25, size=(len(labels), 3, 32, 32))
        data = np.clip(base[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
        obj = {
            "filenames": [f"{split}_{i:05d}.png" for i in range(len(labels))],
            "batch_label": f"fake {split} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": data.reshape(len(labels), -1),
        }
        with open(root / FOLDER / split, "wb") as f:
            pickle.dump(obj, f)
    meta = {
        "fine_label_names": [f"class_{i:03d}" for i in range(num_classes)],
        "coarse_label_names": [f"super_{i:02d}" for i in range(max(1, num_classes // 5))],
    }
    with open(root / FOLDER / "meta", "wb") as f:
        pickle.dump(meta, f)
    (root / FOLDER / FAKE_MARKER).write_text("random pixels for tests; not CIFAR-100\n")
    return root
