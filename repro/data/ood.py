"""Out-of-distribution sets the project can ship, for CIFAR-100 models.

The papers evaluate on SVHN, Places365, LSUN, iSUN and Textures, which the project does not
carry. In their place: one near-OOD set of real photographs (the CIFAR-10 test set, whose
classes do not overlap CIFAR-100's) and four synthetic far-OOD sets, two of pure noise and two
made from the in-distribution test images themselves (so they keep colour statistics or local
texture while losing the objects). Results on them are not comparable with the papers'
numbers; the chapters say so.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError
from .cifar10 import load_cifar10_test
from .loader import to_uint8_tensor

OOD_SETS: tuple[str, ...] = ("cifar10", "gaussian", "uniform", "blur", "shuffle")

OOD_DESCRIPTIONS: dict[str, str] = {
    "cifar10": "CIFAR-10 test images (near-OOD: real photographs, classes disjoint from CIFAR-100); "
               "stands in for the papers' SVHN/Places/LSUN/iSUN/Textures.",
    "gaussian": "Gaussian noise N(0.5, 0.25²) per pixel and channel, clipped to [0, 1] (far-OOD; "
                "a synthetic stand-in for the papers' SVHN/Places/LSUN/iSUN/Textures).",
    "uniform": "Uniform noise, every channel value drawn from 0..255 (far-OOD; a synthetic stand-in "
               "for the papers' SVHN/Places/LSUN/iSUN/Textures).",
    "blur": "In-distribution test images Gaussian-blurred with σ = 2.5 px at 32 px (far-OOD that keeps "
            "the colour statistics; a stand-in for the papers' SVHN/Places/LSUN/iSUN/Textures).",
    "shuffle": "In-distribution test images cut into a 4×4 grid of patches shuffled per image (keeps "
               "local texture, destroys shape; a stand-in for the papers' SVHN/Places/LSUN/iSUN/Textures).",
}

BLUR_SIGMA = 2.5      # px at 32 px, scaled with the image size
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.5, 0.25
SHUFFLE_GRID = 4


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _cifar10_subset(n: int, seed: int, root: Path | None) -> np.ndarray:
    """Indices of ``n`` CIFAR-10 test images, balanced over the classes (counts differ by at
    most one; which classes get the extra image is seeded), in data order."""
    split = load_cifar10_test(root)
    if n > len(split):
        raise ParameterError(f"asked for {n} CIFAR-10 images; the test set has {len(split)}")
    rng = np.random.default_rng(seed)
    classes = np.unique(split.labels)
    # Rank every image within its class by a seeded permutation, then take the images of
    # rank 0 of every class, rank 1 of every class, ... until n are chosen.
    rank = np.empty(len(split), dtype=np.int64)
    for c in classes:
        idx = np.flatnonzero(split.labels == c)
        rank[rng.permutation(idx)] = np.arange(len(idx))
    tie = rng.permutation(len(classes))[np.searchsorted(classes, split.labels)]
    order = np.lexsort((tie, rank))
    return np.sort(order[:n])


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float ``x`` [N, C, S, S], kernel radius ⌈3σ⌉, reflected edges."""
    radius = max(1, math.ceil(3 * sigma))
    i = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    g = torch.exp(-(i ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    mode = "reflect" if radius < min(h, w) else "replicate"
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode=mode), g.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode=mode), g.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _shuffle_patches(x: torch.Tensor, gen: torch.Generator, grid: int = SHUFFLE_GRID) -> torch.Tensor:
    n, c, s, _ = x.shape
    p = s // grid
    patches = x.reshape(n, c, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, p, p)
    perm = torch.argsort(torch.rand(n, grid * grid, generator=gen), dim=1).to(x.device)
    patches = patches[torch.arange(n, device=x.device)[:, None], perm]
    return patches.reshape(n, grid, grid, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, s, s).contiguous()


def _pick_source(source: torch.Tensor | None, name: str, n: int, image_size: int,
                 gen: torch.Generator) -> torch.Tensor:
    if source is None:
        raise ValueError(f"OOD set {name!r} is made from in-distribution images: pass source=uint8 [N, 3, S, S]")
    if source.dtype != torch.uint8 or source.dim() != 4 or source.shape[1] != 3:
        raise ValueError(f"source must be uint8 [N, 3, S, S], got {source.dtype} {list(source.shape)}")
    if source.shape[-1] != image_size or source.shape[-2] != image_size:
        raise ValueError(f"source images are {source.shape[-1]} px, image_size is {image_size}")
    if n > len(source):
        raise ParameterError(f"asked for {n} {name!r} images from {len(source)} source images")
    if n == len(source):
        return source
    idx = torch.sort(torch.randperm(len(source), generator=gen)[:n]).values
    return source[idx.to(source.device)]


def ood_images(name: str, n: int, image_size: int, seed: int = 0, source: torch.Tensor | None = None,
               root: Path | None = None) -> torch.Tensor:
    """``n`` images of OOD set ``name`` as uint8 [n, 3, image_size, image_size].

    - ``cifar10``: a seeded subset of the CIFAR-10 test set (read from ``root``, verified),
      balanced over its 10 classes, area-resized to ``image_size``.
    - ``gaussian``: N(0.5, 0.25²) per pixel and channel, clipped to [0, 1].
    - ``uniform``: every channel value uniform on 0..255 (U[0, 1] on the uint8 grid).
    - ``blur``: ``source`` images Gaussian-blurred with σ = 2.5 · image_size / 32 px.
    - ``shuffle``: ``source`` images cut into a 4×4 grid of patches, permuted per image
      (``image_size`` must be divisible by 4).

    ``blur`` and ``shuffle`` need ``source`` (in-distribution test images, uint8, of
    ``image_size``): all of it when ``n == len(source)``, else a seeded subset in source order.
    Randomness comes from a private generator seeded with ``seed`` (the global RNG is untouched).

    Raises:
        ParameterError: unknown ``name`` (the message lists :data:`OOD_SETS`), more images than
            the set has, or a shuffle size not divisible by 4.
        ValueError: ``source`` missing or malformed for ``blur``/``shuffle``.
    """
    if name not in OOD_SETS:
        raise ParameterError(f"unknown OOD set {name!r}; choose one of {', '.join(OOD_SETS)}")
    if n < 0 or image_size < 1:
        raise ParameterError(f"n must be ≥ 0 and image_size ≥ 1, got n={n}, image_size={image_size}")
    gen = _generator(seed)
    shape = (n, 3, image_size, image_size)
    if name == "cifar10":
        split = load_cifar10_test(root)
        return to_uint8_tensor(split.images[_cifar10_subset(n, seed, root)], image_size)
    if name == "gaussian":
        x = (GAUSSIAN_MEAN + GAUSSIAN_STD * torch.randn(shape, generator=gen)).clamp_(0, 1)
        return (x * 255).round_().to(torch.uint8)
    if name == "uniform":
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    if name == "shuffle" and image_size % SHUFFLE_GRID:
        raise ParameterError(f"shuffle cuts a {SHUFFLE_GRID}×{SHUFFLE_GRID} grid: image_size must be "
                             f"divisible by {SHUFFLE_GRID}, got {image_size}")
    src = _pick_source(source, name, n, image_size, gen)
    if name == "blur":
        sigma = BLUR_SIGMA * image_size / 32
        return (_gaussian_blur(src.float(), sigma)).round_().clamp_(0, 255).to(torch.uint8)
    return _shuffle_patches(src, gen)
