"""Chapter 03, adaptive smoothing (Bai, Anderson, Kim & Sojoudi, "Improving the
Accuracy-Robustness Trade-Off of Classifiers via Adaptive Smoothing", arXiv 2301.12554): mix
the output probabilities of an accurate standard classifier g and an adversarially robust
classifier h, with a fixed weight or with a weight α(x) that a small mixing network reads off
the two networks' intermediate features.

The mixed classifier (:class:`MixedClassifier`) returns log-probabilities

    F(x) = log((1 − α)·softmax(s_g·g(x)) + α·softmax(s_h·h(x))),

computed as a ``logsumexp`` of the two weighted log-softmaxes so that it stays finite when both
probabilities of a class underflow; ``mode="logit"`` mixes the scaled logits instead,
F(x) = (1 − α)·s_g·g(x) + α·s_h·h(x) (the control). g and h are frozen and always in eval mode;
the whole model is one differentiable, deterministic graph, so every white-box attack on it
is adaptive: its gradients run through g, h and the mixing network.

The mixing network (:class:`MixingNet`) reads the first two stages of both base networks:
the concatenated stage-1 maps go through a pre-activation residual block that brings them to
stage 2's resolution, the concatenated stage-2 maps through a 1×1 convolution, the two are
added, one more pre-activation block, global pooling and a linear layer give a raw γ(x). As in
the paper's code, γ passes a BatchNorm without affine parameters, then γ·scale + bias (one
pair in training, another at evaluation), and α(x) = sigmoid(γ); at evaluation α is squashed
into [alpha_bias, alpha_bias + alpha_scale] ([0.84, 0.99] in the CIFAR-100 config).

Training (:func:`mixer_loss`, a loss for ``repro.train.fit``, which updates only the mixing
network): each batch is attacked through the whole composite (PGD on its cross-entropy, ε
scaled by a random factor per batch, the mixing network's BatchNorm in eval mode and α
unsquashed, as the paper's code crafts), clean images get the label 0 ("trust g") and attacked
ones 1 ("trust h"), and the loss is w_bce·BCE(γ, label) + w_ce·CE + w_prod·BCE·CE per image
(1.5, 0, 0.2 in the paper).

Evaluation (:func:`evaluate_point`): clean and PGD accuracy of one mixed model on the fixed
evaluation subset, per image (so that the trade-off's chord and its bootstrap variance can be
formed from paired images), with the top-class confidence and α of every clean and attacked
image. The family's :func:`~.evaluate.evaluate` (PGD, APGD-CE, APGD-T and the sanity checks)
runs on a smaller subset for every model a claim rests on (the arm does it); :func:`guards`
turns its failures into flags.

The rest of the module holds the chapter's arms (:func:`arm_configs`), the trade-off
arithmetic (:func:`chord_gain`, :func:`bootstrap_var`), and its tables and figures. The arm
itself (load or train g and h, sweep α, train the mixing network, evaluate) is
``arms/adasmooth.py``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import MEAN, STD
from ...errors import ParameterError, check_number
from ...models.stages import stage_outputs, stage_shapes
from ...plots.style import COLORS, annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from ...train import LossFn
from .attacks import AttackSpec, PixelModel, attack
from .evaluate import EvalConfig
from .protocol import RobustConfig, adv_config, robust_config
from .training import AdvTrainConfig, perturb

MODES = ("prob", "logit")
#: The models every claim rests on, evaluated with the family's full evaluation and sanity
#: checks; their labels in a job's ``points``.
CLAIM_POINTS = ("g", "h", "prob", "logit", "adaptive")
#: Which models each claim's metric is formed from (a failed check on one flags the claim).
CLAIM_RESTS_ON = {
    "gain_prob": ("g", "h", "prob"),
    "prob_vs_logit": ("g", "h", "prob", "logit"),
    "adaptive_vs_fixed": ("g", "h", "prob", "adaptive"),
    "conf_gap_adv": ("h",),
}


def sigmoid(x: float) -> float:
    """The logistic function of a number (α = sigmoid(γ))."""
    return 1.0 / (1.0 + math.exp(-x))


# -- the mixing network --------------------------------------------------------------------------------------
class PreActBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016): BN-ReLU-conv3×3(stride)-BN-ReLU-conv3×3,
    plus the input, through a 1×1 convolution when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class MixingNet(nn.Module):
    """γ(x) (raw, one number per image) from the stage-1 and stage-2 maps of g and h.

    ``ch1``/``ch2``: channels of the concatenated stage-1/stage-2 maps of both networks;
    ``stride``: stage 1's resolution over stage 2's; ``width``: the network's channels."""

    def __init__(self, ch1: int, ch2: int, stride: int, width: int) -> None:
        super().__init__()
        self.block1 = PreActBlock(ch1, width, stride)
        self.merge = nn.Conv2d(ch2, width, 1, bias=False)
        self.block2 = PreActBlock(width, width)
        self.bn = nn.BatchNorm2d(width)
        self.linear = nn.Linear(width, 1, bias=False)

    def forward(self, stage1: Sequence[torch.Tensor], stage2: Sequence[torch.Tensor]) -> torch.Tensor:
        z = self.block1(torch.cat(list(stage1), 1)) + self.merge(torch.cat(list(stage2), 1))
        z = F.relu(self.bn(self.block2(z)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))[:, 0]


