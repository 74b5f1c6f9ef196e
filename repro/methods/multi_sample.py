"""The multi-sample dropout experiment: one training job per (M, seed), same init and data
order for every M of a seed, so that differences come from the number of samples alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import models
from ..data import Dataset
from ..layers.multi_sample_dropout import multi_sample_dropout_loss
from ..plots import bar_with_errors, training_curves
from ..train import TrainConfig, fit


def run_arm(num_samples: int, data: Dataset, params: dict[str, Any], seed: int,
            device: torch.device | str = "cpu", checkpoint_dir: Path | None = None) -> dict[str, Any]:
    """Train one model with M = ``num_samples`` dropout samples; return its history.

    params: the chapter's resolved parameters (model, dropout, epochs, batch_size, lr,
    weight_decay, loss_mode). Each history row gains ``test_err`` (100 − top-1).
    """
    torch.manual_seed(seed)  # same initial weights for every M of this seed
    model = models.create(params["model"], num_classes=data.num_classes, drop_rate=params["dropout"])
    cfg = TrainConfig(epochs=params["epochs"], lr=params["lr"], momentum=0.9,
                      weight_decay=params["weight_decay"], schedule="cosine",
                      desc=f"M={num_samples} seed {seed}")
    res = fit(model, data.loader("train", params["batch_size"], device, seed=seed),
              data.loader("test", 1000, device), cfg,
              loss_fn=multi_sample_dropout_loss(num_samples, params["loss_mode"]),
              checkpoint_dir=checkpoint_dir)
    history = [dict(h, test_err=100.0 - h["test_acc"]) for h in res.history]
    return {"M": num_samples, "seed": seed, "history": history,
            "final_test_err": history[-1]["test_err"],
            "epoch_s": float(np.median([h["epoch_s"] for h in history]))}


def epochs_to_reach(history: list[dict], key: str, target: float) -> float | None:
    """First epoch whose ``key`` is ≤ target (None if never)."""
    for h in history:
        if h[key] <= target:
            return float(h["epoch"])
    return None


def seed_metrics(arms: list[dict], seed: int, samples: list[int], loss_epoch: int) -> dict[str, float]:
    """Per-seed numbers the claims use, comparing the largest M with M = 1 (or the smallest M).

    train_loss_gain: train loss(M_min) − train loss(M_max) at epoch ``loss_epoch`` (> 0 = faster);
    test_err_gain: final test error(M_min) − final test error(M_max), points (> 0 = better);
    overhead_pct: 100·(median epoch time M_max / M_min − 1); overhead_margin = 10 − overhead_pct.
    """
    by = {a["M"]: a for a in arms if a["seed"] == seed}
    lo, hi = by[min(samples)], by[max(samples)]
    i = min(max(loss_epoch, 1), len(lo["history"])) - 1
    overhead = 100.0 * (hi["epoch_s"] / lo["epoch_s"] - 1.0)
    out = {
        "train_loss_gain": lo["history"][i]["train_loss"] - hi["history"][i]["train_loss"],
        "test_err_gain": lo["final_test_err"] - hi["final_test_err"],
        "overhead_pct": overhead,
        "overhead_margin": 10.0 - overhead,
    }
    for m, a in by.items():
        out[f"test_err_M{m}"] = a["final_test_err"]
    return out


def plot_curves(arms: list[dict], samples: list[int], setting: str):
    """Key figure: train loss and test error vs epoch, one line per M (mean, min–max band)."""
    hist = {f"M = {m}": [a["history"] for a in arms if a["M"] == m] for m in samples}
    return training_curves(hist, x="epoch", ys=("train_loss", "test_err"), setting=setting,
                           title="Multi-sample dropout: training loss and test error by number of samples M")


def plot_final_error(arms: list[dict], samples: list[int], setting: str):
    """Final test error per M, one dot per seed."""
    vals = {f"M = {m}": [a["final_test_err"] for a in arms if a["M"] == m] for m in samples}
    return bar_with_errors(vals, ylabel="final test error (%)", setting=setting,
                           title="Final test error vs number of dropout samples")


def plot_epoch_time(arms: list[dict], samples: list[int], setting: str):
    """Median seconds per training epoch per M (the 'small extra cost' claim)."""
    vals = {f"M = {m}": [a["epoch_s"] for a in arms if a["M"] == m] for m in samples}
    return bar_with_errors(vals, ylabel="seconds per epoch (median)", setting=setting,
                           title="Cost: time per training epoch vs M")
