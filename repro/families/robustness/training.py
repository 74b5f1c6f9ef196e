"""Adversarial training as a loss for the one trainer: ``fit(model, train, test, cfg,
loss_fn=adversarial_loss(AdvTrainConfig(...)))``, never a second training loop.

Methods (:class:`AdvTrainConfig`, ``method``):

* ``"pgd"`` — PGD-AT (Madry et al. 2018; the recipe of Rice et al. 2020): L∞ PGD from a
  uniform random start in the ε-ball, ``steps`` sign steps of α (default ε/4, i.e. 2/255 at
  ε = 8/255; 10 steps by default, Madry's CIFAR setting is 7), then CE on the adversarial batch;
* ``"fgsm_rs"`` — FGSM with random start (Wong et al. 2020, "Fast is better than free"):
  δ uniform in [−ε, ε], one sign step of α = 1.25·ε, then CE on the adversarial batch;
* ``"trades"`` — TRADES (Zhang et al. 2019): δ from 0.001·N(0, 1), ``steps`` sign steps of α
  (default ε/4; TRADES' CIFAR code uses 0.007 at ε = 0.031 ≈ ε/4.4) ascending
  KL(p(x) ‖ p(x + δ)); loss CE(clean) + β · KL(clean ‖ adv) (β = 6 by default, as in TRADES);
* ``"none"`` — plain CE, so a chapter's standard arm goes through the same config.

Every δ is projected onto the ε-ball and onto [0, 1] pixels after each step (and at the start:
TRADES' 0.001·N(0, 1) start is clipped to the ball too, which only matters for ε < ~0.003).

**Norms** (``norm``): "Linf" (the default, everything above) or "L2" (chapter 12's L2
adversarial training, ε = 0.5 on CIFAR). Under L2 each step moves δ by α along the input
gradient divided by its per-image L2 norm (instead of α·sign), δ is projected onto the L2 ball
by rescaling, δ·min(1, ε/‖δ‖₂), and then onto the [0, 1] box by clamping (which only
shortens δ, so ‖δ‖₂ ≤ ε still holds); the random start is torchattacks ``PGDL2``'s: a
Gaussian direction with radius ε·U(0, 1) per image. Defaults (steps, α = ε/4 for PGD and
TRADES, 1.25·ε for FGSM-RS) follow the same rules as under L∞; an L2 ε is any radius ≥ 0.

**Pixels and precision.** ``fit`` hands the loss a normalised batch ``x`` (``repro.data``'s
MEAN/STD). The attack works in [0, 1] pixel space — ``x01 = clamp(x·σ + μ, 0, 1)``, ε measured
there — but the adversarial batch is re-normalised as ``x + δ/σ`` rather than by a round trip
through pixels, so that δ = 0 gives back ``x`` bit for bit (ε = 0 PGD-AT *is* CE). δ, the
step, the projection and the clamp are fp32 tensors whatever autocast ``fit`` runs the loss
under; only the model's own layers run in bf16, and its logits are cast to fp32 before any
loss (the input gradient reaches δ as fp32 through autocast's casts).

**Own loop, not torchattacks.** The crafting loop is written here (about 20 lines) instead of
calling ``torchattacks.PGD`` / ``FFGSM`` / ``TPGD`` through ``PixelModel``, because
torchattacks' ``Attack.__call__`` switches the *whole* model with ``model.eval()`` (or
``model.train()`` plus eval BN/dropout, with ``set_model_training_mode``) and afterwards calls
``model.train()`` if the model was training: it does not restore each module's own mode, so a
model trained with frozen BatchNorm (chapter 12's stage 2) would come back with BN in train
mode, and crafting in the trainer's own train mode is not expressible without that reset.
The loop also has to count gradient evaluations, keep δ in fp32 under the trainer's autocast
and re-normalise exactly. ``tests/test_adv_training.py`` checks that, in eval mode and with
the same seed, it produces what ``torchattacks.PGD`` produces. Evaluation attacks remain the
suite's (:mod:`.attacks`).

**Mode while crafting** (``craft_mode``): each method's default is what its reference code
does. PGD-AT and FGSM-RS craft in the mode the trainer left the model in, i.e. train mode:
BatchNorm normalises with the batch's statistics, dropout draws masks (Madry et al.'s
``cifar10_challenge``, Rice et al.'s ``robust_overfitting`` and Wong et al.'s
``fast_adversarial`` all attack the training-mode network), so δ attacks exactly the function
whose loss is then minimised. As in that code, the crafting forward passes also update BN's
running statistics. TRADES crafts in eval mode (its ``trades.py`` calls ``model.eval()`` before
the attack; MadryLab's ``robustness`` library does the same for PGD-AT), then trains in train
mode. ``craft_mode="train"`` or ``"eval"`` overrides the default. In eval mode every module's
own ``training`` flag is restored afterwards, one by one — never a blanket ``model.train()``.

**Gradient evaluations** (chapter 40 counts compute in them): every attack step is one
forward and one backward pass of the batch and adds 1 to ``repro.train.WORK["attack_grads"]``;
the training step itself is counted by ``fit`` in ``WORK["train_steps"]``.
:func:`gradient_evals_per_step` gives the total per training step: 1 + attack steps for
PGD-AT and FGSM-RS (so 2 for FGSM-RS, 11 for PGD-10), and 2 + attack steps for TRADES, whose
training loss runs and backpropagates the network on both the clean and the adversarial batch.
TRADES' forward-only pass that computes the clean target of its attack is not counted (a
forward pass is about a third of a gradient evaluation; say so where TRADES' cost is compared).

**Determinism.** The random start is drawn from torch's global RNG (as are dropout masks), which
``fit`` saves in its checkpoints and restores on resume, so a resumed adversarial run follows
the uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import MEAN, STD
from ...errors import ParameterError
from ...train import WORK, LossFn

METHODS = ("pgd", "fgsm_rs", "trades", "none")
NORMS = ("Linf", "L2")
#: Added to per-image gradient norms before dividing (torchattacks' ``eps_for_division``).
L2_DIVISION_EPS = 1e-10
CRAFT_MODES = ("train", "eval")

#: The mode each method crafts in by default: what its reference code does (module docstring).
DEFAULT_CRAFT_MODE = {"pgd": "train", "fgsm_rs": "train", "trades": "eval", "none": "train"}
#: Default attack steps: PGD-10 (Rice et al.; Madry's CIFAR setting is 7), TRADES' 10, FGSM's 1.
DEFAULT_STEPS = {"pgd": 10, "fgsm_rs": 1, "trades": 10, "none": 0}
#: TRADES' random start: 0.001·N(0, 1), as in its reference code.
TRADES_START_STD = 0.001


@dataclass(frozen=True)
class AdvTrainConfig:
    """One adversarial-training recipe.

    method: "pgd" | "fgsm_rs" | "trades" | "none"; norm: "Linf" | "L2" (the threat model;
    module docstring); eps: the radius in [0, 1] pixel units — under L∞ in [0, 1] (8/255, not
    8), under L2 any radius ≥ 0 (0.5 on CIFAR); step_size: α, or None for the method's default (PGD and TRADES: ε/4, i.e.
    2/255 at 8/255; FGSM-RS: 1.25·ε); steps: attack steps, or None for the method's default
    (PGD and TRADES: 10; FGSM-RS: exactly 1); trades_beta: TRADES' β (6 by default; ignored by
    the other methods); craft_mode: "train" | "eval" | None (the method's reference choice:
    train for PGD-AT and FGSM-RS, eval for TRADES). ParameterError on anything out of range.
    """

    method: str = "pgd"
    eps: float = 8 / 255
    step_size: float | None = None
    steps: int | None = None
    trades_beta: float = 6.0
    craft_mode: str | None = None
    norm: str = "Linf"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ParameterError(f"unknown adversarial-training method {self.method!r}: one of {', '.join(METHODS)}")
        if self.norm not in NORMS:
            raise ParameterError(f"unknown norm {self.norm!r}: one of {', '.join(NORMS)}")
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ParameterError(f"eps must be a finite number ≥ 0 in [0, 1] pixel units, got {eps!r}")
        if self.norm == "Linf" and eps > 1:
            raise ParameterError(f"a Linf eps must be in [0, 1] pixel units (8/255, not 8), got {eps!r}")
        if self.steps is not None:
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
                raise ParameterError(f"steps must be an integer ≥ 1 (or None for the method's default), "
                                     f"got {self.steps!r}")
            if self.method == "fgsm_rs" and self.steps != 1:
                raise ParameterError(f"fgsm_rs takes exactly one step, got steps={self.steps}; "
                                     "use method='pgd' for more")
        if self.step_size is not None:
            s = self.step_size
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
                raise ParameterError(f"step_size must be a number > 0 (or None for the method's default), got {s!r}")
        b = self.trades_beta
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise ParameterError(f"trades_beta must be a number ≥ 0, got {b!r}")
        if self.craft_mode is not None and self.craft_mode not in CRAFT_MODES:
            raise ParameterError(f"craft_mode must be 'train', 'eval' or None, got {self.craft_mode!r}")

    def effective_steps(self) -> int:
        """Attack steps per training step (0 for "none")."""
        if self.method == "none":
            return 0
        return int(self.steps) if self.steps is not None else DEFAULT_STEPS[self.method]

    def effective_step_size(self) -> float:
        """The α the attack uses (0 for "none")."""
        if self.method == "none":
            return 0.0
        if self.step_size is not None:
            return float(self.step_size)
        return 1.25 * float(self.eps) if self.method == "fgsm_rs" else float(self.eps) / 4

    def effective_craft_mode(self) -> str:
        return self.craft_mode or DEFAULT_CRAFT_MODE[self.method]

    def as_record(self) -> dict[str, Any]:
        """Every setting, as given and as run, for a run's record."""
        uniform = "uniform in [-eps, eps]" if self.norm == "Linf" else "N(0, I) direction, L2 radius eps * U(0, 1)"
        start = {"pgd": uniform, "fgsm_rs": uniform, "trades": f"{TRADES_START_STD} * N(0, 1)",
                 "none": None}[self.method]
        return {"method": self.method, "norm": self.norm, "eps": float(self.eps),
                "eps_255": float(self.eps) * 255 if self.norm == "Linf" else None,
                "steps": self.effective_steps(), "step_size": self.effective_step_size(),
                "trades_beta": float(self.trades_beta) if self.method == "trades" else None,
                "craft_mode": self.effective_craft_mode(), "random_start": start,
                "gradient_evals_per_step": gradient_evals_per_step(self)}


