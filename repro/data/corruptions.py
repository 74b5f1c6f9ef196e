"""CIFAR-100-C-style corruptions made in code, at the five severities of CIFAR-10/100-C.

The constants are those of Hendrycks & Dietterich's ``make_cifar_c.py`` (the CIFAR script,
not ImageNet-C's), for seven of its fifteen corruptions: two noises, two blurs, contrast and
two digital ones. They are applied here to uint8 tensors ``[N, 3, S, S]`` in batches:

=============== ========================================= ==================================
name            what                                      severity 1 … 5
=============== ========================================= ==================================
gaussian_noise  clip(x + N(0, c²)), x in [0, 1]            c = 0.04, 0.06, 0.08, 0.09, 0.10
shot_noise      clip(Poisson(x·c) / c)                    c = 500, 250, 100, 75, 50
defocus_blur    disk of radius r, anti-aliased by σ       (r, σ) = (0.3, 0.4) (0.4, 0.5)
                                                          (0.5, 0.6) (1, 0.2) (1.5, 0.1)
motion_blur     one-sided line of half-Gaussian taps      (radius, σ) = (6, 1) (6, 1.5)
                at a random angle in [-45°, 45°]          (6, 2) (8, 2) (9, 2.5)
contrast        (x − mean) · c + mean, per channel        c = 0.75, 0.5, 0.4, 0.3, 0.15
jpeg            PIL JPEG round trip at quality c          c = 80, 65, 58, 50, 40
pixelate        PIL BOX resize to int(S·c), BOX back up   c = 0.95, 0.9, 0.85, 0.75, 0.65
=============== ========================================= ==================================

The constants are for 32 px. At another size S the blurs' spatial extent (disk radius,
anti-alias σ, motion length and σ) is multiplied by S/32 so that a corruption covers the same
fraction of the picture; the noises, contrast, JPEG quality and pixelate ratio are used as is.
Below 32 px this scaling runs out of pixels: at 16 px the defocus disk (radius 0.15–0.75) is a
single pixel and the blur all but vanishes. For images smaller than 32 px, corrupt the 32-px
originals and then resize (``to_uint8_tensor(x.permute(0, 2, 3, 1), S)``), which is what the
released CIFAR-100-C resized like the clean set would be.

Differences from the released CIFAR-100-C arrays (which the project cannot ship):
results are rounded to uint8 where ``make_cifar_c.py`` truncates (``np.uint8``), a bias of
half a grey level it does not need; motion blur re-implements ImageMagick's
``MotionBlurImage`` in torch instead of calling it (see :func:`motion_kernel_offsets`);
random numbers come from torch, not numpy's global state, so the noise differs draw by draw
while following the same law.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "defocus_blur", "motion_blur", "contrast", "jpeg", "pixelate",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: make_cifar_c.py's constant for each corruption and severity 1..5 (at 32 px).
PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "jpeg": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
REFERENCE_SIZE = 32


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f"images must be a uint8 tensor, got {getattr(images, 'dtype', type(images))}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be [N, 3, S, S], got {list(images.shape)}")


def _check_name_severity(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ParameterError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ParameterError(f"severity must be one of {SEVERITIES}, not {severity!r}")


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats → uint8 (rounded, clipped)."""
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def _gaussian_1d(ksize: int, sigma: float) -> torch.Tensor:
    """OpenCV's ``getGaussianKernel(ksize, sigma)`` for sigma > 0 (float64, sums to 1)."""
    i = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-(i ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    # OpenCV's default border (BORDER_REFLECT_101) is torch's "reflect"; it needs pad < size,
    # so images smaller than a kernel repeat their edge instead.
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def _filter2d(x: torch.Tensor, kernel: torch.Tensor, skip: float = 1e-9) -> torch.Tensor:
    """Each channel of float ``x`` [N, C, H, W] correlated with odd square ``kernel`` [k, k]
    (OpenCV's ``filter2D`` with its default border)."""
    h, w = x.shape[-2:]
    k = kernel.shape[-1]
    xp = _pad(x, k // 2)
    out = torch.zeros_like(x)
    # A sum of shifted copies: about twice as fast on a CPU as conv2d with one input channel,
    # and taps below ``skip`` (1e-9: under 1e-6 grey levels in all) are left out.
    for i, j in torch.nonzero(kernel.abs() > skip).tolist():
        out.add_(xp[..., i:i + h, j:j + w], alpha=float(kernel[i, j]))
    return out


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The defocus kernel of ``make_cifar_c.py``: a disk, normalised, then Gaussian-blurred.

    The disk is ``X² + Y² ≤ radius²`` on the integer grid ``-8..8`` (``-⌈radius⌉..⌈radius⌉``
    beyond radius 8, where the original's float grid would be off-centre), divided by its
    count, then blurred like ``cv2.GaussianBlur`` with ksize 3 (5 beyond radius 8) and
    σ = ``alias_blur``. Returned cropped to its non-zero support (the convolution is the same),
    float64 [k, k], summing to 1.
    """
    half = 8 if radius <= 8 else math.ceil(radius)
    ksize = 3 if radius <= 8 else 5
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).double()
    disk /= disk.sum()
    g = _gaussian_1d(ksize, alias_blur)
    kernel = _filter2d(disk[None, None], torch.outer(g, g), skip=0.0)[0, 0]
    nz = torch.nonzero(kernel)
    # Crop symmetrically about the centre so that the kernel stays centred.
    r = int((nz - half).abs().max()) if len(nz) else 0
    return kernel[half - r:half + r + 1, half - r:half + r + 1]


def _defocus(x: torch.Tensor, radius: float, alias_blur: float) -> torch.Tensor:
    return _filter2d(x, disk_kernel(radius, alias_blur)).clamp_(0, 1)


def motion_kernel_offsets(radius: float, sigma: float,
                          angle_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The taps of ImageMagick's ``MotionBlurImage(radius, sigma, angle)``, one set per angle.

    ImageMagick samples ``width = 2⌈radius⌉ + 1`` pixels along a ray from each pixel (one
    side only), at offsets ``i·(cos θ, sin θ)`` rounded to whole pixels, and weighs them with
    a half Gaussian ``exp(−i²/2σ²)`` normalised to 1 — the "radius" sets how far the ray goes,
    σ how fast its weight falls. This is a re-implementation of that algorithm (the kernel of
    its version 6/7 source), not a call to it: results are close, not bit-identical.

    Returns (weights [width], dx [A, width] column offsets, dy [A, width] row offsets).
    """
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(i ** 2) / (2 * sigma ** 2))
    weights /= weights.sum()
    theta = torch.deg2rad(angle_deg.double())[:, None]
    # ImageMagick rounds with ceil(v − 0.5) (halves go down).
    dx = torch.ceil(i * torch.cos(theta) - 0.5).long()
    dy = torch.ceil(i * torch.sin(theta) - 0.5).long()
    return weights, dx, dy


def _motion(x: torch.Tensor, radius: float, sigma: float, gen: torch.Generator) -> torch.Tensor:
    n, _, s, _ = x.shape
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * 90 - 45
    weights, dx, dy = motion_kernel_offsets(radius, sigma, angle)
    dev = x.device
    dx, dy, weights = dx.to(dev), dy.to(dev), weights.to(x)
    ar = torch.arange(s, device=dev)
    flat = x.reshape(n, 3, s * s)
    out = torch.zeros_like(flat)
    # Taps below 1e-7 change no pixel by more than 1e-4 grey levels in all: skip them.
    for t in torch.nonzero(weights >= 1e-7).flatten().tolist():
        # Pixels past the edge repeat the edge (ImageMagick's default virtual pixels).
        rows = (ar[None, :] + dy[:, t, None]).clamp(0, s - 1)   # [N, S]
        cols = (ar[None, :] + dx[:, t, None]).clamp(0, s - 1)   # [N, S]
        index = (rows[:, :, None] * s + cols[:, None, :]).reshape(n, 1, s * s).expand(n, 3, s * s)
        out.add_(torch.gather(flat, 2, index), alpha=float(weights[t]))
    return out.reshape(n, 3, s, s)


def _jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for k, im in enumerate(arr):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as dec:
            out[k] = np.asarray(dec.convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


def pixelate_size(image_size: int, severity: int) -> int:
    """The side pixelate shrinks an ``image_size`` image to: ``int(S · c)`` (30, 28, 27, 24, 20 at 32 px)."""
    return max(1, int(image_size * PARAMS["pixelate"][severity - 1]))


def _pixelate(images: torch.Tensor, severity: int) -> torch.Tensor:
    # PIL's BOX filter weighs fractional pixel overlaps and rounds in fixed point after each
    # pass; calling PIL keeps that exact (and costs well under a second per 10,000 images).
    from PIL import Image

    s = images.shape[-1]
    small = pixelate_size(s, severity)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for k, im in enumerate(arr):
        pil = Image.fromarray(im).resize((small, small), Image.BOX).resize((s, s), Image.BOX)
        out[k] = np.asarray(pil)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8 [N, 3, S, S]) with corruption ``name`` at ``severity`` 1..5.

    Returns a new uint8 tensor of the same shape on the same device. The random corruptions
    (the two noises, and the motion-blur angle) draw from a private generator seeded with
    ``seed``: the same seed gives the same result, another seed other noise, and the global
    RNG state is neither used nor changed. Blur extents are scaled by S/32 (see the module
    docstring for the constants and the differences from the released CIFAR-100-C).

    Raises:
        ParameterError: unknown ``name`` (the message lists :data:`CORRUPTIONS`) or a severity
            outside 1..5.
        ValueError: ``images`` not uint8 or not [N, 3, S, S].
    """
    _check_name_severity(name, severity)
    _check_images(images)
    c = PARAMS[name][severity - 1]
    if len(images) == 0:
        return images.clone()
    if name == "jpeg":
        return _jpeg(images, c)
    if name == "pixelate":
        return _pixelate(images, severity)
    scale = images.shape[-1] / REFERENCE_SIZE
    gen = torch.Generator().manual_seed(int(seed))  # CPU stream: same noise on every device
    x = images.float() / 255
    if name == "gaussian_noise":
        x = x + c * torch.randn(x.shape, generator=gen).to(x.device)
    elif name == "shot_noise":
        x = torch.poisson(x.cpu() * c, generator=gen).to(x.device) / c
    elif name == "defocus_blur":
        x = _defocus(x, c[0] * scale, c[1] * scale)
    elif name == "motion_blur":
        x = _motion(x, c[0] * scale, c[1] * scale, gen)
    elif name == "contrast":
        # make_cifar_c.py: mean over the (H, W) axes of an HWC image, i.e. one mean per channel
        means = x.mean(dim=(2, 3), keepdim=True)
        x = (x - means) * c + means
    return _to_uint8(x.clamp_(0, 1))


def corruption_grid(images: torch.Tensor, names: tuple[str, ...] | list[str] = CORRUPTIONS,
                    severities: tuple[int, ...] | list[int] = SEVERITIES, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every (name, severity) of ``images``: {name: uint8 [len(severities), N, 3, S, S]}.

    Handy for a figure of one or a few images under every corruption (``repro.plots.image_grid``).
    """
    return {n: torch.stack([corrupt(images, n, s, seed) for s in severities]) for n in names}
