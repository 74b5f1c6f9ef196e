"""Chapter 04 (GCAB): gated class-attention and cascaded feature-drift compensation for
exemplar-free class-incremental learning of a small ViT (Cotogni et al., 2022).

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
DyTox configuration): ``finetune`` (per-task tokens and heads, no gating, no FDC), ``gated``
(gating only) and ``gcab`` (gating + FDC). The loss is BCE over the seen classes' logits,
as in the official code.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from ..incremental import chapter
from ..families.incremental.learners import IncrementalConfig, Learner
from ..families.incremental.stream import Stream
from ..plots.style import annotate_setting, jsonable, new_figure

LABELS = ("finetune", "gated", "gcab")


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


def chapter_config(run) -> GCABConfig:
    """The chapter's config from the run's parameters (protocol memory is irrelevant: 0)."""
    p = run.params
    base = asdict(chapter.protocol_config(run, memory=0))
    return GCABConfig(**base, warmup_epochs=p["warmup_epochs"], dim=p["dim"], depth=p["depth"],
                      heads=p["heads"], mlp_ratio=p["mlp_ratio"], image_size=p["image_size"], smax=p["smax"],
                      lambda_gcab=p["lambda_gcab"], lambda_pfr=p["lambda_pfr"], probe_images=p["probe_images"],
                      loss=p["loss"])


# -- HAT pieces --------------------------------------------------------------------------
def hat_mask(e: torch.Tensor, s: float, binary: bool) -> torch.Tensor:
    """σ(s·e), or its binarisation at ½ (σ(s·e) > ½ ⇔ e > 0, whatever s > 0)."""
    if binary:
        return (e > 0).to(e.dtype)
    return torch.sigmoid(s * e)


def anneal_s(batch: int, batches: int, smax: float) -> float:
    """HAT's in-epoch schedule: 1/s_max at the first batch, rising linearly by
    (s_max − 1/s_max)/batches per batch (the last batch stays just below s_max)."""
    if batches < 1 or not 0 <= batch < batches:
        raise ValueError(f"batch {batch} must be in 0..{batches - 1}")
    return (smax - 1 / smax) * batch / batches + 1 / smax


def compensation(e: torch.Tensor, s: float, smax: float, thres_cosh: float = 50.0) -> torch.Tensor:
    """HAT's embedding-gradient factor s_max/s · (cosh(clamp(s·e, ±thres)) + 1) / (cosh(e) + 1)."""
    num = torch.cosh(torch.clamp(s * e, -thres_cosh, thres_cosh)) + 1
    return smax / s * num / (torch.cosh(e) + 1)


def with_scaled_grad(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x in the forward pass, ``factor · grad`` in the backward pass (element-wise).

    Used to apply HAT's compensation inside autograd instead of through tensor hooks (hooks
    would not survive the deep copies the incremental loop makes)."""
    return x.detach() + (x - x.detach()) * factor.detach()


def hat_regulariser(masks: Sequence[torch.Tensor], mask_pre: Sequence[torch.Tensor] | None,
                    lam: float) -> torch.Tensor:
    """λ·Σ m(1 − m_pre)/Σ(1 − m_pre) over all masks; with no earlier task, λ·mean(m)."""
    if mask_pre is None:
        return lam * sum(m.sum() for m in masks) / sum(m.numel() for m in masks)
    free = [1 - mp for mp in mask_pre]
    den = sum(f.sum() for f in free)
    # Every unit already claimed: nothing new can be claimed, so there is nothing to penalise.
    if float(den) == 0:
        return masks[0].sum() * 0.0
    return lam * sum((m * f).sum() for m, f in zip(masks, free)) / den


def frozen_entries(mask_out: torch.Tensor, mask_in: torch.Tensor | None) -> torch.Tensor:
    """Boolean [out, in] (or [out] for a bias): entries whose output and input units are both
    claimed by earlier tasks — HAT's 1 − min(m_out, m_in) is 0 exactly there."""
    out = mask_out > 0.5
    if mask_in is None:
        return out
    return out[:, None] & (mask_in > 0.5)[None, :]


