"""Chapter 30 (TCA): token condensation as training-free test-time adaptation, on a proxy ViT.

The paper adapts CLIP online, one test image at a time and without a gradient step: at a few
layers it condenses the tokens (:func:`repro.layers.token_condensation.condense`), guided by
*domain anchors* (per-class mean CLS tokens of a reservoir of confident past test images), and
it corrects the logits by the affinity of the image's per-layer CLS tokens to the reservoir.
CLIP weights are not available here, so the chapter trains a small ViT on clean CIFAR-100 with
a cosine classifier, ``logits = s·cos(feature, w_c)``: the normalised class vectors ``w_c``
stand in for CLIP's text embeddings (a stated deviation). What this module provides:

* :class:`TokenReducingViT`: runs a timm ViT block by block with explicit attention (so the
  weights are visible and counted as FLOPs), applies a reducer (``none | evit | tome | tca``)
  after the attention sub-block of the chosen blocks (0-based indices), optionally prepends a
  domain anchor to those attention calls, and returns logits, feature and per-block CLS tokens;
* :class:`Reservoir` and :func:`cache_logits`: the domain-aware token reservoir and the logit
  correction;
* :func:`evaluate_stream`: one online pass over a stream for one method;
* :func:`flops_per_image` (``torch.utils.flop_counter``);
* :func:`source_model`: the source ViT, trained once per setting and stored as an artifact
  (``ArtifactStore("tca_source")``, keyed by the training spec and the data checksum);
* the chapter's arms and sweep jobs (:func:`arm_table`, :func:`jobs`).

Methods (the chapter's arms): ``source`` (no reduction, no cache), ``cache`` (TDA-like: the
reservoir's logit correction only), ``evit`` / ``tome`` (reduction only) and ``tca``
(condensation + anchors + correction).
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...artifacts import ArtifactStore
from ...data import TensorLoader
from ...errors import ParameterError
from ...io import save_torch
from ...layers.token_condensation import (check_keep, cls_attention, condense, condense_owner,
                                          evit_prune, tome_merge)
from ...models.vit import CifarViT
from ...train import WORK, TrainConfig, dry_run, evaluate, fit

METHODS: tuple[str, ...] = ("source", "cache", "evit", "tome", "tca")
REDUCERS: tuple[str, ...] = ("none", "evit", "tome", "tca")
_REDUCER = {"source": "none", "cache": "none", "evit": "evit", "tome": "tome", "tca": "tca"}
_USES_CACHE = {"cache", "tca"}
STORE = ArtifactStore("tca_source")


@dataclass(frozen=True)
class TCAConfig:
    """The proxy ViT, how it is trained, and the test-time method's settings.

    layers: 0-based blocks whose attention sub-block is followed by a reduction; capacity:
    reservoir entries per class (M); cache_lambda / cache_beta: λ and β of the correction;
    layer_scale: temperature of the layer weights ∝ exp(linspace(0, 1, depth)/scale);
    stream_batch: images classified per reservoir state (1 = the paper's online loop).
    """

    embed_dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    layers: tuple[int, ...] = (3, 6, 9)
    logit_scale: float = 16.0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    train_seed: int = 0
    n_merge: int = 4
    capacity: int = 3
    cache_lambda: float = 3.0
    cache_beta: float = 5.0
    layer_scale: float = 0.1
    stream_batch: int = 64

    def __post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by heads ({self.heads})")
        bad = [i for i in self.layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"layers {bad} are not blocks of a depth-{self.depth} ViT (0-based indices)")
        if self.capacity < 1 or self.n_merge < 1 or self.stream_batch < 1:
            raise ValueError("capacity, n_merge and stream_batch must be ≥ 1")
        if self.layer_scale <= 0 or self.logit_scale <= 0:
            raise ValueError("layer_scale and logit_scale must be > 0")


# -- the proxy model -------------------------------------------------------------------------
class CosineHead(nn.Module):
    """``logits = scale · cos(feature, w_c)``: the stand-in for CLIP's image–text logits."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.02)
        self.scale = float(scale)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(feature, dim=-1) @ F.normalize(self.weight, dim=-1).t()


def build_vit(cfg: TCAConfig, num_classes: int, image_size: int) -> CifarViT:
    """The proxy ViT (patch 4, class token) with a :class:`CosineHead`."""
    vit = CifarViT(img_size=image_size, patch_size=4, num_classes=num_classes, embed_dim=cfg.embed_dim,
                   depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, class_token=True,
                   global_pool="token")
    vit.head = CosineHead(cfg.embed_dim, num_classes, cfg.logit_scale)
    return vit


@dataclass
class ViTOutput:
    """logits [B, C]; feature [B, D] (pre-logits); cls [B, depth, D] (CLS token after each
    block); fates: block → [B, P0] fate of every original patch after that block's
    condensation (0 own token, 1 in a merged token, 2 fused; cumulative), when tracked."""

    logits: torch.Tensor
    feature: torch.Tensor
    cls: torch.Tensor
    fates: dict[int, torch.Tensor] = field(default_factory=dict)


def explicit_attention(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm ``Attention`` on normed tokens ``x`` [B, N, D], with the softmax written out.

    Returns (output [B, N, D], attention [B, H, N, N], keys averaged over heads [B, N, d]).
    The fused SDPA kernel would hide the weights and its FLOPs, so it is never called.
    """
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    w = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (attn.attn_drop(w) @ v).transpose(1, 2).reshape(b, n, -1)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), w, k.mean(dim=1)


def pick_anchor(anchors: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Per image, the anchor ``anchors`` [C, D] with the highest cosine to ``cls`` [B, D]."""
    sim = F.normalize(cls, dim=-1) @ F.normalize(anchors.to(cls), dim=-1).t()
    return anchors.to(cls)[sim.argmax(dim=1)]


class TokenReducingViT(nn.Module):
    """A trained :class:`CifarViT` run block by block with token reduction at ``layers``.

    Block ``i`` in ``layers`` runs ``x ← x + attn(norm1(x))``, then reduces the tokens
    (``reducer``), then ``x ← x + mlp(norm2(x))``. For ``tca`` with ``anchors`` ([C, depth, D],
    the reservoir's per-class mean CLS token after each block), the anchor whose block-``i−1``
    CLS token is closest (cosine) to the current CLS token is prepended for block ``i``'s
    attention call only: the tokens attend to it, then its row and column are dropped.
    """

    def __init__(self, vit: CifarViT, layers: Sequence[int]) -> None:
        super().__init__()
        self.vit = vit
        self.layers = tuple(int(i) for i in layers)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_classes(self) -> int:
        return int(self.vit.head.weight.shape[0])

    def forward(self, x: torch.Tensor, reducer: str = "none", keep: float = 1.0, n_merge: int = 4,
                anchors: torch.Tensor | None = None, track: bool = False) -> ViTOutput:
        """x: normalised images [B, 3, S, S] → :class:`ViTOutput`."""
        if reducer not in REDUCERS:
            raise ParameterError(f"reducer must be one of {', '.join(REDUCERS)}, not {reducer!r}")
        keep = check_keep(keep)
        vit = self.vit
        t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        p0 = t.shape[1] - 1
        owner = torch.arange(p0, device=t.device).expand(t.shape[0], -1)
        fate = torch.zeros_like(owner)
        fates: dict[int, torch.Tensor] = {}
        cls_tokens = []
        for i, blk in enumerate(vit.blocks):
            reduce_here = reducer != "none" and i in self.layers and keep < 1.0
            anchor = None
            if reduce_here and reducer == "tca" and anchors is not None and i > 0:
                anchor = pick_anchor(anchors[:, i - 1], t[:, 0])
            seq = t if anchor is None else torch.cat([anchor[:, None], t], dim=1)
            out, w, keys = explicit_attention(blk.attn, blk.norm1(seq))
            if anchor is not None:
                out, w, keys = out[:, 1:], w[:, :, 1:, 1:], keys[:, 1:]
            t = t + blk.drop_path1(blk.ls1(out))
            if reduce_here:
                if reducer == "evit":
                    t = evit_prune(t, cls_attention(w), keep)
                elif reducer == "tome":
                    t = tome_merge(t, keep, keys)
                else:
                    n_before = t.shape[1] - 1
                    t, info = condense(t, cls_attention(w), keep, n_merge)
                    if track:
                        new, f = condense_owner(info, n_before)
                        fate = torch.maximum(fate, f.gather(1, owner))
                        owner = new.gather(1, owner)
                        fates[i] = fate.clone()
            t = t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))
            cls_tokens.append(t[:, 0])
        feature = vit.forward_head(vit.norm(t), pre_logits=True)
        return ViTOutput(vit.head(feature), feature, torch.stack(cls_tokens, dim=1), fates)


