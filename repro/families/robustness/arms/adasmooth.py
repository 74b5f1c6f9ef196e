"""The ``adasmooth`` arm (chapter 03): mix a standard network g and an adversarially trained
network h, with fixed weights and with a mixing network, and evaluate every mixture by attacks
on the whole composite.

One job per seed:

1. g and h: the networks the family's ``standard`` arm trains under ``cfg.base_g`` /
   ``cfg.base_h`` for this seed, loaded from its shared checkpoint when that job has finished
   (the chapter's sweep runs it first; nothing is trained or counted twice), trained here
   otherwise, or loaded from a weight file (``cfg.g_weights`` / ``cfg.h_weights``);
2. the α sweep: probability and logit mixing at every α of ``cfg.grid()`` (α = 0 is g, 1 is
   h), each attacked end to end by ``cfg.attack`` on the fixed evaluation subset, per image;
3. the mixing network, trained by ``repro.train.fit`` on the training split with the
   chapter's loss (:func:`..adasmooth.mixer_loss`: PGD through the composite, BCE on γ), only
   its own parameters updated, checkpointed in the family's shared folders;
4. the adaptive model on the same subset; and the family's evaluation (PGD, APGD-CE, APGD-T
   and the sanity checks, ``cfg.eval``) of g, h, both mixtures at the paper's fixed α and the
   adaptive model.

Metrics (points, on the evaluation subset unless said): ``clean_<m>`` and ``pgd_<m>`` (clean
and PGD-robust accuracy) for m in g, h, prob, logit (both at the fixed α) and adaptive;
``gain_prob``, ``gain_logit``, ``gain_adaptive`` (distance above the g–h chord,
:func:`..adasmooth.chord_gain`), ``prob_vs_logit`` (gain_prob − gain_logit),
``adaptive_vs_fixed`` (gain_adaptive − gain_prob), ``conf_gap_adv`` / ``conf_gap_clean`` (h's
mean top-class confidence on its correct minus its wrong predictions, attacked / clean),
``alpha_clean`` / ``alpha_adv`` (the adaptive model's mean α), ``mixer_grad_evals``; and the
family's ``eval_clean``, ``robust_<attack>``, ``robust_worst`` of the adaptive model on the
check subset. Every metric carries its test-set variance: binomial for accuracies, a paired
bootstrap over the evaluation images for the differences.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ....arms import arm
from ....data import MEAN, STD
from ....errors import ParameterError
from ....sweep import Job
from ....train import checkpoint_name, dry_run, fit, precision
from ..adasmooth import (CLAIM_POINTS, AdaSmoothConfig, PointResult, binomial_var, bootstrap_var, build_mixer,
                         confidence_gap, evaluate_point, gain_of, mechanics, mixed_model, mixer_grad_evals_per_image,
                         mixer_loss)
from ..evaluate import eval_images, evaluate
from ..protocol import CheckpointFor, RobustConfig, build_model, checkpoint_folders, train_config
from .compare import Built, builder
from .standard import train_model

#: Bootstrap resamples of the evaluation images behind each derived metric's test variance.
BOOTSTRAPS = 1000
#: Images of the mechanics check (log-probability and gradient reach).
MECHANICS_IMAGES = 64
#: A dry run (one step per fit, one batch per evaluation) checks the code path, not the
#: numbers: it sweeps only α = 0, the paper's α and 1, attacks batches of this many images and
#: trains the mixing network's one step on at most twice as many.
DRY_RUN_BATCH = 16


def _load_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a repro.train checkpoint, or {"model": state_dict}
    if not isinstance(state, dict):
        raise ParameterError(f"{path}: not a state dict")
    return state


def base_network(cfg: RobustConfig, weights: str, data: Any, seed: int, checkpoints: CheckpointFor | None,
                 device: torch.device | str) -> tuple[nn.Module, list[Any], list[float], str]:
    """``(network in eval mode, fits, grad_evals, source)`` of a base network: from
    ``weights`` (a state dict of ``cfg``'s network; ParameterError if missing or mismatched),
    from the finished checkpoint the ``standard`` arm wrote for ``(cfg, seed)`` (no fits: its
    cost was counted by that job), or trained here by ``train_model`` (a dry run always takes
    this path, one step, and leaves no checkpoint)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ParameterError(f"weight file {path} not found")
        model = build_model(cfg, data.num_classes, seed)
        try:
            model.load_state_dict(_load_state(path))
        except RuntimeError as exc:
            raise ParameterError(f"{path} does not fit a {cfg.model} with {data.num_classes} classes: {exc}") from None
        return model.to(device).eval(), [], [], f"weight file {path}"
    folder = checkpoints(cfg, seed) if checkpoints is not None else None
    if folder is not None and not dry_run():
        tc = train_config(cfg)
        ckpt = Path(folder) / checkpoint_name(precision(device, tc.bf16, tc.channels_last))
        if ckpt.is_file():
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            if int(state.get("epoch", -1)) == int(cfg.epochs) and state.get("partial") is None:
                model = build_model(cfg, data.num_classes, seed)
                model.load_state_dict(state["model"])
                return model.to(device).eval(), [], [], "checkpoint of the standard arm"
    model, fits, grad_evals = train_model(cfg, data, seed, checkpoints, device, own=False)
    return model.eval(), fits, grad_evals, "trained in this job"


def _rounded(a: np.ndarray, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(a, dtype=float)]


def derived_metrics(points: dict[str, PointResult], seed: int = 0, boots: int = BOOTSTRAPS
                    ) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """``(metrics, test_var, warnings)`` from the per-image results of the claim models (see
    the module docstring); a statistic that cannot be formed (no chord, an empty group) is
    0 with a warning, which the chapter's guards turn into a flag."""
    metrics: dict[str, float] = {}
    var: dict[str, float] = {}
    warnings: dict[str, str] = {}
    n = min(p.n for p in points.values())
    for k, p in points.items():
        for name, arr in (("clean", p.clean), ("pgd", p.robust)):
            v = 100.0 * float(arr.mean())
            metrics[f"{name}_{k}"], var[f"{name}_{k}"] = v, binomial_var(v, p.n)
    g, h = points["g"], points["h"]
    stats = {
        "gain_prob": lambda i=None: gain_of(g, h, points["prob"], i),
        "gain_logit": lambda i=None: gain_of(g, h, points["logit"], i),
        "gain_adaptive": lambda i=None: gain_of(g, h, points["adaptive"], i),
        "prob_vs_logit": lambda i=None: gain_of(g, h, points["prob"], i) - gain_of(g, h, points["logit"], i),
        "adaptive_vs_fixed": lambda i=None: gain_of(g, h, points["adaptive"], i) - gain_of(g, h, points["prob"], i),
        "conf_gap_adv": lambda i=None: confidence_gap(h.conf_adv, h.adv, i),
        "conf_gap_clean": lambda i=None: confidence_gap(h.conf_clean, h.clean, i),
    }
    for j, (name, stat) in enumerate(stats.items()):
        v = float(stat())
        if not np.isfinite(v):
            warnings[name] = ("g and h have the same clean accuracy: no chord to measure against" if "gain" in name
                              or "vs" in name else "h has no correct or no wrong prediction to compare")
            v = 0.0
        metrics[name] = v
        var[name] = bootstrap_var(stat, n, boots, seed=seed * 1000 + j)
    ada = points["adaptive"]
    metrics["alpha_clean"], metrics["alpha_adv"] = float(ada.alpha_clean.mean()), float(ada.alpha_adv.mean())
    return metrics, var, warnings


def train_mixer(cfg: AdaSmoothConfig, g: nn.Module, h: nn.Module, data: Any, seed: int, folder: Path | None,
                device: torch.device | str) -> tuple[nn.Module, Any]:
    """``(adaptive model in eval mode, FitResult)``: the mixing network on frozen ``g`` and
    ``h``, trained by ``fit`` with only its own parameters updated (checkpointed in
    ``folder``: a finished one is loaded)."""
    # seeded here, so that it starts alike whether g and h were loaded or trained
    torch.manual_seed(seed)
    mixer = build_mixer(g, h, data.image_size, cfg.mixer.width)
    ada = mixed_model(g, h, cfg.mixer, mixer=mixer).to(device)
    batch = min(cfg.batch_size, 2 * DRY_RUN_BATCH) if dry_run() else cfg.batch_size
    res = fit(ada, data.loader("train", batch, device, seed=seed), data.loader("test", 1000, device),
              train_config(cfg, optimizer="adamw", desc=f"mixing network · seed {seed}"),
              loss_fn=mixer_loss(cfg.mixer), params=list(mixer.parameters()), checkpoint_dir=folder)
    return ada.eval(), res


@builder("adasmooth")
def build_adaptive(cfg: AdaSmoothConfig, data: Any, seed: int, checkpoints: CheckpointFor, device: Any) -> Built:
    """The adaptive model for the family comparison: g and h from the ``standard`` arm's
    shared checkpoints (or weight files), the mixing network from the ``adasmooth`` arm's own
    (trained here if absent). Its cost counts g, h and the mixing network."""
    if not isinstance(cfg, AdaSmoothConfig):
        raise ParameterError(f"the adasmooth builder takes an AdaSmoothConfig, got {type(cfg).__name__}")
    parts = []
    for base, weights in ((cfg.base_g, cfg.g_weights), (cfg.base_h, cfg.h_weights)):
        if weights:
            net, fits, evals, _ = base_network(base, weights, data, seed, None, device)
        else:
            net, fits, evals = train_model(base, data, seed, checkpoints, device, own=False)
        parts.append((net.eval(), fits, evals))
    (g, fits_g, ge_g), (h, fits_h, ge_h) = parts
    ada, res = train_mixer(cfg, g, h, data, seed, checkpoints(cfg, seed, of="adasmooth"), device)
    evals = sum(ge_g) + sum(ge_h) + float(res.train_images * mixer_grad_evals_per_image(cfg.mixer))
    return Built(ada, True, [*fits_g, *fits_h, res], evals, float(res.history[-1]["test_acc"]),
                 {"alpha_range": [cfg.mixer.alpha_bias, cfg.mixer.alpha_bias + cfg.mixer.alpha_scale]})


@arm("adasmooth", family="robustness", config=AdaSmoothConfig)
def train_adasmooth(cfg: AdaSmoothConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
                    device: torch.device | str = "cpu", checkpoints: CheckpointFor | None = None) -> Job:
    """Adaptive smoothing for one seed: bases, α sweep, mixing network, evaluations (module
    docstring). ``checkpoints`` (from ``protocol.jobs``) places every checkpoint; without it
    they go under ``checkpoint_dir``."""
    if not isinstance(cfg, AdaSmoothConfig):
        raise ParameterError(f"the adasmooth arm takes an AdaSmoothConfig, got {type(cfg).__name__}")
    if checkpoints is None:
        checkpoints = checkpoint_folders(None, "", checkpoint_dir, "adasmooth")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    g, fits_g, ge_g, src_g = base_network(cfg.base_g, cfg.g_weights, data, seed, checkpoints, device)
    h, fits_h, ge_h, src_h = base_network(cfg.base_h, cfg.h_weights, data, seed, checkpoints, device)
    seconds["bases"] = time.perf_counter() - t0

    x01, y, indices = eval_images(data.x_test, data.y_test, cfg.images, cfg.image_seed)
    fixed = round(cfg.fixed_alpha, 6)
    dry = dry_run()
    check_cfg = dataclasses.replace(cfg.eval, batch_size=DRY_RUN_BATCH) if dry else cfg.eval
    bs = check_cfg.batch_size
    grid = sorted({0.0, fixed, 1.0}) if dry else cfg.grid()
    points: dict[str, PointResult] = {}
    sweep: list[dict[str, Any]] = []
    fixed_models: dict[str, nn.Module] = {}
    t0 = time.perf_counter()
    for a in grid:
        for mode in (("prob",) if a in (0.0, 1.0) else ("prob", "logit")):
            label = "g" if a == 0 else "h" if a == 1 else f"{mode}_{a:g}"
            model = mixed_model(g, h, cfg.mixer, mode=mode, alpha=a).to(device).eval()
            r = evaluate_point(model, x01, y, cfg.attack, label, bs)
            sweep.append(r.summary())
            key = label if label in ("g", "h") else mode if a == fixed else None
            if key is not None:
                points[key], fixed_models[key] = r, model
    seconds["sweep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ada, res = train_mixer(cfg, g, h, data, seed, checkpoints(cfg, seed, own=True), device)
    seconds["mixer"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    points["adaptive"] = evaluate_point(ada, x01, y, cfg.attack, "adaptive", bs)
    sweep.append(points["adaptive"].summary())
    fixed_models["adaptive"] = ada
    seconds["adaptive"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    checks = {k: evaluate(fixed_models[k].eval(), data.x_test, data.y_test, check_cfg) for k in CLAIM_POINTS}
    seconds["checks"] = time.perf_counter() - t0

    m = min(MECHANICS_IMAGES, len(x01))
    z = (x01[:m].to(device) - torch.tensor(MEAN, device=device).view(1, -1, 1, 1)) \
        / torch.tensor(STD, device=device).view(1, -1, 1, 1)
    mech = {k: mechanics(fixed_models[k], z, y[:m].to(device)) for k in ("prob", "logit", "adaptive")}

    metrics, test_var, warnings = derived_metrics(points, seed)
    ev = checks["adaptive"]
    metrics.update(ev.metrics())
    test_var.update(ev.test_var())
    metrics["mixer_grad_evals"] = float(res.train_images * mixer_grad_evals_per_image(cfg.mixer))
    h_pt = points["h"]
    extra: dict[str, Any] = {
        "title": cfg.title, "config": cfg.as_record(), "bases": {"g": src_g, "h": src_h},
        "fixed_alpha": cfg.fixed_alpha, "alpha_range": [cfg.mixer.alpha_bias, cfg.mixer.alpha_bias + cfg.mixer.alpha_scale],
        "eval_indices": indices[:points["g"].n], "sweep": sweep, "points": {k: p.summary() for k, p in points.items()},
        "h_confidence": {"clean_correct": _rounded(h_pt.conf_clean[h_pt.clean]),
                         "clean_wrong": _rounded(h_pt.conf_clean[~h_pt.clean]),
                         "adv_correct": _rounded(h_pt.conf_adv[h_pt.adv]),
                         "adv_wrong": _rounded(h_pt.conf_adv[~h_pt.adv])},
        "alpha_values": {"clean": _rounded(points["adaptive"].alpha_clean),
                         "adv": _rounded(points["adaptive"].alpha_adv)},
        "checks": {k: e.as_record() for k, e in checks.items()}, "mechanics": mech,
        "mixer_history": res.history, "base_grad_evals": sum(ge_g) + sum(ge_h), "warnings": warnings,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    return Job.from_fits([*fits_g, *fits_h, res], metrics, n_test=len(data.y_test), extra=extra, model=ada,
                         test_var=test_var)

