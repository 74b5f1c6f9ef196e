"""The comparison chapter's arm: a model some chapter of the family trains, obtained from that
chapter's code (loaded from the family's shared checkpoints when the chapter already trained
it, trained here otherwise), then evaluated with the comparison's one evaluation.

A chapter makes its models available with :func:`builder`: a function ``(config, data, seed,
checkpoints, device) → Built`` registered under a name. The ``standard`` builder covers every
model of the ``standard`` arm (plain, adversarially trained, fine-tuned); chapters whose models
are not plain networks (mixtures, self-ensembles) register their own in their arm modules.

Stochastic models are detected (two forward passes differ) and attacked with
``eot_samples`` gradient samples per step (EOT) by every attack that supports it; the others
are left as they are and the evaluation's record marks them non-adaptive (upper bounds).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ....arms import arm, load_family
from ....errors import ParameterError
from ....sweep import Job
from ..attacks import ATTACKS
from ..evaluate import EvalConfig, eval_images, evaluate
from ..protocol import CheckpointFor, RobustConfig, checkpoint_folders
from ..sanity import is_stochastic
from .standard import train_model


@dataclass
class Built:
    """A chapter's trained model for the comparison. ``model``: in eval mode; ``normalised``:
    it takes normalised inputs (``repro.data``'s) rather than [0, 1] pixels; ``fits``: the
    ``FitResult`` of every stage behind it (their cost is the model's); ``grad_evals``: its
    training cost in gradient evaluations; ``top1``: its clean top-1 over the whole test split
    (%); ``info``: anything the chapter wants on the record; ``surrogates``: parts of the model
    an attacker could attack instead (an ensemble's member), whose white-box adversarial
    images the evaluation also feeds the model (:func:`..evaluate.evaluate`)."""

    model: nn.Module
    normalised: bool
    fits: list[Any]
    grad_evals: float
    top1: float
    info: dict[str, Any] = field(default_factory=dict)
    surrogates: dict[str, nn.Module] = field(default_factory=dict)


BuildFn = Callable[[RobustConfig, Any, int, CheckpointFor, Any], Built]
BUILDERS: dict[str, BuildFn] = {}


def builder(name: str) -> Callable[[BuildFn], BuildFn]:
    """Register a chapter's model builder under ``name`` (the ``source`` of a
    :class:`CompareConfig`)."""
    def deco(fn: BuildFn) -> BuildFn:
        BUILDERS[name] = fn
        return fn
    return deco


@builder("standard")
def build_standard(cfg: RobustConfig, data: Any, seed: int, checkpoints: CheckpointFor, device: Any) -> Built:
    """A model of the ``standard`` arm (plain, adversarial or fine-tuned), from its shared
    checkpoint."""
    model, fits, grad_evals = train_model(cfg, data, seed, checkpoints, device, own=False)
    return Built(model.eval(), True, fits, float(sum(grad_evals)), float(fits[-1].history[-1]["test_acc"]))


@dataclass
class CompareConfig(RobustConfig):
    """One model of the comparison: ``source`` names its builder (:data:`BUILDERS`) and
    ``source_config`` is the config its chapter trains it with; ``eot_samples`` is the EOT of
    the attacks if the model turns out stochastic. The inherited fields repeat the source's
    network and recipe (the table reads them); ``eval`` is the comparison's evaluation."""

    source: str = "standard"
    source_config: RobustConfig | None = None
    eot_samples: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.source_config, RobustConfig):
            raise ParameterError("source_config must be the RobustConfig the model's chapter trains it with")
        if isinstance(self.eot_samples, bool) or not isinstance(self.eot_samples, int) or self.eot_samples < 1:
            raise ParameterError(f"eot_samples must be an integer ≥ 1, got {self.eot_samples!r}")
        if self.eval is None:
            raise ParameterError("a compared model needs the comparison's evaluation (eval)")

    def as_record(self) -> dict[str, Any]:
        rec = super().as_record()
        rec.update(source=self.source, source_config=self.source_config.as_record(), eot_samples=self.eot_samples)
        return rec


def compared(source: str, cfg: RobustConfig, ev: EvalConfig, title: str, eot_samples: int = 8
             ) -> tuple[str, CompareConfig]:
    """``("compare", config)`` for the model ``source`` builds from ``cfg``, evaluated by ``ev``."""
    load_family("robustness")  # every arm module registers its builders on import
    if source not in BUILDERS:
        raise ParameterError(f"no model builder {source!r}; builders: {', '.join(sorted(BUILDERS))}")
    kw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RobustConfig)
          if f.name not in ("eval", "title", "track_images")}
    return "compare", CompareConfig(**kw, eval=ev, title=title, source=source, source_config=cfg,
                                    eot_samples=eot_samples)


def with_eot(ev: EvalConfig, samples: int) -> EvalConfig:
    """``ev`` with ``samples`` EOT gradient samples in every attack that supports them, and
    marked adaptive."""
    specs = tuple(dataclasses.replace(s, eot_samples=samples) if ATTACKS[s.name].eot else s for s in ev.attacks)
    return dataclasses.replace(ev, attacks=specs, adaptive=True)


@arm("compare", family="robustness", config=CompareConfig)
def evaluate_compared(cfg: CompareConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
                      device: torch.device | str = "cpu", checkpoints: CheckpointFor | None = None) -> Job:
    """Build (load) the source model, then evaluate it with ``cfg.eval`` (EOT if stochastic).
    A model with surrogates is also attacked through them (transfer). Metrics: ``top1``,
    ``grad_evals``, ``eval_clean``, ``robust_<attack>`` (and ``robust_transfer_<surrogate>``),
    ``robust_worst``."""
    if checkpoints is None:
        checkpoints = checkpoint_folders(None, "", checkpoint_dir, "compare")
    built = BUILDERS[cfg.source](cfg.source_config, data, seed, checkpoints, device)
    model = built.model.eval()
    x, _, _ = eval_images(data.x_test, data.y_test, min(cfg.eval.images or 16, 16), cfg.eval.seed)
    probe = x.to(next(model.parameters()).device)
    if built.normalised:
        from ..attacks import PixelModel
        stochastic = is_stochastic(PixelModel(model).eval(), probe)
    else:
        stochastic = is_stochastic(model, probe)
    ev = with_eot(cfg.eval, cfg.eot_samples) if stochastic else cfg.eval
    res = evaluate(model, data.x_test, data.y_test, ev, normalised=built.normalised,
                   surrogates={k: m.eval() for k, m in built.surrogates.items()})
    metrics = {"top1": built.top1, "grad_evals": built.grad_evals, **res.metrics()}
    extra = {"title": cfg.title, "config": cfg.as_record(), "source": cfg.source, "stochastic": stochastic,
             "robustness": res.as_record(), "built": built.info}
    return Job.from_fits(built.fits, metrics, n_test=len(data.y_test), extra=extra, model=model,
                         test_var=res.test_var())
