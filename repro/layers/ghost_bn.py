"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better").

A large batch of B samples is cut into consecutive *ghost batches* of ``ghost_size`` samples;
in training, every ghost batch is normalised with its own mean and variance, exactly as if it
had been forwarded alone through an ordinary BatchNorm. The official code does this by
forwarding the chunks one after the other and accumulating gradients (``main_gbn.py``);
here it is one pass: the batch is reshaped to ``[B/g, g, C, L]`` and the statistics are
reduced over the ``g`` samples and the ``L`` spatial positions of each group, which gives the
same outputs and the same gradients of the mean loss (see ``tests/test_ghostbn.py``).

Why it helps: normalising over 128 samples instead of 4096 keeps the noise that small-batch
BN injects into every forward pass, a regulariser that a large batch would otherwise average
away, without giving up the large batch's single optimiser step.

Conventions (shared with ``nn.BatchNorm2d``):

* ``ghost_size >= B`` (or evaluation mode with running statistics) defers to
  ``nn.BatchNorm`` itself, so the layer then *is* a BatchNorm, bit for bit;
* the running statistics are updated **once per forward** from the group statistics: the
  mean of the group means and the mean of the groups' *unbiased* variances (each group's
  variance times m/(m−1), m = samples × positions in the group), weighted by group size when
  the last group is ragged; ``momentum=None`` gives BatchNorm's cumulative average. (The
  chunked forward of the official code instead takes one exponential-average step per
  chunk; both estimate the statistics of a ghost batch.)
* a ragged last group (B not a multiple of ``ghost_size``) is normalised as a group of its
  own; a remainder with a single value per channel cannot be normalised (BatchNorm raises
  on it), so it is folded into the preceding group.
* evaluation uses the running statistics only; with ``track_running_stats=False`` it keeps
  normalising by ghost batches, like BatchNorm keeps using batch statistics.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


class _GhostBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics come from groups of ``ghost_size`` samples.

    Input ``x: [B, C, *S]`` (any number of trailing positions ``S``); output has the same
    shape and dtype.
    """

    def __init__(self, num_features: int, ghost_size: int = 128, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if int(ghost_size) < 1:
            raise ValueError(f"ghost_size must be a positive integer, got {ghost_size}")
        self.ghost_size = int(ghost_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_size={self.ghost_size}"

    def group_sizes(self, batch: int, positions: int) -> tuple[int, int, int]:
        """(number of full groups, their size, size of the last ragged group or 0)."""
        g = self.ghost_size
        n_full, rest = divmod(batch, g)
        if rest and rest * positions < 2 and n_full > 0:
            n_full, rest = n_full - 1, rest + g  # a one-value group has no variance
        return n_full, g, rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, *S] → [B, C, *S], normalised per ghost batch in training."""
        self._check_input_dim(x)
        ghost = self.training or not self.track_running_stats
        if not ghost or x.shape[0] <= self.ghost_size:
            return super().forward(x)  # exactly nn.BatchNorm
        b, c = x.shape[:2]
        xf = x.reshape(b, c, -1).float()  # [B, C, L]; stats in fp32 even under autocast
        positions = xf.shape[-1]
        n_full, g, rest = self.group_sizes(b, positions)
        outs, means, vars_, sizes = [], [], [], []
        if n_full:
            block = xf[: n_full * g].view(n_full, g, c, positions)
            y, m, v = self._normalise(block)
            outs.append(y.reshape(n_full * g, c, positions))
            means.append(m)
            vars_.append(v)
            sizes += [g] * n_full
        if rest:
            block = xf[n_full * g:].unsqueeze(0)  # [1, rest, C, L]
            y, m, v = self._normalise(block)
            outs.append(y.reshape(rest, c, positions))
            means.append(m)
            vars_.append(v)
            sizes.append(rest)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        if self.affine:
            y = y * self.weight.view(1, c, 1) + self.bias.view(1, c, 1)
        if self.training and self.track_running_stats:
            self._update_running_stats(torch.cat(means), torch.cat(vars_), sizes, positions)
        return y.reshape(x.shape).to(x.dtype)

    def _normalise(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """block: [k, m, C, L] (k groups of m samples) → normalised block, means [k, C],
        biased variances [k, C]."""
        var, mean = torch.var_mean(block, dim=(1, 3), unbiased=False, keepdim=True)  # [k, 1, C, 1]
        y = (block - mean) * torch.rsqrt(var + self.eps)
        return y, mean[:, 0, :, 0], var[:, 0, :, 0]

    @torch.no_grad()
    def _update_running_stats(self, means: torch.Tensor, vars_: torch.Tensor, sizes: list[int],
                              positions: int) -> None:
        """One BatchNorm-style update from the group statistics.

        means, vars_: [G, C] per-group mean and biased variance; sizes: samples per group.
        """
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as in nn.BatchNorm
            f = 1.0 / float(self.num_batches_tracked)
        else:
            f = self.momentum
        n = torch.tensor(sizes, dtype=means.dtype, device=means.device)  # [G]
        m = n * positions
        unbiased = vars_ * (m / (m - 1)).unsqueeze(1)  # Bessel's correction per group
        w = (n / n.sum()).unsqueeze(1)  # equal groups → plain mean of the group statistics
        self.running_mean.mul_(1 - f).add_((w * means).sum(0).to(self.running_mean.dtype), alpha=f)
        self.running_var.mul_(1 - f).add_((w * unbiased).sum(0).to(self.running_var.dtype), alpha=f)


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost BatchNorm for images: ``x: [B, C, H, W]``, groups of ``ghost_size`` samples.

    Drop-in for ``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys, plus
    ``ghost_size``); ``GhostBatchNorm2d(C, ghost_size=B)`` behaves exactly like
    ``nn.BatchNorm2d(C)`` on batches of at most B samples.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input [B, C, H, W] (got {x.dim()}D input)")


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost BatchNorm for features: ``x: [B, C]`` or ``[B, C, L]`` (e.g. the BN layers of an
    MLP classifier, which the official chunked forward also splits into ghost batches)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input [B, C(, L)] (got {x.dim()}D input)")


def ghost_norm(ghost_size: int) -> Callable[[int], nn.Module]:
    """A ``norm_layer`` for ``repro.models.create(..., norm_layer=ghost_norm(128))``:
    ``ghost_norm(g)(C)`` is ``GhostBatchNorm2d(C, ghost_size=g)``."""
    return functools.partial(GhostBatchNorm2d, ghost_size=int(ghost_size))


def ghost_norm1d(ghost_size: int) -> Callable[[int], nn.Module]:
    """Like :func:`ghost_norm`, for 1-D feature BNs: ``GhostBatchNorm1d(C, ghost_size=g)``."""
    return functools.partial(GhostBatchNorm1d, ghost_size=int(ghost_size))


__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "ghost_norm", "ghost_norm1d"]