# -- reservoir and logit correction ----------------------------------------------------------
@dataclass
class Entry:
    """One stored test image: final feature [D], prediction entropy, CLS tokens [depth, D]."""

    feature: torch.Tensor
    entropy: float
    cls: torch.Tensor


def _mean_layer_cosine(cls: torch.Tensor) -> torch.Tensor:
    """[E, L, D] → [E, E]: cosine of two entries' CLS tokens, averaged over the layers."""
    n = F.normalize(cls.float(), dim=-1)
    return torch.einsum("ald,bld->ab", n, n) / cls.shape[1]


class Reservoir:
    """Domain-aware token reservoir: up to ``capacity`` entries per predicted class.

    A full class that receives another entry drops, among its ``capacity + 1`` candidates,
    the one with the largest ``entropy + mean cosine similarity`` of its CLS tokens to the
    other candidates (similarity averaged over layers), keeping confident and diverse
    entries. Anchors exist only once every class holds ≥ 2 entries (the official rule).
    """

    def __init__(self, num_classes: int, capacity: int = 3) -> None:
        if capacity < 1:
            raise ParameterError(f"reservoir capacity must be ≥ 1, not {capacity}")
        self.num_classes = int(num_classes)
        self.capacity = int(capacity)
        self.entries: list[list[Entry]] = [[] for _ in range(self.num_classes)]
        self._stack: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries)

    def add(self, label: int, feature: torch.Tensor, entropy: float, cls: torch.Tensor) -> int | None:
        """Offer an entry to class ``label``; returns the index (among the class's entries
        before the call, or ``capacity`` for the offered one) of the entry dropped, or None."""
        self._stack = None
        bucket = self.entries[int(label)]
        entry = Entry(feature.detach().cpu(), float(entropy), cls.detach().cpu())
        if len(bucket) < self.capacity:
            bucket.append(entry)
            return None
        cands = [*bucket, entry]
        sim = _mean_layer_cosine(torch.stack([c.cls for c in cands]))
        others = (sim.sum(dim=1) - sim.diagonal()) / (len(cands) - 1)
        score = torch.tensor([c.entropy for c in cands]) + others
        drop = int(score.argmax())
        del cands[drop]
        self.entries[int(label)] = cands
        return drop

    @property
    def active(self) -> bool:
        """Whether the anchors are on: every class holds at least 2 entries."""
        return all(len(e) >= 2 for e in self.entries)

    def anchors(self) -> torch.Tensor:
        """Per-class mean CLS token after each block: [C, depth, D] (requires :attr:`active`)."""
        if not self.active:
            raise RuntimeError("anchors exist only once every class holds at least 2 entries")
        return torch.stack([torch.stack([e.cls for e in b]).mean(dim=0) for b in self.entries])

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every entry's CLS tokens [E, depth, D] and class [E]."""
        if self._stack is None:
            cls = [e.cls for b in self.entries for e in b]
            lab = [c for c, b in enumerate(self.entries) for _ in b]
            self._stack = (torch.stack(cls) if cls else torch.zeros(0, 0, 0), torch.tensor(lab, dtype=torch.long))
        return self._stack


