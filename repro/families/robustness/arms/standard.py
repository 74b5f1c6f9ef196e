"""The family's one arm: a network trained with the family's SGD recipe on the chapter's data,
possibly poisoned, possibly adversarially, then evaluated.

``standard`` covers every model the CUDA chapter trains (clean or poisoned training set, plain
CE or adversarial training) and the plain and adversarially trained baselines of the other
chapters: the poison is applied to the training split only (``repro.data.poison``), the
adversarial loss is fit's ``loss_fn`` (:mod:`..training`), and the robustness evaluation
(:mod:`..evaluate`) runs on the clean test split after training, with the model in eval mode.

Each job's metrics: ``top1`` (final clean-test top-1 over the whole test split, %),
``train_acc`` (accuracy on the last epoch's training batches, %: augmented, poisoned where the
set is, adversarial under PGD-AT or FGSM-RS), ``grad_evals`` (forward–backward passes over one
image, summed over training, attack steps included) and, with an evaluation, ``eval_clean``,
``robust_<attack>`` and ``robust_worst`` on the fixed evaluation subset (their binomial
variance on that subset in ``test_var``). Extra: ``title``, ``config`` (every setting),
``history`` (fit's rows), ``poison`` (what the poison changed) and ``robustness`` (the
evaluation's record: subset indices, attack settings, sanity report, flags).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ....arms import arm
from ....data.poison import poison_dataset, poison_indices
from ....sweep import Job
from ....train import fit
from ..attacks import PixelModel, robust_accuracy
from ..evaluate import eval_images, evaluate
from ..protocol import CheckpointFor, RobustConfig, build_model, checkpoint_folders, train_config
from ..training import adversarial_loss, gradient_evals_per_step


def training_set(cfg: RobustConfig, data: Any) -> Any:
    """The data the arm trains on: ``data`` with its training split poisoned by ``cfg.poison``
    (``train_on="all"``), or only the training images that poison would leave clean
    (``train_on="unpoisoned"``: the control of a partial poison); ``data`` itself without a
    poison. The test split is never changed."""
    if cfg.poison is None:
        return data
    if cfg.train_on == "all":
        return poison_dataset(data, cfg.poison)
    n = len(data.y_train)
    keep = torch.ones(n, dtype=torch.bool)
    keep[poison_indices(n, cfg.poison.mix, cfg.poison.key)] = False
    info = {**data.info, "poison": {**cfg.poison.as_record(), "train_on": "unpoisoned", "poisoned": 0,
                                    "dropped": int(n - keep.sum()), "train": int(keep.sum())}}
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep], info=info)


def train_model(cfg: RobustConfig, data: Any, seed: int, checkpoints: CheckpointFor | None = None,
                device: torch.device | str = "cpu", own: bool = True) -> tuple[torch.nn.Module, list[Any], list[float]]:
    """The network ``cfg`` trains (its ``init`` trained first, or loaded from its checkpoint,
    when it fine-tunes) → ``(model, fits, grad_evals)``: every ``FitResult`` behind the model
    (the init's first) and the gradient evaluations of each (forward–backward passes over
    one image, attack steps included)."""
    fits: list[Any] = []
    grad_evals: list[float] = []
    if cfg.init is not None:
        model, fits, grad_evals = train_model(cfg.init, data, seed, checkpoints, device, own=False)
    else:
        model = build_model(cfg, data.num_classes, seed)
    train_data = training_set(cfg, data)
    loss_fn = adversarial_loss(cfg.adv) if cfg.adversarial else None
    stage = "fine-tune" if cfg.init is not None else ""
    desc = f"{cfg.title or cfg.model + (' ' + stage if stage else '')} · seed {seed}"
    res = fit(model, train_data.loader("train", cfg.batch_size, device, seed=seed), data.loader("test", 1000, device),
              train_config(cfg, desc=desc), loss_fn=loss_fn,
              checkpoint_dir=checkpoints(cfg, seed, own) if checkpoints is not None else None,
              extra_eval=robustness_tracker(cfg, data) if own and cfg.track_images else None)
    per_step = gradient_evals_per_step(cfg.adv) if cfg.adversarial else 1
    return model, fits + [res], grad_evals + [float(res.train_images * per_step)]


def robustness_tracker(cfg: RobustConfig, data: Any) -> Callable[[nn.Module], dict[str, float]]:
    """fit's ``extra_eval``: clean (``track_clean``) and robust (``track_robust``) accuracy of
    the model after each epoch, under the evaluation's white-box attack, on the first
    ``cfg.track_images`` images of the evaluation's fixed subset. The model is evaluated in
    eval mode and handed back in train mode; torch's RNG is forked, so tracking leaves the
    training's random draws (and so its weights) exactly as without it."""
    assert cfg.eval is not None
    x, y, _ = eval_images(data.x_test, data.y_test, cfg.eval.images, cfg.eval.seed)
    x, y = x[:cfg.track_images], y[:cfg.track_images]
    spec = cfg.eval.white_box()

    def track(model: nn.Module) -> dict[str, float]:
        dev = next(model.parameters()).device
        model.eval()
        try:
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                acc = robust_accuracy(PixelModel(model).eval(), x.to(dev), y.to(dev), (spec,), cfg.eval.batch_size)
        finally:
            model.train()
        return {"track_clean": acc["clean"], "track_robust": acc[spec.key]}
    return track


@arm("standard", family="robustness", config=RobustConfig)
def train_standard(cfg: RobustConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
                   device: torch.device | str = "cpu", checkpoints: CheckpointFor | None = None) -> Job:
    """One network on the (possibly poisoned) training set, plain or adversarial training
    (from scratch, or fine-tuning the model of ``cfg.init``), then the robustness evaluation
    of ``cfg.eval`` on the clean test set. ``checkpoints`` (from ``protocol.jobs``) places
    the checkpoints; without it they go to ``checkpoint_dir`` (the init's in a sub-folder)."""
    if checkpoints is None:
        checkpoints = checkpoint_folders(None, "", checkpoint_dir, "standard")
    train_data = training_set(cfg, data)
    model, fits, grad_evals = train_model(cfg, data, seed, checkpoints, device)
    res = fits[-1]
    last = res.history[-1]
    metrics = {"top1": last["test_acc"], "train_acc": last["train_acc"], "grad_evals": sum(grad_evals)}
    if cfg.init is not None:
        metrics["grad_evals_finetune"] = grad_evals[-1]
    extra: dict[str, Any] = {"title": cfg.title, "config": cfg.as_record(), "history": res.history,
                             "init_history": [f.history for f in fits[:-1]],
                             "poison": train_data.info.get("poison"), "train_images": int(len(train_data.y_train))}
    test_var: dict[str, float] = {}
    if cfg.eval is not None:
        model.eval()
        ev = evaluate(model, data.x_test, data.y_test, cfg.eval)
        metrics.update(ev.metrics())
        test_var = ev.test_var()
        extra["robustness"] = ev.as_record()
    return Job.from_fits(fits, metrics, n_test=len(data.y_test), extra=extra, model=model, test_var=test_var)
