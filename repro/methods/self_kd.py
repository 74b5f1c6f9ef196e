"""Teacher-free self-distillation: PS-KD and the layered self-supervised KD of LSSKD.

* ``pskd`` (Kim et al., 2021): the target of each training image is
  (1 − α_t)·onehot(y) + α_t·p_{t−1}(x), its own prediction from the previous epoch, with
  α_t = α_T·t/T. The previous predictions are kept per image by ``IndexedBatches``, a batch
  plan that also tells the loss which images the current batch holds; they are part of the
  plan's state, so a resumed run keeps them.
* ``lsskd`` (Dahri et al., 2025), **reconstructed** from the abstract and HSAKD (no code is
  public): ``AuxBranchStudent`` adds an auxiliary branch after every stage — fresh copies of
  the remaining stages (an extra conv block after the last), pooled, then a linear layer over
  C×4 joint class×rotation labels. Each batch is expanded with its 4 rotations. Loss: CE of the
  main head on the unrotated images + Σ_s CE(aux_s, joint label) + λ_aux·Σ_s τ²·KL(aux_{s+1} ‖ aux_s)
  (deeper teaches shallower) + λ_main·τ²·KL(p̄ ‖ main), p̄ the auxiliaries' mean prediction on the
  unrotated images marginalised over rotations. ``forward`` is the main head only: the branches
  are dropped at inference.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import distillation as D
from ..models.stages import split_stages, stage_channels, stage_outputs
from ..train import WORK, AllBatches, FitResult, dry_run, predict
from .distill import StudentSetup, _fit_student_model, register_arm

ROTATIONS = 4


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


@register_arm("pskd", {"alpha_T": 0.8})
def pskd_arm(setup: StudentSetup, alpha_T: float) -> FitResult:
    """Progressive self-knowledge distillation: soft targets from the model's own last epoch."""
    if not 0 <= alpha_T <= 1:
        raise ValueError(f"alpha_T must be in [0, 1], not {alpha_T}")
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

    return _fit_student_model(setup, setup.new_student(), loss_fn, "pskd", plan=plan)


# --------------------------------------------------------------------------- LSSKD
def _reset(module: nn.Module) -> nn.Module:
    """Fresh weights for a copied branch (it must not start as the backbone's twin)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


class AuxBranchStudent(nn.Module):
    """A student with an auxiliary class×rotation branch after each stage (training only)."""

    def __init__(self, student: nn.Module, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.student = student
        self.num_classes = num_classes
        _, stages = split_stages(student)
        chans = stage_channels(student, image_size)
        branches = []
        for s in range(len(stages)):
            if s < len(stages) - 1:
                body = nn.Sequential(*[copy.deepcopy(st) for st in stages[s + 1:]])
            else:
                c = chans[-1]
                body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            _reset(body)
            branches.append(nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(chans[-1], num_classes * ROTATIONS)))
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The main head only: what the deployed student computes."""
        return self.student(x)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Main logits [B, C] and each branch's joint logits [B, 4C]."""
        outs, logits = stage_outputs(self.student, x)
        return logits, [b(o) for b, o in zip(self.branches, outs)]


def lsskd_loss(main: torch.Tensor, aux: list[torch.Tensor], y: torch.Tensor, num_classes: int,
               temperature: float = 3.0, aux_kl: float = 1.0, main_kl: float = 1.0) -> torch.Tensor:
    """LSSKD's loss for a rotation-expanded batch (rotation-major, first B rows unrotated)."""
    B = len(y)
    T = temperature
    joint = D.rotation_labels(y, ROTATIONS)
    loss = F.cross_entropy(main[:B], y)
    for a in aux:
        loss = loss + F.cross_entropy(a, joint)
    for s in range(len(aux) - 1):  # the next deeper branch teaches each shallower one
        loss = loss + aux_kl * T * T * D.kl_div(aux[s + 1].detach(), aux[s], T)
    if main_kl:
        marg = torch.stack([D.marginalise_rotations(a[:B].detach() / T, num_classes, ROTATIONS) for a in aux])
        p_bar = marg.exp().mean(0)
        loss = loss + main_kl * T * T * D.soft_target_loss(main[:B] / T, p_bar)
    return loss


@register_arm("lsskd", {"temperature": 3.0, "aux_kl": 1.0, "main_kl": 1.0})
def lsskd_arm(setup: StudentSetup, temperature: float, aux_kl: float, main_kl: float) -> FitResult:
    """Layered self-supervised self-distillation (our reconstruction; no teacher)."""
    D.check_temperature("temperature", temperature)
    model = AuxBranchStudent(setup.new_student(), setup.num_classes, setup.train.images.shape[-1])

    def loss_fn(m: AuxBranchStudent, x, y):
        main, aux = m.forward_all(D.rotate_batch(x, ROTATIONS))
        loss = lsskd_loss(main.float(), [a.float() for a in aux], y, m.num_classes, temperature, aux_kl, main_kl)
        return loss, main[: len(y)]

    return _fit_student_model(setup, model, loss_fn, "lsskd")


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