def layer_weights(depth: int, scale: float = 0.1) -> torch.Tensor:
    """``softmax(linspace(0, 1, depth) / scale)``: deep layers dominate for small ``scale``."""
    return torch.softmax(torch.linspace(0, 1, depth, dtype=torch.float64) / scale, dim=0).float()


def cache_logits(cls: torch.Tensor, stored_cls: torch.Tensor, stored_labels: torch.Tensor, num_classes: int,
                 weights: torch.Tensor, lam: float = 3.0, beta: float = 5.0) -> torch.Tensor:
    """The logit correction ``λ · Σ_e exp(−β(1 − a_e)) · onehot(class_e)`` → [B, C].

    cls [B, L, D]: the test images' CLS tokens after each block; stored_cls [E, L, D] and
    stored_labels [E]: the reservoir; weights [L]: :func:`layer_weights`. The affinity
    ``a_e = Σ_l w_l cos(cls_l, stored_{e,l})``.
    """
    out = torch.zeros(cls.shape[0], num_classes, dtype=torch.float32, device=cls.device)
    if stored_cls.numel() == 0:
        return out
    q = F.normalize(cls.float(), dim=-1)
    s = F.normalize(stored_cls.to(q), dim=-1)
    aff = torch.einsum("bld,eld,l->be", q, s, weights.to(q))
    onehot = F.one_hot(stored_labels.to(cls.device), num_classes).to(q)
    return lam * torch.exp(-beta * (1.0 - aff)) @ onehot


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