# -- network pieces ----------------------------------------------------------------------
class GatedClassAttention(nn.Module):
    """One class-attention block: the class token attends to itself and the patch tokens,
    then an MLP updates it; the patch tokens are not updated. Masks ``m0`` [D] and ``m2`` [H]
    gate the channels and hidden units as in the official GCAB (None: no gating)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def gated_linears(self) -> dict[str, tuple[nn.Linear, str, str | None]]:
        """name → (layer, mask of its outputs, mask of its inputs): which mask guards which weight."""
        return {"q": (self.q, "m0", "m0"), "k": (self.k, "m0", "m0"), "v": (self.v, "m0", "m0"),
                "proj": (self.proj, "m0", "m0"), "fc1": (self.fc1, "m2", "m0"), "fc2": (self.fc2, "m0", "m2")}

    def forward(self, cls: torch.Tensor, x: torch.Tensor, m0: torch.Tensor | None = None,
                m2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cls [B, 1, D], patch tokens x [B, N, D] → (new cls [B, 1, D], attention [B, h, 1, 1+N])."""
        B, N1, D = cls.shape[0], x.shape[1] + 1, cls.shape[-1]
        g0 = m0 if m0 is not None else torch.ones(D, device=cls.device, dtype=cls.dtype)
        z = self.norm1(torch.cat([cls, x], dim=1)) * g0
        hd = D // self.heads
        q = (self.q(z[:, :1]) * g0).reshape(B, 1, self.heads, hd).transpose(1, 2)
        k = (self.k(z) * g0).reshape(B, N1, self.heads, hd).transpose(1, 2)
        v = self.v(z).reshape(B, N1, self.heads, hd).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(B, 1, D) * g0
        cls = cls + self.proj(o) * g0
        h = F.gelu(self.fc1(self.norm2(cls) * g0))
        if m2 is not None:
            h = h * m2
        return cls + self.fc2(h) * g0, attn


