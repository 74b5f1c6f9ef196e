"""Unlearnable-data poisons: class-wise perturbations of a training set, so that a model learns
the perturbation ↔ label shortcut instead of the images (chapter 21, CUDA).

**CUDA** (Sadasivan, Soltanolkotabi & Feizi, "CUDA: Convolution-based Unlearnable Datasets",
CVPR 2023), written from the book's paper card (the official code's licence forbids copying):

* **key → filters** (:func:`cuda_filters`): a generator seeded with the private ``key`` draws,
  for class 0, 1, … in turn, a k×k filter (k = 3) whose taps are uniform in [0, ``blur``)
  (the blur parameter, 0.3 by default), then one position (uniform over the k² taps) whose tap
  is set to 1.0 (the "centre parameter"). Class c's filter depends only on the key and on c
  (the filters of classes before it are drawn first, so a subset of K classes gets the first
  K filters of the key). The same filter acts on each colour channel (depthwise), bias 0;
* **poison** (:func:`apply_filters`): each selected training image of class c, in [0, 1],
  is filtered with class c's filter (``F.conv2d`` with ``groups = 3`` and zero padding k // 2:
  convolution in the deep-learning sense, i.e. cross-correlation, out[i, j] = Σ_ab
  w[a, b]·x[i + a − k//2, j + b − k//2]), divided by the **largest value of the result** (one
  scalar per image, over channels and pixels; an all-black image stays black), scaled to
  [0, 255], rounded to the nearest integer (halves to even, ``torch.round``) and stored as
  uint8;
* **fraction** (:func:`poison_indices`): ``mix`` of the training set (1.0 by default) is
  poisoned: exactly round(mix·N) images drawn uniformly without replacement by a generator
  seeded with the key (a stream apart from the filters'); the others stay clean. The test set
  is never touched.

Everything is a pure function of the key, so every seed of a chapter trains on the same
poisoned set (the seed varies the network, the data order and the augmentation).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError

#: Stream ids under the key: the filters and the poisoned subset use different generators.
_FILTER_STREAM, _SUBSET_STREAM = 0, 1


@dataclass(frozen=True)
class CudaPoison:
    """One CUDA poison: ``key`` (the private seed of filters and subset, an integer ≥ 0),
    ``blur`` (the taps' upper bound, ≥ 0; the paper's default 0.3), ``mix`` (the poisoned
    fraction of the training set, in [0, 1]) and ``kernel`` (the filter side, odd ≥ 1; 3).
    ParameterError for anything out of range."""

    key: int = 0
    blur: float = 0.3
    mix: float = 1.0
    kernel: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.key, bool) or not isinstance(self.key, int) or self.key < 0:
            raise ParameterError(f"the CUDA key must be an integer ≥ 0, got {self.key!r}")
        b = self.blur
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise ParameterError(f"the CUDA blur parameter must be a number ≥ 0, got {b!r}")
        m = self.mix
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= 1.0:
            raise ParameterError(f"the poisoned fraction mix must be in [0, 1], got {m!r}")
        k = self.kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ParameterError(f"the CUDA filter side must be an odd integer ≥ 1, got {k!r}")

    def as_record(self) -> dict[str, Any]:
        return {"method": "cuda", "key": int(self.key), "blur": float(self.blur), "mix": float(self.mix),
                "kernel": int(self.kernel), "padding": int(self.kernel) // 2, "depthwise": True,
                "normalise": "divide by the image's largest filtered value, x255, round, uint8"}


def _rng(key: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(key), int(stream)]))


def cuda_filters(num_classes: int, key: int, blur: float = 0.3, kernel: int = 3) -> torch.Tensor:
    """The class-wise filters of ``key``: float32 ``[num_classes, kernel, kernel]``, taps in
    [0, blur) with one tap per filter set to 1.0 (module docstring)."""
    CudaPoison(key=key, blur=blur, kernel=kernel)  # validates
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ParameterError(f"num_classes must be an integer ≥ 1, got {num_classes!r}")
    rng = _rng(key, _FILTER_STREAM)
    out = np.empty((num_classes, kernel, kernel), dtype=np.float64)
    for c in range(num_classes):
        taps = rng.uniform(0.0, float(blur), size=(kernel, kernel))
        taps.flat[int(rng.integers(kernel * kernel))] = 1.0
        out[c] = taps
    return torch.from_numpy(out).float()


def _check_uint8(images: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or images.shape[1] != 3:
        raise ParameterError("CUDA poisons uint8 [N, 3, S, S] images in [0, 255] (a Dataset's x_train)")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ParameterError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")


def apply_filters(images: torch.Tensor, labels: torch.Tensor, filters: torch.Tensor,
                  batch_size: int = 4096) -> torch.Tensor:
    """Every image of ``images`` (uint8 ``[N, 3, S, S]``) filtered with its label's filter
    (``filters[labels[i]]``, depthwise, zero padding), divided by its largest filtered value,
    scaled to [0, 255], rounded: uint8 ``[N, 3, S, S]``."""
    _check_uint8(images, labels)
    if filters.dim() != 3 or filters.shape[1] != filters.shape[2] or filters.shape[1] % 2 == 0:
        raise ParameterError(f"filters must be [K, k, k] with k odd, got {tuple(filters.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(filters)):
        raise ParameterError(f"labels reach {int(labels.max())} but there are {len(filters)} class filters")
    k = int(filters.shape[-1])
    out = torch.empty_like(images)
    w = filters.float()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float() / 255.0
        y = labels[start:start + batch_size].long()
        res = torch.empty_like(x)
        for c in torch.unique(y).tolist():
            sel = y == c
            weight = w[c].view(1, 1, k, k).expand(3, 1, k, k)
            res[sel] = F.conv2d(x[sel], weight, padding=k // 2, groups=3)
        peak = res.flatten(1).amax(1).view(-1, 1, 1, 1)
        res = torch.where(peak > 0, res / peak.clamp_min(1e-12), torch.zeros_like(res))
        out[start:start + batch_size] = (res * 255.0).round().clamp(0, 255).to(torch.uint8)
    return out


def poison_indices(n: int, mix: float, key: int) -> torch.Tensor:
    """Sorted indices (int64) of the round(mix·n) images of an n-image training set that the
    poison ``key`` perturbs (all of them at mix = 1, none at 0)."""
    CudaPoison(key=key, mix=mix)  # validates
    count = int(round(float(mix) * n))
    if count >= n:
        return torch.arange(n, dtype=torch.int64)
    idx = _rng(key, _SUBSET_STREAM).choice(n, size=count, replace=False)
    return torch.from_numpy(np.sort(idx).astype(np.int64))


def cuda_poison(images: torch.Tensor, labels: torch.Tensor, cfg: CudaPoison,
                num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(poisoned images, indices of the poisoned ones)``: a copy of ``images`` (uint8
    ``[N, 3, S, S]``) whose ``cfg.mix`` fraction is CUDA-filtered by class; ``num_classes``
    filters are drawn (default: max label + 1)."""
    if not isinstance(cfg, CudaPoison):
        raise ParameterError(f"cuda_poison takes a CudaPoison, got {type(cfg).__name__}")
    _check_uint8(images, labels)
    k = num_classes if num_classes is not None else (int(labels.max()) + 1 if len(labels) else 1)
    filters = cuda_filters(k, cfg.key, cfg.blur, cfg.kernel)
    idx = poison_indices(len(images), cfg.mix, cfg.key)
    out = images.clone()
    if len(idx):
        out[idx] = apply_filters(images[idx], labels[idx], filters)
    return out, idx


def poison_dataset(data: Any, cfg: CudaPoison | None) -> Any:
    """A copy of ``data`` (a ``repro.data.Dataset``) whose training images carry the poison
    ``cfg`` (None: ``data`` itself); the test split is untouched. ``info["poison"]`` records
    the poison's settings and how many images it changed."""
    if cfg is None:
        return data
    x, idx = cuda_poison(data.x_train, data.y_train, cfg, data.num_classes)
    info = {**data.info, "poison": {**cfg.as_record(), "poisoned": int(len(idx)), "train": int(len(x))}}
    return dataclasses.replace(data, x_train=x, info=info)
