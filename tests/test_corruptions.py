"""CIFAR-100-C-style corruptions: shapes, seeds, severities, and hand-checked constants."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from repro.data import CORRUPTIONS, SEVERITIES, corrupt, corruption_grid
from repro.data.corruptions import PARAMS, disk_kernel, motion_kernel_offsets, pixelate_size
from repro.errors import ParameterError

RANDOM = ("gaussian_noise", "shot_noise", "motion_blur")


def smooth_images(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random smooth pictures (bicubic up-sampled 6×6 noise) plus a little grain."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1) * 255
    x = x + 8 * torch.randn(x.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return smooth_images()


def change(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def test_names_and_constants_are_cifar_c():
    assert CORRUPTIONS == ("gaussian_noise", "shot_noise", "defocus_blur", "motion_blur", "contrast",
                           "jpeg", "pixelate")
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert PARAMS["motion_blur"][4] == (9, 2.5)
    assert all(len(PARAMS[n]) == 5 for n in CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_kept_and_seed_behaviour(images, name):
    x = images[:6]
    before = torch.get_rng_state()
    for s in SEVERITIES:
        y = corrupt(x, name, s, seed=3)
        assert y.shape == x.shape and y.dtype == torch.uint8
        assert torch.equal(y, corrupt(x, name, s, seed=3))  # same seed, same result
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is not touched
    other = corrupt(x, name, 3, seed=4)
    if name in RANDOM:
        assert not torch.equal(other, corrupt(x, name, 3, seed=3))
    else:
        assert torch.equal(other, corrupt(x, name, 3, seed=3))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_increases_the_change(images, name):
    ch = [change(corrupt(images, name, s, seed=1), images) for s in SEVERITIES]
    assert ch[0] > 0
    for s in range(4):
        if name == "motion_blur" and s == 2:
            # CIFAR-C's (6, 2) → (8, 2) only lengthens the ray where the half Gaussian of σ = 2
            # weighs < 0.1 % in all: severities 3 and 4 are (nearly) the same picture.
            assert ch[3] >= ch[2] - 0.05
        else:
            assert ch[s + 1] > ch[s], (name, ch)


@pytest.mark.parametrize("size", [16, 64])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_other_sizes(name, size):
    x = smooth_images(3, size)
    y = corrupt(x, name, 5)
    assert y.shape == x.shape and y.dtype == torch.uint8
    if not (name == "defocus_blur" and size < 32):  # a disk under one pixel: see the module docstring
        assert change(y, x) > 0


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur", "contrast", "pixelate"])
def test_flat_images_stay_flat(name):
    x = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    x[1] = 200
    for s in SEVERITIES:
        assert torch.equal(corrupt(x, name, s), x)


def test_contrast_hand_example():
    # One channel [[0, 100], [200, 100]]: mean 100; severity 1 (c = 0.75) → (x − 100)·0.75 + 100.
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    x[0, 0] = torch.tensor([[0, 100], [200, 100]], dtype=torch.uint8)
    x[0, 1] = 40  # flat channels keep their value: the mean is per channel
    x[0, 2] = torch.tensor([[12, 28], [28, 12]], dtype=torch.uint8)
    y = corrupt(x, "contrast", 1)
    assert y[0, 0].tolist() == [[25, 100], [175, 100]]
    assert y[0, 1].tolist() == [[40, 40], [40, 40]]
    assert y[0, 2].tolist() == [[14, 26], [26, 14]]  # mean 20: ±8·0.75 = ±6
    # severity 5 (c = 0.15): 100 ± 100·0.15
    assert corrupt(x, "contrast", 5)[0, 0].tolist() == [[85, 100], [115, 100]]


def test_pixelate_sizes_and_hand_example():
    assert [pixelate_size(32, s) for s in SEVERITIES] == [30, 28, 27, 24, 20]
    assert [pixelate_size(64, s) for s in SEVERITIES] == [60, 57, 54, 48, 41]
    # 4 px at severity 5: int(4·0.65) = 2 — BOX down averages each 2×2 block, BOX up repeats it.
    ch = torch.tensor([[0, 4, 100, 100], [8, 12, 100, 100], [50, 50, 255, 251], [50, 50, 247, 243]])
    x = ch.to(torch.uint8).expand(1, 3, 4, 4).contiguous()
    y = corrupt(x, "pixelate", 5)
    expected = [[6, 6, 100, 100], [6, 6, 100, 100], [50, 50, 249, 249], [50, 50, 249, 249]]
    assert all(y[0, c].tolist() == expected for c in range(3))


def test_defocus_kernels_by_hand():
    for r, sigma in PARAMS["defocus_blur"]:
        k = disk_kernel(r, sigma)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.t())
    # Severity 1: the disk of radius 0.3 is the centre pixel; blurred by a 3-tap Gaussian of σ 0.4.
    e = math.exp(-1 / (2 * 0.4 ** 2))
    g = torch.tensor([e, 1.0, e], dtype=torch.float64) / (1 + 2 * e)
    assert torch.allclose(disk_kernel(0.3, 0.4), torch.outer(g, g))
    # Severity 4: radius 1 is a plus of five pixels, 1/5 each (σ 0.2 hardly spreads it).
    k4 = disk_kernel(1, 0.2)
    assert k4.shape == (5, 5)
    assert k4[2, 2].item() == pytest.approx(0.2, abs=1e-5) and k4[1, 2].item() == pytest.approx(0.2, abs=1e-5)
    assert k4[1, 1].item() == pytest.approx(0.0, abs=1e-5)
    # Severity 5: radius 1.5 covers the 3×3 square (1² + 1² ≤ 2.25): a 3×3 box of 1/9.
    assert disk_kernel(1.5, 0.1)[1:4, 1:4].min().item() == pytest.approx(1 / 9, abs=1e-6)


def test_defocus_of_an_impulse_is_the_kernel():
    x32 = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    x32[0, :, 16, 16] = 255
    y32 = corrupt(x32, "defocus_blur", 4)
    assert y32[0, 0, 15:18, 15:18].tolist() == [[0, 51, 0], [51, 51, 51], [0, 51, 0]]  # 255 / 5


def test_motion_blur_taps_by_hand():
    w, dx, dy = motion_kernel_offsets(6, 1.0, torch.tensor([0.0, 45.0, -45.0]))
    assert len(w) == 13  # 2·⌈6⌉ + 1 taps
    ref = torch.exp(-torch.arange(13, dtype=torch.float64) ** 2 / 2)
    assert torch.allclose(w, ref / ref.sum())
    assert dx[0].tolist() == list(range(13)) and dy[0].tolist() == [0] * 13
    # i·cos 45° = 0.707 i rounded with ceil(v − 0.5): 0, 1, 1, 2, 3, 4, 4, ...
    assert dx[1, :7].tolist() == [0, 1, 1, 2, 3, 4, 4]
    assert dy[1, :7].tolist() == [0, 1, 1, 2, 3, 4, 4] and dy[2, :7].tolist() == [0, -1, -1, -2, -3, -4, -4]
    assert len(motion_kernel_offsets(9, 2.5, torch.zeros(1))[0]) == 19


def test_noise_has_the_cifar_c_spread():
    x = torch.full((20, 3, 32, 32), 128, dtype=torch.uint8)
    for s, c in zip(SEVERITIES, PARAMS["gaussian_noise"]):
        d = corrupt(x, "gaussian_noise", s).float() - 128
        assert d.std().item() == pytest.approx(c * 255, rel=0.03)
        assert abs(d.mean().item()) < 0.3
    # Poisson(x·c)/c has mean x and standard deviation sqrt(x/c).
    for s, c in zip(SEVERITIES, PARAMS["shot_noise"]):
        d = corrupt(x, "shot_noise", s).float() / 255
        assert d.mean().item() == pytest.approx(128 / 255, abs=0.005)
        assert d.std().item() == pytest.approx(math.sqrt(128 / 255 / c), rel=0.05)


def test_jpeg_is_pils_round_trip():
    import io

    import numpy as np
    from PIL import Image

    x = smooth_images(2)
    y = corrupt(x, "jpeg", 2)
    buf = io.BytesIO()
    Image.fromarray(x[1].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=65)
    ref = np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert torch.equal(y[1], torch.from_numpy(ref).permute(2, 0, 1))


def test_bad_arguments():
    x = smooth_images(2)
    with pytest.raises(ParameterError, match="gaussian_noise.*pixelate"):
        corrupt(x, "fog", 1)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ParameterError, match="severity"):
            corrupt(x, "contrast", bad)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x.float(), "contrast", 1)
    with pytest.raises(ValueError, match=r"\[N, 3, S, S\]"):
        corrupt(x[0], "contrast", 1)
    with pytest.raises(ValueError, match=r"\[N, 3, S, S\]"):
        corrupt(x[:, :, :, :16], "contrast", 1)


def test_empty_batch_and_grid():
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    assert corrupt(empty, "jpeg", 1).shape == empty.shape
    x = smooth_images(2)
    grid = corruption_grid(x, ("contrast", "pixelate"), (1, 5))
    assert set(grid) == {"contrast", "pixelate"} and grid["contrast"].shape == (2, 2, 3, 32, 32)
    assert torch.equal(grid["pixelate"][1], corrupt(x, "pixelate", 5))
