"""Multi-sample dropout (Inoue 2019): several dropout masks per image, one shared head.

The backbone runs once per image; its pooled features are copied M times, each copy gets
its own dropout mask, the *same* head scores every copy, and the training loss is the
average of the M cross-entropies. At evaluation dropout is off and a single pass is made,
exactly as with ordinary dropout, so the model's inference graph does not change.

Works with any ``repro.models`` network, whose forward is
``head(dropout(features(x)))``. In heads with two FC layers (``cnn3_mlp``, the VGGs) the
head's own inner dropout is sampled independently for each copy too: "everything after the
first dropout is duplicated with shared weights", as the paper describes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("loss_avg", "logit_avg")


def multi_sample_logits(model: nn.Module, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Logits of M dropout samples: [M, B, K].

    x: [B, 3, H, W]. The M copies are stacked along the batch axis so the head runs once
    on [M·B, D]; in eval mode (or with M = 1) this is the model's ordinary forward.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    feats = model.features(x)  # [B, D]
    if num_samples == 1 or not model.training:
        return model.head(model.dropout(feats)).unsqueeze(0)
    b = feats.shape[0]
    stacked = feats.repeat(num_samples, 1)  # [M·B, D], copy m at rows m·B … m·B+B−1
    return model.head(model.dropout(stacked)).view(num_samples, b, -1)


def multi_sample_dropout_loss(num_samples: int, mode: str = "loss_avg", label_smoothing: float = 0.0):
    """A ``loss_fn(model, x, y) → (loss, logits)`` for ``repro.train.fit``.

    mode "loss_avg" (the paper): mean over the M samples of CE(logits_m, y).
    mode "logit_avg": CE of the averaged logits (shown for comparison, not the paper's).
    The returned logits (for training accuracy) are the mean over samples: [B, K].
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = multi_sample_logits(model, x, num_samples)  # [M, B, K]
        m, b, k = logits.shape
        if mode == "loss_avg":
            # every sample has B rows, so the mean over M·B rows is the mean of the M losses
            loss = F.cross_entropy(logits.reshape(m * b, k), y.repeat(m), label_smoothing=label_smoothing)
        else:
            loss = F.cross_entropy(logits.mean(0), y, label_smoothing=label_smoothing)
        return loss, logits.mean(0)

    return loss_fn
