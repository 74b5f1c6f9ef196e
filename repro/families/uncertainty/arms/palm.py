"""PALM (Lu et al., ICLR 2024): an encoder trained with a mixture of prototypes per class.

The network is a ``repro.models`` backbone (its ``features``: the encoder the OOD score
reads) followed by a projection ``D → D → ReLU → proj_dim`` and L2 normalisation; the loss
(:class:`repro.losses.prototypes.PALMLoss`) lives inside the model, so its prototype buffer
is saved, resumed and cached with the weights. Each training batch is augmented twice
(SimCLR recipe, :mod:`repro.data.augment`) on top of the loader's crop and flip, and both
views go through the loss together, as in the official code.

``prototypes = 1, topk = 1`` is the CIDER-like single-prototype ablation: same function,
same recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .... import models
from ....arms import arm
from ....data import Dataset
from ....data.augment import SimCLRAugment, two_views
from ....losses.prototypes import PALMLoss
from ....train import fit
from ..protocol import ModelConfig, Trained, train_config


@dataclass
class PALMConfig(ModelConfig):
    """PALM's network, loss and recipe (defaults: the official CIFAR-100 run, except the
    backbone: the official ResNet-34 is not in ``repro.models``, so ResNet-18, also 512-d)."""

    model: str = "resnet18"
    epochs: int = 500
    batch_size: int = 512
    lr: float = 0.5
    weight_decay: float = 1e-6
    warmup_epochs: float = 10.0
    prototypes: int = 6            # K per class (the official "cache size")
    topk: int = 5                  # prototypes each sample is assigned to (≤ K)
    momentum: float = 0.999        # EMA factor of the prototype update
    temperature: float = 0.1       # τ of the MLE logits and of the class logits
    proto_temperature: float = 0.5
    lambda_pcon: float = 1.0
    proj_dim: int = 128
    two_views: bool = True         # two SimCLR views per image (False: the loader's batch only)


class PrototypeNet(nn.Module):
    """Backbone + projection head + PALM prototypes.

    * ``features(x)`` ``[B, D]``: the backbone's pooled features (what the Mahalanobis score
      uses);
    * ``embed(x)`` ``[B, proj_dim]``: the unit-norm projection z the loss trains;
    * ``forward(x)`` ``[B, C]``: :meth:`PALMLoss.class_logits` of z (per class, the largest
      cosine to its prototypes / τ), for accuracy and logit scores.

    The backbone's own classifier is replaced by ``nn.Identity`` (nothing trains it).
    """

    def __init__(self, backbone: nn.Module, loss: PALMLoss) -> None:
        super().__init__()
        d = int(backbone.num_features)
        backbone.head = nn.Identity()
        self.backbone = backbone
        self.proj = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, loss.dim))
        self.palm = loss

    @property
    def num_features(self) -> int:
        return self.proj[0].in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] → encoder features [B, D]."""
        return self.backbone.features(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] → L2-normalised projection [B, proj_dim]."""
        return F.normalize(self.proj(self.features(x)).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] → class logits [B, C]."""
        return self.palm.class_logits(self.embed(x))


def build(cfg: PALMConfig, num_classes: int) -> PrototypeNet:
    """The PALM network for ``num_classes`` classes (uses the global RNG: seed it first)."""
    backbone = models.create(cfg.model, num_classes=num_classes, **cfg.model_kwargs())
    loss = PALMLoss(num_classes, cfg.prototypes, cfg.proj_dim, topk=cfg.topk, momentum=cfg.momentum,
                    temperature=cfg.temperature, proto_temperature=cfg.proto_temperature,
                    lambda_pcon=cfg.lambda_pcon)
    return PrototypeNet(backbone, loss)


class PALMStep:
    """``fit``'s loss_fn: two SimCLR views of the batch (if ``views``), their embeddings
    stacked, the PALM loss; the logits returned (for train accuracy) are the first view's.

    The views of step t are drawn from a generator seeded by ``(seed, t)``, with t read from
    the model's ``palm.steps`` buffer on the first call: a run resumed from a checkpoint draws
    the views the uninterrupted run would have drawn.
    """

    def __init__(self, seed: int, views: bool = True, aug: SimCLRAugment | None = None) -> None:
        self.seed, self.views = seed, views
        self.aug = aug or SimCLRAugment()
        self.step: int | None = None

    def generator(self, model: PrototypeNet) -> torch.Generator:
        """This step's augmentation generator (CPU, as ``TensorLoader``'s)."""
        if self.step is None:
            self.step = int(model.palm.steps)  # one read per fit; later steps count here
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.step * 7919 + 31) % (2**63 - 1))
        self.step += 1
        return g

    def __call__(self, model: PrototypeNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(y)
        if self.views:
            with torch.autocast(x.device.type, enabled=False):  # augment in fp32
                v = torch.cat(two_views(x, self.generator(model), self.aug))
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                v = v.contiguous(memory_format=torch.channels_last)
            y = y.repeat(2)
        else:
            v = x
        z = model.embed(v)
        loss, _ = model.palm(z, y)
        with torch.no_grad():
            logits = model.palm.class_logits(z[:b])
        return loss, logits


@arm("palm", family="uncertainty", config=PALMConfig)
def train_palm(cfg: PALMConfig, data: Dataset, seed: int, checkpoint_dir: Path | None = None,
               device: torch.device | str = "cpu") -> Trained:
    """PALM: prototype-mixture training (nesterov SGD, warm-up then cosine); K = 1, top-k = 1
    is the CIDER-like ablation. Returns the :class:`PrototypeNet` and its fit."""
    torch.manual_seed(seed)  # initial weights and prototypes
    model = build(cfg, data.num_classes)
    res = fit(model, data.loader("train", cfg.batch_size, device, seed=seed), data.loader("test", 1000, device),
              train_config(cfg, nesterov=True, desc=f"palm K={cfg.prototypes} · seed {seed}"),
              loss_fn=PALMStep(seed, cfg.two_views), checkpoint_dir=checkpoint_dir)
    info = {"prototypes": cfg.prototypes, "topk": model.palm.topk,  # topk capped at K "test_acc": res.final.get("test_acc"),
            "train_loss": res.final.get("train_loss")}
    return Trained(model, [res], info)
