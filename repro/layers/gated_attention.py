"""Gated class-attention (chapter 04, GCAB; Cotogni et al., 2022): HAT's task masks on one
DyTox-style class-attention block, the feature-drift projectors and their cascade, and the
per-task-token ViT that puts them together (``GatedCAViT``).

HAT (Serra et al., 2018): task t's masks are ``m = σ(s·e)`` of its embeddings ``e``; while t
trains, s is annealed from 1/s_max to s_max within every epoch, the embeddings' gradient gets
the compensation factor, and the masks of earlier tasks (and every mask at evaluation) are
binary. Shapes: images ``[B, 3, H, W]``; patch tokens ``[B, N, D]``; class token ``[B, 1, D]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block


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