def build_mixer(g: nn.Module, h: nn.Module, image_size: int, width: int) -> MixingNet:
    """The mixing network for base networks ``g`` and ``h`` (any ``repro.models`` network with
    two pooled stages or more; ParameterError otherwise)."""
    try:
        sg, sh = stage_shapes(g, image_size), stage_shapes(h, image_size)
    except (ValueError, AttributeError) as exc:
        raise ParameterError(f"the mixing network reads stage maps the base network does not expose: {exc}") from None
    if len(sg) < 2 or len(sh) < 2:
        raise ParameterError("the mixing network reads two stages of each base network; one has fewer")
    if sg[0][1] != sh[0][1] or sg[1][1] != sh[1][1] or sg[0][1] % sg[1][1]:
        raise ParameterError(f"g's stage maps {sg[:2]} and h's {sh[:2]} do not line up")
    return MixingNet(sg[0][0] + sh[0][0], sg[1][0] + sh[1][0], sg[0][1] // sg[1][1], int(width))


# -- the mixed classifier ------------------------------------------------------------------------------------
class MixedClassifier(nn.Module):
    """F(x) from two frozen base networks (module docstring): a fixed ``alpha``, or the
    ``mixer``'s α(x) (then ``alpha`` is ignored). Takes normalised images, like the bases.

    mode: "prob" (log of the probability mixture) or "logit" (the mixture of scaled logits);
    scale_g, scale_h: the logit scales s_g, s_h; alpha_bias, alpha_scale: the evaluation range
    of α(x); gamma_train, gamma_eval: (scale, bias) applied to the normalised γ in training and
    at evaluation; bn_momentum: the momentum of γ's BatchNorm running statistics. The bases
    stay in eval mode whatever ``train()`` is asked; their parameters are frozen.
    ``crafting()`` sets the state the paper's code attacks the model in while the mixing
    network trains: BatchNorm as the caller left it, the training (scale, bias) of γ and α
    unsquashed."""

    def __init__(self, g: nn.Module, h: nn.Module, mode: str = "prob", alpha: float = 0.5,
                 mixer: MixingNet | None = None, scale_g: float = 2.0, scale_h: float = 1.0,
                 alpha_bias: float = 0.84, alpha_scale: float = 0.15,
                 gamma_train: tuple[float, float] = (2.0, 0.4), gamma_eval: tuple[float, float] = (2.0, 1.3),
                 bn_momentum: float = 0.01) -> None:
        super().__init__()
        if mode not in MODES:
            raise ParameterError(f"unknown mixing mode {mode!r}: one of {', '.join(MODES)}")
        if mixer is not None and mode != "prob":
            raise ParameterError("the mixing network mixes probabilities (mode='prob')")
        check_number("alpha", alpha, 0.0, 1.0)
        check_number("scale_g", scale_g, 0.0, lo_open=True)
        check_number("scale_h", scale_h, 0.0, lo_open=True)
        check_number("alpha_bias", alpha_bias, 0.0, 1.0)
        check_number("alpha_scale", alpha_scale, 0.0, 1.0 - float(alpha_bias))
        check_number("bn_momentum", bn_momentum, 0.0, 1.0, lo_open=True)
        self.g, self.h, self.mixer = g, h, mixer
        for p in list(g.parameters()) + list(h.parameters()):
            p.requires_grad_(False)
        self.mode, self.alpha = mode, float(alpha)
        self.scale_g, self.scale_h = float(scale_g), float(scale_h)
        self.alpha_bias, self.alpha_scale = float(alpha_bias), float(alpha_scale)
        self.gamma_train = tuple(float(v) for v in gamma_train)
        self.gamma_eval = tuple(float(v) for v in gamma_eval)
        # the paper's BatchNorm on γ: no affine parameters, slow running statistics (momentum 0.01)
        self.gamma_bn = nn.BatchNorm1d(1, affine=False, momentum=float(bn_momentum)) if mixer is not None else None
        self._crafting = False
        self.train(False)

    @property
    def adaptive(self) -> bool:
        return self.mixer is not None

    def train(self, mode: bool = True) -> "MixedClassifier":
        """Training mode for the mixing network (and γ's BatchNorm) only: g and h stay in eval."""
        self.training = bool(mode)
        for m in (self.mixer, self.gamma_bn):
            if m is not None:
                m.train(mode)
        self.g.eval()
        self.h.eval()
        return self

    @contextlib.contextmanager
    def crafting(self) -> Iterator[None]:
        """While active: the training (scale, bias) of γ and α unsquashed (what the mixing
        network's training attacks; BatchNorm follows each module's own mode)."""
        was, self._crafting = self._crafting, True
        try:
            yield
        finally:
            self._crafting = was

    def _alpha(self, f1: Sequence[torch.Tensor], f2: Sequence[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(γ, α, log α, log(1 − α)) per image from the mixing network."""
        assert self.mixer is not None and self.gamma_bn is not None
        raw = self.mixer(f1, f2).float()
        fit_phase = self.training or self._crafting
        scale, bias = self.gamma_train if fit_phase else self.gamma_eval
        gamma = self.gamma_bn(raw[:, None])[:, 0] * scale + bias
        if fit_phase:  # α = sigmoid(γ) in (0, 1), its logs computed stably
            return gamma, torch.sigmoid(gamma), F.logsigmoid(gamma), F.logsigmoid(-gamma)
        alpha = self.alpha_bias + self.alpha_scale * torch.sigmoid(gamma)
        # 1 − α written without the subtraction, so that it stays > 0 where sigmoid(γ) rounds to 1
        rest = (1.0 - self.alpha_bias - self.alpha_scale) + self.alpha_scale * torch.sigmoid(-gamma)
        return gamma, alpha, torch.log(alpha), torch.log(rest)

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(F, γ, α)`` for normalised images ``x``: F [B, K] (fp32), γ [B] (None for a fixed
        α) and α [B]. A fixed α of 0 or 1 runs only the one network it keeps."""
        n = x.shape[0]
        gamma = None
        if self.mixer is not None:
            f_g, z_g = stage_outputs(self.g, x)
            f_h, z_h = stage_outputs(self.h, x)
            gamma, alpha, log_a, log_1a = self._alpha([f_g[0], f_h[0]], [f_g[1], f_h[1]])
        else:
            z_g = self.g(x) if self.alpha < 1.0 else None
            z_h = self.h(x) if self.alpha > 0.0 else None
            alpha = torch.full((n,), self.alpha, device=x.device)
            log_a = torch.full((n,), math.log(self.alpha) if self.alpha > 0 else -math.inf, device=x.device)
            log_1a = torch.full((n,), math.log1p(-self.alpha) if self.alpha < 1 else -math.inf, device=x.device)
        if z_h is None:
            out = self._single(z_g, self.scale_g)
        elif z_g is None:
            out = self._single(z_h, self.scale_h)
        elif self.mode == "prob":
            lg = F.log_softmax(self.scale_g * z_g.float(), dim=1)
            lh = F.log_softmax(self.scale_h * z_h.float(), dim=1)
            out = torch.logsumexp(torch.stack([log_1a[:, None] + lg, log_a[:, None] + lh]), dim=0)
        else:
            out = (1 - alpha)[:, None] * self.scale_g * z_g.float() + alpha[:, None] * self.scale_h * z_h.float()
        return out, gamma, alpha

    def _single(self, z: torch.Tensor, scale: float) -> torch.Tensor:
        z = scale * z.float()
        return F.log_softmax(z, dim=1) if self.mode == "prob" else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)[0]


# -- the mixing network's training ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MixerConfig:
    """Everything that sets the mixing network and its training besides the optimiser recipe.

    width: channels of the mixing network; scale_g, scale_h: logit scales s_g, s_h;
    alpha_bias, alpha_scale: α(x)'s range at evaluation; gamma_train, gamma_eval: (scale,
    bias) of the normalised γ; bn_momentum: momentum of γ's BatchNorm running statistics (the
    paper's 0.01 needs hundreds of steps to settle; a short run needs more); bce_weight,
    ce_weight, prod_weight: the loss weights;
    eps: the training attack's L∞ radius (pixels), scaled per batch by a factor uniform in
    ``eps_range``; attack_steps: its PGD steps (step size 2.5·ε/steps)."""

    width: int = 64
    scale_g: float = 2.0
    scale_h: float = 1.0
    alpha_bias: float = 0.84
    alpha_scale: float = 0.15
    gamma_train: tuple[float, float] = (2.0, 0.4)
    gamma_eval: tuple[float, float] = (2.0, 1.3)
    bn_momentum: float = 0.01
    bce_weight: float = 1.5
    ce_weight: float = 0.0
    prod_weight: float = 0.2
    eps: float = 8 / 255
    eps_range: tuple[float, float] = (0.4, 1.1)
    attack_steps: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ParameterError(f"mixer_width must be an integer ≥ 1, got {self.width!r}")
        if isinstance(self.attack_steps, bool) or not isinstance(self.attack_steps, int) or self.attack_steps < 1:
            raise ParameterError(f"mix_attack_steps must be an integer ≥ 1, got {self.attack_steps!r}")
        check_number("scale_g", self.scale_g, 0.0, lo_open=True)
        check_number("scale_h", self.scale_h, 0.0, lo_open=True)
        check_number("alpha_bias", self.alpha_bias, 0.0, 1.0)
        check_number("alpha_scale", self.alpha_scale, 0.0, 1.0 - float(self.alpha_bias))
        check_number("gamma_bn_momentum", self.bn_momentum, 0.0, 1.0, lo_open=True)
        for name in ("gamma_train", "gamma_eval", "eps_range"):
            v = tuple(getattr(self, name))
            if len(v) != 2:
                raise ParameterError(f"{name} must be two numbers, got {list(v)!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        for name in ("bce_weight", "ce_weight", "prod_weight"):
            check_number(name, getattr(self, name), 0.0)
        if self.bce_weight == 0 and self.prod_weight == 0:
            raise ParameterError("bce_weight and prod_weight are both 0: nothing would teach the mixing network γ")
        check_number("eps", self.eps, 0.0, 1.0, lo_open=True)
        lo, hi = self.eps_range
        check_number("eps_range[0]", lo, 0.0, lo_open=True)
        check_number("eps_range[1]", hi, lo)
        if self.eps * hi > 1:
            raise ParameterError(f"eps · eps_range[1] = {self.eps * hi:g} > 1: ε is in [0, 1] pixel units")

    def as_record(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def mixed_model(g: nn.Module, h: nn.Module, cfg: MixerConfig, mode: str = "prob", alpha: float = 0.5,
                mixer: MixingNet | None = None) -> MixedClassifier:
    """A :class:`MixedClassifier` with ``cfg``'s scales, α range and γ constants."""
    return MixedClassifier(g, h, mode=mode, alpha=alpha, mixer=mixer, scale_g=cfg.scale_g, scale_h=cfg.scale_h,
                           alpha_bias=cfg.alpha_bias, alpha_scale=cfg.alpha_scale, gamma_train=cfg.gamma_train,
                           gamma_eval=cfg.gamma_eval, bn_momentum=cfg.bn_momentum)


def composite_loss(logprobs: torch.Tensor, gamma: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                   cfg: MixerConfig) -> torch.Tensor:
    """The paper's loss, mean over the batch: w_bce·BCE(γ, target) + w_ce·CE + w_prod·BCE·CE,
    BCE on γ as a logit (target 1: the image is attacked, trust h), CE of the mixture's output
    against the class label."""
    bce = F.binary_cross_entropy_with_logits(gamma.float(), targets.float(), reduction="none")
    ce = F.cross_entropy(logprobs.float(), labels, reduction="none")
    return (cfg.bce_weight * bce + cfg.ce_weight * ce + cfg.prod_weight * bce * ce).mean()


def mixer_loss(cfg: MixerConfig, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> LossFn:
    """``loss_fn(model, x, y) -> (loss, logits)`` for ``repro.train.fit`` on an adaptive
    :class:`MixedClassifier`: PGD through the whole composite (ε × a factor uniform in
    ``cfg.eps_range`` drawn per batch from torch's RNG, which ``fit`` checkpoints), crafted in
    eval mode under :meth:`MixedClassifier.crafting`; then :func:`composite_loss` on the clean
    batch (target 0) and the attacked one (target 1) in one forward pass, so that γ's
    BatchNorm normalises over both. The logits returned are the clean batch's (fit's
    ``train_acc`` is the mixture's clean accuracy in training mode)."""
    lo, hi = cfg.eps_range

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(model, MixedClassifier) or not model.adaptive:
            raise ParameterError("mixer_loss trains the mixing network of an adaptive MixedClassifier")
        factor = lo + (hi - lo) * float(torch.rand(()))
        spec = AdvTrainConfig("pgd", eps=min(1.0, cfg.eps * factor), steps=cfg.attack_steps,
                              step_size=2.5 * cfg.eps * factor / cfg.attack_steps, craft_mode="eval")
        with model.crafting():
            x_adv, _ = perturb(model, x, y, spec, mean, std)
        both = torch.cat([x, x_adv.to(x.dtype)])
        out, gamma, _ = model.mix(both)
        n = len(y)
        targets = torch.cat([torch.zeros(n, device=x.device), torch.ones(n, device=x.device)])
        loss = composite_loss(out, gamma, torch.cat([y, y]), targets, cfg)
        return loss, out[:n]
    return loss_fn


def mixer_grad_evals_per_image(cfg: MixerConfig) -> int:
    """Forward–backward passes of the composite per training image: the attack's steps plus
    the training pass over the clean and the attacked copy."""
    return cfg.attack_steps + 2


# -- mechanics ------------------------------------------------------------------------------------------------
def mechanics(model: MixedClassifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    """What the card's smoke tier checks, on normalised images ``x``: the largest
    |logsumexp(F)| (0 for a valid log-probability; None in logit mode) and the gradient
    norm of CE(F) that reaches g's, h's and the mixing network's parameters (every one must
    be > 0 for an interior α: the attack's gradients run through all three). The bases'
    parameters are frozen again afterwards and no gradient is left behind."""
    params = {"g": list(model.g.parameters()), "h": list(model.h.parameters()),
              "mixer": list(model.mixer.parameters()) if model.mixer is not None else []}
    frozen = [(p, p.requires_grad) for ps in params.values() for p in ps]
    for p, _ in frozen:
        p.requires_grad_(True)
        p.grad = None
    try:
        with torch.enable_grad():
            out = model(x)
            F.cross_entropy(out.float(), y).backward()
        norms = {k: float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in ps if p.grad is not None)
                                     or torch.zeros(()))) for k, ps in params.items()}
        lse = float(torch.logsumexp(out.detach().float(), 1).abs().max()) if model.mode == "prob" else None
    finally:
        for p, was in frozen:
            p.grad = None
            p.requires_grad_(was)
    return {"logprob_error": lse, "grad_g": norms["g"], "grad_h": norms["h"], "grad_mixer": norms["mixer"]}


# -- evaluation -----------------------------------------------------------------------------------------------
@dataclass
class PointResult:
    """One mixed model on the evaluation subset, per image: clean and attacked prediction
    correct, top-class confidence (softmax of F) and α, clean and attacked."""

    label: str
    mode: str
    alpha: float | None
    clean: np.ndarray
    adv: np.ndarray
    conf_clean: np.ndarray
    conf_adv: np.ndarray
    alpha_clean: np.ndarray
    alpha_adv: np.ndarray

    @property
    def n(self) -> int:
        return int(len(self.clean))

    @property
    def robust(self) -> np.ndarray:
        """Correct on both the clean and the attacked image (the family's robust accuracy)."""
        return self.clean & self.adv

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "mode": self.mode, "alpha": self.alpha, "n": self.n,
                "clean": 100.0 * float(self.clean.mean()), "robust": 100.0 * float(self.robust.mean())}


@torch.no_grad()
def _outputs(model: MixedClassifier, x01: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, top-class confidence, α) per image of [0, 1] images ``x01``."""
    pix = PixelModel(model).eval()
    dev = next(model.parameters()).device
    preds, confs, alphas = [], [], []
    for s in range(0, len(x01), batch_size):
        z = (x01[s:s + batch_size].to(dev).float() - pix.mean.to(dev)) / pix.std.to(dev)
        out, _, a = model.mix(z)
        p = F.softmax(out.float(), dim=1)
        c, k = p.max(1)
        preds.append(k.cpu())
        confs.append(c.cpu())
        alphas.append(a.float().cpu())
    return torch.cat(preds).numpy(), torch.cat(confs).numpy(), torch.cat(alphas).numpy()


def evaluate_point(model: MixedClassifier, x01: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
                   label: str, batch_size: int = 256) -> PointResult:
    """Clean and attacked predictions of ``model`` (eval mode) on [0, 1] images ``x01`` under
    the family's attack ``spec`` run on the whole composite (:func:`~.attacks.attack`, fixed
    seeds per batch). A dry run attacks the first batch only: the result then covers those."""
    model.eval()
    net = PixelModel(model).eval()
    adv = attack(net, x01, y, spec, batch_size)
    n = len(adv)
    x01, y = x01[:n], y[:n]
    pc, cc, ac = _outputs(model, x01, batch_size)
    pa, ca, aa = _outputs(model, adv, batch_size)
    yy = y.cpu().numpy()
    return PointResult(label=label, mode=model.mode, alpha=None if model.adaptive else model.alpha,
                       clean=pc == yy, adv=pa == yy, conf_clean=cc, conf_adv=ca, alpha_clean=ac, alpha_adv=aa)


def chord_gain(clean_g: float, robust_g: float, clean_h: float, robust_h: float, clean_m: float,
               robust_m: float) -> float:
    """How far a mixed model's robust accuracy lies above the straight line (the chord) through
    g's and h's (clean, robust) points, read at the mixed model's clean accuracy, in points:

        r_m − [r_h + (c_m − c_h)·(r_g − r_h)/(c_g − c_h)].

    Positive: a better trade-off than interpolating between the two bases. NaN when g and h
    have the same clean accuracy (no chord). Works elementwise on numpy arrays."""
    dc = np.asarray(clean_g, dtype=float) - np.asarray(clean_h, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        line = robust_h + (np.asarray(clean_m, dtype=float) - clean_h) * (np.asarray(robust_g, dtype=float)
                                                                          - robust_h) / dc
        out = np.where(dc == 0, np.nan, np.asarray(robust_m, dtype=float) - line)
    return float(out) if out.ndim == 0 else out


def gain_of(g: PointResult, h: PointResult, m: PointResult, idx: np.ndarray | None = None) -> Any:
    """:func:`chord_gain` from per-image results on the same images (``idx``: rows of image
    indices, one bootstrap replicate per row)."""
    def acc(a: np.ndarray) -> Any:
        return 100.0 * (a[idx].mean(-1) if idx is not None else a.mean())
    return chord_gain(acc(g.clean), acc(g.robust), acc(h.clean), acc(h.robust), acc(m.clean), acc(m.robust))


def confidence_gap(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray | None = None) -> Any:
    """Mean top-class confidence (points, ×100) of the correct predictions minus that of the
    wrong ones; NaN when either group is empty (per bootstrap row with ``idx``)."""
    conf, correct = np.asarray(conf, dtype=float), np.asarray(correct, dtype=bool)
    if idx is None:
        idx = np.arange(len(conf))[None]
        single = True
    else:
        single = False
    c, k = conf[idx], correct[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        right = (c * k).sum(-1) / k.sum(-1)
        wrong = (c * ~k).sum(-1) / (~k).sum(-1)
    gap = 100.0 * (right - wrong)
    return float(gap[0]) if single else gap


def bootstrap_var(stat: Callable[[np.ndarray], np.ndarray], n: int, boots: int = 1000, seed: int = 0) -> float:
    """Test-set sampling variance of a statistic of per-image results: the variance of
    ``stat(idx)`` over ``boots`` resamples of the ``n`` images with replacement (``idx``:
    [boots, n] index rows; ``stat`` returns one value per row). Every model is resampled on
    the same images, so the pairing of models scored on one test set is kept. NaN replicates
    (an empty group) are dropped; 0 with fewer than two images."""
    if n < 2:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, n, size=(boots, n))
    vals = np.asarray(stat(idx), dtype=float)
    vals = vals[np.isfinite(vals)]
    return float(vals.var(ddof=1)) if len(vals) > 1 else 0.0


def binomial_var(pct: float, n: int) -> float:
    """Sampling variance (points²) of an accuracy of ``pct`` % on ``n`` images."""
    p = min(max(pct / 100.0, 0.0), 1.0)
    return 100.0 ** 2 * p * (1 - p) / max(n, 1)


# -- the chapter's arms ----------------------------------------------------------------------------------------
@dataclass
class AdaSmoothConfig(RobustConfig):
    """The ``adasmooth`` arm: base networks g (``base_g``) and h (``base_h``), both trained by
    the family's ``standard`` arm (or loaded from ``g_weights`` / ``h_weights``, state dicts of
    the same networks), the mixing network (``mixer``) trained with this config's optimiser
    recipe (``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``schedule``,
    ``warmup_epochs``, ``grad_clip``; AdamW), and the study: probability and logit mixing at
    every fixed α of ``alphas`` plus the paper's α = sigmoid(``fixed_gamma``), attacked by
    ``attack`` on ``images`` test images (seed ``image_seed``), and the family's evaluation
    ``eval`` (PGD, APGD-CE, APGD-T, sanity checks) of g, h, both mixtures at the fixed α and
    the adaptive model. ``model`` names h's network (the mixing network's host)."""

    base_g: RobustConfig | None = None
    base_h: RobustConfig | None = None
    g_weights: str = ""
    h_weights: str = ""
    mixer: MixerConfig = field(default_factory=MixerConfig)
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0)
    fixed_gamma: float = 2.5
    attack: AttackSpec | None = None
    images: int = 1000
    image_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("base_g", "base_h"):
            v = getattr(self, name)
            if not isinstance(v, RobustConfig):
                raise ParameterError(f"{name} must be a RobustConfig (the base network's recipe), got {type(v).__name__}")
        if not isinstance(self.mixer, MixerConfig):
            raise ParameterError(f"mixer must be a MixerConfig, got {type(self.mixer).__name__}")
        self.alphas = tuple(check_number("alphas", a, 0.0, 1.0) for a in self.alphas)
        if not self.alphas:
            raise ParameterError("alphas is empty: give the fixed α values to sweep, e.g. [0.0, 0.5, 1.0]")
        check_number("fixed_gamma", self.fixed_gamma, -50.0, 50.0)
        if not 0.0 < round(self.fixed_alpha, 6) < 1.0:
            raise ParameterError(f"fixed_gamma = {self.fixed_gamma:g} gives α = {self.fixed_alpha:.6f}, which is g or h "
                                 "alone, not a mixture: |fixed_gamma| must be below about 14")
        if not isinstance(self.attack, AttackSpec):
            raise ParameterError("attack must be the study's AttackSpec")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ParameterError(f"images must be an integer ≥ 1, got {self.images!r}")
        if self.eval is None:
            raise ParameterError("the adasmooth arm needs its evaluation (eval): the checks behind every claim")
        for name in ("g_weights", "h_weights"):
            if not isinstance(getattr(self, name), str):
                raise ParameterError(f"{name} must be a path (a string; '' to train the network)")

    @property
    def fixed_alpha(self) -> float:
        """The paper's fixed α = sigmoid(γ)."""
        return sigmoid(float(self.fixed_gamma))

    def grid(self) -> list[float]:
        """Every fixed α of the sweep, the paper's included, sorted (0 and 1 are g and h)."""
        return sorted({round(a, 6) for a in (*self.alphas, self.fixed_alpha, 0.0, 1.0)})

    def as_record(self) -> dict[str, Any]:
        rec = super().as_record()
        rec.update(base_g=self.base_g.as_record() if self.base_g else None,
                   base_h=self.base_h.as_record() if self.base_h else None,
                   g_weights=self.g_weights, h_weights=self.h_weights, mixer=self.mixer.as_record(),
                   alphas=list(self.alphas), fixed_gamma=float(self.fixed_gamma), fixed_alpha=self.fixed_alpha,
                   attack=self.attack.as_record() if self.attack else None, images=self.images,
                   image_seed=self.image_seed)
        return rec

    def recipe(self) -> dict[str, Any]:
        """What sets the mixing network's weights: the bases' recipes (or weight files), the
        mixer and its optimiser; not the study (α grid, fixed γ, attack, images)."""
        rec = super().recipe()
        for k in ("alphas", "fixed_gamma", "fixed_alpha", "attack", "images", "image_seed"):
            rec.pop(k)
        rec["base_g"], rec["base_h"] = self.base_g.recipe(), self.base_h.recipe()
        return rec