class Projector(nn.Sequential):
    """P_t: per-token Linear → LayerNorm → ReLU → Linear (the official 1×1 convolutions)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, dim))


def cascade(feats: torch.Tensor, projectors: Sequence[nn.Module], frm: int, to: int) -> torch.Tensor:
    """Map task ``frm``'s features to task ``to``'s space: P_{to+1}(…P_frm(feats)).
    ``projectors[k]`` maps task k's space to task k − 1's; frm == to is the identity."""
    if not 0 <= to <= frm < len(projectors) or (frm > to and frm < 1):
        raise ValueError(f"cannot cascade from task {frm} to task {to} with {len(projectors)} projector slots")
    for k in range(frm, to, -1):
        feats = projectors[k](feats)
    return feats


class GatedCAViT(nn.Module):
    """SAB backbone (timm blocks) + one class-attention block run once per task token.

    ``forward(x)`` → logits over every class of the stream (columns of tasks not reached yet
    are 0: the incremental loop only reads the seen ones). The buffer ``task`` is the task being
    trained (or the last one trained); ``mask_pre0``/``mask_pre2`` are the union of the
    binary masks of the finished tasks.
    """

    def __init__(self, task_sizes: Sequence[int], image_size: int = 32, patch_size: int = 4, dim: int = 384,
                 depth: int = 5, heads: int = 12, mlp_ratio: float = 4.0, gated: bool = True,
                 fdc: bool = True, smax: float = 800.0, thres_cosh: float = 50.0) -> None:
        super().__init__()
        if not task_sizes or any(n < 1 for n in task_sizes):
            raise ValueError(f"every task needs ≥ 1 class, got {list(task_sizes)}")
        self.task_sizes = list(task_sizes)
        self.gated, self.fdc = gated, fdc
        self.smax, self.thres_cosh = float(smax), float(thres_cosh)
        self.s = float(smax)  # set by the learner while training; evaluation is binary anyway
        T, hidden = len(task_sizes), int(dim * mlp_ratio)
        self.patch_embed = PatchEmbed(img_size=image_size, patch_size=patch_size, in_chans=3, embed_dim=dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.sab = nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.tab = GatedClassAttention(dim, heads, mlp_ratio)
        self.tokens = nn.ParameterList([nn.Parameter(trunc_normal_(torch.zeros(1, 1, dim), std=0.02))
                                        for _ in range(T)])
        self.heads = nn.ModuleList([nn.Linear(dim, n) for n in task_sizes])
        # nn.Embedding's N(0, 1) initialisation, as in the official code.
        self.e0 = nn.Parameter(torch.randn(T, dim))
        self.e2 = nn.Parameter(torch.randn(T, hidden))
        self.projectors = nn.ModuleList([nn.Identity()] + [Projector(dim) for _ in range(T - 1)]) if fdc else None
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self.register_buffer("mask_pre0", torch.zeros(dim))
        self.register_buffer("mask_pre2", torch.zeros(hidden))

    @property
    def num_classes(self) -> int:
        return sum(self.task_sizes)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] → patch tokens [B, N, D] (the SAB output the TAB reads)."""
        z = self.patch_embed(x) + self.pos_embed
        for blk in self.sab:
            z = blk(z)
        return z

    def masks(self, c: int, soft: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Task c's (m0, m2): soft σ(s·e) with HAT's gradient compensation, or binary."""
        if not self.gated:
            return None, None
        e0, e2 = self.e0[c], self.e2[c]
        if not soft:
            return hat_mask(e0, self.s, True), hat_mask(e2, self.s, True)
        s = self.s
        e0 = with_scaled_grad(e0, compensation(e0.detach(), s, self.smax, self.thres_cosh))
        e2 = with_scaled_grad(e2, compensation(e2.detach(), s, self.smax, self.thres_cosh))
        return hat_mask(e0, s, False), hat_mask(e2, s, False)

    def classify(self, feats: torch.Tensor, compensate: bool | None = None
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Patch tokens → (logits [B, num_classes], the current task's masks).

        Every task c ≤ ``task`` runs the TAB with its token and mask. In training the current
        task's mask is soft; all others (and all in eval mode) are binary. ``compensate``
        (default: in eval mode, with FDC) feeds old task c the cascaded features."""
        t = int(self.task)
        compensate = (not self.training) and self.fdc if compensate is None else compensate
        B = feats.shape[0]
        logits = feats.new_zeros(B, self.num_classes)
        cur: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        start, mapped = 0, feats
        for c in range(t, -1, -1):  # newest first, so the cascade is built one projector at a time
            if compensate and c < t:
                mapped = self.projectors[c + 1](mapped)
            soft = self.training and c == t
            m0, m2 = self.masks(c, soft)
            if c == t:
                cur = (m0, m2)
            cls, _ = self.tab(self.tokens[c].expand(B, -1, -1), mapped if compensate else feats, m0, m2)
            start = sum(self.task_sizes[:c])
            logits[:, start:start + self.task_sizes[c]] = self.heads[c](cls[:, 0])
        return logits, cur

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.backbone(x))[0]


# -- learners ----------------------------------------------------------------------------
def relative_drift(ref: torch.Tensor, other: torch.Tensor) -> float:
    """‖ref − other‖_F / ‖ref‖_F."""
    return float(torch.linalg.vector_norm(ref - other) / torch.linalg.vector_norm(ref).clamp_min(1e-12))


def classification_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """BCE of the sigmoid of every seen class's logit against the one-hot target (mean over
    batch × classes, as DyTox/GCAB), or softmax cross-entropy over the seen classes."""
    if kind == "ce":
        return F.cross_entropy(logits, y)
    return F.binary_cross_entropy_with_logits(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))


