"""Chapter 04 (GCAB): gated class-attention and cascaded feature-drift compensation for
exemplar-free class-incremental learning of a small ViT (Cotogni et al., 2022). Arms
``token_finetune``, ``gated`` and ``gcab`` (config :class:`GCABConfig`); the network and HAT's
pieces are in ``repro.layers.gated_attention``, the losses in ``repro.losses.incremental``.

The network (``GatedCAViT``) is a DyTox-style ViT: self-attention blocks (SAB, timm's
``Block``: plain MHSA) turn the image into patch tokens, then **one class-attention block**
(TAB) is run once per task with that task's learnable class token, and each task has its own
linear head; the logits of every task's head are concatenated (no task id at inference).

*Gating* (HAT, Serra et al. 2018, applied to the TAB): task t owns two embeddings
``e0[t] ∈ R^D`` and ``e2[t] ∈ R^{H}``; its masks are ``m = σ(s·e)``. ``m0`` multiplies the D
channels everywhere in the TAB (inputs of q/k/v, q and k, the attention output, the projection
output, the MLP input and output), ``m2`` the H hidden MLP units. While task t trains, s is
annealed from 1/s_max to s_max over the batches of every epoch; the masks of earlier tasks,
and every mask at evaluation, are binary (σ(s·e) > ½ ⇔ e > 0). After task t the union of the
masks, ``mask_pre``, marks the TAB units already claimed; a weight whose output *and* input
units are both claimed is frozen for every later task (HAT's ``1 − min(m_pre_out, m_pre_in)``
gradient mask), and a sparsity term λ·Σ m_t(1 − m_pre)/Σ(1 − m_pre) pushes each task to claim
few new units. The embedding gradient gets HAT's compensation factor
s_max/s·(cosh(clamp(s·e)) + 1)/(cosh(e) + 1), and embeddings are clamped to ±6.

*Cascaded feature-drift compensation* (FDC): the SAB backbone stays trainable (only its
LayerNorms are frozen after task 0), so the features the frozen TAB of an old task receives
drift. At task t ≥ 1 a projector P_t (per-token Linear → LayerNorm → ReLU → Linear, the
official 1×1 convolutions) is trained with λ_pfr·‖SAB_{t−1}(x) − P_t(SAB_t(x))‖₂ against the
frozen model of task t − 1; at evaluation old task c's class attention reads
P_{c+1}(…P_t(SAB_t(x))) — the cascade maps today's features back to task c's space.

How freezing is done here: instead of zeroing gradients, every claimed TAB weight (and the
old tasks' gate embeddings) is reset to its value at the end of the previous task before
every step and after the last one. With an element-wise optimiser (SGD, AdamW) that equals a
zero gradient on those entries, and it also undoes weight decay on them, so old tasks' TAB
weights stay bit-identical (a test checks it). The TAB's own LayerNorms are frozen after
task 0 for the same reason (they are shared by every task's masked channels).

Learners (all exemplar-free, memory 0, old tasks' tokens and heads frozen as in the official
DyTox configuration): ``token_finetune`` (the chapter's ``finetune``: per-task tokens and heads,
no gating, no FDC), ``gated`` (gating only) and ``gcab`` (gating + FDC). The loss is BCE over the
seen classes' logits, as in the official code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ....arms import arm
from ....layers.gated_attention import GatedCAViT, anneal_s, cascade, frozen_entries
from ....losses.incremental import hat_regulariser, seen_classes_loss
from ..learners import IncrementalConfig, Learner
from ..stream import Stream
from .baselines import FAMILY

# the chapter's labels (the fine-tuning of the token ViT is arm token_finetune); memory 0 for all
PLAN: dict[str, tuple[str, dict[str, Any]]] = {"finetune": ("token_finetune", {"memory": 0}),
                                               "gated": ("gated", {"memory": 0}),
                                               "gcab": ("gcab", {"memory": 0})}
LABELS = tuple(PLAN)


# -- configuration -----------------------------------------------------------------------
@dataclass
class GCABConfig(IncrementalConfig):
    """The incremental schedule plus the network and HAT/FDC hyper-parameters."""

    optimizer: str = "adamw"
    warmup_epochs: float = 0.0
    dim: int = 384
    depth: int = 5              # self-attention blocks before the gated class-attention block
    heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 4
    image_size: int = 32
    smax: float = 800.0
    lambda_gcab: float = 0.05
    lambda_pfr: float = 0.001
    thres_cosh: float = 50.0
    thres_emb: float = 6.0
    probe_images: int = 256     # test images on which the feature drift is measured
    loss: str = "bce"           # "bce" (official: sigmoid per class) or "ce" (softmax over the seen classes)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if self.dim <= 0 or self.depth < 1 or self.heads <= 0 or self.dim % self.heads:
            raise ValueError(f"need dim > 0 divisible by heads > 0 and depth ≥ 1 (dim {self.dim}, "
                             f"heads {self.heads}, depth {self.depth})")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, not {self.mlp_ratio}")
        if self.patch_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if not self.smax > 1:
            raise ValueError(f"smax must be > 1 (s is annealed from 1/smax to smax), not {self.smax}")
        if self.lambda_gcab < 0 or self.lambda_pfr < 0:
            raise ValueError("lambda_gcab and lambda_pfr must be ≥ 0")
        if self.thres_cosh <= 0 or self.thres_emb <= 0:
            raise ValueError("thres_cosh and thres_emb must be > 0")
        if self.probe_images < 1:
            raise ValueError(f"probe_images must be ≥ 1, not {self.probe_images}")
        if self.loss not in ("bce", "ce"):
            raise ValueError(f"loss must be 'bce' or 'ce', not {self.loss!r}")
        if self.warmup_epochs < 0:
            raise ValueError("warmup_epochs must be ≥ 0")

    @property
    def hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def train_config(self, t: int, desc: str = ""):
        tc = super().train_config(t, desc)
        tc.optimizer = self.optimizer
        tc.warmup_epochs = self.warmup_epochs
        return tc


def relative_drift(ref: torch.Tensor, other: torch.Tensor) -> float:
    """‖ref − other‖_F / ‖ref‖_F."""
    return float(torch.linalg.vector_norm(ref - other) / torch.linalg.vector_norm(ref).clamp_min(1e-12))


@arm("token_finetune", family=FAMILY, config=GCABConfig)
class TokenFineTune(Learner):
    """Fine-tuning of the per-task-token ViT: no gating, no drift compensation. The old
    tasks' tokens and heads are frozen (the official DyTox/GCAB ``freeze_task``); everything
    else trains on the new task's data with BCE over the seen classes."""

    name = "finetune"
    gated = False
    fdc = False

    def __init__(self, cfg: GCABConfig) -> None:
        if not isinstance(cfg, GCABConfig):
            raise TypeError("the GCAB learners need a GCABConfig")
        if cfg.memory:
            raise ValueError(f"GCAB is exemplar-free: memory must be 0, not {cfg.memory}")
        super().__init__(cfg)
        self.uses_old_model = self.fdc
        self.model: GatedCAViT | None = None
        self.probe_feats: list[torch.Tensor] = []   # SAB features of the probe images after each task
        self._frozen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._probe: torch.Tensor | None = None

    # -- model and task set-up
    def build(self, num_classes: int) -> GatedCAViT:
        c: GCABConfig = self.cfg  # type: ignore[assignment]
        if self.stream is None:
            raise ValueError("setup(stream) first: the network has one head per task of the stream")
        sizes = [len(t) for t in self.stream.tasks]
        if sum(sizes) != num_classes:
            raise ValueError(f"the stream's tasks cover {sum(sizes)} classes, the model was asked for {num_classes}")
        if self.stream.data.image_size != c.image_size:
            raise ValueError(f"config image_size {c.image_size} ≠ the stream's {self.stream.data.image_size}")
        model = GatedCAViT(sizes, c.image_size, c.patch_size, c.dim, c.depth, c.heads, c.mlp_ratio,
                           gated=self.gated, fdc=self.fdc, smax=c.smax, thres_cosh=c.thres_cosh)
        if self.model is None:  # later calls build the frozen copy of a resumed run
            self.model = model
        return model

    def begin_task(self, t: int) -> None:
        """Point the model at task t, choose what trains, snapshot what must stay frozen."""
        m = self.model
        assert m is not None, "build() first"
        m.task.fill_(t)
        for c, (tok, head) in enumerate(zip(m.tokens, m.heads)):
            tok.requires_grad_(c == t)
            head.requires_grad_(c == t)
        self._frozen = []
        if not self.gated or t == 0:
            return
        # After task 0: LayerNorms of the backbone (FDC's recipe) and of the shared TAB stay fixed.
        for mod in list(m.sab.modules()) + [m.tab.norm1, m.tab.norm2]:
            if isinstance(mod, nn.LayerNorm):
                mod.requires_grad_(False)
        pre = {"m0": m.mask_pre0, "m2": m.mask_pre2}
        for layer, out, inp in m.tab.gated_linears().values():
            self._freeze(layer.weight, frozen_entries(pre[out], pre[inp]))
            if layer.bias is not None:
                self._freeze(layer.bias, frozen_entries(pre[out], None))
        for e in (m.e0, m.e2):
            rows = torch.zeros_like(e, dtype=torch.bool)
            rows[:t] = True
            self._freeze(e, rows)

    def _freeze(self, p: torch.Tensor, where: torch.Tensor) -> None:
        if where.any():
            self._frozen.append((p, where, p.detach().clone()))

    @torch.no_grad()
    def restore(self) -> None:
        """Reset the frozen entries to their end-of-previous-task values; clamp the embeddings."""
        for p, where, value in self._frozen:
            p.copy_(torch.where(where, value, p))
        if self.model is not None and self.gated:
            thr = self.cfg.thres_emb  # type: ignore[attr-defined]
            self.model.e0.clamp_(-thr, thr)
            self.model.e2.clamp_(-thr, thr)

    def batches_per_epoch(self, t: int) -> int:
        """Batches of task t's loader (it drops the last partial batch when it has a full one)."""
        n, bs = len(self.stream.train_indices(t)), self.cfg.batch_size
        return n // bs if n >= bs else 1

    # -- training
    def loss_fn(self, t: int, seen: int, seen_before: int):
        self.begin_task(t)
        m, c = self.model, self.cfg
        assert m is not None
        batches, counter = self.batches_per_epoch(t), [0]
        old = self.old_model if (self.fdc and t > 0) else None

        def fn(model, x, y):
            self.restore()
            if model.gated:
                model.s = anneal_s(counter[0] % batches, batches, c.smax)
            counter[0] += 1
            feats = model.backbone(x)
            logits, cur = model.classify(feats)
            logits = logits[:, :seen]
            loss = seen_classes_loss(logits, y, c.loss)
            if model.gated:
                pre = None if t == 0 else (model.mask_pre0, model.mask_pre2)
                loss = loss + hat_regulariser(cur, pre, c.lambda_gcab)
            if old is not None:
                with torch.no_grad():
                    target = old.backbone(x)
                loss = loss + c.lambda_pfr * torch.linalg.vector_norm(target - model.projectors[t](feats))
            return loss, logits
        return fn

    # -- after each task
    def probe(self, device: torch.device) -> torch.Tensor:
        """A fixed batch of (normalised) test images of the whole stream."""
        if self._probe is None:
            loader = self.stream.test_loader(range(self.stream.num_tasks), self.cfg.probe_images, device)
            self._probe = next(iter(loader))[0]
        return self._probe

    @torch.no_grad()
    def post_train(self, model: nn.Module, t: int, stream: Stream) -> dict[str, Any]:
        self.restore()
        self._frozen = []
        extra: dict[str, Any] = {}
        if model.gated:
            m0, m2 = (model.e0[t] > 0).float(), (model.e2[t] > 0).float()
            extra["mask_usage"] = {"m0": m0.mean().item(), "m2": m2.mean().item(),
                                   "m0_new": (m0 * (1 - model.mask_pre0)).mean().item(),
                                   "m2_new": (m2 * (1 - model.mask_pre2)).mean().item()}
            model.mask_pre0.copy_(torch.maximum(model.mask_pre0, m0))
            model.mask_pre2.copy_(torch.maximum(model.mask_pre2, m2))
            extra["mask_usage"]["m0_claimed"] = model.mask_pre0.mean().item()
            extra["mask_usage"]["m2_claimed"] = model.mask_pre2.mean().item()
        was = model.training
        model.eval()
        x = self.probe(next(model.parameters()).device)
        feats = model.backbone(x)
        drift = []
        for c, ref in enumerate(self.probe_feats):
            ref = ref.to(feats.device)
            row = {"task": c, "raw": relative_drift(ref, feats)}
            if model.fdc:
                row["compensated"] = relative_drift(ref, cascade(feats, model.projectors, t, c))
            drift.append(row)
        model.train(was)
        self.probe_feats.append(feats.cpu())
        extra["drift"] = drift
        return extra

    def state_dict(self) -> dict:
        return {"probe_feats": self.probe_feats}

    def load_state_dict(self, state: dict) -> None:
        self.probe_feats = list(state.get("probe_feats", []))


@arm("gated", family=FAMILY, config=GCABConfig)
class GatedOnly(TokenFineTune):
    """HAT gating of the class-attention block, no drift compensation."""

    name = "gated"
    gated = True
    fdc = False


@arm("gcab", family=FAMILY, config=GCABConfig)
class GCAB(TokenFineTune):
    """Gated class-attention + cascaded feature-drift compensation (the paper's method)."""

    name = "gcab"
    gated = True
    fdc = True


def describe(cfg: GCABConfig) -> str:
    """One line: the network and the schedule."""
    ep = f"{cfg.epochs_first or cfg.epochs} epochs for task 1, {cfg.epochs} per later task"
    return (f"ViT: {cfg.depth} self-attention blocks + 1 gated class-attention block, dim {cfg.dim}, "
            f"{cfg.heads} heads, MLP ×{cfg.mlp_ratio:g}, patch {cfg.patch_size} on {cfg.image_size} px · {ep}, "
            f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule} (warm-up {cfg.warmup_epochs:g} ep), "
            f"wd {cfg.weight_decay:g} · s_max {cfg.smax:g}, λ_gcab {cfg.lambda_gcab:g}, λ_pfr {cfg.lambda_pfr:g} · "
            f"memory 0")