def check_attack_spec(params: Mapping[str, Any]) -> AttackSpec:
    """The white-box attack of the α sweep: L∞ PGD at ``eval_eps`` with ``attack_steps`` steps."""
    return AttackSpec("pgd", norm="Linf", eps=float(params["eval_eps"]), steps=int(params["attack_steps"]),
                      seed=int(params["eval_seed"]))


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """The family's evaluation of every model a claim rests on: PGD, APGD-CE and APGD-T (top
    ``apgd_targets`` classes) at ``eval_eps`` with ``attack_steps`` steps, on ``check_images``
    test images, with the sanity checks (Square with ``square_queries`` queries)."""
    eps, steps, seed = float(params["eval_eps"]), int(params["attack_steps"]), int(params["eval_seed"])
    targets = int(params["apgd_targets"])
    if targets < 1:
        raise ParameterError(f"apgd_targets must be ≥ 1, got {targets}")
    specs = (AttackSpec("pgd", eps=eps, steps=steps, seed=seed),
             AttackSpec("apgd_ce", eps=eps, steps=steps, seed=seed),
             AttackSpec("apgd_t", eps=eps, steps=steps, seed=seed, target_classes=targets))
    return EvalConfig(attacks=specs, images=int(params["check_images"]), seed=seed,
                      square_queries=int(params["square_queries"]), sanity_attack="pgd")


