"""SimCLR-style augmentation on whole batches of normalised images, one random draw per image.

The contrastive chapters (PALM, CIDER, SupCon) train on two independently augmented views
of each image: random resized crop (scale 0.2–1, aspect 3/4–4/3), horizontal flip, colour
jitter (brightness, contrast, saturation 0.4, hue 0.1) with p 0.8 and grayscale with p 0.2,
as torchvision's ``RandomResizedCrop → RandomHorizontalFlip → RandomApply(ColorJitter) →
RandomGrayscale``. torchvision's batch transforms draw one set of parameters per call, so
here every image's parameters are drawn at once from a ``torch.Generator`` and applied with
tensor ops (crop and flip as one affine ``grid_sample``): no loop over images, the same
views for the same generator state on any device.

Deviations from torchvision, all in the colour jitter's details or the crop's discretisation:

* the crop is continuous (bilinear resampling of a sub-window with real-valued size and
  position) rather than an integer pixel box resized with antialiasing; like torchvision it
  tries 10 (scale, ratio) draws per image and falls back to the whole image;
* the jitter applies brightness, contrast, saturation, hue in that fixed order (torchvision
  shuffles the order per call);
* hue is rotated in the YIQ chroma plane by ``2π·h`` rather than shifted in HSV: a linear
  approximation that keeps luma exactly and differs from the HSV shift by a few percent of
  the chroma for saturated colours.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cifar import MEAN, STD

# ITU-R 601 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
# RGB → YIQ (NTSC); its first row is the luma above up to rounding.
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=gen.device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] → luma [B, 1, H, W]."""
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


@dataclass(frozen=True)
class SimCLRAugment:
    """Random resized crop + flip + colour jitter (p ``jitter_p``) + grayscale (p ``gray_p``),
    drawn per image from a generator.

    ``aug(x, gen)`` takes and returns normalised images ``[B, 3, H, W]`` (normalised with
    ``mean``/``std``, as ``TensorLoader`` yields them); :meth:`unit` does the same on images in
    [0, 1]. A jitter strength of 0 turns that component off.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    mean: Sequence[float] = MEAN
    std: Sequence[float] = STD
    attempts: int = 10

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Normalised images ``[B, 3, H, W]`` → augmented normalised images (same shape)."""
        m = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        x01 = (x.float() * s + m).clamp_(0, 1)
        return (self.unit(x01, gen) - m) / s

    def unit(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Images in [0, 1] ``[B, 3, H, W]`` → augmented images in [0, 1]."""
        x = self.crop_flip(x, gen)
        x = self.jitter(x, gen)
        gray = (torch.rand(len(x), generator=gen, device=gen.device) < self.gray_p).to(x.device)
        return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)

    def crop_params(self, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image crop width and height as fractions of the side (``[B]`` each), as
        RandomResizedCrop: area ~ U(scale), log aspect ~ U(log ratio), first of ``attempts``
        draws that fits, else the whole image."""
        area = _uniform(gen, (b, self.attempts), *self.scale)
        logr = _uniform(gen, (b, self.attempts), math.log(self.ratio[0]), math.log(self.ratio[1]))
        w, h = (area * logr.exp()).sqrt(), (area / logr.exp()).sqrt()
        ok = (w <= 1) & (h <= 1)
        first = ok.float().argmax(1, keepdim=True)  # index of the first fitting draw (0 if none)
        any_ok, one = ok.any(1), torch.ones_like(w[:, 0])
        w = torch.where(any_ok, w.gather(1, first).squeeze(1), one)
        h = torch.where(any_ok, h.gather(1, first).squeeze(1), one)
        return w, h

    def crop_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random resized crop (back to the input size) and horizontal flip, one affine grid
        per image."""
        b = len(x)
        w, h = self.crop_params(b, gen)
        # Centre of the window in [-1, 1] coordinates: anywhere that keeps it inside.
        cx = (1 - w) * _uniform(gen, (b,), -1.0, 1.0)
        cy = (1 - h) * _uniform(gen, (b,), -1.0, 1.0)
        flip = torch.rand(b, generator=gen, device=gen.device) < self.flip_p
        sx = torch.where(flip, -w, w)
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Colour jitter with probability ``jitter_p`` per image; an image that skips it gets
        the identity factors (1, 1, 1, 0)."""
        b = len(x)
        apply = torch.rand(b, generator=gen, device=gen.device) < self.jitter_p

        def factor(strength: float, centre: float) -> torch.Tensor:
            f = _uniform(gen, (b,), centre - strength, centre + strength)
            f = torch.where(apply, f, torch.full_like(f, centre))
            return f.to(x.device, x.dtype).view(-1, 1, 1, 1)

        bri = factor(self.brightness, 1.0)
        con = factor(self.contrast, 1.0)
        sat = factor(self.saturation, 1.0)
        hue = factor(self.hue, 0.0)
        x = (x * bri).clamp(0, 1)
        mu = _gray(x).mean((2, 3), keepdim=True)
        x = (con * x + (1 - con) * mu).clamp(0, 1)
        x = (sat * x + (1 - sat) * _gray(x)).clamp(0, 1)
        if self.hue > 0:
            x = hue_rotate(x, hue.view(-1))
        return x


def hue_rotate(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of images in [0, 1] ``[B, 3, H, W]`` by ``h`` turns (``[B]``, e.g. ±0.1)
    in the YIQ chroma plane (luma unchanged); clamped to [0, 1]."""
    t = torch.tensor(_YIQ, device=x.device, dtype=torch.float32)
    a = 2 * math.pi * h.float()
    c, s = a.cos(), a.sin()
    rot = torch.zeros(len(h), 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    mat = torch.linalg.inv(t) @ rot @ t  # [B, 3, 3]: RGB → YIQ → rotate → RGB
    out = torch.einsum("bij,bjhw->bihw", mat.to(x.dtype), x)
    return out.clamp(0, 1)


def two_views(x: torch.Tensor, gen: torch.Generator,
              aug: SimCLRAugment | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations of the normalised batch ``x`` (``aug`` defaults to
    :class:`SimCLRAugment`'s SimCLR recipe), drawn from ``gen`` one after the other."""
    aug = aug or SimCLRAugment()
    return aug(x, gen), aug(x, gen)
