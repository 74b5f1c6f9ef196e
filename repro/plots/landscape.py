"""Loss-landscape probes for torch classifiers: 1-D interpolation and 2-D random planes.

* ``interpolate_1d``: loss and accuracy along ``θ(α) = (1 − α) θ_a + α θ_b`` (Goodfellow
  et al. 2015), BatchNorm running statistics interpolated with the weights or, given
  ``bn_batches``, re-estimated at every α (``recalibrate_bn``); ``subset_batches`` draws the
  fixed evaluation subsets.
* ``plane_2d``: loss on ``θ* + a·d1 + b·d2`` with *filter-normalised* random directions
  (Li et al. 2018), so that scale-invariant layers (conv + BN) are compared fairly.

Both evaluate in eval mode (BN uses running statistics, dropout off) on a fixed list of
``(x, y)`` batches, and never modify the models passed in: they work on deep copies.

In a dry run (``REPRO_DRY_RUN``, see ``repro.train.dry_run``) both shrink, as every evaluation
does there: 3 points of the line, a 3 × 3 plane, one batch per point (``dry_points``).
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.func import functional_call

from ..train import WORK, dry_run
from .style import annotate_setting, jsonable, new_figure

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dry_points(points: Sequence[Any], keep: int = 3) -> list[Any]:
    """``points`` unchanged, or in a dry run only ``keep`` of them, evenly spaced and with both
    ends (a landscape's grid: the dry run checks the code path, not the curve)."""
    points = list(points)
    if not dry_run() or len(points) <= keep:
        return points
    return [points[i] for i in np.linspace(0, len(points) - 1, keep).round().astype(int)]


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def _evaluate(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn,
              params: Mapping[str, torch.Tensor] | None = None) -> tuple[float, float]:
    """Sample-weighted mean loss and top-1 accuracy (percent) of ``model`` on ``batches``.

    ``loss_fn(logits [B, C], y [B])`` must return the batch *mean*. With ``params`` the
    model is called functionally with those parameters replacing its own. A dry run
    evaluates the first batch only.
    """
    dev = _device(model)
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in itertools.islice(batches, 1 if dry_run() else None):
        x, y = x.to(dev), y.to(dev)
        out = model(x) if params is None else functional_call(model, dict(params), (x,))
        loss_sum += float(loss_fn(out, y)) * y.shape[0]
        correct += int((out.argmax(1) == y).sum())
        n += int(y.shape[0])
        WORK["eval_batches"] += 1
    if n == 0:
        raise ValueError("batches is empty")
    return loss_sum / n, 100.0 * correct / n


def subset_batches(data: Any, split: str, n: int, device: torch.device | str = "cpu",
                   batch_size: int = 1000) -> list[Batch]:
    """A fixed, un-augmented subset of ``n`` images of ``split`` (``"train"`` or ``"test"``)
    of a ``repro.data.Dataset``: the first ``n`` of a permutation seeded with 0 (``n ≤ 0`` =
    all), as a list of ``(x, y)`` batches of ``batch_size`` on ``device`` (one batch in a dry
    run, as every evaluation there)."""
    from ..data.loader import TensorLoader

    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = idx[: n] if n > 0 else idx
    if dry_run():
        idx = idx[:batch_size]
    return list(TensorLoader(x[idx], y[idx], batch_size, device, train=False))  # no shuffle/augment


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Batch]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of ``model`` (in place) as the exact
    average over ``batches`` (``(x, y)`` pairs; ``y`` is not used), then put the model in eval
    mode.

    Only the norm layers run in training mode (dropout stays off); a Ghost BN does so by
    ghost batches, as it would in training. A dry run uses the first batch only.
    """
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
        m.train()
    dev = _device(model)
    for x, _ in itertools.islice(batches, 1 if dry_run() else None):  # a dry run: one batch
        model(x.to(dev))
        WORK["eval_batches"] += 1
    for m, mom in zip(norms, saved):
        m.momentum = mom
    return model.eval()


def interpolate_1d(model_a: nn.Module, model_b: nn.Module,
                   batches: Sequence[Batch] | Mapping[str, Sequence[Batch]],
                   alphas: Iterable[float] | None = None, loss_fn: LossFn | None = None,
                   bn_batches: Sequence[Batch] | None = None) -> dict[str, Any]:
    """Loss and accuracy along the straight line between two models' weights.

    Args:
        model_a, model_b: the same architecture; ``θ(α) = (1 − α) θ_a + α θ_b`` for every
            floating-point parameter *and buffer* (integer buffers such as
            ``num_batches_tracked`` are taken from ``model_a``).
        batches: list of ``(x [B, ...], y [B])`` evaluated at every α (same data each time),
            or ``name → list`` of several such sets (e.g. ``{"train": …, "test": …}``), all
            evaluated at every α with the same weights (and the same re-estimated statistics).
        alphas: points to evaluate; default ``linspace(0, 1, 11)``. Values outside [0, 1]
            extrapolate. A dry run keeps 3 of them (``dry_points``).
        loss_fn: ``(logits, y) -> mean loss``; default cross-entropy.
        bn_batches: None (default): the BN running mean/var are interpolated with the
            weights (eval-mode BN uses them; an extrapolated variance is clamped at 0).
            A list of ``(x, y)`` batches: at every α the running statistics are re-estimated
            as the exact average over these batches (``recalibrate_bn``) before evaluating.
            The statistics stored with θ_a and θ_b describe the activations of those weights
            only; interpolating them is harmless between the ends but breaks down outside
            [0, 1], where an extrapolated running variance can reach zero and the loss
            explodes for a reason that has nothing to do with the landscape.

    Returns:
        ``{"alpha": [K], "loss": [K], "acc": [K] (percent), "n_samples": int, "bn":
        "interpolate" | "recalibrate"}``; for a mapping of batch sets, ``name →`` such a dict.
    """
    loss_fn = loss_fn or F.cross_entropy
    alphas = [float(a) for a in dry_points(np.linspace(0.0, 1.0, 11) if alphas is None else alphas)]
    named = dict(batches) if isinstance(batches, Mapping) else {"": batches}
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError("model_a and model_b must have the same architecture")
    dev = _device(model_a)
    work = copy.deepcopy(model_a).eval()
    sb = {k: v.to(dev) for k, v in sb.items()}
    bn = "interpolate" if bn_batches is None else "recalibrate"
    out = {name: {"alpha": alphas, "loss": [], "acc": [], "bn": bn,
                  "n_samples": sum(int(y.shape[0]) for _, y in b)} for name, b in named.items()}
    for a in alphas:
        state = {}
        for k, va in sa.items():
            if va.is_floating_point():
                v = torch.lerp(va.float(), sb[k].float(), a).to(va.dtype)
                if k.endswith("running_var"):
                    v = v.clamp_min(0.0)  # extrapolation (α outside [0, 1]) can go negative
                state[k] = v
            else:
                state[k] = va
        work.load_state_dict(state)
        if bn_batches is not None:
            recalibrate_bn(work, bn_batches)
        for name, b in named.items():
            loss, acc = _evaluate(work, b, loss_fn)
            out[name]["loss"].append(loss)
            out[name]["acc"].append(acc)
    return out if isinstance(batches, Mapping) else out[""]


def filter_normalized_directions(model: nn.Module, seed: int = 0, n: int = 2,
                                 ignore_1d: bool = True) -> list[dict[str, torch.Tensor]]:
    """``n`` random Gaussian directions in parameter space, filter-normalised.

    For every parameter with ``dim >= 2`` (conv ``[out, in, k, k]``, linear ``[out, in]``)
    each filter ``d[j]`` is rescaled to ``||θ[j]||``, the norm of the same filter of the
    weights (Li et al. 2018). 1-D parameters (biases, BN scale/shift) get a zero direction
    when ``ignore_1d`` (the paper's choice), else the same per-element-row rescaling of the
    whole vector. Directions are drawn on the CPU from ``torch.Generator().manual_seed(seed)``
    so they do not depend on the device.

    Returns:
        a list of ``n`` dicts ``name -> tensor`` shaped like ``model.named_parameters()``.
    """
    gen = torch.Generator().manual_seed(seed)
    out: list[dict[str, torch.Tensor]] = []
    for _ in range(n):
        d: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            w = p.detach()
            r = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.device)
            if w.dim() <= 1:
                if ignore_1d:
                    r = torch.zeros_like(r)
                else:
                    r = r * (w.float().norm() / (r.norm() + 1e-10))
            else:
                wf = w.float().reshape(w.shape[0], -1)
                rf = r.reshape(w.shape[0], -1)
                scale = wf.norm(dim=1, keepdim=True) / (rf.norm(dim=1, keepdim=True) + 1e-10)
                r = (rf * scale).reshape(w.shape)
            d[name] = r.to(w.dtype)
        out.append(d)
    return out


def plane_2d(model: nn.Module, batches: Sequence[Batch], steps: int = 11, span: float = 1.0,
             seed: int = 0, loss_fn: LossFn | None = None,
             directions: Sequence[Mapping[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """Loss and accuracy on the plane ``θ* + a·d1 + b·d2`` around the trained weights ``θ*``.

    Args:
        model: trained model (unchanged: evaluated through a deep copy in eval mode, with
            its BN running statistics held fixed).
        batches: list of ``(x, y)`` batches evaluated at every grid point.
        steps: grid points per axis (``steps**2`` evaluations).
        span: ``a`` and ``b`` run over ``linspace(-span, span, steps)``.
        seed: seed of the two filter-normalised directions (``filter_normalized_directions``).
        loss_fn: ``(logits, y) -> mean loss``; default cross-entropy.
        directions: two direction dicts to use instead of random ones.

    Returns:
        ``{"x": [steps], "y": [steps], "loss": [steps][steps], "acc": [steps][steps],
        "seed", "span", "steps", "n_samples"}`` with ``loss[i][j]`` at ``(a=x[j], b=y[i])``.
    """
    loss_fn = loss_fn or F.cross_entropy
    work = copy.deepcopy(model).eval()
    d1, d2 = directions if directions is not None else filter_normalized_directions(work, seed, 2)
    base = {k: v.detach() for k, v in work.named_parameters()}
    steps = min(steps, 3) if dry_run() else steps  # a dry run: 3 × 3 points
    coords = np.linspace(-span, span, steps)
    loss = np.zeros((steps, steps))
    acc = np.zeros((steps, steps))
    for i, b in enumerate(coords):
        for j, a in enumerate(coords):
            params = {k: w + float(a) * d1[k] + float(b) * d2[k] for k, w in base.items()}
            loss[i, j], acc[i, j] = _evaluate(work, batches, loss_fn, params)
    n = sum(int(y.shape[0]) for _, y in batches)
    return {"x": coords.tolist(), "y": coords.tolist(), "loss": loss.tolist(), "acc": acc.tolist(),
            "seed": seed, "span": float(span), "steps": int(steps), "n_samples": n}


def plot_1d(results: Mapping[str, Any], setting: str | None, title: str | None = None,
            logy: bool = False) -> tuple[Figure, dict]:
    """Loss (left) and accuracy (right) against α for one or several ``interpolate_1d`` results.

    Args:
        results: one ``interpolate_1d`` result, or ``label -> result``.
        setting: caption stating the experimental setting (required; ``""`` to omit).
        logy: log scale for the loss panel.
    """
    if "alpha" in results:
        results = {"": results}
    fig, (ax_l, ax_a) = new_figure(ncols=2)
    data: dict[str, Any] = {"curves": {}, "setting": setting, "title": title}
    for i, (label, r) in enumerate(results.items()):
        color = f"C{i % 10}"
        ax_l.plot(r["alpha"], r["loss"], marker="o", color=color, label=label or None)
        ax_a.plot(r["alpha"], r["acc"], marker="o", color=color, label=label or None)
        data["curves"][label] = {k: list(r[k]) for k in ("alpha", "loss", "acc")}
    for ax in (ax_l, ax_a):
        for endpoint in (0.0, 1.0):
            ax.axvline(endpoint, color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel(r"$\alpha$  ($\theta = (1-\alpha)\,\theta_a + \alpha\,\theta_b$)")
    ax_l.set_ylabel("loss")
    ax_a.set_ylabel("accuracy (%)")
    if logy:
        ax_l.set_yscale("log")
    if any(results.keys()):
        ax_l.legend()
    if title:
        fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable(data)


def plot_2d(result: Mapping[str, Any], setting: str | None, title: str | None = None,
            n_levels: int = 20, key: str = "loss") -> tuple[Figure, dict]:
    """Contour plot of a ``plane_2d`` result (``key`` = ``"loss"`` or ``"acc"``).

    Levels are log-spaced when the loss spans more than a factor of 10, so the basin near
    the minimum is resolved; the trained weights sit at the origin (marked).
    """
    x, y = np.asarray(result["x"]), np.asarray(result["y"])
    z = np.ma.masked_invalid(np.asarray(result[key], dtype=np.float64))
    zmin, zmax = float(z.min()), float(z.max())
    if key == "loss" and zmin > 0 and zmax / zmin > 10:
        levels = np.geomspace(zmin, zmax, n_levels)
    else:
        levels = np.linspace(zmin, zmax if zmax > zmin else zmin + 1e-12, n_levels)
    fig, ax = new_figure(width=4.6, height=3.9)
    cf = ax.contourf(x, y, z, levels=levels, cmap="viridis")
    ax.contour(x, y, z, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(cf, ax=ax, label="loss" if key == "loss" else "accuracy (%)", format="%.3g")
    ax.plot([0], [0], marker="*", color="#D55E00", markersize=10, linestyle="none")
    ax.set_xlabel(r"$\delta_1$ (filter-normalised)")
    ax.set_ylabel(r"$\delta_2$ (filter-normalised)")
    ax.set_aspect("equal")
    ax.grid(False)
    if title:
        ax.set_title(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"x": x.tolist(), "y": y.tolist(), key: np.asarray(result[key]).tolist(),
                          "levels": levels.tolist(), "seed": result.get("seed"), "span": result.get("span"),
                          "setting": setting, "title": title})