# -- the online stream -----------------------------------------------------------------------
@dataclass
class StreamResult:
    """One online pass: accuracy (%), per-image correctness in stream order, and the stream
    position (number of images seen) at which the anchors switched on (None: never)."""

    acc: float
    correct: np.ndarray
    anchor_on: int | None
    method: str
    keep: float

    def curve(self, points: int = 25) -> tuple[list[int], list[float]]:
        """Cumulative accuracy (%) after ``points`` evenly spaced stream positions."""
        n = len(self.correct)
        pos = sorted({max(1, round(n * (k + 1) / points)) for k in range(points)})
        cum = np.cumsum(self.correct)
        return pos, [float(100.0 * cum[p - 1] / p) for p in pos]


def _normalised_loader(images: torch.Tensor, labels: torch.Tensor, batch: int, device: Any) -> TensorLoader:
    return TensorLoader(images, labels, batch, device, train=False)


@torch.no_grad()
def evaluate_stream(model: TokenReducingViT, images: torch.Tensor, labels: torch.Tensor, method: str,
                    keep: float = 1.0, cfg: TCAConfig | None = None, seed: int = 0, batch: int | None = None,
                    device: Any = "cpu") -> StreamResult:
    """Classify ``images`` (uint8 [N, 3, S, S]) online in an order fixed by ``seed``.

    The reservoir is updated image by image, in stream order, with the model's own (uncorrected)
    prediction, its entropy, feature and CLS tokens. Deviation from the paper's batch size 1:
    the stream is classified ``batch`` images at a time (default ``cfg.stream_batch``), every
    image of a batch seeing the reservoir (cache and anchors) as it was before the batch.
    """
    if method not in METHODS:
        raise ParameterError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    keep = check_keep(keep)
    cfg = cfg or TCAConfig()
    batch = batch or cfg.stream_batch
    model.eval()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(int(seed)))
    loader = _normalised_loader(images[order], labels[order], batch, device)
    reducer = _REDUCER[method]
    cache = method in _USES_CACHE
    res = Reservoir(model.num_classes, cfg.capacity)
    weights = layer_weights(model.depth, cfg.layer_scale)
    correct: list[np.ndarray] = []
    anchor_on: int | None = None
    seen = 0
    for x, y in loader:
        anchors = res.anchors().to(x.device) if method == "tca" and res.active else None
        out = model(x, reducer, keep if reducer != "none" else 1.0, cfg.n_merge, anchors)
        logits = out.logits.float()
        if cache and len(res):
            stored, lab = res.stacked()
            logits = logits + cache_logits(out.cls, stored.to(x.device), lab, model.num_classes, weights,
                                           cfg.cache_lambda, cfg.cache_beta)
        correct.append((logits.argmax(1) == y).cpu().numpy())
        WORK["eval_batches"] += 1
        if cache:
            own = out.logits.float()
            pred, ent = own.argmax(1).cpu(), entropy(own).cpu()
            feat, cls = out.feature.float().cpu(), out.cls.float().cpu()
            for j in range(len(y)):
                res.add(int(pred[j]), feat[j], float(ent[j]), cls[j])
                if anchor_on is None and method == "tca" and res.active:
                    anchor_on = seen + j + 1
        seen += len(y)
        if dry_run():
            break
    c = np.concatenate(correct).astype(np.int8)
    return StreamResult(float(100.0 * c.mean()), c, anchor_on, method, keep)


# -- FLOPs -----------------------------------------------------------------------------------
@torch.no_grad()
def flops_per_image(model: TokenReducingViT, method: str, keep: float = 1.0, image_size: int = 32,
                    cfg: TCAConfig | None = None) -> int:
    """FLOPs of classifying one image with ``method`` at ``keep``
    (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, attention's
    two matmuls included; norms, softmax and the k-center search are not counted).

    ``tca`` is counted with anchors on (one extra token in the condensation blocks'
    attention) and, like ``cache``, with the correction against a full reservoir.
    """
    from torch.utils.flop_counter import FlopCounterMode

    cfg = cfg or TCAConfig()
    model.eval()
    dev = next(model.parameters()).device
    x = torch.zeros(1, 3, image_size, image_size, device=dev)
    c, d = model.num_classes, model.vit.embed_dim
    anchors = torch.randn(c, model.depth, d, device=dev) if method == "tca" else None
    reducer = _REDUCER[method]
    with FlopCounterMode(display=False) as counter:
        out = model(x, reducer, keep if reducer != "none" else 1.0, cfg.n_merge, anchors)
        if method in _USES_CACHE:
            e = c * cfg.capacity
            cache_logits(out.cls, torch.randn(e, model.depth, d, device=dev), torch.arange(e, device=dev) % c, c,
                         layer_weights(model.depth, cfg.layer_scale).to(dev), cfg.cache_lambda, cfg.cache_beta)
    return int(counter.get_total_flops())


