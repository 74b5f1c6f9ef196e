"""Exemplar memory: a fixed total budget of stored training images, shared by all seen classes.

After task t the memory holds ⌊budget / seen classes⌋ images per class (or a fixed number
per class). A class's exemplars are kept in *priority order*: herding (iCaRL: greedily pick
the image that brings the running mean of the normalised features closest to the class
mean) or a seeded random order. Shrinking a class keeps its first m, as iCaRL and PyCIL do.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...train import WORK, dry_run

MODES = ("herding", "random", "none")


def herding_order(features: torch.Tensor, m: int) -> list[int]:
    """The first ``m`` rows chosen by herding (indices into ``features``, no repeats)."""
    if m <= 0:
        return []
    f = F.normalize(features.float(), dim=1)
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    taken = torch.zeros(len(f), dtype=torch.bool)
    for k in range(1, min(m, len(f)) + 1):
        dist = ((mu - (running + f) / k) ** 2).sum(1)
        dist[taken] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        taken[i] = True
        running += f[i]
    return chosen


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
                     batch_size: int = 512) -> torch.Tensor:
    """``model.features`` of uint8 images [N, 3, S, S], normalised, un-augmented, eval mode.

    A dry run (``REPRO_DRY_RUN``) runs the model on the first batch only and repeats its rows
    to fill all N: the shapes, and what comes after (herding, class means), stay as in a real run.
    """
    from ...data.loader import TensorLoader

    was = model.training
    model.eval()
    loader = TensorLoader(images, torch.zeros(len(images), dtype=torch.long), batch_size, device, train=False)
    feats = []
    for x, _ in loader:
        feats.append(model.features(x).float().cpu())
        WORK["eval_batches"] += 1
        if dry_run():
            break
    out = torch.cat(feats)
    if len(out) < len(images):  # dry run: tile the first batch's features
        out = out.repeat(-(-len(images) // len(out)), *[1] * (out.dim() - 1))[: len(images)]
    model.train(was)
    return out


class ExemplarMemory:
    """Stored training positions per label, within a fixed total budget."""

    def __init__(self, budget: int, mode: str = "herding", per_class: int | None = None, seed: int = 0) -> None:
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            raise ValueError(f"memory budget must be an integer ≥ 0, not {budget!r}")
        if mode not in MODES:
            raise ValueError(f"memory mode must be one of {MODES}, not {mode!r}")
        if per_class is not None and per_class < 0:
            raise ValueError(f"exemplars per class must be ≥ 0, not {per_class}")
        self.budget, self.mode, self.fixed, self.seed = budget, mode, per_class, seed
        self.store: dict[int, list[int]] = {}

    def quota(self, num_classes: int) -> int:
        """Exemplars per class when ``num_classes`` classes share the memory."""
        if self.mode == "none" or num_classes == 0:
            return 0
        return self.fixed if self.fixed is not None else self.budget // num_classes

    def update(self, labels: torch.Tensor, positions: torch.Tensor, new_classes: list[int],
               features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Add ``new_classes`` (choosing among ``positions`` whose label matches) and shrink all.

        labels/positions: the candidate training images' labels and their positions in the
        training set. ``features(positions)`` gives their features (needed for herding).
        """
        if self.mode == "none":
            return
        m = self.quota(len(self.store) + len(new_classes))
        for c in self.store:
            self.store[c] = self.store[c][:m]
        gen = torch.Generator().manual_seed(self.seed)
        pooled = None
        if self.mode == "herding" and features is not None and new_classes and dry_run():
            # a dry run: one features call (one batch) for all the new classes, not one per class
            new = torch.isin(labels, torch.tensor(list(new_classes), dtype=labels.dtype))
            pooled = (labels[new], features(positions[new]))
        for c in new_classes:
            cand = positions[labels == c]
            if self.mode == "random":
                order = torch.randperm(len(cand), generator=gen)[:m].tolist()
            else:
                if features is None:
                    raise ValueError("herding needs a features function")
                order = herding_order(pooled[1][pooled[0] == c] if pooled is not None else features(cand), m)
            self.store[c] = [int(cand[i]) for i in order]

    def indices(self) -> torch.Tensor:
        """All stored training positions."""
        flat = [p for c in sorted(self.store) for p in self.store[c]]
        return torch.tensor(flat, dtype=torch.long)

    def __len__(self) -> int:
        return sum(len(v) for v in self.store.values())

    def state_dict(self) -> dict:
        return {"store": {str(k): v for k, v in self.store.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.store = {int(k): list(v) for k, v in state["store"].items()}


def class_means(features: torch.Tensor, labels: torch.Tensor, classes: Sequence[int],
                normalize: bool = True) -> torch.Tensor:
    """μ_c for each class in ``classes``: the mean of its feature rows, [C, D], in that order.

    With ``normalize`` the rows are L2-normalised first; the means themselves are not
    re-normalised (the nearest-mean and BCT-style prototypes of the official code do the same).
    A class without a row is an error."""
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{features.shape[0]} features but {labels.shape[0]} labels")
    f = F.normalize(features.float(), dim=1) if normalize else features.float()
    out = []
    for c in classes:
        rows = f[labels == c]
        if len(rows) == 0:
            raise ValueError(f"class {c} has no training features")
        out.append(rows.mean(0))
    return torch.stack(out)
