"""Teacher-free self-distillation: PS-KD and the layered self-supervised KD of LSSKD.

* ``pskd`` (Kim et al., 2021): the target of each training image is
  (1 − α_t)·onehot(y) + α_t·p_{t−1}(x), its own prediction from the previous epoch, with
  α_t = α_T·t/T. The previous predictions are kept per image by ``IndexedBatches``, a batch
  plan that also tells the loss which images the current batch holds; they are part of the
  plan's state, so a resumed run keeps them.
* ``lsskd`` (Dahri et al., 2025), **reconstructed** from the abstract and HSAKD (no code is
  public): ``repro.layers.distillation.AuxBranchStudent`` adds an auxiliary class×rotation
  branch after every stage; each batch is expanded with its 4 rotations and trained with
  ``repro.losses.distillation.lsskd_loss``. ``forward`` is the main head only: the branches
  are dropped at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ....arms import arm
from ....layers.distillation import ROTATIONS, AuxBranchStudent
from ....losses import distillation as D
from ....train import WORK, AllBatches, FitResult, dry_run
from ..protocol import DistillConfig, StudentSetup, fit_model


# --------------------------------------------------------------------------- PS-KD
class IndexedBatches(AllBatches):
    """All batches in the loader's order, remembering the current batch's image indices, and a
    per-image table of the previous epoch's predicted probabilities (PS-KD's targets)."""

    def __init__(self, num_images: int, num_classes: int) -> None:
        self.current: torch.Tensor | None = None
        self.epoch = 0
        self.past = torch.full((num_images, num_classes), 1.0 / num_classes)
        self.fresh = torch.zeros_like(self.past)

    def epoch_batches(self, loader, epoch: int):
        if epoch != self.epoch:  # a new epoch: last epoch's predictions become the targets
            self.past, self.fresh = self.fresh, torch.zeros_like(self.fresh)
            self.epoch = epoch
        for batch_id, idx in super().epoch_batches(loader, epoch):
            self.current = idx
            yield batch_id, idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "past": self.past, "fresh": self.fresh}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.epoch, self.past, self.fresh = state["epoch"], state["past"], state["fresh"]


@dataclass(frozen=True)
class PSKDConfig(DistillConfig):
    """PS-KD's final α (α_t = α·t/T)."""

    pskd_alpha: float = 0.8

    def __post_init__(self) -> None:
        if not 0 <= self.pskd_alpha <= 1:
            raise ValueError(f"pskd_alpha must be in [0, 1], not {self.pskd_alpha}")


@arm("pskd", family="distillation", config=PSKDConfig)
def pskd_arm(setup: StudentSetup, cfg: PSKDConfig) -> FitResult:
    """Progressive self-knowledge distillation: soft targets from the model's own last epoch."""
    alpha_T = cfg.pskd_alpha
    plan = IndexedBatches(setup.train.num_samples, setup.num_classes)
    epochs = setup.cfg.epochs

    def loss_fn(model, x, y):
        s = model(x)
        idx = plan.current.cpu()
        alpha = alpha_T * plan.epoch / max(1, epochs)
        target = D.ps_kd_targets(y, plan.past[idx].to(s.device), alpha) if plan.epoch > 0 else \
            F.one_hot(y, s.shape[1]).float()
        plan.fresh[idx] = F.softmax(s.detach().float(), 1).cpu()
        return -(target * F.log_softmax(s.float(), 1)).sum(1).mean(), s

    return fit_model(setup, setup.new_student(), loss_fn, "pskd", plan=plan)


# --------------------------------------------------------------------------- LSSKD
@dataclass(frozen=True)
class LSSKDConfig(DistillConfig):
    """LSSKD's τ and the weights of its two KL terms (HSAKD's values: τ = 3, 1, 1)."""

    temperature: float = 3.0
    aux_kl: float = 1.0
    main_kl: float = 1.0

    def __post_init__(self) -> None:
        D.check_temperature("temperature", self.temperature)


@arm("lsskd", family="distillation", config=LSSKDConfig)
def lsskd_arm(setup: StudentSetup, cfg: LSSKDConfig) -> FitResult:
    """Layered self-supervised self-distillation (our reconstruction; no teacher)."""
    model = AuxBranchStudent(setup.new_student(), setup.num_classes, setup.train.images.shape[-1])

    def loss_fn(m: AuxBranchStudent, x, y):
        main, aux = m.forward_all(D.rotate_batch(x, ROTATIONS))
        loss = D.lsskd_loss(main.float(), [a.float() for a in aux], y, m.num_classes, cfg.temperature,
                            cfg.aux_kl, cfg.main_kl, ROTATIONS)
        return loss, main[: len(y)]

    return fit_model(setup, model, loss_fn, "lsskd")


@torch.no_grad()
def aux_accuracies(model: AuxBranchStudent, test) -> list[float]:
    """Top-1 (%) of each auxiliary branch on unrotated test images (joint logits of rotation 0)."""
    out = []
    was = model.training
    model.eval()
    accs = [[] for _ in model.branches]
    ys = []
    for x, y in test:
        _, aux = model.forward_all(x)
        for i, a in enumerate(aux):
            accs[i].append(a.view(len(y), model.num_classes, ROTATIONS)[:, :, 0].argmax(1).cpu())
        ys.append(y.cpu())
        WORK["eval_batches"] += 1
        if dry_run():  # one batch, as every evaluation in a dry run
            break
    model.train(was)
    y = torch.cat(ys)
    for a in accs:
        out.append(100.0 * (torch.cat(a) == y).float().mean().item())
    return out