def mixer_config(params: Mapping[str, Any]) -> MixerConfig:
    """The mixing network and its training from the chapter's parameters."""
    return MixerConfig(width=int(params["mixer_width"]), scale_g=float(params["scale_g"]),
                       scale_h=float(params["scale_h"]), alpha_bias=float(params["alpha_bias"]),
                       alpha_scale=float(params["alpha_scale"]), gamma_train=tuple(params["gamma_train"]),
                       gamma_eval=tuple(params["gamma_eval"]), bn_momentum=float(params["gamma_bn_momentum"]),
                       bce_weight=float(params["bce_weight"]),
                       ce_weight=float(params["ce_weight"]), prod_weight=float(params["prod_weight"]),
                       eps=float(params["at_eps"]), eps_range=tuple(params["mix_eps_range"]),
                       attack_steps=int(params["mix_attack_steps"]))


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """``label → (arm, config)``: ``g`` (the family's standard training), ``h`` (its
    adversarial training, the protocol's ``at_*`` recipe), both by the ``standard`` arm so
    that every chapter asking for the same recipe shares the trained network, then
    ``adasmooth`` (the mixtures, the mixing network and every evaluation). A base network with
    a weight file (``g_weights`` / ``h_weights``) is loaded, not trained, and has no job of
    its own. Every setting is checked here (ParameterError before any work)."""
    cfg_g = robust_config(params, "g: standard training")
    cfg_h = robust_config(params, "h: adversarial training", adv=adv_config(params))
    ev = eval_config(params)
    mix = mixer_config(params)
    ada = AdaSmoothConfig(
        model=cfg_h.model, width=cfg_h.width, epochs=int(params["mix_epochs"]), batch_size=int(params["mix_batch_size"]),
        lr=float(params["mix_lr"]), weight_decay=float(params["mix_weight_decay"]), schedule="cosine",
        warmup_epochs=float(params["mix_warmup_epochs"]), grad_clip=float(params["mix_grad_clip"]), eval=ev,
        title="adaptive smoothing", base_g=cfg_g, base_h=cfg_h, g_weights=str(params["g_weights"]),
        h_weights=str(params["h_weights"]), mixer=mix, alphas=tuple(params["alphas"]),
        fixed_gamma=float(params["fixed_gamma"]), attack=check_attack_spec(params), images=int(params["eval_images"]),
        image_seed=int(params["eval_seed"]))
    arms: dict[str, tuple[str, RobustConfig]] = {}
    if not ada.g_weights:
        arms["g"] = ("standard", cfg_g)
    if not ada.h_weights:
        arms["h"] = ("standard", cfg_h)
    arms["adasmooth"] = ("adasmooth", ada)
    return arms