# -- the source model (an artifact) ----------------------------------------------------------
def source_spec(cfg: TCAConfig, data: Any) -> dict[str, Any]:
    """What defines the source model: architecture, recipe, training seed and data subset."""
    keys = ("embed_dim", "depth", "heads", "mlp_ratio", "logit_scale", "epochs", "batch_size", "lr",
            "weight_decay", "warmup_epochs", "train_seed")
    return {"arch": {k: getattr(cfg, k) for k in keys}, "classes": list(data.classes),
            "per_class": data.info.get("per_class"), "train_size": len(data.y_train), "image_size": data.image_size}


def train_config(cfg: TCAConfig) -> TrainConfig:
    """AdamW with warm-up and cosine decay, label smoothing 0.1: a usual from-scratch ViT recipe."""
    return TrainConfig(epochs=cfg.epochs, optimizer="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                       warmup_epochs=cfg.warmup_epochs, schedule="cosine", label_smoothing=0.1,
                       grad_clip=1.0, desc="tca source ViT")


@dataclass
class Source:
    """The trained source model (eval mode), its artifact metadata and whether it was built now."""

    model: TokenReducingViT
    info: dict[str, Any]
    built_now: bool


def source_model(cfg: TCAConfig, data: Any, device: Any = "cpu") -> Source:
    """The source ViT for ``cfg`` on ``data`` (a ``repro.data.Dataset``): loaded from the
    artifact store, or trained now and stored. The build folder keeps ``fit``'s checkpoints,
    so an interrupted training resumes; in a dry run nothing is stored."""
    from ...run import seed_everything

    device = torch.device(device)
    spec = source_spec(cfg, data)
    key = STORE.key(spec, data.checksum)

    def fresh_model() -> CifarViT:
        return build_vit(cfg, data.num_classes, data.image_size)

    def build(work: Path) -> tuple[CifarViT, dict[str, Any]]:
        seed_everything(cfg.train_seed)
        vit = fresh_model()
        train = data.loader("train", cfg.batch_size, device, seed=cfg.train_seed)
        test = data.loader("test", 512, device)
        t0 = time.time()
        res = fit(vit, train, test, train_config(cfg), checkpoint_dir=work / "ckpt")
        ev = evaluate(vit, test)
        save_torch(work / "weights.pt", {k: v.detach().cpu() for k, v in vit.state_dict().items()})
        shutil.rmtree(work / "ckpt", ignore_errors=True)
        info = {"spec": spec, "data_checksum": data.checksum, "test_acc": ev["acc"], "test_loss": ev["loss"],
                "train_seconds": res.train_seconds, "train_images": res.train_images,
                "wall_seconds": time.time() - t0, "params": sum(p.numel() for p in vit.parameters()),
                "history": res.history, "dry_run": dry_run()}
        return vit, info

    def load(folder: Path, info: dict[str, Any]) -> CifarViT:
        vit = fresh_model().to(device)
        vit.load_state_dict(torch.load(folder / "weights.pt", map_location=device, weights_only=True))
        return vit

    label = f"vit-d{cfg.embed_dim}-L{cfg.depth}-c{data.num_classes}-{data.image_size}px"
    art = STORE.get(label, key, build, load)
    vit = art.value.to(device).float().to(memory_format=torch.contiguous_format).eval()
    return Source(TokenReducingViT(vit, cfg.layers).eval(), art.info, art.built_now)


# -- the chapter: arms, streams, jobs --------------------------------------------------------
def r_label(keep: float) -> str:
    """``R90`` for keep 0.9 (arm-label suffix)."""
    return f"R{round(100 * keep)}"


def arm_table(keep: float, keeps: Sequence[float]) -> dict[str, tuple[str, float]]:
    """Arm label → (method, keep): ``source``, ``cache``, then ``evit``/``tome``/``tca`` at the
    judged ``keep`` and ``<method>_R70``-style arms at every other rate of ``keeps``."""
    check_keep(keep)
    arms: dict[str, tuple[str, float]] = {"source": ("source", 1.0), "cache": ("cache", 1.0)}
    for r in [keep, *[float(k) for k in keeps if abs(float(k) - keep) > 1e-9]]:
        check_keep(r)
        for m in ("evit", "tome", "tca"):
            arms[m if r == keep else f"{m}_{r_label(r)}"] = (m, r)
    return arms


