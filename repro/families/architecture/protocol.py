"""What the architecture family's parameters build: the data subset, the typed config of one
trained network, its ``repro.train.TrainConfig``, its cost, and the sweep's jobs.

A chapter lists the networks it trains as ``label → (arm name, ArchConfig)`` (labels are
identifiers: they name the sweep's rows and the claims' arms) and :func:`jobs` turns them
into the jobs of ``repro.sweep.sweep(run, jobs)``. Every config of one chapter comes from the
same resolved parameters through :func:`arch_config`, so the recipe is the same for all arms
and only ``model`` / ``model_kw`` (and the routing switch) differ.
"""
from __future__ import annotations

from collections.abc import Mapping
import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ... import arms as _arms
from ... import models
from ...arms import make_config
from ...errors import ParameterError
from ...flops import count_flops
from ...sweep import Job, JobFn
from ...train import TrainConfig
from .. import common
from ..common import DataConfig, data_fingerprint, data_subset  # noqa: F401  (re-exported)

FAMILY = "architecture"


_MISSING = object()
#: SlotViT's slot defaults (repro.models.slot_vit): softmax attention, GELU, no gates.
SLOT_DEFAULTS: dict[str, Any] = {"mixer": "softmax", "activation": "gelu", "gates": None}


@dataclass
class ArchConfig:
    """One trained network under the family's recipe.

    ``model`` is a ``repro.models`` name and ``model_kw`` its keyword arguments (``mixer``,
    ``activation``, ``gates``, ``den``…); the rest is the recipe every arm of a chapter shares:
    AdamW, cosine schedule after a linear warm-up of ``warmup_epochs``, ``label_smoothing``,
    crop-and-flip augmentation (the loader's), ``grad_clip`` (0: none). ``routing`` trains the
    gates by gradient routing on their own AdamW of ``gate_lr`` (chapter 19). ``title`` is the
    arm's display name in figures. On CUDA every job trains under bf16 autocast; on the CPU
    only with ``cpu_bf16`` (and ``REPRO_CPU_PRECISION`` allowing it): on the development CPU
    (AVX512-BF16, no AMX) bf16 trains the slot ViTs at half the speed of fp32 (interleaved
    benchmark: 2 950 against 5 500 images/s for ``vit_slot_micro_p4`` at 16 px, batch 128).
    """

    model: str = "vit_slot_micro_p4"
    model_kw: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    label_smoothing: float = 0.1
    grad_clip: float = 0.0
    drop_path: float = 0.0
    routing: bool = False
    gate_lr: float = 1e-2
    cpu_bf16: bool = False
    title: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ParameterError(f"epochs and batch_size must be ≥ 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ParameterError("lr must be > 0, weight_decay and warmup_epochs ≥ 0")
        if not 0 <= self.label_smoothing < 1:
            raise ParameterError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.model not in models.available():
            raise ParameterError(f"unknown model {self.model!r}; available: {', '.join(models.available())}")
        # One spelling per network: a slot left at its default is dropped, so "activation gelu"
        # (chapter 20's baseline) and "mixer softmax" (26's) name the same model and share its
        # checkpoints (shared_checkpoint_dir).
        self.model_kw = {k: v for k, v in self.model_kw.items() if SLOT_DEFAULTS.get(k, _MISSING) != v}


def arch_config(params: Mapping[str, Any], model: str, title: str = "", **overrides: Any) -> ArchConfig:
    """An :class:`ArchConfig` with the recipe from a chapter's resolved ``params`` and the
    network ``model`` (``model_kw``, ``routing``… in ``overrides``)."""
    return make_config(ArchConfig, params, model=model, title=title or model, **overrides)


def build_model(cfg: ArchConfig, num_classes: int, image_size: int, seed: int) -> nn.Module:
    """The arm's network with seeded initial weights (a ParameterError from the builder, e.g.
    a patch size that does not divide the image, comes before any training)."""
    kw = dict(cfg.model_kw)
    if cfg.drop_path:
        kw.setdefault("drop_path_rate", cfg.drop_path)
    if _takes_img_size(cfg.model):  # transformers fix their token grid; CNNs take any size
        kw.setdefault("img_size", image_size)
    torch.manual_seed(seed)
    return models.create(cfg.model, num_classes=num_classes, **kw)


def _takes_img_size(model: str) -> bool:
    params = inspect.signature(models._REGISTRY[model]).parameters
    return "img_size" in params


def train_config(cfg: ArchConfig, device: Any = "cpu", **kw: Any) -> TrainConfig:
    """The family's recipe as a ``repro.train.TrainConfig`` for ``device`` (``kw`` sets any
    other field)."""
    low = torch.device(device).type == "cuda" or cfg.cpu_bf16
    base = dict(epochs=int(cfg.epochs), optimizer="adamw", lr=float(cfg.lr), weight_decay=float(cfg.weight_decay),
                bf16=low, channels_last=low,
                schedule="cosine", warmup_epochs=float(cfg.warmup_epochs),
                label_smoothing=float(cfg.label_smoothing), grad_clip=float(cfg.grad_clip) or None)
    return TrainConfig(**{**base, **kw})


def model_cost(model: nn.Module, image_size: int) -> dict[str, float]:
    """Parameters and forward FLOPs for one image (``repro.flops.count_flops``: multiply–add
    = 2, attention and FFTs counted), in units of 1 (params) and MFLOPs."""
    c = count_flops(model, (1, 3, image_size, image_size))
    return {"params": float(c["params"]), "mflops": c["flops"] / 1e6}


def shared_checkpoint_dir(run: Any, arm: str, cfg: ArchConfig, network: str, fingerprint: str, seed: int) -> Path:
    """The family's checkpoint folder of one job, shared by every chapter.

    Keyed by the arm, the network's structure (``repr`` of the built module: two configs that
    build the same network share it), the recipe, the data's content, the seed and the
    package's source hash (plus the run id under ``repro run --fresh``), so the comparison
    chapter and chapters with the same baseline (a softmax ViT with GELU) find a finished job
    and load it instead of training it again; its training cost is still counted in the
    record (``fit`` reports the cost of producing a model, resumed or not).
    """
    recipe = {k: v for k, v in asdict(cfg).items() if k != "title"}
    return common.shared_checkpoint_dir(run, FAMILY, f"{cfg.model}-s{seed}", [arm, network, recipe, fingerprint, seed])


def jobs(arms: Mapping[str, tuple[str, ArchConfig]], data: Any, device: Any = "cpu",
         run: Any = None) -> dict[str, JobFn]:
    """``label → (arm name, config)`` → ``label → job(seed, checkpoint_dir) -> Job`` for
    ``repro.sweep.sweep``. Every arm name must be registered in the family (ParameterError
    listing its arms otherwise); every network is built once here, so a bad model setting
    fails before the first job trains. With ``run``, checkpoints go to the family's shared
    folders (:func:`shared_checkpoint_dir`) instead of the sweep's per-chapter ones."""
    out: dict[str, JobFn] = {}
    fingerprint = data_fingerprint(data) if run is not None else ""
    for label, (name, cfg) in arms.items():
        impl = _arms.get(FAMILY, name).impl
        network = repr(build_model(cfg, data.num_classes, data.image_size, 0))  # fails early on a bad model_kw

        def job(seed: int, checkpoint_dir: Path | None, impl=impl, cfg=cfg, name=name, network=network) -> Job:
            if run is not None and checkpoint_dir is not None:
                checkpoint_dir = shared_checkpoint_dir(run, name, cfg, network, fingerprint, seed)
            return impl(cfg, data, seed, checkpoint_dir, device)
        out[label] = job
    return out