# -- results ---------------------------------------------------------------------------------------------------
def _jobs(result: SweepResult, arm: str = "adasmooth") -> list[dict[str, Any]]:
    return result.of(arm)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"values": [], "mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"values": v.tolist(), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def curve(result: SweepResult, mode: str) -> list[dict[str, Any]]:
    """The α sweep of one mixing mode over seeds: per α, clean and robust accuracy per seed and
    their means (α = 0 and 1 are g and h, shared by both modes)."""
    by_alpha: dict[float, dict[str, list[float]]] = {}
    for j in _jobs(result):
        for p in j["extra"]["sweep"]:
            if p["alpha"] is not None and (p["mode"] == mode or p["label"] in ("g", "h")):
                d = by_alpha.setdefault(float(p["alpha"]), {"clean": [], "robust": []})
                d["clean"].append(p["clean"])
                d["robust"].append(p["robust"])
    return [{"alpha": a, "clean": _stats(d["clean"]), "robust": _stats(d["robust"])} for a, d in sorted(by_alpha.items())]


def point_stats(result: SweepResult, label: str) -> dict[str, Any]:
    """Clean and robust accuracy of one claim model (``g``, ``h``, ``prob``, ``logit``,
    ``adaptive``) over seeds, on the evaluation subset."""
    vals = [j["extra"]["points"][label] for j in _jobs(result) if label in j["extra"]["points"]]
    return {"clean": _stats([v["clean"] for v in vals]), "robust": _stats([v["robust"] for v in vals])}


