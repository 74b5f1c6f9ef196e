"""The family's two arms: one network trained with the family's recipe.

* ``standard``: every parameter on fit's AdamW (this is also chapter 19's "gates trained
  jointly" ablation, when the network has gates);
* ``routing``: chapter 19's gradient routing: the gates get their own AdamW (``gate_lr``) and
  their own forward/backward pass before the main step (``repro.layers.hard_attention_gate.
  GradientRouting`` as fit's per-batch update); fit's AdamW holds every other parameter.

Each job's metrics: ``top1`` (final test top-1, %), ``gap`` (final train top-1 on augmented
batches minus test top-1, points), ``params``, ``mflops`` (forward, one image),
``images_per_s`` (median training throughput over epochs after the first) and
``grad_evals`` (forward–backward passes over one image, summed over training: routing takes
two a batch). Extra: ``title``, ``model``, ``model_kw``, ``history`` (fit's rows plus the
:mod:`~repro.families.architecture.traces` columns) and ``structure`` (the final learned
gate / ε / density vectors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ....arms import arm
from ....layers.hard_attention_gate import GradientRouting, split_gate_parameters
from ....sweep import Job
from ....train import fit
from .. import traces
from ..protocol import ArchConfig, build_model, model_cost, train_config


def _train(cfg: ArchConfig, data: Any, seed: int, checkpoint_dir: Path | None, device: Any,
           routing: bool) -> Job:
    model = build_model(cfg, data.num_classes, data.image_size, seed)
    cost = model_cost(model, data.image_size)
    params, update = None, None
    if routing:
        gates, params = split_gate_parameters(model)
        if not gates:
            raise ValueError(f"{cfg.title}: gradient routing needs gates (model_kw gates='hag')")
        update = GradientRouting(model, lr=cfg.gate_lr, label_smoothing=cfg.label_smoothing)
    res = fit(model, data.loader("train", cfg.batch_size, device, seed=seed), data.loader("test", 1000, device),
              train_config(cfg, device, desc=f"{cfg.title} · seed {seed}"), checkpoint_dir=checkpoint_dir,
              extra_eval=traces.trace, params=params, update=update)
    hist = res.history
    last = hist[-1]
    ips = [h["images_per_s"] for h in hist]
    metrics = {"top1": last["test_acc"], "gap": last["train_acc"] - last["test_acc"],
               "params": cost["params"], "mflops": cost["mflops"],
               "images_per_s": float(np.median(ips[1:] if len(ips) > 1 else ips)),
               "grad_evals": float(res.train_images * (2 if routing else 1))}
    extra = {"title": cfg.title, "model": cfg.model, "model_kw": cfg.model_kw, "routing": routing,
             "epochs": cfg.epochs, "history": hist, "structure": traces.final_structure(model)}
    return Job.from_fits([res], metrics, n_test=len(data.y_test), extra=extra, model=model)


@arm("standard", family="architecture", config=ArchConfig)
def train_standard(cfg: ArchConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
                   device: torch.device | str = "cpu") -> Job:
    """One network, every parameter on one AdamW (the family's recipe)."""
    return _train(cfg, data, seed, checkpoint_dir, device, routing=False)


@arm("routing", family="architecture", config=ArchConfig)
def train_routing(cfg: ArchConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
                  device: torch.device | str = "cpu") -> Job:
    """Hard-attention gates trained by gradient routing (chapter 19): a gate-only step, then
    the main step, every batch."""
    return _train(cfg, data, seed, checkpoint_dir, device, routing=True)
