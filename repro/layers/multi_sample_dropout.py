"""Multi-sample dropout (Inoue 2019): several dropout masks per image, one shared head.

The backbone runs **once** per image; its pooled features are copied M times, each copy
gets its own dropout mask, the *same* head (shared weights) scores every copy, and the
training loss is the average of the M cross-entropies. At evaluation dropout is off and a
single ordinary pass is made, so the network used at test time is unchanged.

Works with any ``repro.models`` network, whose forward is
``head(dropout(features(x)))`` (``features: [B, 3, H, W] → [B, D]``). In the two-FC heads
(``cnn3_mlp``, ``vgg*_bn``: ``head = Linear → ReLU → Dropout → Linear``) the head's own
inner dropout is sampled independently for every copy too, because each copy is a separate
row of the stacked batch: everything after the first dropout is duplicated with shared
weights, as the paper describes for its VGG-style head.

Efficiency: the M copies are stacked along the batch axis, ``[M·B, D]``, so the head runs
once, as one larger matrix product, instead of M times in a Python loop. This is only exact
for heads without batch statistics (no BatchNorm after the dropout) — true of every head in
``repro.models``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("loss_avg", "logit_avg")


def multi_sample_logits(model: nn.Module, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Logits of M dropout samples: ``[M, B, K]``.

    x: ``[B, 3, H, W]``. Copy m occupies rows ``m·B … m·B+B−1`` of the stacked batch, so the
    masks are drawn in the order (copy, image, feature); with M = 1 this draws exactly the
    mask an ordinary forward would. In eval mode (dropout off) all copies would be equal, so
    one ordinary pass is made and ``[1, B, K]`` returned whatever M is.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    feats = model.features(x)  # [B, D]: the expensive part, computed once
    if num_samples == 1 or not model.training:
        return model.head(model.dropout(feats)).unsqueeze(0)
    b = feats.shape[0]
    # repeat (not expand): dropout needs M distinct rows to draw M independent masks
    stacked = feats.repeat(num_samples, 1)  # [M·B, D]
    return model.head(model.dropout(stacked)).view(num_samples, b, -1)


class MultiSampleDropout:
    """The multi-sample dropout objective, as a ``loss_fn(model, x, y) → (loss, logits)``.

    Pass an instance to ``repro.train.fit(..., loss_fn=...)``; the model must expose
    ``features``, ``dropout`` and ``head`` (every ``repro.models`` network does).

    Args:
        num_samples: M, the number of dropout samples per image (1 = ordinary dropout).
        mode: ``"loss_avg"`` (the paper): ``(1/M) Σ_m CE(g(m_m ⊙ f(x)), y)``, the mean of the
            M losses; ``"logit_avg"``: ``CE((1/M) Σ_m g(m_m ⊙ f(x)), y)``, the loss of the
            averaged logits (not the paper's; by convexity of CE it is ≤ the loss average).
        label_smoothing: passed to ``F.cross_entropy``.

    The returned logits ``[B, K]`` (used by the trainer for training accuracy) are the mean
    over the M samples. In eval mode the loss is the plain CE of one dropout-free pass.
    """

    def __init__(self, num_samples: int, mode: str = "loss_avg", label_smoothing: float = 0.0) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.num_samples = num_samples
        self.mode = mode
        self.label_smoothing = label_smoothing

    def __repr__(self) -> str:
        return f"MultiSampleDropout(num_samples={self.num_samples}, mode={self.mode!r})"

    def sample_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``[M, B, K]`` in train mode, ``[1, B, K]`` in eval mode (see ``multi_sample_logits``)."""
        return multi_sample_logits(model, x, self.num_samples)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ``[B, 3, H, W]``, y: ``[B]`` → (scalar loss, mean logits ``[B, K]``)."""
        logits = self.sample_logits(model, x)  # [M, B, K]
        m, b, k = logits.shape
        if self.mode == "loss_avg":
            # every copy has B rows, so the mean over the M·B rows is the mean of the M
            # per-copy mean losses — one CE call instead of M
            loss = F.cross_entropy(logits.reshape(m * b, k), y.repeat(m), label_smoothing=self.label_smoothing)
        else:
            loss = F.cross_entropy(logits.mean(0), y, label_smoothing=self.label_smoothing)
        return loss, logits.mean(0)


def multi_sample_dropout_loss(num_samples: int, mode: str = "loss_avg",
                              label_smoothing: float = 0.0) -> MultiSampleDropout:
    """Factory for ``repro.train.fit``: ``fit(..., loss_fn=multi_sample_dropout_loss(8))``."""
    return MultiSampleDropout(num_samples, mode, label_smoothing)