def make_streams(x_test: torch.Tensor, y_test: torch.Tensor, corruptions: Sequence[str], severity: int,
                 stream_size: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per corruption: ``stream_size`` test images drawn by ``seed`` (0: all), corrupted with
    a noise seed derived from ``seed``. Every corruption is its own stream (fresh reservoir)."""
    from ...data.corruptions import corrupt

    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(y_test), generator=gen)
    if stream_size:
        idx = idx[:stream_size]
    x, y = x_test[idx], y_test[idx]
    return {name: (corrupt(x, name, severity, seed=1000 * int(seed) + j), y) for j, name in enumerate(corruptions)}


class StreamCache:
    """Holds one seed's corrupted streams at a time (the sweep runs every arm of a seed in turn)."""

    def __init__(self, make: Callable[[int], dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.make = make
        self.seed: int | None = None
        self.streams: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.seed != seed:
            self.streams, self.seed = self.make(seed), seed
        return self.streams


def jobs(arms: dict[str, tuple[str, float]], source: Source, cfg: TCAConfig, streams: StreamCache,
         image_size: int, device: Any) -> dict[str, Callable[[int, Path | None], Any]]:
    """Sweep jobs: per arm, one online pass per corruption stream of the seed.

    Metrics: ``acc`` (mean over corruptions), ``acc_<corruption>``, ``gflops`` (per image),
    ``anchor_on`` (mean stream position where anchors switched on; −1 if never, tca only).
    """
    from ...sweep import Job

    flops: dict[tuple[str, float], float] = {}

    def make(method: str, keep: float) -> Callable[[int, Path | None], Job]:
        def job(seed: int, checkpoint_dir: Path | None) -> Job:
            if (method, keep) not in flops:
                flops[(method, keep)] = flops_per_image(source.model, method, keep, image_size, cfg) / 1e9
            out: dict[str, StreamResult] = {}
            for name, (x, y) in streams.get(seed).items():
                out[name] = evaluate_stream(source.model, x, y, method, keep, cfg, seed=seed, device=device)
            metrics = {"acc": float(np.mean([r.acc for r in out.values()])),
                       **{f"acc_{n}": r.acc for n, r in out.items()}, "gflops": flops[(method, keep)]}
            if method == "tca":
                on = [r.anchor_on for r in out.values()]
                metrics["anchor_on"] = float(np.mean([-1 if a is None else a for a in on]))
            n = sum(len(r.correct) for r in out.values())
            extra = {"method": method, "keep": keep,
                     "curves": {k: r.curve() for k, r in out.items()},
                     "anchor_on": {k: r.anchor_on for k, r in out.items()}}
            return Job(metrics=metrics, n_test=n, extra=extra)
        return job

    return {label: make(m, k) for label, (m, k) in arms.items()}


@torch.no_grad()
def condensation_fates(model: TokenReducingViT, images: torch.Tensor, keep: float, n_merge: int = 4,
                       device: Any = "cpu") -> dict[int, np.ndarray]:
    """TCA's fate of every patch of ``images`` (uint8 [n, 3, S, S]) after each condensation
    block (no anchors): block → int array [n, P] (0 own token, 1 merged, 2 fused; cumulative)."""
    model.eval()
    x, _ = next(iter(_normalised_loader(images, torch.zeros(len(images), dtype=torch.long), len(images), device)))
    out = model(x, "tca", keep, n_merge, None, track=True)
    return {i: f.cpu().numpy() for i, f in out.fates.items()}


def make_config(params: dict[str, Any]) -> TCAConfig:
    """:class:`TCAConfig` from a chapter's resolved parameters."""
    from ...arms import make_config as _make

    return _make(TCAConfig, params)


__all__ = ["METHODS", "TCAConfig", "CosineHead", "build_vit", "ViTOutput", "explicit_attention", "pick_anchor",
           "TokenReducingViT", "Entry", "Reservoir", "layer_weights", "cache_logits", "entropy", "StreamResult",
           "evaluate_stream", "flops_per_image", "source_spec", "train_config", "Source", "source_model",
           "r_label", "arm_table", "make_streams", "StreamCache", "jobs", "condensation_fates", "make_config"]
