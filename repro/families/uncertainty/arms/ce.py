"""The cross-entropy baseline: the chapter's backbone trained as a plain classifier."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .... import models
from ....arms import arm
from ....data import Dataset
from ....train import fit
from ..protocol import ModelConfig, Trained, train_config


@dataclass
class CEConfig(ModelConfig):
    """A cross-entropy classifier: only :class:`ModelConfig`'s network and SGD recipe."""


@arm("ce", family="uncertainty", config=CEConfig)
def train_ce(cfg: CEConfig, data: Dataset, seed: int, checkpoint_dir: Path | None = None,
             device: torch.device | str = "cpu") -> Trained:
    """Cross-entropy classifier (SGD, momentum 0.9, warm-up then cosine); ``features`` and
    logits are the backbone's own."""
    torch.manual_seed(seed)  # initial weights
    model = models.create(cfg.model, num_classes=data.num_classes, **cfg.model_kwargs())
    res = fit(model, data.loader("train", cfg.batch_size, device, seed=seed), data.loader("test", 1000, device),
              train_config(cfg, desc=f"ce · seed {seed}"), checkpoint_dir=checkpoint_dir)
    return Trained(model, [res], {"test_acc": res.final.get("test_acc"), "train_loss": res.final.get("train_loss")})
