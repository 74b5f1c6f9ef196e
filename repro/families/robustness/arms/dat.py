"""Dual Adversarial Training (DAT; Zhang, Steele, Shavit, Wang & Yin 2025, chapter 12): one
network that is both a robust classifier and an energy-based model (EBM) of its images.

The network f maps an image to logits; its energy is E(x) = −logsumexp_y f(x)_y, so a high
logsumexp means "looks like training data". Training has two stages:

* **stage 1** — L2 adversarial training (PGD-AT at ε = 0.5 in [0, 1] pixels,
  :mod:`..training` with ``norm="L2"``), BatchNorm in train mode as usual. The family's
  ``standard`` arm trains it (``DatConfig.init``), so every chapter that asks for the same
  recipe shares the checkpoint;
* **stage 2** — DAT, with BatchNorm frozen (``frozen_bn``: running statistics kept from stage
  1, affine weights still trained). Each batch (:class:`DatUpdate`, ``fit``'s ``update``):

  1. *contrastive samples*: out-of-distribution start images (:func:`start_pool`; the paper
     uses 80M TinyImages) are moved by T steps of PGD *ascent* of the model's score —
     f_y for the label y of the paired real image (``sampling="class"``, what the official
     code's CIFAR-100 configuration does: ``logsumexp_sampling`` defaults to false) or
     logsumexp_y f_y (``sampling="logsumexp"``, the card's description). Each step moves the
     image by ``step_size`` along the input gradient divided by its L2 norm, then clamps to
     [0, 1]; there is no ε-ball (ε = ∞). The model is in eval mode while sampling;
  2. *EBM loss*: binary cross-entropy with logits on the logsumexp values, real images
     labelled 1 and samples 0 (:func:`ebm_bce`);
  3. *classifier loss*: CE on L2-PGD adversarial versions of the real batch (the family's
     :func:`..training.perturb`, crafted in the trainer's mode, i.e. with frozen BN in stage 2);
  4. one SGD step on BCE·``bce_weight`` + CE·``ce_weight``;
  5. *curriculum*: the AUC separating the real batch from the samples by the sampling score
     (f_y or logsumexp, as the reference code scores them) is computed per batch in eval
     mode; when the mean of the last ⌈``auc_window``/batch⌉ batch AUCs reaches ``auc_th``
     (0.8), T grows by one (up to ``t_max``) and the window restarts.

  With ``frozen_bn=False`` the same update runs with BatchNorm in train mode (the
  "BN issue" arm): the real, generated and adversarial batches are each normalised by their
  own statistics in separate forward passes, as in the reference code's loss, and every one of
  them moves the running statistics used at test time.

**Generation** (:func:`generate`): class-conditional samples are start images moved by PGD
ascent of f_y (``GenConfig.steps`` steps of ``step_size``; the card: 32 steps of 0.2).
:func:`generation_eval` measures them with an independently trained classifier (the
``standard`` arm's network at seed + ``judge_offset``): the share classified as their target
class (``gen_acc``), the Fréchet distance between its penultimate features of the samples and
of real test images (``gen_fd``; the Inception FID needs weights the project does not carry),
the model's own AUC between real test images and its samples by logsumexp (``gen_auc``), and
the logsumexp ("negative energy") of real, start and generated images.

**Not in the reference code's form here**: one augmented batch feeds both branches (the code
draws a second batch with AutoAugment + Cutout for the classifier); the L2 PGD of the
classifier branch starts from a random point in the ball (the code starts at the image); no
R1 penalty (its weight is 0 in the released configs). Cost: every stage-2 step backpropagates
T sampling steps, the adversarial steps and three training batches (real, samples,
adversarial), all counted in ``grad_evals``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ....arms import arm
from ....data import MEAN, OOD_SETS, STD, ood_images
from ....errors import ParameterError, check_number
from ....metrics import auroc
from ....modes import dry_run
from ....sweep import Job
from ....train import WORK, fit
from ..evaluate import evaluate
from ..protocol import CheckpointFor, RobustConfig, checkpoint_folders, train_config
from ..training import AdvTrainConfig, adversarial_loss, crafting_mode, gradient_evals_per_step, perturb
from .compare import Built, builder
from .standard import train_model

SAMPLING = ("class", "logsumexp")
#: Added to per-image gradient norms before dividing (as the reference code's 1e-10).
NORM_EPS = 1e-10


def _check_kinds(name: str, kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    if not kinds:
        raise ParameterError(f"{name} needs at least one kind of start image: {', '.join(OOD_SETS)}")
    bad = [k for k in kinds if k not in OOD_SETS]
    if bad or len(set(kinds)) != len(kinds):
        raise ParameterError(f"{name}: unknown or repeated kinds {bad or list(kinds)}; choose from {', '.join(OOD_SETS)}")
    return kinds


@dataclass(frozen=True)
class EbmConfig:
    """Stage 2's EBM branch (module docstring). ``sampling``: "class" (ascend f_y of the
    paired real image's label) or "logsumexp"; ``step_size``: L2 length of one sampling step
    in [0, 1] pixels (0.1); ``t_start``/``t_max``: the curriculum's first and largest T;
    ``auc_th``: the running AUC that moves T up (0.8); ``auc_window``: images the running AUC
    averages over (1000, i.e. ⌈1000/batch⌉ batches); ``bce_weight``/``ce_weight``: the two
    losses' weights; ``starts``: kinds of start image (``repro.data.OOD_SETS``), equal shares
    of a pool of ``pool`` images drawn with ``pool_seed``."""

    sampling: str = "class"
    step_size: float = 0.1
    t_start: int = 0
    t_max: int = 50
    auc_th: float = 0.8
    auc_window: int = 1000
    bce_weight: float = 1.0
    ce_weight: float = 1.0
    starts: tuple[str, ...] = ("uniform", "blur", "shuffle", "cifar10")
    pool: int = 10000
    pool_seed: int = 0

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING:
            raise ParameterError(f"sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        check_number("step_size", self.step_size, 0.0, lo_open=True)
        check_number("t_start", self.t_start, 0, integer=True)
        check_number("t_max", self.t_max, 0, integer=True)
        if self.t_start > self.t_max:
            raise ParameterError(f"t_start ({self.t_start}) must be ≤ t_max ({self.t_max})")
        check_number("auc_th", self.auc_th, 0.0, 1.0, lo_open=True)
        check_number("auc_window", self.auc_window, 1, integer=True)
        check_number("bce_weight", self.bce_weight, 0.0)
        check_number("ce_weight", self.ce_weight, 0.0)
        object.__setattr__(self, "starts", _check_kinds("starts", self.starts))
        check_number("pool", self.pool, len(self.starts), integer=True)
        check_number("pool_seed", self.pool_seed, 0, integer=True)

    def window_batches(self, batch_size: int) -> int:
        """Batches in the running AUC: ⌈auc_window / batch_size⌉."""
        return max(1, math.ceil(self.auc_window / batch_size))

    def as_record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "starts": list(self.starts), "score": "f_y" if self.sampling == "class"
                else "logsumexp", "ball": "unbounded (eps = inf), clamped to [0, 1]",
                "step": "step_size * grad / ||grad||_2 per image", "bce_on": "logsumexp_y f(x)_y"}


@dataclass(frozen=True)
class GenConfig:
    """The generation evaluation: ``per_class`` class-conditional samples per class, each a
    start image (kinds ``starts``, drawn from the test split and the evaluation half of
    CIFAR-10 with ``seed``) moved by ``steps`` PGD-ascent steps of f_y of L2 length
    ``step_size``; measured by the ``standard`` network at seed + ``judge_offset``."""

    steps: int = 32
    step_size: float = 0.2
    per_class: int = 10
    starts: tuple[str, ...] = ("uniform", "blur", "shuffle", "cifar10")
    seed: int = 0
    judge_offset: int = 1000
    batch_size: int = 500

    def __post_init__(self) -> None:
        check_number("gen steps", self.steps, 0, integer=True)
        check_number("gen step_size", self.step_size, 0.0, lo_open=True)
        check_number("per_class", self.per_class, 1, integer=True)
        object.__setattr__(self, "starts", _check_kinds("gen starts", self.starts))
        check_number("gen seed", self.seed, 0, integer=True)
        check_number("judge_offset", self.judge_offset, 1, integer=True)
        check_number("gen batch_size", self.batch_size, 1, integer=True)

    def as_record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "starts": list(self.starts), "score": "f_y"}


@dataclass
class DatConfig(RobustConfig):
    """A model of the DAT chapter: a :class:`..protocol.RobustConfig` (the network, SGD
    recipe, classifier-branch adversarial training ``adv``, ``frozen_bn``, the stage-1 model
    ``init``, the robustness evaluation ``eval``) plus

    * ``ebm``: stage 2's EBM branch (:class:`EbmConfig`); None: no EBM loss — the model is
      the ``standard`` arm's (``init`` None) or ``init`` fine-tuned with ``adv`` alone (the
      control "AT continued for as long as DAT");
    * ``nesterov``, ``ema_decay`` (0: none): the stage-2 optimiser's Nesterov momentum and an
      exponential moving average of the weights (the model evaluated); stage 2 only;
    * ``gen``: the generation evaluation (:class:`GenConfig`; None: none) and ``judge``: the
      independent classifier's recipe (trained by the ``standard`` arm). Like ``eval`` and
      ``title`` they do not change the weights, so they are not part of :meth:`recipe`.
    """

    ebm: EbmConfig | None = None
    nesterov: bool = False
    ema_decay: float = 0.0
    gen: GenConfig | None = None
    judge: RobustConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ebm is not None and not isinstance(self.ebm, EbmConfig):
            raise ParameterError(f"ebm must be an EbmConfig or None, got {type(self.ebm).__name__}")
        if self.gen is not None and not isinstance(self.gen, GenConfig):
            raise ParameterError(f"gen must be a GenConfig or None, got {type(self.gen).__name__}")
        if self.judge is not None and (not isinstance(self.judge, RobustConfig) or self.judge.adversarial):
            raise ParameterError("judge must be a RobustConfig of standard (non-adversarial) training")
        if self.gen is not None and self.judge is None:
            raise ParameterError("the generation evaluation (gen) needs a judge classifier's recipe")
        check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        if self.ema_decay >= 1.0:
            raise ParameterError(f"ema_decay must be < 1, got {self.ema_decay}")
        if self.ebm is not None and self.init is None:
            raise ParameterError("DAT's stage 2 starts from a stage-1 model: set init")
        if self.init is None and (self.nesterov or self.ema_decay):
            raise ParameterError("nesterov and ema_decay are stage-2 settings; a model without init is trained "
                                 "by the standard arm's recipe")
        if self.ebm is not None and self.adv is not None and self.adv.method not in ("pgd", "fgsm_rs", "none"):
            raise ParameterError(f"DAT's classifier branch is CE on adversarial images (pgd, fgsm_rs or none), "
                                 f"not {self.adv.method}")

    def base(self) -> RobustConfig:
        """The plain :class:`RobustConfig` of the same fields (what the standard arm keys)."""
        names = [f.name for f in dataclasses.fields(RobustConfig)]
        return RobustConfig(**{n: getattr(self, n) for n in names})

    def as_record(self) -> dict[str, Any]:
        return {**super().as_record(), "ebm": self.ebm.as_record() if self.ebm is not None else None,
                "nesterov": self.nesterov, "ema_decay": self.ema_decay,
                "gen": self.gen.as_record() if self.gen is not None else None,
                "judge": self.judge.recipe() if self.judge is not None else None}

    def recipe(self) -> dict[str, Any]:
        rec = super().recipe()
        rec.pop("gen"), rec.pop("judge")
        return rec


# -- start images ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _cifar10(image_size: int) -> torch.Tensor:
    """The whole CIFAR-10 test set at ``image_size`` (uint8, CPU), read once per process."""
    return ood_images("cifar10", 10000, image_size, seed=0)


def check_starts(kinds: Sequence[str]) -> None:
    """ParameterError, before any work, for an unknown kind or for ``cifar10`` when the
    CIFAR-10 test set is not installed (the chapter never downloads)."""
    _check_kinds("starts", kinds)
    if "cifar10" in kinds:
        from ....data import verify_cifar10
        try:
            verify_cifar10()
        except Exception as exc:  # noqa: BLE001 - any failure means the set is not usable here
            raise ParameterError(f"start kind 'cifar10' needs the CIFAR-10 test set ({exc}); install it "
                                 "(`repro data`) or drop 'cifar10' from the starts") from None


def start_images(kinds: Sequence[str], n: int, source: torch.Tensor, split: str, seed: int) -> torch.Tensor:
    """``n`` start images (uint8 [n, 3, S, S], CPU) in equal shares of ``kinds`` (the first
    kinds take the remainder), in kind order. ``source``: in-distribution images that
    ``blur`` and ``shuffle`` are made from (the training split for the training pool, the
    test split for the evaluation). ``cifar10`` takes the even (``split="train"``) or odd
    (``"eval"``) positions of a permutation of the CIFAR-10 test set drawn with a fixed seed,
    so the training pool and the evaluation starts never share an image. Seeded by ``seed``;
    the global RNG is untouched."""
    kinds = _check_kinds("starts", kinds)
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    size = int(source.shape[-1])
    shares = [n // len(kinds) + (i < n % len(kinds)) for i in range(len(kinds))]
    out = []
    for i, (kind, k) in enumerate(zip(kinds, shares)):
        if k == 0:
            continue
        s = seed * 101 + i
        if kind == "cifar10":
            every = _cifar10(size)
            perm = torch.randperm(len(every), generator=torch.Generator().manual_seed(7))
            half = perm[0::2] if split == "train" else perm[1::2]
            if k > len(half):
                raise ParameterError(f"{k} CIFAR-10 start images asked for; each half of the test set has {len(half)}")
            pick = half[torch.randperm(len(half), generator=torch.Generator().manual_seed(s))[:k]]
            out.append(every[pick])
        elif kind in ("blur", "shuffle"):
            if k > len(source):
                raise ParameterError(f"{k} {kind!r} start images asked for from {len(source)} source images")
            out.append(ood_images(kind, k, size, seed=s, source=source.cpu()))
        else:
            out.append(ood_images(kind, k, size, seed=s))
    return torch.cat(out)


def start_pool(ebm: EbmConfig, data: Any) -> torch.Tensor:
    """Stage 2's pool of start images (uint8, CPU): ``ebm.pool`` images of ``ebm.starts``,
    ``blur``/``shuffle`` made from the training split."""
    return start_images(ebm.starts, ebm.pool, data.x_train, "train", ebm.pool_seed)


def eval_starts(gen: GenConfig, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The generation evaluation's start images (uint8, CPU) and target labels: class c gets
    starts c, K + c, 2K + c… (K classes), the kinds interleaved by a seeded permutation so
    every class sees every kind."""
    k = data.num_classes
    n = k * gen.per_class
    x = start_images(gen.starts, n, data.x_test, "eval", gen.seed + 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(gen.seed + 2))
    return x[perm], torch.arange(k).repeat(gen.per_class)