class TokenFineTune(Learner):
    """Fine-tuning of the per-task-token ViT: no gating, no drift compensation. The old
    tasks' tokens and heads are frozen (the official DyTox/GCAB ``freeze_task``); everything
    else trains on the new task's data with BCE over the seen classes."""

    name = "finetune"
    gated = False
    fdc = False

    def __init__(self, cfg: GCABConfig, stream: Stream) -> None:
        if not isinstance(cfg, GCABConfig):
            raise TypeError("the GCAB learners need a GCABConfig (see chapter_config)")
        if cfg.memory:
            raise ValueError(f"GCAB is exemplar-free: memory must be 0, not {cfg.memory}")
        super().__init__(cfg)
        self.uses_old_model = self.fdc
        self.stream = stream
        self.model: GatedCAViT | None = None
        self.probe_feats: list[torch.Tensor] = []   # SAB features of the probe images after each task
        self._frozen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._probe: torch.Tensor | None = None

    # -- model and task set-up
    def build(self, num_classes: int) -> GatedCAViT:
        c: GCABConfig = self.cfg  # type: ignore[assignment]
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
            loss = classification_loss(logits, y, c.loss)
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


class GatedOnly(TokenFineTune):
    """HAT gating of the class-attention block, no drift compensation."""

    name = "gated"
    gated = True
    fdc = False


class GCAB(TokenFineTune):
    """Gated class-attention + cascaded feature-drift compensation (the paper's method)."""

    name = "gcab"
    gated = True
    fdc = True


LEARNERS: dict[str, type[TokenFineTune]] = {"finetune": TokenFineTune, "gated": GatedOnly, "gcab": GCAB}


def chapter_learners(stream: Stream) -> dict[str, Any]:
    """label → factory(cfg) for ``chapter.run_learners``: finetune, gated, gcab."""
    return {label: (lambda cfg, cls=cls: cls(cfg, stream)) for label, cls in LEARNERS.items()}


def log_chapter_metrics(run, results: list[dict[str, Any]]) -> None:
    """Per seed: every learner's AIA/last/forgetting…, and the claim metrics (paired by seed)."""
    chapter.log_seed_metrics(run, results)
    chapter.log_gain(run, results, "gcab", "finetune", "aia")
    chapter.log_gain(run, results, "gcab", "finetune", "last")
    chapter.log_gain(run, results, "finetune", "gcab", "forgetting")
    chapter.log_gain(run, results, "gcab", "gated", "aia")
    chapter.log_gain(run, results, "gated", "finetune", "aia")


def describe(cfg: GCABConfig) -> str:
    """One line: the network and the schedule."""
    ep = f"{cfg.epochs_first or cfg.epochs} epochs for task 1, {cfg.epochs} per later task"
    return (f"ViT: {cfg.depth} self-attention blocks + 1 gated class-attention block, dim {cfg.dim}, "
            f"{cfg.heads} heads, MLP ×{cfg.mlp_ratio:g}, patch {cfg.patch_size} on {cfg.image_size} px · {ep}, "
            f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule} (warm-up {cfg.warmup_epochs:g} ep), "
            f"wd {cfg.weight_decay:g} · s_max {cfg.smax:g}, λ_gcab {cfg.lambda_gcab:g}, λ_pfr {cfg.lambda_pfr:g} · "
            f"memory 0")


# -- figures and tables ------------------------------------------------------------------
def drift_table(results: list[dict[str, Any]], label: str) -> dict[str, np.ndarray]:
    """Mean over seeds of the relative drift D[t, c] of task c's features after task t
    (raw and, for FDC, through the cascade); NaN where c ≥ t."""
    runs = [r for r in results if r["method"] == label]
    T = len(runs[0]["extras"])
    out = {}
    for kind in ("raw", "compensated"):
        mats = []
        for r in runs:
            D = np.full((T, T), np.nan)
            for t, ex in enumerate(r["extras"]):
                for row in ex.get("drift", []):
                    if kind in row:
                        D[t, row["task"]] = row[kind]
            mats.append(D)
        M = np.array(mats)
        if np.isfinite(M).any():
            with warnings.catch_warnings():  # the upper triangle is all-NaN by definition
                warnings.simplefilter("ignore", RuntimeWarning)
                out[kind] = np.nanmean(M, axis=0)
    return out


