"""Analyses the family's chapters draw on beyond the sweep's metrics: how much probability a
model puts outside the true class (NKD's argument), USKD's self-made soft labels, the loss
surfaces of KD, DIST and PLD around a teacher and the CE ↔ PLD weight interpolation (PLD),
accuracy under synthetic corruptions (dataset reinforcement)."""
from __future__ import annotations

from typing import Any


import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...losses import distillation as D
from ...plots.landscape import interpolate_1d, subset_batches
from ...train import WORK, dry_run, predict
from .arms.reinforce import normalise


@torch.no_grad()
def non_target_mass(model: torch.nn.Module, test) -> np.ndarray:
    """1 − p_y per test image: the probability a model puts on the wrong classes."""
    logits, y = predict(model, test)
    return (1 - F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)).numpy()


@torch.no_grad()
def soft_label_examples(teacher: torch.nn.Module, uskd_model, test, n: int = 3) -> list[dict[str, Any]]:
    """For the first ``n`` test images: the teacher's normalised non-target distribution and the
    Zipf non-target labels USKD makes for itself (from its weak head and final head)."""
    x, y = next(iter(test))
    x, y = x[:n], y[:n]
    teacher.eval()
    uskd_model.eval()
    t = teacher(x).float()
    s, w = uskd_model.forward_both(x)
    log_s = F.log_softmax(s.float(), 1)
    p_w = F.softmax(w.float(), 1)
    score = p_w / (1 - p_w.gather(1, y[:, None]) + 1e-6) + log_s / (1 - log_s.gather(1, y[:, None]) + 1e-6)
    z = D.zipf_labels(score, y)
    t_nt = D._non_target_log_softmax(t, y, 1.0).exp()
    return [{"label": int(y[i]), "teacher": t_nt[i].tolist(), "zipf": z[i].tolist()} for i in range(n)]


def loss_surfaces(num_classes: int = 10, steps: int = 41, span: float = 4.0, seed: int = 0,
                  temperature: float = 4.0, tau_t: float = 4.0,
                  directions: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """KD, DIST (inter-class term) and PLD on the plane s = t + a·d1 + b·d2 around a random
    teacher logit vector t (the PLD paper's App. J), label y = argmax t.

    d1, d2 are random orthonormal directions unless ``directions`` gives them. DIST's
    intra-class term needs a batch; with one sample it is a constant, so only its inter-class
    (per-sample Pearson) term is drawn. Rows of each surface run over b, columns over a.
    """
    if num_classes < 2 or steps < 2 or span <= 0:
        raise ValueError(f"need num_classes ≥ 2, steps ≥ 2 and span > 0; got {num_classes}, {steps}, {span}")
    D.check_temperature("temperature", temperature)
    D.check_temperature("tau_t", tau_t)
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(1, num_classes, generator=g, dtype=torch.float64) * 2
    if directions is None:
        q, _ = torch.linalg.qr(torch.randn(num_classes, 2, generator=g, dtype=torch.float64))
        d1, d2 = q[:, 0], q[:, 1]
    else:
        d1, d2 = (torch.as_tensor(d, dtype=torch.float64).flatten() for d in directions)
        if d1.numel() != num_classes or d2.numel() != num_classes:
            raise ValueError(f"directions must have {num_classes} entries each")
    y = t.argmax(1)
    steps = min(steps, 3) if dry_run() else steps  # a dry run: a 3 × 3 plane
    grid = np.linspace(-span, span, steps)
    out = {name: np.zeros((steps, steps)) for name in ("KD", "DIST", "PLD")}
    for i, b in enumerate(grid):
        for j, a in enumerate(grid):
            s = t + a * d1 + b * d2
            out["KD"][i, j] = float(D.kd_loss(s, t, temperature))
            out["DIST"][i, j] = float(D.dist_loss(s, t, temperature, beta=1.0, gamma=0.0))
            out["PLD"][i, j] = float(D.pld_loss(s, t, y, tau_t))
    return {"grid": grid.tolist(), "surfaces": {k: v.tolist() for k, v in out.items()},
            "teacher": t[0].tolist(), "label": int(y), "d1": d1.tolist(), "d2": d2.tolist(),
            "num_classes": num_classes, "temperature": temperature, "tau_t": tau_t, "seed": seed}


def interpolation_grid(points: int, samples: int) -> tuple[list[float], int]:
    """The α values (``points`` from −0.5 to 1.5, so 0 and 1 are on the grid for odd ``points``
    ≥ 5) and the images per split of the CE ↔ PLD interpolation.

    In a dry run (``REPRO_DRY_RUN``) it shrinks to 3 points and 64 images, as every other
    evaluation shrinks to one batch there: the dry run checks the code path, not the curve.
    """
    if points < 2:
        raise ValueError(f"landscape_points must be ≥ 2, got {points}")
    if samples < 0:
        raise ValueError(f"landscape_samples must be ≥ 0 (0: all), got {samples}")
    if dry_run():
        points, samples = 3, 64
    return np.linspace(-0.5, 1.5, points).tolist(), samples


def interpolate_students(model_a: torch.nn.Module, model_b: torch.nn.Module, data: Any, points: int,
                         samples: int, device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """Train and test loss and top-1 along θ(α) = (1 − α)·θ_a + α·θ_b, the batch-norm running
    statistics re-estimated on the training subset at every α (``repro.plots.landscape.
    interpolate_1d`` with ``bn_batches``): the stored statistics belong to the end points only,
    and interpolating them is meaningless off [0, 1]."""
    alphas, n = interpolation_grid(points, samples)
    train_b = subset_batches(data, "train", n, device)
    test_b = subset_batches(data, "test", n, device)
    return interpolate_1d(model_a, model_b, {"train": train_b, "test": test_b}, alphas, bn_batches=train_b)


# --------------------------------------------------------------------------- corruptions (chapter 18)
def corrupt(images: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """uint8 test images under a synthetic corruption of fixed severity (≈ CIFAR-C level 3)."""
    x = images.float() / 255
    if kind == "clean":
        out = x
    elif kind == "gaussian_noise":
        g = torch.Generator().manual_seed(seed)
        out = x + 0.08 * torch.randn(x.shape, generator=g).to(x.device)
    elif kind == "blur":
        k = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        k2 = (k[:, None] * k[None, :]) / 16
        out = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2.expand(3, 1, 3, 3).contiguous(), groups=3)
    elif kind == "contrast":
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - m) * 0.4 + m
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


CORRUPTIONS = ("clean", "gaussian_noise", "blur", "contrast")


@torch.no_grad()
def corruption_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1 (%) on the test images under each corruption."""
    model.eval()
    if dry_run():  # one batch, as every evaluation in a dry run
        images, labels = images[:512], labels[:512]
    out = {}
    for kind in CORRUPTIONS:
        xc = corrupt(images, kind)
        correct = 0
        for s in range(0, len(xc), 512):
            logits = model(normalise(xc[s:s + 512].to(device)))
            correct += int((logits.argmax(1).cpu() == labels[s:s + 512].cpu()).sum())
            WORK["eval_batches"] += 1
        out[kind] = 100.0 * correct / len(xc)
    return out
