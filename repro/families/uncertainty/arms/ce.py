"""The cross-entropy baseline: the chapter's backbone trained as a plain classifier."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .... import models
from ....arms import arm
from ....data import Dataset
from ....errors import ParameterError
from ....train import fit
from ..protocol import ModelConfig, Trained, train_config


@dataclass
class CEConfig(ModelConfig):
    """A cross-entropy classifier: :class:`ModelConfig`'s network and SGD recipe, trained from
    scratch, or, with ``backbone`` (a timm model name), that pretrained network fine-tuned
    whole with a new linear head."""

    backbone: str = ""            # "" (train `model` from scratch) or a timm model name
    weights: str = ""             # timm backbone: a local state-dict file
    timm_pretrained: bool = False  # timm backbone without weights: let timm download them


def check_backbone(cfg: CEConfig) -> None:
    """A pretrained backbone needs a weights file that exists, or timm's download: checked
    before any work (ParameterError)."""
    if not cfg.backbone:
        if cfg.weights or cfg.timm_pretrained:
            raise ParameterError("weights / timm_pretrained need a timm `backbone` name")
        return
    if cfg.weights and not Path(cfg.weights).expanduser().is_file():
        raise ParameterError(f"weights file {cfg.weights!r} does not exist")
    if not cfg.weights and not cfg.timm_pretrained:
        raise ParameterError(f"backbone {cfg.backbone!r} needs weights=PATH (a local state dict) or "
                             "timm_pretrained=True (timm downloads them; needs network)")


def build_model(cfg: CEConfig, num_classes: int) -> torch.nn.Module:
    """The network to train: ``cfg.model`` with fresh weights, or the pretrained timm backbone
    with a new head (images resized to its input size, as ``repro.models.timm_net.TimmNet``)."""
    if not cfg.backbone:
        return models.create(cfg.model, num_classes=num_classes, **cfg.model_kwargs())
    from ...incremental.arms.nmc import timm_backbone  # the one loader of timm weights

    check_backbone(cfg)
    bb = timm_backbone(cfg.backbone, cfg.weights, cfg.timm_pretrained)
    net = bb.build(num_classes)
    net.load_state_dict(bb.state, strict=False)  # the body's weights; the head stays fresh
    return net


@arm("ce", family="uncertainty", config=CEConfig)
def train_ce(cfg: CEConfig, data: Dataset, seed: int, checkpoint_dir: Path | None = None,
             device: torch.device | str = "cpu") -> Trained:
    """Cross-entropy classifier (SGD, momentum 0.9, warm-up then cosine); ``features`` and
    logits are the backbone's own."""
    torch.manual_seed(seed)  # initial weights
    model = build_model(cfg, data.num_classes)
    res = fit(model, data.loader("train", cfg.batch_size, device, seed=seed), data.loader("test", 1000, device),
              train_config(cfg, desc=f"ce · seed {seed}"), checkpoint_dir=checkpoint_dir)
    return Trained(model, [res], {"test_acc": res.final.get("test_acc"), "train_loss": res.final.get("train_loss")})