def plot_drift_and_masks(results: list[dict[str, Any]], setting: str, labels: Sequence[str] = LABELS):
    """Left: feature drift of the oldest task (task 1) after each later task, relative
    ‖F_1 − F_t‖/‖F_1‖ on fixed test images — raw for every learner, and through GCAB's
    projector cascade. Right: fraction of the gated block's units each task claims (all and
    new), per learner with gating."""
    fig, (ax, bx) = new_figure(ncols=2, width=10.0, height=3.8)
    data: dict[str, Any] = {"drift_task1": {}, "mask_usage": {}}
    styles = {"finetune": "C0", "gated": "C1", "gcab": "C2"}
    for label in labels:
        if not any(r["method"] == label for r in results):
            continue
        D = drift_table(results, label)
        T = D["raw"].shape[0]
        xs = np.arange(2, T + 1)
        ax.plot(xs, D["raw"][1:, 0], "-o", color=styles.get(label), label=f"{label}: raw")
        data["drift_task1"][f"{label}_raw"] = D["raw"][1:, 0]
        if "compensated" in D:
            ax.plot(xs, D["compensated"][1:, 0], "--s", color=styles.get(label), label=f"{label}: through cascade")
            data["drift_task1"][f"{label}_compensated"] = D["compensated"][1:, 0]
    T = max((len(r["extras"]) for r in results), default=1)
    ax.set_xticks(range(2, T + 1))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("after training task t")
    ax.set_ylabel("‖F₁ − F_t‖ / ‖F₁‖ (task-1 features)")
    ax.set_title("Feature drift of task 1, mean over seeds")
    ax.legend(fontsize=8)
    width, k = 0.38, 0
    for label in labels:
        runs = [r for r in results if r["method"] == label and r["extras"] and "mask_usage" in r["extras"][0]]
        if not runs:
            continue
        T = len(runs[0]["extras"])
        use = np.mean([[ex["mask_usage"]["m2"] for ex in r["extras"]] for r in runs], axis=0)
        new = np.mean([[ex["mask_usage"]["m2_new"] for ex in r["extras"]] for r in runs], axis=0)
        xs = np.arange(1, T + 1) + (k - 0.5) * width
        bx.bar(xs, use, width, color=styles.get(label), alpha=0.35, label=f"{label}: units used")
        bx.bar(xs, new, width, color=styles.get(label), label=f"{label}: newly claimed")
        data["mask_usage"][label] = {"used": use, "new": new}
        k += 1
    bx.set_xticks(range(1, T + 1))
    bx.set_ylim(0, 1.05)
    bx.set_xlabel("task t")
    bx.set_ylabel("fraction of the MLP's hidden units")
    bx.set_title("Gate usage of the class-attention MLP (m2), mean over seeds")
    bx.legend(fontsize=8, ncol=2, loc="upper right")
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting})


def mask_markdown(results: list[dict[str, Any]], label: str = "gcab") -> str:
    """Per task, mean over seeds: the fraction of channels (m0) and hidden units (m2) the
    task's binary mask uses, how many of them were new, and the claimed total after it."""
    runs = [r for r in results if r["method"] == label]
    if not runs or "mask_usage" not in runs[0]["extras"][0]:
        return ""
    T = len(runs[0]["extras"])
    lines = [f"| task ({label}) | m0 used | m0 new | m0 claimed | m2 used | m2 new | m2 claimed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in range(T):
        v = {k: np.mean([r["extras"][t]["mask_usage"][k] for r in runs])
             for k in ("m0", "m0_new", "m0_claimed", "m2", "m2_new", "m2_claimed")}
        lines.append(f"| {t + 1} | {v['m0']:.2f} | {v['m0_new']:.2f} | {v['m0_claimed']:.2f} | {v['m2']:.2f} "
                     f"| {v['m2_new']:.2f} | {v['m2_claimed']:.2f} |")
    return "\n".join(lines)