def gradient_evals_per_step(cfg: AdvTrainConfig) -> int:
    """Forward + backward passes of the batch per training step, attack steps included:
    1 + steps (PGD-AT, FGSM-RS: 2), 2 + steps for TRADES (its loss backpropagates the clean
    and the adversarial batch), 1 for "none". Total compute of a run: this × ``fit``'s steps."""
    if cfg.method == "none":
        return 1
    return cfg.effective_steps() + (2 if cfg.method == "trades" else 1)


def _stats(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return m, s


def to_pixels(x: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """A normalised batch back in [0, 1] pixels (fp32, not clamped)."""
    m, s = _stats(x, mean, std)
    return x.detach().float() * s + m


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norms of ``t`` [N, ...], shaped [N, 1, 1, 1] to broadcast."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, x01: torch.Tensor, eps: float, norm: str = "Linf") -> torch.Tensor:
    """δ projected onto the ε-ball of ``norm`` (L∞: clipped; L2: rescaled by
    min(1, ε/‖δ‖₂) per image), then onto the box x01 + δ ∈ [0, 1]."""
    if norm == "L2":
        delta = delta * torch.clamp(eps / _l2_norms(delta).clamp_min(1e-12), max=1.0)
    else:
        delta = delta.clamp(-eps, eps)
    return (x01 + delta).clamp(0.0, 1.0) - x01


def _ascent_step(grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """The step of one attack iteration: α·sign(∇) under L∞, α·∇/‖∇‖₂ per image under L2."""
    if norm == "L2":
        return alpha * grad / (_l2_norms(grad) + L2_DIVISION_EPS)
    return alpha * grad.sign()


def random_start(x01: torch.Tensor, cfg: AdvTrainConfig) -> torch.Tensor:
    """The method's starting δ for pixels ``x01`` (fp32, from torch's global RNG), already
    inside the ε-ball and the [0, 1] box: uniform in [−ε, ε] (PGD, FGSM-RS under L∞), a
    Gaussian direction with L2 radius ε·U(0, 1) (PGD, FGSM-RS under L2, as torchattacks'
    ``PGDL2``), or 0.001·N(0, 1) (TRADES)."""
    eps = float(cfg.eps)
    x01 = x01.float()
    if cfg.method == "trades":
        delta = torch.randn_like(x01) * TRADES_START_STD
    elif cfg.norm == "L2":
        delta = torch.empty_like(x01).normal_()
        r = torch.zeros(len(x01), 1, 1, 1, dtype=x01.dtype, device=x01.device).uniform_(0, 1)
        delta = delta * r / _l2_norms(delta).clamp_min(1e-12) * eps
    else:
        delta = torch.empty_like(x01).uniform_(-eps, eps)
    return _project(delta, x01, eps, cfg.norm)


@contextlib.contextmanager
def crafting_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """While active, ``model`` is in ``mode``: "train" leaves every module as it is, "eval"
    puts all in eval mode and afterwards restores each module's own flag."""
    if mode == "train":
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was in flags:
            m.training = was


def _check_pixels(x01: torch.Tensor) -> None:
    if not (x01.dim() == 4 and x01.is_floating_point()):
        raise ParameterError("adversarial training takes float [N, C, H, W] image batches")
    lo, hi = float(x01.min()), float(x01.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
        raise ParameterError(f"the batch un-normalised with mean/std spans [{lo:.3g}, {hi:.3g}], not [0, 1]: "
                             "give adversarial_loss the mean and std the loader normalised with")


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AdvTrainConfig,
            mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Craft the adversarial batch of ``cfg`` for the normalised batch ``x`` (labels ``y``;
    TRADES ignores them). Returns ``(x_adv, delta)``: ``x_adv = x + δ/σ`` normalised, and δ in
    [0, 1] pixel units, both fp32 and detached, ‖δ‖ ≤ ε in ``cfg.norm`` and
    ``to_pixels(x_adv)`` in [0, 1].

    The model runs in ``cfg``'s crafting mode (restored afterwards) and under whatever autocast
    the caller set; adds one to ``WORK["attack_grads"]`` per attack step.
    """
    x = x.detach().float()
    m, s = _stats(x, mean, std)
    x01 = (x * s + m).clamp(0.0, 1.0)
    steps, alpha, eps = cfg.effective_steps(), cfg.effective_step_size(), float(cfg.eps)
    if steps == 0:
        return x, torch.zeros_like(x01)
    delta = random_start(x01, cfg)
    with crafting_mode(model, cfg.effective_craft_mode()), torch.enable_grad():
        if cfg.method == "trades":
            with torch.no_grad():
                target = F.softmax(model(x).float(), dim=1)
        for _ in range(steps):
            delta.requires_grad_(True)
            out = model(x + delta / s).float()
            if cfg.method == "trades":
                loss = F.kl_div(F.log_softmax(out, dim=1), target, reduction="sum")
            else:
                loss = F.cross_entropy(out, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = _project(delta.detach() + _ascent_step(grad, alpha, cfg.norm), x01, eps, cfg.norm)
            WORK["attack_grads"] += 1
    return x + delta / s, delta


def adversarial_loss(cfg: AdvTrainConfig, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> LossFn:
    """``loss_fn(model, x, y) -> (loss, logits)`` for ``repro.train.fit``: CE on the adversarial
    batch with its logits (PGD-AT, FGSM-RS; ``fit``'s ``train_acc`` is then the accuracy on the
    adversarial training batches), CE(clean) + β·KL(clean ‖ adv) with the clean logits (TRADES),
    or plain CE ("none"). ``mean``/``std``: what the loader normalised with. The first batch is
    checked to lie in [0, 1] once un-normalised (ParameterError otherwise)."""
    if not isinstance(cfg, AdvTrainConfig):
        raise ParameterError(f"adversarial_loss takes an AdvTrainConfig, got {type(cfg).__name__}")
    checked = False

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal checked
        if cfg.method == "none":
            logits = model(x)
            return F.cross_entropy(logits.float(), y), logits
        if not checked:
            _check_pixels(to_pixels(x, mean, std))
            checked = True
        x_adv, _ = perturb(model, x, y, cfg, mean, std)
        if cfg.method != "trades":
            logits = model(x_adv)
            return F.cross_entropy(logits.float(), y), logits
        logits = model(x)
        p_clean = F.softmax(logits.float(), dim=1)
        adv_log = F.log_softmax(model(x_adv).float(), dim=1)
        robust = F.kl_div(adv_log, p_clean, reduction="batchmean")  # KL(clean ‖ adv), mean over the batch
        return F.cross_entropy(logits.float(), y) + float(cfg.trades_beta) * robust, logits

    return loss_fn
