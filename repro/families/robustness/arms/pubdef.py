"""PubDef (Sitawarin et al., ICLR 2024): train a target against *pre-computed, fixed* transfer
examples from a few public source models, then evaluate it under transfer attacks.

The arm trains one target model and measures it twice: the family's white-box evaluation with
its sanity checks (``cfg.eval``, :mod:`..evaluate`) and the transfer evaluation from a zoo of
source models (``cfg.transfer``, :mod:`..transfer`). What it trains depends on
:class:`PubDefConfig.defence`:

* ``defence=None``: exactly the model the family's ``standard`` arm trains under the same
  recipe (plain or adversarial training), loaded from its shared checkpoint when another job
  or chapter has trained it: the undefended and the white-box-AT targets of chapter 32;
* a :class:`PubDefTraining`: PubDef. The start (``cfg.init``, normally the standard target)
  is trained or loaded; every training source (a recipe the ``standard`` arm trains, i.e. a
  model of the zoo) is attacked by PGD on the *whole training set*, ``copies`` times with
  different random starts; the sets are stored as 8-bit images in the source's checkpoint
  folder (:func:`training_sets`) and never change again. The target is then fine-tuned by the
  one trainer, ``fit``, on batches built by :class:`SlotLoader`: each example contributes its
  clean image and, in ``"mix"`` mode (the paper's scripts), one copy from one source drawn at
  random per example and epoch (``"stack"``: one copy from every source). Each slot is
  augmented (crop, flip) on its own, as the paper's loader transforms each data set apart. The
  loss (:func:`slot_loss`) is Σ_d w_d · CE over the slots, the weights normalised to sum to 1
  (equal weights: the paper's scripts). No attack runs inside the training loop.

Metrics per job (besides the standard arm's ``top1``, ``train_acc``, ``grad_evals`` and the
white-box ``eval_clean`` / ``robust_<attack>`` / ``robust_worst``): the transfer metrics of
:meth:`..transfer.TransferResult.metrics` (worst case and mean over (source, attack) pairs,
over all sources, the seen ones and the held-out ones), each with its binomial variance on the
evaluation subset; for PubDef also ``grad_evals_finetune`` and ``grad_evals_precompute`` (the
attack's gradient evaluations on the sources, a one-off cost). ``train_s`` counts the target's
training only: the zoo stands for public models the defender does not train (their cost is in
``extra["zoo"]``).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ....arms import arm
from ....data.loader import TensorLoader, random_crop_flip
from ....errors import ParameterError
from ....sweep import Job
from ....train import LossFn, dry_run, fit
from ...common import tensor_fingerprint
from ..attacks import AttackSpec, check_attack
from ..evaluate import evaluate
from ..protocol import CheckpointFor, RobustConfig, build_model, checkpoint_folders, train_config
from ..transfer import Source, TransferConfig, ZooModel, cached, craft, evaluate_transfer, source_folder, \
    train_zoo, transfer_sets
from .compare import Built, builder
from .standard import train_model

MODES = ("mix", "stack")


@dataclass(frozen=True)
class PubDefTraining:
    """PubDef's training against pre-computed transfer examples.

    sources: the training sources (:class:`..transfer.Source`, models of the zoo); attack:
    the attack that crafts the training examples on each source (the paper: L∞ PGD, 10 steps,
    ε = 8/255), copy ``c`` running with seed ``attack.seed + c``; copies: adversarial copies
    per training image and source (the paper: 4); mode: "mix" (the clean slot plus one copy
    from a random source per example) or "stack" (the clean slot plus one copy from every
    source); weights: the slots' weights before normalisation — 2 in "mix" mode (clean,
    adversarial), 1 + len(sources) in "stack" mode; () for equal weights; batch_size: images
    per crafting batch (the attack's randomness depends on it). ParameterError at
    construction for anything out of range."""

    sources: tuple[Source, ...]
    attack: AttackSpec
    copies: int = 1
    mode: str = "mix"
    weights: tuple[float, ...] = ()
    batch_size: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not self.sources or not all(isinstance(s, Source) for s in self.sources):
            raise ParameterError("PubDef needs at least one training source (a transfer.Source)")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ParameterError(f"training sources repeat: {names}")
        if not isinstance(self.attack, AttackSpec):
            raise ParameterError(f"attack must be an AttackSpec, got {type(self.attack).__name__}")
        check_attack(self.attack)
        if self.attack.norm != "Linf":
            raise ParameterError("PubDef's training sets are stored as 8-bit images: the attack must be L∞")
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 1:
            raise ParameterError(f"copies must be an integer ≥ 1, got {self.copies!r}")
        if self.mode not in MODES:
            raise ParameterError(f"unknown PubDef mode {self.mode!r}: one of {', '.join(MODES)}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ParameterError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}")
        if self.weights:
            want = self.slots
            if len(self.weights) != want:
                raise ParameterError(f"{self.mode} mode has {want} slots (clean + "
                                     f"{'one adversarial copy' if self.mode == 'mix' else 'one per source'}), "
                                     f"got {len(self.weights)} weights")
            if any(not w >= 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ParameterError(f"weights must be ≥ 0 with a positive sum, got {list(self.weights)}")

    @property
    def slots(self) -> int:
        """Images per example in a training batch: the clean one and the adversarial ones."""
        return 2 if self.mode == "mix" else 1 + len(self.sources)

    def slot_weights(self) -> tuple[float, ...]:
        """The slots' weights, normalised to sum to 1 (equal without ``weights``)."""
        w = self.weights or (1.0,) * self.slots
        total = sum(w)
        return tuple(x / total for x in w)

    def copy_spec(self, copy: int) -> AttackSpec:
        """The attack of adversarial copy ``copy`` (its own seed, hence its own random start)."""
        return dataclasses.replace(self.attack, seed=int(self.attack.seed) + copy)

    def grad_evals(self, n_images: int) -> float:
        """Gradient evaluations (one forward–backward over one image) of crafting the sets."""
        return float(len(self.sources) * self.copies * n_images * self.attack.effective_steps())

    def as_record(self) -> dict[str, Any]:
        return {"sources": [s.as_record() for s in self.sources], "attack": self.attack.as_record(),
                "copies": self.copies, "mode": self.mode, "weights": list(self.slot_weights()),
                "batch_size": self.batch_size}

    def key(self) -> dict[str, Any]:
        """What determines the training sets and the fine-tuning (for the checkpoint key)."""
        return {"sources": [s.key() | {"name": s.name} for s in self.sources], "attack": self.attack.as_record(),
                "copies": self.copies, "mode": self.mode, "weights": list(self.slot_weights()),
                "batch_size": self.batch_size}


@dataclass
class PubDefConfig(RobustConfig):
    """A target of chapter 32: the family's recipe (:class:`..protocol.RobustConfig`), plus
    ``defence`` (:class:`PubDefTraining`; None: the ``standard`` arm's model of the same
    recipe) and ``transfer`` (:class:`..transfer.TransferConfig`; None: no transfer
    evaluation). With a defence, ``init`` is the model PubDef fine-tunes (None: from
    scratch) and the recipe's ``epochs``, ``lr``… are the fine-tuning's; no poison and no
    adversarial training go with it, and the transfer evaluation's ``seen`` sources must be
    the defence's training sources."""

    defence: PubDefTraining | None = None
    transfer: TransferConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.defence is not None and not isinstance(self.defence, PubDefTraining):
            raise ParameterError(f"defence must be a PubDefTraining or None, got {type(self.defence).__name__}")
        if self.transfer is not None and not isinstance(self.transfer, TransferConfig):
            raise ParameterError(f"transfer must be a TransferConfig or None, got {type(self.transfer).__name__}")
        if self.defence is not None:
            if self.adversarial or self.poison is not None:
                raise ParameterError("PubDef trains on clean and pre-computed transfer images: no adversarial "
                                     "training (adv) and no poison go with a defence")
            if self.transfer is not None:
                names = {s.name for s in self.defence.sources}
                if set(self.transfer.seen) != names:
                    raise ParameterError(f"the transfer evaluation's seen sources {sorted(self.transfer.seen)} must be "
                                         f"the defence's training sources {sorted(names)}")
                zoo = {s.name: s for s in self.transfer.sources}
                for s in self.defence.sources:
                    if zoo.get(s.name) not in (None, s):
                        raise ParameterError(f"source {s.name} differs between the defence and the transfer evaluation")

    def as_record(self) -> dict[str, Any]:
        return {**super().as_record(), "defence": self.defence.as_record() if self.defence is not None else None,
                "transfer": self.transfer.as_record() if self.transfer is not None else None}

    def recipe(self) -> dict[str, Any]:
        """The weights depend on the defence, not on the transfer evaluation."""
        rec = super().recipe()
        rec.pop("transfer", None)
        if self.defence is not None:
            rec["defence"] = self.defence.key()
        return rec


def plain_config(cfg: RobustConfig) -> RobustConfig:
    """The family's :class:`RobustConfig` of ``cfg`` (its fields only): the recipe the
    ``standard`` arm trains, so that an undefended target shares that arm's checkpoint."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RobustConfig)}
    return RobustConfig(**fields)


# -- training sets ------------------------------------------------------------------------------------------
def training_sets(defence: PubDefTraining, data: Any, zoo: Mapping[str, ZooModel],
                  checkpoints: CheckpointFor | None) -> torch.Tensor:
    """uint8 ``[sources, copies, N, 3, S, S]``: every training image attacked on every
    training source, ``copies`` times (:meth:`PubDefTraining.copy_spec`), stored as 8-bit
    images (:func:`..transfer.quantise`) in the source's checkpoint folder and loaded from
    there afterwards. A dry run attacks the first batch only; the rest of its set is the clean
    images (it checks the plumbing, never a result)."""
    x, y = data.x_train.cpu(), data.y_train.long().cpu()
    fp = tensor_fingerprint(x, y)
    out = torch.empty((len(defence.sources), defence.copies, *x.shape), dtype=torch.uint8)
    for i, s in enumerate(defence.sources):
        if s.name not in zoo:
            raise ParameterError(f"no trained model for training source {s.name}")
        for c in range(defence.copies):
            spec = defence.copy_spec(c)
            key = {"set": "train", "source": s.key(), "attack": spec.as_record(), "data": fp,
                   "batch_size": defence.batch_size}

            def make(model=zoo[s.name].model, spec=spec) -> dict[str, Any]:
                return {"adv": craft(model, x, y, spec, defence.batch_size)}
            adv = cached(source_folder(checkpoints, s), key, make, prefix="pubdef-train")["adv"]
            if len(adv) < len(x):  # a dry run's partial set
                adv = torch.cat([adv, x[len(adv):]])
            out[i, c] = adv
    return out


class SlotLoader(TensorLoader):
    """Training batches of PubDef: per example, its clean image and adversarial copies from
    the pre-computed ``sets`` (uint8 ``[sources, copies, N, 3, S, S]`` aligned with
    ``images``). ``mode="mix"``: one copy of one source drawn at random per example; "stack":
    one random copy of every source. Each image is then cropped and flipped on its own. A
    batch of B examples is ``x = [clean; slot 1; …]`` (slots × B images, slot by slot) with
    the labels repeated the same way — the layout :func:`slot_loss` reads. Order and every
    draw depend only on (seed, epoch), as in the base loader."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sets: torch.Tensor, batch_size: int,
                 device: str | torch.device = "cpu", seed: int = 0, mode: str = "mix", **kw: Any) -> None:
        super().__init__(images, labels, batch_size, device, train=True, seed=seed, **kw)
        if mode not in MODES:
            raise ParameterError(f"unknown PubDef mode {mode!r}: one of {', '.join(MODES)}")
        if sets.dtype != torch.uint8 or sets.dim() != 6 or tuple(sets.shape[2:]) != tuple(images.shape):
            raise ParameterError(f"sets must be uint8 [sources, copies, N, C, H, W] aligned with the images "
                                 f"{tuple(images.shape)}, got {sets.dtype} {tuple(sets.shape)}")
        self.sets = sets.to(self.device)
        self.mode = mode

    @property
    def slots(self) -> int:
        return 2 if self.mode == "mix" else 1 + int(self.sets.shape[0])

    def fetch(self, idx: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        gen = gen if gen is not None else self._generator(2)
        n_src, n_copy = int(self.sets.shape[0]), int(self.sets.shape[1])
        b = len(idx)
        parts = [self.images[idx]]
        if self.mode == "mix":
            src = torch.randint(n_src, (b,), generator=gen).to(self.device)
            cp = torch.randint(n_copy, (b,), generator=gen).to(self.device)
            parts.append(self.sets[src, cp, idx])
        else:
            cp = torch.randint(n_copy, (n_src, b), generator=gen).to(self.device)
            parts += [self.sets[k, cp[k], idx] for k in range(n_src)]
        x = torch.cat(parts)
        if self.augment:
            x = random_crop_flip(x, self.pad, self.flip, gen)
        x = (x.float() - self.mean) / self.std
        return x, self.labels[idx].repeat(len(parts))


def slot_loss(weights: Sequence[float]) -> LossFn:
    """``loss_fn(model, x, y)`` for ``fit`` on :class:`SlotLoader` batches: the batch is
    ``len(weights)`` equal slots; loss = Σ_d w_d · mean CE over slot d, with ``weights``
    normalised to sum to 1. Returns the logits of every slot (fit's ``train_acc`` is then the
    accuracy over clean and adversarial images together)."""
    w = [float(v) for v in weights]
    if not w or any(not v >= 0 for v in w) or sum(w) <= 0:
        raise ParameterError(f"slot weights must be ≥ 0 with a positive sum, got {w}")
    wt = torch.tensor([v / sum(w) for v in w], dtype=torch.float32)
    k = len(w)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(y) % k:
            raise ParameterError(f"a batch of {len(y)} images is not {k} equal slots")
        logits = model(x)
        ce = F.cross_entropy(logits.float(), y, reduction="none").view(k, -1).mean(1)
        return (wt.to(ce.device) * ce).sum(), logits
    return loss_fn


# -- the arm ------------------------------------------------------------------------------------------------
def _zoo_sources(cfg: PubDefConfig) -> list[Source]:
    out: dict[str, Source] = {}
    for s in [*(cfg.defence.sources if cfg.defence else ()), *(cfg.transfer.sources if cfg.transfer else ())]:
        out.setdefault(s.name, s)
    return list(out.values())


def _train_defended(cfg: PubDefConfig, data: Any, seed: int, zoo: Mapping[str, ZooModel],
                    checkpoints: CheckpointFor, device: torch.device | str) -> tuple[nn.Module, list[Any], list[float],
                                                                                       dict[str, Any]]:
    d = cfg.defence
    assert d is not None
    if cfg.init is not None:
        model, fits, grad_evals = train_model(cfg.init, data, seed, checkpoints, device, own=False)
    else:
        model, fits, grad_evals = build_model(cfg, data.num_classes, seed), [], []
    t0 = time.perf_counter()
    sets = training_sets(d, data, zoo, checkpoints)
    crafting_s = time.perf_counter() - t0
    loader = SlotLoader(data.x_train, data.y_train, sets, cfg.batch_size, device, seed=seed, mode=d.mode)
    desc = " · ".join(x for x in (cfg.title or "PubDef", "fine-tune" if cfg.init is not None else "", f"seed {seed}") if x)
    res = fit(model, loader, data.loader("test", 1000, device), train_config(cfg, desc=desc),
              loss_fn=slot_loss(d.slot_weights()), checkpoint_dir=checkpoints(cfg, seed, True))
    info = {"grad_evals_precompute": d.grad_evals(len(data.y_train)), "precompute_s": crafting_s,
            "set_shape": list(sets.shape), "slot_weights": list(d.slot_weights())}
    return model, fits + [res], grad_evals + [float(res.train_images)], info


@arm("pubdef", family="robustness", config=PubDefConfig)
def train_pubdef(cfg: PubDefConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
                 device: torch.device | str = "cpu", checkpoints: CheckpointFor | None = None) -> Job:
    """One target: the ``standard`` arm's model of the recipe (no defence) or PubDef's
    fine-tuning against pre-computed transfer examples, then the white-box evaluation with
    its sanity checks and the transfer evaluation from the zoo (module docstring)."""
    if not isinstance(cfg, PubDefConfig):
        raise ParameterError(f"the pubdef arm takes a PubDefConfig, got {type(cfg).__name__}")
    if checkpoints is None:
        checkpoints = checkpoint_folders(None, "", checkpoint_dir, "pubdef")
    zoo = train_zoo(_zoo_sources(cfg), data, checkpoints, device)
    info: dict[str, Any] = {}
    if cfg.defence is None:
        model, fits, grad_evals = train_model(plain_config(cfg), data, seed, checkpoints, device, own=False)
    else:
        model, fits, grad_evals, info = _train_defended(cfg, data, seed, zoo, checkpoints, device)
    model.eval()
    res = fits[-1]
    last = res.history[-1]
    metrics: dict[str, float] = {"top1": last["test_acc"], "train_acc": last["train_acc"],
                                 "grad_evals": float(sum(grad_evals))}
    if cfg.defence is not None:
        metrics["grad_evals_finetune"] = grad_evals[-1]
        metrics["grad_evals_precompute"] = info["grad_evals_precompute"]
    extra: dict[str, Any] = {"title": cfg.title, "config": cfg.as_record(), "history": res.history,
                             "init_history": [f.history for f in fits[:-1]], "pubdef": info or None,
                             "train_images": int(len(data.y_train))}
    test_var: dict[str, float] = {}
    ev = None
    if cfg.eval is not None:
        ev = evaluate(model, data.x_test, data.y_test, cfg.eval)
        metrics.update(ev.metrics())
        test_var.update(ev.test_var())
        extra["robustness"] = ev.as_record()
    if cfg.transfer is not None:
        sets = transfer_sets(cfg.transfer, data, zoo, checkpoints)
        tr = evaluate_transfer(model, sets, cfg.transfer)
        if ev is not None and cfg.eval.attacks:
            wb = cfg.eval.white_box().key
            if wb in ev.robust:
                tr.check_white_box(ev.robust[wb], ev.indices[:ev.n])
        metrics.update(tr.metrics())
        test_var.update(tr.test_var())
        extra["transfer"] = tr.as_record()
        extra["zoo"] = {name: {**z.record(), "clean_subset": sets.source_clean.get(name),
                               "own_attack_acc": sets.self_acc.get(name)} for name, z in zoo.items()}
    return Job.from_fits(fits, metrics, n_test=len(data.y_test), extra=extra, model=model, test_var=test_var)


@builder("pubdef")
def build_pubdef(cfg: PubDefConfig, data: Any, seed: int, checkpoints: CheckpointFor, device: Any) -> Built:
    """PubDef's fine-tuned target for the family comparison, from the ``pubdef`` arm's own
    checkpoints (its start, zoo and pre-computed sets from the shared folders; trained here if
    absent). Its cost is the start's training, the fine-tuning and the pre-computed attacks on
    the training sources; the zoo stands for public models and is not counted (``info``)."""
    if not isinstance(cfg, PubDefConfig) or cfg.defence is None:
        raise ParameterError("the pubdef builder takes the chapter's PubDefConfig with a defence")

    def theirs(c: Any, s: int, own: bool = False, of: str = "") -> Path | None:
        return checkpoints(c, s, of="pubdef") if own else checkpoints(c, s, own, of)
    zoo = train_zoo(_zoo_sources(cfg), data, theirs, device)
    model, fits, grad_evals, info = _train_defended(cfg, data, seed, zoo, theirs, device)
    info = {**info, "zoo_not_counted": sorted(zoo)}
    return Built(model.eval(), True, fits, float(sum(grad_evals)) + float(info["grad_evals_precompute"]),
                 float(fits[-1].history[-1]["test_acc"]), info)