def tradeoff_figure(result: SweepResult, setting: str, attack_name: str = "PGD") -> tuple[Any, dict]:
    """The key figure: clean against robust accuracy as α varies, probability mixing (solid) and
    logit mixing (dashed), mean over seeds with a dot per seed; g and h as large markers joined
    by the chord (dotted); the paper's fixed α ringed; the adaptive model as a star."""
    fig, ax = new_figure(width=6.4, height=4.2)
    data: dict[str, Any] = {"setting": setting, "attack": attack_name}
    for mode, color, ls, name in (("prob", COLORS[1], "-", "probability mixing"),
                                  ("logit", COLORS[2], "--", "logit mixing (control)")):
        pts = [p for p in curve(result, mode) if p["clean"]["n"]]
        if not pts:
            continue
        xs, ys = [p["clean"]["mean"] for p in pts], [p["robust"]["mean"] for p in pts]
        ax.plot(xs, ys, ls, color=color, marker="o", markersize=4, label=name, zorder=3)
        for p in pts:
            ax.scatter(p["clean"]["values"], p["robust"]["values"], s=8, color=color, alpha=0.35, linewidths=0,
                       zorder=2)
        if mode == "prob":
            for p, x, y in zip(pts, xs, ys):
                if 0 < p["alpha"] < 1:
                    ax.annotate(f"{p['alpha']:.3g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                                color=color)
        data[mode] = pts
    jobs = _jobs(result)
    fixed = jobs[0]["extra"]["fixed_alpha"] if jobs else None
    pts = {k: point_stats(result, k) for k in CLAIM_POINTS}
    g, h = pts["g"], pts["h"]
    if g["clean"]["n"] and h["clean"]["n"]:
        ax.plot([g["clean"]["mean"], h["clean"]["mean"]], [g["robust"]["mean"], h["robust"]["mean"]], ":",
                color="0.35", linewidth=1.2, label="chord g–h", zorder=1)
    for key, marker, color, size, name in (("g", "s", COLORS[0], 60, "g (standard)"),
                                           ("h", "D", COLORS[4], 60, "h (adversarially trained)"),
                                           ("prob", "o", COLORS[1], 140, f"prob. mixing at α = {fixed:.3f}" if fixed else ""),
                                           ("adaptive", "*", COLORS[5], 150, "adaptive α(x)")):
        s = pts[key]
        if not s["clean"]["n"]:
            continue
        face = "none" if key == "prob" else color
        ax.scatter([s["clean"]["mean"]], [s["robust"]["mean"]], s=size, marker=marker, facecolors=face,
                   edgecolors=color, linewidths=1.4, zorder=5, label=name)
        if key == "adaptive":
            ax.scatter(s["clean"]["values"], s["robust"]["values"], s=14, marker="*", color=color, alpha=0.4,
                       linewidths=0, zorder=4)
    data["points"] = pts
    data["fixed_alpha"] = fixed
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy under {attack_name} (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("Accuracy–robustness trade-off as α varies")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable(data)


def confidence_figure(result: SweepResult, setting: str, bins: int = 20) -> tuple[Any, dict]:
    """The key property: h's top-class confidence on the images it classifies correctly and on
    those it gets wrong, clean (left) and under the attack on h (right), pooled over seeds,
    each histogram normalised to its own count, with its mean marked."""
    fig, axes = new_figure(ncols=2, width=7.2, height=3.2, sharey=True)
    edges = np.linspace(0, 1, bins + 1)
    data: dict[str, Any] = {"setting": setting, "edges": edges.tolist()}
    for ax, phase, title in zip(axes, ("clean", "adv"), ("clean images", "attacked images (PGD on h)")):
        data[phase] = {}
        for group, color, name in (("correct", COLORS[0], "correct"), ("wrong", COLORS[1], "wrong")):
            vals = np.concatenate([np.asarray(j["extra"]["h_confidence"][f"{phase}_{group}"], dtype=float)
                                   for j in _jobs(result)] or [np.zeros(0)])
            if vals.size:
                w = np.full(vals.size, 100.0 / vals.size)
                ax.hist(vals, bins=edges, weights=w, color=color, alpha=0.55, label=f"{name} (n={vals.size})")
                ax.axvline(float(vals.mean()), color=color, linestyle="--", linewidth=1.1)
            data[phase][group] = {"n": int(vals.size), "mean": float(vals.mean()) if vals.size else None,
                                  "hist_pct": np.histogram(vals, bins=edges)[0].tolist()}
        ax.set_title(title)
        ax.set_xlabel("h's top-class confidence")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("% of the group's images")
    annotate_setting(fig, setting)
    return fig, jsonable(data)


def alpha_figure(result: SweepResult, setting: str, bins: int = 24) -> tuple[Any, dict]:
    """α(x) of the adaptive model on clean images and on images attacked through the whole
    adaptive model, pooled over seeds (each histogram normalised to its count), with the
    paper's fixed α marked."""
    fig, ax = new_figure(width=5.2, height=3.2)
    jobs = _jobs(result)
    data: dict[str, Any] = {"setting": setting}
    if not jobs:
        annotate_setting(fig, setting)
        return fig, jsonable(data)
    lo, hi = jobs[0]["extra"]["alpha_range"]
    edges = np.linspace(lo, hi, bins + 1)
    for phase, color, name in (("clean", COLORS[0], "clean"), ("adv", COLORS[1], "attacked (adaptive PGD)")):
        vals = np.concatenate([np.asarray(j["extra"]["alpha_values"][phase], dtype=float) for j in jobs])
        w = np.full(vals.size, 100.0 / max(vals.size, 1))
        ax.hist(vals, bins=edges, weights=w, color=color, alpha=0.55, label=f"{name} (mean {vals.mean():.3f})")
        data[phase] = {"n": int(vals.size), "mean": float(vals.mean()), "hist": np.histogram(vals, bins=edges)[0].tolist()}
    fixed = jobs[0]["extra"]["fixed_alpha"]
    ax.axvline(fixed, color="0.3", linestyle=":", linewidth=1.2, label=f"fixed α = {fixed:.3f}")
    ax.set_xlabel("α(x)  (weight on h)")
    ax.set_ylabel("% of images")
    ax.set_xlim(lo, hi)
    ax.legend(fontsize=8)
    ax.set_title("The mixing network's α on clean vs attacked images")
    data.update(edges=edges.tolist(), fixed_alpha=fixed, range=[lo, hi])
    annotate_setting(fig, setting)
    return fig, jsonable(data)


POINT_NAMES = {"g": "g (standard)", "h": "h (adversarially trained)", "prob": "probability mixing, fixed α",
               "logit": "logit mixing, fixed α (control)", "adaptive": "adaptive α(x)"}


def _ms(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "—"
    return f"{s['mean']:.1f} ± {s['sd']:.1f}" if s["n"] > 1 else f"{s['mean']:.1f}"


def points_table(result: SweepResult) -> str:
    """One row per claim model: clean and robust accuracy on the evaluation subset (mean ± sd
    over seeds) and its distance above the g–h chord (points)."""
    rows = []
    gains = {"prob": "gain_prob", "logit": "gain_logit", "adaptive": "gain_adaptive"}
    for key in CLAIM_POINTS:
        s = point_stats(result, key)
        if not s["clean"]["n"]:
            continue
        gain = _stats([j["metrics"][gains[key]] for j in _jobs(result) if gains.get(key) in j["metrics"]]) \
            if key in gains else None
        alpha = "0" if key == "g" else "1" if key == "h" else (
            f"{_jobs(result)[0]['extra']['fixed_alpha']:.3f}" if key in ("prob", "logit") else "α(x)")
        rows.append([POINT_NAMES[key], alpha, _ms(s["clean"]), _ms(s["robust"]), "—" if gain is None else _ms(gain)])
    return markdown_table(["model", "α", "clean acc. (%)", "robust acc. (%)", "above the chord (pts)"], rows, "lcrrr")


def checks_table(result: SweepResult) -> str:
    """Per claim model and seed, the family's evaluation on its check subset: clean, PGD,
    APGD-CE, APGD-T, and the sanity checks (PGD with twice the steps, unbounded PGD, Square)."""
    rows = []
    for j in _jobs(result):
        for key in CLAIM_POINTS:
            ev = j["extra"]["checks"].get(key)
            if not ev:
                continue
            san = ev.get("sanity") or {}
            checks = {c["name"]: c for c in san.get("checks", [])}

            def cell(name: str, k: str) -> str:
                c = checks.get(name)
                return "—" if c is None else f"{c['numbers'][k]:.1f} {'✓' if c['passed'] else '✗ FAILED'}"
            rob = ev["robust"]
            rows.append([POINT_NAMES[key], str(j["seed"]), str(ev["n"]), f"{ev['clean']:.1f}",
                         *[f"{rob[k]:.1f}" if k in rob else "—" for k in ("pgd", "apgd_ce", "apgd_t")],
                         cell("more_steps", "more_steps_acc"), cell("unbounded", "acc"), cell("black_box", "acc")])
    return markdown_table(["model", "seed", "images", "clean", "PGD", "APGD-CE", "APGD-T", "PGD, 2× steps",
                           "unbounded PGD", "Square"], rows, "lrrrrrrrrr")


def mechanics_table(result: SweepResult) -> str:
    """Per seed: the largest |logsumexp F| of probability mixing (0: a valid log-probability)
    and the gradient norms that reach g, h and the mixing network."""
    rows = []
    for j in _jobs(result):
        for key, m in j["extra"]["mechanics"].items():
            rows.append([str(j["seed"]), key, "—" if m["logprob_error"] is None else f"{m['logprob_error']:.1e}",
                         f"{m['grad_g']:.2e}", f"{m['grad_h']:.2e}", f"{m['grad_mixer']:.2e}" if m["grad_mixer"] else "—"])
    return markdown_table(["seed", "model", "max |logsumexp F|", "‖∇g‖", "‖∇h‖", "‖∇mixer‖"], rows, "llrrrr")


def base_table(result: SweepResult) -> str:
    """The two base networks as the family's standard arm trained them: clean test top-1 per
    seed and gradient evaluations."""
    rows = []
    for arm in ("g", "h"):
        jobs = result.of(arm)
        if not jobs:
            continue
        cfg = jobs[0]["extra"]["config"]
        adv = cfg.get("adv")
        at = "—" if not adv else f"{adv['method']}, ε {adv['eps_255']:g}/255, {adv['steps']} step(s)"
        top = [j["metrics"]["top1"] for j in jobs]
        rows.append([f"`{arm}`", cfg["model"], at, ", ".join(f"{v:.1f}" for v in top) + f" (**{np.mean(top):.1f}**)",
                     f"{np.mean([j['metrics']['grad_evals'] for j in jobs]) / 1e3:.0f} k"])
    return markdown_table(["network", "model", "adversarial training", "clean-test top-1 per seed (mean)",
                           "grad. evals"], rows, "lllrr")


def guards(result: SweepResult, claims: Sequence[Any], z: float = 2.0) -> list[tuple[str, str]]:
    """``(claim key, reason)`` for each claim whose evidence cannot be vouched for; pass each
    to ``run.flag(reason, claim=key)``. Per seed and per model a claim rests on
    (:data:`CLAIM_RESTS_ON`): a failed sanity check of the family's evaluation; APGD finding
    clearly lower robust accuracy than the PGD the claim is measured with (more than ``z``
    binomial standard errors on the check subset: PGD would overstate robustness); and, for
    the trade-off claims, bases without a trade-off to improve: g not clearly more accurate
    than h on clean images, or h not clearly more robust than g (``z`` standard errors of the
    difference, on the evaluation subset). Also any warning the job recorded (an empty group
    in the confidence gap)."""
    by_point: dict[str, list[str]] = {k: [] for k in CLAIM_POINTS}
    tradeoff: list[str] = []
    warnings: dict[str, list[str]] = {}
    for j in _jobs(result):
        s = j["seed"]
        for key, ev in j["extra"]["checks"].items():
            for f in ev.get("flags", []):
                by_point[key].append(f"{key} seed {s}: {f}")
            rob, n = ev["robust"], max(int(ev["n"]), 1)
            if "pgd" in rob:
                worst = min(rob.values())
                p = rob["pgd"] / 100
                tol = max(100 * z * math.sqrt(max(p * (1 - p), 0.0) / n), 100.0 / n)
                if worst < rob["pgd"] - tol:
                    by_point[key].append(f"{key} seed {s}: APGD leaves {worst:.1f}% vs PGD {rob['pgd']:.1f}% "
                                         f"(tolerance {tol:.1f} pts, {n} images): PGD overstates its robustness")
        pts = j["extra"]["points"]
        g, h = pts.get("g"), pts.get("h")
        if g and h:
            n = max(int(g["n"]), 1)
            for what, a, b in (("clean accuracy", g["clean"], h["clean"]), ("robust accuracy", h["robust"], g["robust"])):
                se = 100 * math.sqrt((binomial_var(a, n) + binomial_var(b, n)) / 100 ** 2)
                if a - b <= z * se:
                    better, worse = ("g", "h") if what == "clean accuracy" else ("h", "g")
                    tradeoff.append(f"seed {s}: {better} is not clearly above {worse} in {what} ({a:.1f}% vs "
                                    f"{b:.1f}%, {n} images): no trade-off between the bases to improve")
        for metric, why in (j["extra"].get("warnings") or {}).items():
            warnings.setdefault(metric, []).append(f"seed {s}: {why}")
    out = []
    for c in claims:
        rests = CLAIM_RESTS_ON.get(c.metric)
        if rests is None or c.arm != "adasmooth":
            continue
        reasons = [r for k in rests for r in by_point.get(k, [])] + warnings.get(c.metric, [])
        if c.metric != "conf_gap_adv":
            reasons += tradeoff
        if reasons:
            out.append((c.key, "; ".join(reasons)))
    return out


def comparison_models(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """The chapter's models for the family comparison (chapter 46), as ``label → (builder,
    config)``: ``fgsm_at`` (h, the family's fast adversarial training) and ``adasmooth`` (the
    adaptive mixture of g and h), with the configs trained here, so the comparison loads
    them from the shared checkpoints."""
    arms = arm_configs(params)
    ada = arms["adasmooth"][1]
    return {"fgsm_at": ("standard", ada.base_h), "adasmooth": ("adasmooth", ada)}
