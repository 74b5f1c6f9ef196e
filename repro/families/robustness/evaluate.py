"""The family's one evaluation of a trained model: clean accuracy and robust accuracy under a
list of attacks on a fixed subset of the test set, with the sanity checks that go with every
robustness result.

:func:`evaluate` takes a network trained on normalised inputs (``repro.data``'s loaders),
wraps it in :class:`~.attacks.PixelModel` so that every attack works on [0, 1] pixels, draws
the fixed evaluation subset (:func:`~.attacks.eval_subset`, its indices recorded), measures
clean accuracy and, per :class:`~.attacks.AttackSpec`, robust accuracy (an image counts when
both its clean and its attacked version are classified correctly), the worst case per image
over the attacks at the main ε (``robust_worst``: an image counts only if it survives all of
them; the extra radii of a robustness curve do not enter it), and runs
:func:`~.sanity.run_sanity_checks` for the white-box attack the config names. The result
(:class:`EvalResult`) records every attack's settings (``AttackSpec.as_record()``), the
subset's indices and the sanity report; its ``flags`` (one line per failed check) are what a
chapter passes to ``run.flag(...)`` for the claims that rest on these robustness numbers.

Every check runs before any work: the config's attacks (unknown attack or norm, ε < 0 or a
L∞ ε > 1, at construction of :class:`EvalConfig`), the model's mode (a model with any module
in train mode is refused, never silently switched: the caller decides when training is over),
and the images (float images outside [0, 1], e.g. normalised ones, are refused; uint8 images
are divided by 255).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ...data import MEAN, STD
from ...errors import ParameterError
from ...train import dry_run
from .attacks import ATTACKS, AttackSpec, PixelModel, check_attack, check_images, check_model, eval_subset, \
    robust_masks, transfer_correct
from .sanity import run_sanity_checks


@dataclass(frozen=True)
class EvalConfig:
    """One robustness evaluation.

    attacks: the attacks, each an :class:`~.attacks.AttackSpec` (distinct keys, none called
    "clean"); images: size of the fixed evaluation subset of the test set (0: every test image);
    seed: the subset's seed; batch_size: images per attack batch (the result depends on it:
    recorded); sanity: run the sanity checks for the white-box attack ``sanity_attack`` (its
    key; "" → the first white-box attack); square_queries: queries of the black-box Square
    attack of check (c); adaptive: the caller's statement that the attacks are adapted to the
    model (True for a deterministic, differentiable network; a stochastic one is detected).
    ParameterError, at construction, for any bad setting.
    """

    attacks: tuple[AttackSpec, ...] = ()
    images: int = 1000
    seed: int = 0
    batch_size: int = 256
    sanity: bool = True
    sanity_attack: str = ""
    square_queries: int = 1000
    adaptive: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        self.check()

    def check(self) -> None:
        """ParameterError for a setting the evaluation cannot run (see the class)."""
        for spec in self.attacks:
            if not isinstance(spec, AttackSpec):
                raise ParameterError(f"attacks must be AttackSpec, got {type(spec).__name__}")
            check_attack(spec)
        keys = [s.key for s in self.attacks]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup or "clean" in keys:
            raise ParameterError(f"attack keys must be distinct and not 'clean' ({', '.join(dup) or 'clean'}): "
                                 "give the specs distinct labels")
        for name in ("images", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ParameterError(f"{name} must be an integer ≥ 0, got {v!r}")
        for name in ("batch_size", "square_queries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"{name} must be an integer ≥ 1, got {v!r}")
        if self.sanity and self.attacks:
            self.white_box()  # raises if there is none to check

    def white_box(self) -> AttackSpec:
        """The white-box attack the sanity checks test."""
        if self.sanity_attack:
            for s in self.attacks:
                if s.key == self.sanity_attack:
                    if not ATTACKS[s.name].white_box:
                        raise ParameterError(f"sanity_attack {s.key!r} is not a white-box attack")
                    return s
            raise ParameterError(f"sanity_attack {self.sanity_attack!r} is none of the attacks "
                                 f"({', '.join(s.key for s in self.attacks)})")
        for s in self.attacks:
            if ATTACKS[s.name].white_box:
                return s
        raise ParameterError("the sanity checks need a white-box attack among the attacks (or sanity=False)")

    def black_box(self) -> AttackSpec:
        """Check (c)'s gradient-free attack: Square at the white-box attack's norm and ε."""
        wb = self.white_box()
        return AttackSpec("square", norm=wb.norm, eps=wb.eps, steps=self.square_queries, seed=wb.seed)

    def as_record(self) -> dict[str, Any]:
        return {"attacks": [s.as_record() for s in self.attacks], "images": self.images, "seed": self.seed,
                "batch_size": self.batch_size, "sanity": self.sanity,
                "sanity_attack": self.white_box().key if self.sanity and self.attacks else None,
                "square_queries": self.square_queries, "adaptive": self.adaptive}


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    n: images evaluated (the first batch only in a dry run); indices: the subset's indices in
    the test set; clean: clean accuracy (%) on them; robust: attack key → robust accuracy (%);
    attacks: key → the attack's settings as run; sanity: the sanity report's record (None when
    not run); flags: one line per failed sanity check; upper_bound: the robust numbers come
    from attacks not adapted to the model (only an upper bound on the true robust accuracy);
    worst: the worst case over the attacks of ``worst_of`` *per image* (an image counts only if
    it survives every one of them), which are the attacks at the white-box attack's norm and ε
    (radii of a robustness curve do not enter it); without it, the lowest of ``robust``.
    """

    n: int
    indices: list[int]
    clean: float
    robust: dict[str, float]
    attacks: dict[str, dict[str, Any]]
    sanity: dict[str, Any] | None = None
    flags: list[str] = field(default_factory=list)
    upper_bound: bool = False
    worst: float | None = None
    worst_of: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.worst is None:
            self.worst = min(self.robust.values()) if self.robust else self.clean

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for a job: ``eval_clean``, ``robust_<key>`` per attack and
        ``robust_worst``."""
        out = {"eval_clean": self.clean, **{f"robust_{k}": v for k, v in self.robust.items()}}
        if self.robust:
            out["robust_worst"] = self.worst
        return out

    def test_var(self) -> dict[str, float]:
        """Per metric of :meth:`metrics`, its binomial sampling variance (points²) on the
        ``n`` images of the subset (the job's ``n_test`` counts the whole test set)."""
        def var(p: float) -> float:
            q = min(max(p / 100.0, 0.0), 1.0)
            return 100.0 ** 2 * q * (1.0 - q) / max(self.n, 1)
        return {k: var(v) for k, v in self.metrics().items()}

    def as_record(self) -> dict[str, Any]:
        return {"n": self.n, "indices": list(self.indices), "clean": self.clean, "robust": dict(self.robust),
                "worst": self.worst, "worst_of": list(self.worst_of), "attacks": dict(self.attacks), "sanity": self.sanity, "flags": list(self.flags),
                "upper_bound": self.upper_bound}


def worst_attacks(cfg: EvalConfig) -> list[str]:
    """Keys of the attacks whose per-image worst case is ``robust_worst``: those at the norm and
    ε of the white-box attack the sanity checks test (of the first attack if none is white-box)."""
    if not cfg.attacks:
        return []
    try:
        main = cfg.white_box()
    except ParameterError:
        main = cfg.attacks[0]
    return [s.key for s in cfg.attacks if s.norm == main.norm and abs(s.eps - main.eps) < 1e-12]


def eval_images(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          list[int]]:
    """``(images01, labels, indices)`` of the fixed evaluation subset: ``n`` images (0: all)
    drawn by ``seed`` (:func:`~.attacks.eval_subset`), as float32 in [0, 1]. ``images``: uint8
    ``[N, 3, S, S]`` (divided by 255) or float already in [0, 1] (ParameterError otherwise)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ParameterError("evaluation images must be a [N, C, H, W] tensor")
    if len(labels) != len(images):
        raise ParameterError(f"{len(images)} images but {len(labels)} labels")
    total = len(images)
    idx = eval_subset(total, n or total, seed).tolist()
    sel = torch.as_tensor(idx, dtype=torch.long)
    x = images[sel]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    check_images(x)
    return x, labels[sel].long(), idx


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: EvalConfig, *,
             mean: Sequence[float] = MEAN, std: Sequence[float] = STD, normalised: bool = True,
             surrogates: Mapping[str, nn.Module] | None = None) -> EvalResult:
    """Clean and robust accuracy of ``model`` on the fixed subset of (``images``, ``labels``)
    (the test split: uint8, or float in [0, 1]), under every attack of ``cfg``, with the
    sanity checks when ``cfg.sanity``.

    ``model`` must be in eval mode (ParameterError otherwise, before any work); with
    ``normalised`` (the default) it takes inputs normalised with ``mean``/``std`` and is wrapped
    in :class:`~.attacks.PixelModel`, otherwise it takes [0, 1] pixels itself. Attacks run on
    the model's device.

    ``surrogates``: models an attacker could attack instead of ``model`` (e.g. one member of an
    ensemble; same input convention as ``model``). The white-box attack is crafted on each and
    its images are read by ``model``: robust accuracy ``transfer_<name>``, part of the worst
    case, and one more sanity check (a transfer attack that beats the white-box one means the
    model's gradients are masked)."""
    if not isinstance(cfg, EvalConfig):
        raise ParameterError(f"evaluate takes an EvalConfig, got {type(cfg).__name__}")
    cfg.check()
    check_model(model)
    # torchattacks' L2 attacks .view() the input gradient, which a channels_last model (fit's
    # layout on CUDA and in bf16) hands back strided: training is over, so the layout can go
    model.to(memory_format=torch.contiguous_format)
    x, y, idx = eval_images(images, labels, cfg.images, cfg.seed)
    net = PixelModel(model, mean, std).eval() if normalised else model
    check_model(net)
    sources = {}
    for name, sur in (surrogates or {}).items():
        if not str(name).isidentifier():
            raise ParameterError(f"surrogate names become metric keys: {name!r} is not an identifier")
        sources[name] = PixelModel(sur, mean, std).eval() if normalised else sur
        check_model(sources[name])
    if sources and not any(ATTACKS[s.name].white_box for s in cfg.attacks):
        raise ParameterError("surrogates need a white-box attack among the evaluation's attacks to craft on them")
    masks = robust_masks(net, x, y, cfg.attacks, cfg.batch_size)
    attacks = {s.key: s.as_record() for s in cfg.attacks}
    worst_of = worst_attacks(cfg)
    transfer_sets: dict[str, torch.Tensor] = {}
    for name, src in sources.items():
        spec = cfg.white_box()
        key = f"transfer_{name}"
        if key in masks:
            raise ParameterError(f"surrogate {name!r} gives the key {key!r}, which an attack already uses")
        _, robust, transfer_sets[name] = transfer_correct(src, {"model": net}, x, y, spec, cfg.batch_size)
        masks[key] = robust["model"]
        attacks[key] = {**spec.as_record(), "key": key, "transfer_from": name}
        worst_of.append(key)
    n = min(len(x), cfg.batch_size) if dry_run() else len(x)
    pct = {k: 100.0 * float(m.float().mean()) for k, m in masks.items()}
    worst = None
    if worst_of:
        survived = torch.stack([masks[k] for k in worst_of]).all(0)
        worst = 100.0 * float(survived.float().mean())
    result = EvalResult(n=n, indices=idx, clean=pct.pop("clean"), robust=pct, attacks=attacks, worst=worst,
                        worst_of=worst_of)
    if cfg.sanity and cfg.attacks:
        m = min([len(x), *(len(a) for a in transfer_sets.values())])  # a dry run crafts one batch
        report = run_sanity_checks(net, x[:m], y[:m], cfg.white_box(), black_box=cfg.black_box(),
                                   transfer=transfer_sets or None, adaptive=cfg.adaptive, batch_size=cfg.batch_size)
        result.sanity = report.as_record()
        result.flags = report.flags()
        result.upper_bound = report.upper_bound
    elif cfg.attacks:
        result.upper_bound = not cfg.adaptive
    return result