# -- the EBM pieces ----------------------------------------------------------------------------------------
def _stats(device: torch.device, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return m, s


def score(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The sampler's score per image: f_target (``target`` given) or logsumexp_y f_y."""
    logits = logits.float()
    if target is None:
        return torch.logsumexp(logits, dim=1)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def ascend(model: nn.Module, x01: torch.Tensor, steps: int, step_size: float, target: torch.Tensor | None = None,
           mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
           autocast: Callable[[], Any] | None = None) -> torch.Tensor:
    """``x01`` ([0, 1] pixels) after ``steps`` steps of PGD ascent of :func:`score` (f_target,
    or logsumexp without ``target``) on a model that takes inputs normalised with
    ``mean``/``std``: each step adds ``step_size``·∇/‖∇‖₂ (per image), then clamps to [0, 1];
    no ε-ball. The model runs in eval mode (every module's own mode restored afterwards) and
    under ``autocast`` if given; the images stay fp32. Adds one to ``WORK["attack_grads"]`` per
    step. Returns detached fp32 pixels."""
    x = x01.detach().float().clone()
    if steps == 0:
        return x
    m, s = _stats(x.device, mean, std)
    ctx = autocast or contextlib.nullcontext
    with crafting_mode(model, "eval"), torch.enable_grad():
        for _ in range(int(steps)):
            x.requires_grad_(True)
            with ctx():
                out = model((x - m) / s)
            (g,) = torch.autograd.grad(score(out, target).sum(), x)
            norm = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x = (x.detach() + step_size * g / (norm + NORM_EPS)).clamp(0.0, 1.0)
            WORK["attack_grads"] += 1
    return x.detach()


def ebm_bce(real_logits: torch.Tensor, gen_logits: torch.Tensor) -> torch.Tensor:
    """The EBM loss: binary cross-entropy with logits on logsumexp_y f_y, real images labelled
    1 and generated ones 0, averaged over both (``nn.BCEWithLogitsLoss`` on the concatenation)."""
    lse = torch.cat([torch.logsumexp(real_logits.float(), 1), torch.logsumexp(gen_logits.float(), 1)])
    target = torch.cat([torch.ones(len(real_logits), device=lse.device), torch.zeros(len(gen_logits), device=lse.device)])
    return F.binary_cross_entropy_with_logits(lse, target)


def batch_auc(real: torch.Tensor, gen: torch.Tensor) -> float:
    """AUC (a fraction) with real images as positives: P(score_real > score_gen), ties ½."""
    return auroc(real.detach().float().cpu().numpy(), gen.detach().float().cpu().numpy())


class DatUpdate:
    """``fit``'s ``update`` for stage 2 (module docstring, steps 1–5). State (saved in fit's
    checkpoints): the curriculum's T, the running AUC window, the per-step log and the
    gradient evaluations spent."""

    def __init__(self, ebm: EbmConfig, adv: AdvTrainConfig | None, pool: torch.Tensor, batch_size: int,
                 grad_clip: float | None = None, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        if pool.dtype != torch.uint8 or pool.dim() != 4 or len(pool) == 0:
            raise ParameterError("the start pool must be a non-empty uint8 [N, 3, S, S] tensor")
        self.ebm, self.adv, self.pool = ebm, adv, pool
        self.grad_clip, self.mean, self.std = grad_clip, mean, std
        self.T = int(ebm.t_start)
        self.window: deque[float] = deque(maxlen=ebm.window_batches(batch_size))
        self.log: dict[str, list[float]] = {"T": [], "auc": [], "running_auc": [], "bce": [], "ce": [],
                                            "lse_real": [], "lse_gen": []}
        self.grad_evals = 0.0

    def _norm(self, x01: torch.Tensor) -> torch.Tensor:
        m, s = _stats(x01.device, self.mean, self.std)
        return (x01 - m) / s

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                 autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(y)
        pool = self.pool if self.pool.device == x.device else self.pool.to(x.device)
        self.pool = pool
        idx = torch.randint(len(pool), (n,), device=x.device)  # the global RNG: fit saves and restores it
        target = y if self.ebm.sampling == "class" else None
        gen01 = ascend(model, pool[idx].float() / 255.0, self.T, self.ebm.step_size, target, self.mean, self.std,
                       autocast)
        x_gen = self._norm(gen01)
        with torch.no_grad(), crafting_mode(model, "eval"), autocast():  # the reference code scores in eval mode
            auc = batch_auc(score(model(x), target), score(model(x_gen), target))
        if self.adv is not None and self.adv.method != "none":
            x_adv, _ = perturb(model, x, y, self.adv, self.mean, self.std)
            adv_steps = self.adv.effective_steps()
        else:
            x_adv, adv_steps = x, 0
        # Separate forward passes, as the reference loss: with BN in train mode each batch
        # is normalised by its own statistics (the "BN issue" arm).
        with autocast():
            real_logits, gen_logits, logits = model(x), model(x_gen), model(x_adv)
        bce = ebm_bce(real_logits, gen_logits)
        ce = F.cross_entropy(logits.float(), y)
        loss = self.ebm.bce_weight * bce + self.ebm.ce_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        opt.step()
        self.grad_evals += n * (self.T + adv_steps + 3)
        self.window.append(auc)
        running = float(np.mean(self.window))
        for k, v in (("T", self.T), ("auc", auc), ("running_auc", running), ("bce", bce.item()), ("ce", ce.item()),
                     ("lse_real", torch.logsumexp(real_logits.detach().float(), 1).mean().item()),
                     ("lse_gen", torch.logsumexp(gen_logits.detach().float(), 1).mean().item())):
            self.log[k].append(round(float(v), 4))
        if self.T < self.ebm.t_max and len(self.window) == self.window.maxlen and running >= self.ebm.auc_th:
            self.T += 1
            self.window.clear()
        return loss.detach(), logits.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"T": self.T, "window": list(self.window), "log": {k: list(v) for k, v in self.log.items()},
                "grad_evals": self.grad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.T = int(state["T"])
        self.window.clear()
        self.window.extend(state["window"])
        self.log = {k: list(v) for k, v in state["log"].items()}
        self.grad_evals = float(state["grad_evals"])


# -- evaluation of the generator -------------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` [n, d] and ``b`` [m, d]:
    ‖μa − μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½) (float64; the real part of scipy's matrix square root)."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two [n ≥ 2, d] feature sets of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # fewer samples than features make the product singular
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(ca @ cb)
        if not np.isfinite(covmean).all():  # offset both, as pytorch-fid does
            off = np.eye(len(ca)) * 1e-6
            covmean = linalg.sqrtm((ca + off) @ (cb + off))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(np.real(covmean)))


@torch.no_grad()
def _forward(model: nn.Module, x01: torch.Tensor, batch: int, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
             device: torch.device) -> torch.Tensor:
    m, s = _stats(device)
    outs = [fn(model, (x01[i:i + batch].to(device).float() - m) / s).float().cpu() for i in range(0, len(x01), batch)]
    return torch.cat(outs)


def generate(model: nn.Module, starts01: torch.Tensor, labels: torch.Tensor, gen: GenConfig,
             device: torch.device | str) -> torch.Tensor:
    """Class-conditional samples ([0, 1] pixels, CPU): each start moved by ``gen.steps``
    ascent steps of f_label (:func:`ascend`), in batches of ``gen.batch_size``."""
    device = torch.device(device)
    out = []
    for i in range(0, len(starts01), gen.batch_size):
        x = starts01[i:i + gen.batch_size].to(device).float()
        out.append(ascend(model, x, gen.steps, gen.step_size, labels[i:i + gen.batch_size].to(device)).cpu())
    return torch.cat(out) if out else starts01.float()


def dry_gen(gen: GenConfig) -> GenConfig:
    """``gen`` itself, or in a dry run at most 2 steps in batches of at most 16 (the code
    path, not the numbers: a dry run of the gpu tier runs on a CPU)."""
    if not dry_run():
        return gen
    return dataclasses.replace(gen, steps=min(gen.steps, 2), batch_size=min(gen.batch_size, 16))


def _test_subset(data: Any, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 3)
    idx = torch.randperm(len(data.y_test), generator=g)[:n]
    return data.x_test[idx.sort().values].float() / 255.0


def generation_eval(model: nn.Module, judge: nn.Module, data: Any, gen: GenConfig,
                    device: torch.device | str) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Class-conditional samples of ``model`` from the evaluation starts (:func:`eval_starts`)
    measured against real test images → ``(metrics, test_var, record)``.

    Metrics: ``gen_acc`` — % of samples the independent ``judge`` classifies as their target
    class (binomial test variance on the samples); ``gen_conf`` — the model's own mean
    softmax probability of the target class (%); ``gen_fd`` / ``gen_fd_start`` — Fréchet
    distance between the judge's penultimate features (``features``) of the samples / of the
    start images and of as many real test images (a seeded subset); ``gen_auc`` — AUC (%) of
    the model's logsumexp separating the real test subset (positive) from its samples
    (Hanley–McNeil variance); ``lse_real`` / ``lse_start`` / ``lse_gen`` — mean logsumexp.
    The record holds the settings, sample counts and quantiles of the three logsumexp sets.
    Both models must be in eval mode (the caller's job). A dry run draws one batch of 16
    samples with 2 steps (:func:`dry_gen`)."""
    from ...uncertainty.detectors import auroc_var

    device = torch.device(device)
    starts, labels = eval_starts(gen, data)
    gen = dry_gen(gen)
    if dry_run():
        starts, labels = starts[:gen.batch_size], labels[:gen.batch_size]
    s01 = starts.float() / 255.0
    g01 = generate(model, s01, labels, gen, device)
    real01 = _test_subset(data, min(len(g01), len(data.y_test)), gen.seed)
    b = gen.batch_size
    judge_logits = _forward(judge, g01, b, lambda m, x: m(x), device)
    feats = {k: _forward(judge, v, b, lambda m, x: m.features(x), device).numpy()
             for k, v in (("gen", g01), ("start", s01), ("real", real01))}
    own = {k: _forward(model, v, b, lambda m, x: m(x), device) for k, v in (("gen", g01), ("start", s01), ("real", real01))}
    lse = {k: torch.logsumexp(v, 1).numpy() for k, v in own.items()}
    n = len(g01)
    acc = 100.0 * float((judge_logits.argmax(1) == labels).float().mean())
    conf = 100.0 * float(own["gen"].softmax(1).gather(1, labels.view(-1, 1)).mean())
    auc = auroc(lse["real"], lse["gen"])
    metrics = {"gen_acc": acc, "gen_conf": conf, "gen_fd": frechet_distance(feats["gen"], feats["real"]),
               "gen_fd_start": frechet_distance(feats["start"], feats["real"]), "gen_auc": 100.0 * auc,
               "lse_real": float(lse["real"].mean()), "lse_start": float(lse["start"].mean()),
               "lse_gen": float(lse["gen"].mean())}
    p = acc / 100.0
    test_var = {"gen_acc": 100.0 ** 2 * p * (1 - p) / n,
                "gen_auc": 100.0 ** 2 * auroc_var(auc, len(real01), n)}
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    record = {"config": gen.as_record(), "samples": n, "real_images": len(real01),
              "judge_acc_on_starts": 100.0 * float((_forward(judge, s01, b, lambda m, x: m(x), device).argmax(1)
                                                    == labels).float().mean()),
              "lse_quantiles": {k: np.quantile(v, q).round(3).tolist() for k, v in lse.items()}, "quantiles": q}
    return metrics, test_var, record


# -- the arm ------------------------------------------------------------------------------------------------
def train_dat_model(cfg: DatConfig, data: Any, seed: int, checkpoints: CheckpointFor | None,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, list[Any], list[float], DatUpdate | None]:
    """The network of ``cfg`` → ``(model, fits, grad_evals per fit, update)``.

    ``init`` None: the ``standard`` arm's model of ``cfg.base()`` (shared checkpoint).
    Otherwise the stage-1 model (the ``standard`` arm's of ``init``, shared) then stage 2 in
    this arm's own checkpoint folder: DAT with :class:`DatUpdate` (``ebm`` set) or CE on
    adversarial images alone (``ebm`` None); with ``ema_decay`` the averaged weights are
    returned. ``update`` is the stage-2 :class:`DatUpdate` (its log and final T), or None."""
    if cfg.init is None:
        model, fits, evals = train_model(cfg.base(), data, seed, checkpoints, device, own=False)
        return model, fits, evals, None
    model, fits, evals = train_model(cfg.init, data, seed, checkpoints, device, own=False)
    tc = train_config(cfg, nesterov=bool(cfg.nesterov), ema_decay=float(cfg.ema_decay) or None,
                      desc=" · ".join(x for x in (cfg.title or "DAT", "stage 2", f"seed {seed}") if x))
    train = data.loader("train", cfg.batch_size, device, seed=seed)
    test = data.loader("test", 1000, device)
    where = checkpoints(cfg, seed, True) if checkpoints is not None else None
    update = None
    if cfg.ebm is not None:
        update = DatUpdate(cfg.ebm, cfg.adv, start_pool(cfg.ebm, data), cfg.batch_size, tc.grad_clip)
        res = fit(model, train, test, tc, update=update, checkpoint_dir=where)
        stage2 = update.grad_evals
    else:
        res = fit(model, train, test, tc, loss_fn=adversarial_loss(cfg.adv) if cfg.adversarial else None,
                  checkpoint_dir=where)
        stage2 = float(res.train_images * (gradient_evals_per_step(cfg.adv) if cfg.adversarial else 1))
    if res.ema_model is not None:
        model = res.ema_model
    return model, fits + [res], evals + [stage2], update


@arm("dat", family="robustness", config=DatConfig)
def train_dat(cfg: DatConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
              device: torch.device | str = "cpu", checkpoints: CheckpointFor | None = None) -> Job:
    """One model of the DAT chapter (:func:`train_dat_model`), then the family's robustness
    evaluation (``cfg.eval``) and the generation evaluation (``cfg.gen``, judged by the
    ``standard`` network of ``cfg.judge`` at seed + ``judge_offset``).

    Metrics: ``top1`` (final clean-test top-1, %), ``train_acc`` (last epoch's training
    batches: adversarial under AT and DAT), ``grad_evals`` (forward–backward passes over one
    image, every stage, sampling and attack steps included) and ``grad_evals_stage2``; with
    ``ebm``: ``T_final`` (the curriculum's last T) and ``auc_final`` (the last running AUC);
    with ``eval``: ``eval_clean``, ``robust_<attack>``, ``robust_worst`` (binomial test
    variance); with ``gen``: those of :func:`generation_eval`. Extra: title, config, history
    (every stage), the stage-2 log, the robustness and generation records."""
    if not isinstance(cfg, DatConfig):
        raise ParameterError(f"the dat arm takes a DatConfig, got {type(cfg).__name__}")
    if checkpoints is None:
        checkpoints = checkpoint_folders(None, "", checkpoint_dir, "dat")
    if cfg.ebm is not None:
        check_starts(cfg.ebm.starts)
    if cfg.gen is not None:
        check_starts(cfg.gen.starts)
    model, fits, grad_evals, update = train_dat_model(cfg, data, seed, checkpoints, device)
    last = fits[-1].history[-1]
    metrics: dict[str, float] = {"top1": last["test_acc"], "train_acc": last["train_acc"],
                                 "grad_evals": float(sum(grad_evals))}
    if cfg.init is not None:
        metrics["grad_evals_stage2"] = float(grad_evals[-1])
    extra: dict[str, Any] = {"title": cfg.title, "config": cfg.as_record(),
                             "history": [f.history for f in fits], "train_images": int(len(data.y_train))}
    if update is not None:
        metrics["T_final"] = float(update.T)
        metrics["auc_final"] = update.log["running_auc"][-1] if update.log["running_auc"] else float("nan")
        extra["curriculum"] = {**update.log, "window_batches": update.window.maxlen,
                               "steps_per_epoch": fits[-1].steps // max(1, len(fits[-1].history))}
    test_var: dict[str, float] = {}
    model.eval()  # the family's evaluate() puts it in the standard memory layout (torchattacks' L2 needs it)
    if cfg.eval is not None:
        ev = evaluate(model, data.x_test, data.y_test, cfg.eval)
        metrics.update(ev.metrics())
        test_var.update(ev.test_var())
        extra["robustness"] = ev.as_record()
    if cfg.gen is not None:
        judge, _, _ = train_model(cfg.judge, data, seed + cfg.gen.judge_offset, checkpoints, device,
                                  own=False)
        judge.eval()
        gm, gv, grec = generation_eval(model, judge, data, cfg.gen, device)
        metrics.update(gm)
        test_var.update(gv)
        extra["generation"] = {**grec, "judge_seed": seed + cfg.gen.judge_offset,
                               "judge_top1": judge_top1(judge, data, device)}
    return Job.from_fits(fits, metrics, n_test=len(data.y_test), extra=extra, model=model, test_var=test_var)


@builder("dat")
def build_dat(cfg: DatConfig, data: Any, seed: int, checkpoints: CheckpointFor, device: Any) -> Built:
    """The AT → DAT network for the family comparison, from the ``dat`` arm's own checkpoints
    (stage 1 from the ``standard`` arm's; trained here if absent)."""
    if not isinstance(cfg, DatConfig):
        raise ParameterError(f"the dat builder takes a DatConfig, got {type(cfg).__name__}")

    def theirs(c: Any, s: int, own: bool = False, of: str = "") -> Path | None:
        return checkpoints(c, s, of="dat") if own else checkpoints(c, s, own, of)
    model, fits, evals, _ = train_dat_model(cfg, data, seed, theirs, device)
    return Built(model.eval(), True, fits, float(sum(evals)), float(fits[-1].history[-1]["test_acc"]))


def judge_top1(judge: nn.Module, data: Any, device: torch.device | str) -> float:
    """The judge's clean-test top-1 (%), so a reader can tell how much its verdicts mean (a
    dry run reads the first 1 000 test images)."""
    n = 1000 if dry_run() else len(data.y_test)
    logits = _forward(judge, data.x_test[:n].float() / 255.0, 1000, lambda m, x: m(x), torch.device(device))
    return 100.0 * float((logits.argmax(1) == data.y_test[:n]).float().mean())


__all__ = ["DatConfig", "DatUpdate", "EbmConfig", "GenConfig", "SAMPLING", "ascend", "batch_auc", "check_starts",
           "dry_gen", "ebm_bce", "eval_starts", "frechet_distance", "generate", "generation_eval", "judge_top1", "score",
           "start_images", "start_pool", "train_dat", "train_dat_model"]
