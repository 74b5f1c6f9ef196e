"""The family's one attack suite: torchattacks 3.5 attacks and pyautoattack's AutoAttack behind a
single typed spec, run in batches on [0, 1] images.

Every attack works in pixel space: images are float tensors in [0, 1] and ε is measured there.
A model trained on normalised inputs (``repro.data.TensorLoader`` yields images normalised with
``repro.data.MEAN``/``STD``) is attacked through :class:`PixelModel`, which normalises inside.

Precision: the perturbation is always fp32. The images, δ, the step, the projection and the
clamp to [0, 1] all live in the attack library, on fp32 tensors; only the model's own layers
run in bf16, inside :class:`PixelModel` (``precision``), whose logits are cast back to fp32.
:func:`attack` disables any autocast the caller left on, so autocast never reaches the
library's arithmetic. The input gradient flows back through autocast's casts, so it reaches
the attack as fp32 (with the model's bf16 resolution, which is the model's, not the attack's).

Determinism: batch ``i`` of an attack runs under a seed derived from ``(spec.seed, i)`` (and
the restart), inside ``torch.random.fork_rng`` so the caller's RNG stream is left as it was.
The result therefore depends on ``batch_size`` as well as the seed: record both.

Robust accuracy counts an image as robust when the model classifies both the clean image and
the attacked one correctly (the attacker can always return the clean image), so it never
exceeds clean accuracy.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ...data import MEAN, STD
from ...errors import ParameterError
from ...train import WORK, Precision, dry_run

NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class _Kind:
    """What one attack of the suite supports."""

    norms: tuple[str, ...]
    steps: bool = True                 # has an iteration count (Square: queries)
    step_size: str | None = None       # default-α rule: "madry" 2.5·ε/steps, "ifgsm" ε/steps, "eps" ε
    restarts: str = "none"             # "ours" (kept worst case), "library" or "none"
    eot: bool = False                  # supports EOT samples
    white_box: bool = True             # uses the model's gradients
    library: str = "torchattacks"
    min_classes: int = 2


ATTACKS: dict[str, _Kind] = {
    "fgsm": _Kind(("Linf",), steps=False, step_size="eps"),
    "pgd": _Kind(("Linf",), step_size="madry", restarts="ours", eot=True),
    "pgd_l2": _Kind(("L2",), step_size="madry", restarts="ours"),
    "apgd_ce": _Kind(NORMS, restarts="library", eot=True),
    "apgd_t": _Kind(NORMS, restarts="library", eot=True, min_classes=4),  # targeted DLR reads the 4th logit
    "fab": _Kind(NORMS, restarts="library"),
    "square": _Kind(NORMS, restarts="library", white_box=False),
    "mifgsm": _Kind(("Linf",), step_size="ifgsm"),
    "difgsm": _Kind(("Linf",), step_size="ifgsm"),
    "tifgsm": _Kind(("Linf",), step_size="ifgsm"),
    "nifgsm": _Kind(("Linf",), step_size="ifgsm"),
    "autoattack": _Kind(NORMS, restarts="library", eot=True, library="pyautoattack", min_classes=4),
}

#: AutoAttack's Square budget is 5000 queries for 100 APGD iterations; a reduced AutoAttack
#: keeps that ratio.
SQUARE_QUERIES_PER_STEP = 50


@dataclass(frozen=True)
class AttackSpec:
    """One attack and every setting it runs with.

    name: one of :data:`ATTACKS`; norm: "Linf" or "L2"; eps: the radius in [0, 1] pixel units
    (Linf ≤ 1; L2 any non-negative radius); steps: iterations (Square: queries; AutoAttack: the
    APGD/FAB iterations, Square getting 50× as many queries; FGSM: none); step_size: α, or None
    for the attack's rule (PGD: 2.5·ε/steps, MI/DI/TI/NI-FGSM: ε/steps; APGD, FAB, Square and
    AutoAttack choose their own and refuse one); restarts: random restarts (PGD: kept per image
    as the first that fools the model); eot_samples: gradient samples per step for stochastic
    models (PGD, APGD and AutoAttack's "rand" version); seed: the attack's randomness;
    target_classes: top-k target classes of APGD-T, FAB and AutoAttack (AutoAttack's standard
    is 9); label: the key of this attack in :func:`robust_accuracy` (default: the name).
    """

    name: str
    norm: str = "Linf"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    eot_samples: int = 1
    seed: int = 0
    target_classes: int = 9
    label: str = ""

    @property
    def key(self) -> str:
        """The name this attack's result is stored under."""
        return self.label or self.name

    @property
    def kind(self) -> _Kind:
        check_attack(self)
        return ATTACKS[self.name]

    def effective_steps(self) -> int:
        """Iterations the attack really runs (1 for FGSM)."""
        return int(self.steps) if self.kind.steps else 1

    def effective_step_size(self) -> float | None:
        """The α the attack uses (None: the attack adapts its own step size)."""
        if self.step_size is not None:
            return float(self.step_size)
        rule = self.kind.step_size
        if rule == "madry":   # Madry et al.: enough to cross the ball and back
            return 2.5 * float(self.eps) / int(self.steps)
        if rule == "ifgsm":   # the I-FGSM family's convention: steps·α = ε
            return float(self.eps) / int(self.steps)
        if rule == "eps":
            return float(self.eps)
        return None

    def as_record(self) -> dict[str, Any]:
        """JSON-able record of every setting, as given and as run (α, steps, library and
        version, AutoAttack's version and Square's query budget)."""
        kind = self.kind
        rec: dict[str, Any] = asdict(self)
        rec.update(key=self.key, steps=self.effective_steps(), step_size=self.effective_step_size(),
                   white_box=kind.white_box, library=kind.library,
                   library_version=_library_version(kind.library))
        if self.name == "square":
            rec["queries"] = int(self.steps)
        if self.name in ("apgd_t", "fab", "autoattack"):
            rec["targeted"] = True
        if self.name in ("pgd", "pgd_l2"):
            rec["random_start"] = True
        if self.name == "autoattack":
            rec["version"] = _autoattack_version(self)
            rec["queries"] = SQUARE_QUERIES_PER_STEP * int(self.steps)
        return rec


def _library_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _autoattack_version(spec: AttackSpec) -> str:
    """pyautoattack's version name: "rand" (APGD-CE/DLR with EOT) for stochastic models;
    "standard" at its own budget (100 iterations, one restart), "standard-reduced" below it."""
    if spec.eot_samples > 1:
        return "rand"
    return "standard" if spec.steps == 100 and spec.restarts == 1 else "standard-reduced"


def check_attack(spec: AttackSpec) -> None:
    """Raise ParameterError, before any work, for a spec the suite cannot run: an unknown
    attack or norm, a norm the attack does not support, ε outside [0, 1] (Linf) or negative,
    steps < 1 where steps matter, a step size an adaptive attack would ignore, restarts or EOT
    samples the attack does not support."""
    if spec.name not in ATTACKS:
        raise ParameterError(f"unknown attack {spec.name!r}: one of {', '.join(ATTACKS)}")
    if spec.norm not in NORMS:
        raise ParameterError(f"unknown norm {spec.norm!r}: 'Linf' or 'L2'")
    kind = ATTACKS[spec.name]
    if spec.norm not in kind.norms:
        raise ParameterError(f"{spec.name} does not support the {spec.norm} norm (only {', '.join(kind.norms)})"
                             + ("; use pgd_l2 for L2 PGD" if spec.name == "pgd" else "")
                             + ("; use pgd for Linf PGD" if spec.name == "pgd_l2" else ""))
    eps = spec.eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ParameterError(f"eps must be a finite number ≥ 0 in [0, 1] pixel units, got {eps!r}")
    if spec.norm == "Linf" and eps > 1:
        raise ParameterError(f"Linf eps = {eps} > 1: eps is in [0, 1] pixel units (8/255, not 8)")
    if kind.steps and (isinstance(spec.steps, bool) or not isinstance(spec.steps, int) or spec.steps < 1):
        raise ParameterError(f"{spec.name} needs steps ≥ 1, got {spec.steps!r}")
    if spec.step_size is not None:
        if kind.step_size is None:
            raise ParameterError(f"{spec.name} sets its own step size: leave step_size None")
        if not math.isfinite(spec.step_size) or spec.step_size <= 0:
            raise ParameterError(f"step_size must be > 0, got {spec.step_size!r}")
    if not isinstance(spec.restarts, int) or spec.restarts < 1:
        raise ParameterError(f"restarts must be an integer ≥ 1, got {spec.restarts!r}")
    if spec.restarts > 1 and kind.restarts == "none":
        raise ParameterError(f"{spec.name} has no random start to restart from: restarts must be 1")
    if not isinstance(spec.eot_samples, int) or spec.eot_samples < 1:
        raise ParameterError(f"eot_samples must be an integer ≥ 1, got {spec.eot_samples!r}")
    if spec.eot_samples > 1 and not kind.eot:
        eot = [n for n, k in ATTACKS.items() if k.eot]
        raise ParameterError(f"{spec.name} does not support EOT: eot_samples > 1 needs one of {', '.join(eot)}")
    if not isinstance(spec.seed, int) or spec.seed < 0:
        raise ParameterError(f"seed must be an integer ≥ 0, got {spec.seed!r}")
    if not isinstance(spec.target_classes, int) or spec.target_classes < 1:
        raise ParameterError(f"target_classes must be an integer ≥ 1, got {spec.target_classes!r}")


def check_model(model: nn.Module) -> None:
    """ParameterError if any part of ``model`` is in train mode: BatchNorm would update its
    statistics from adversarial batches and dropout would randomise the gradients."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ParameterError(f"the model is in train mode ({', '.join(training[:3])}"
                             f"{'…' if len(training) > 3 else ''}): call model.eval() before attacking it")


def check_images(images01: torch.Tensor) -> None:
    """ParameterError unless ``images01`` is a float [N, C, H, W] batch with values in [0, 1]."""
    if not isinstance(images01, torch.Tensor) or images01.dim() != 4:
        raise ParameterError("images must be a [N, C, H, W] tensor")
    if not images01.is_floating_point():
        raise ParameterError(f"images are {images01.dtype}: attacks take float images in [0, 1] (divide uint8 by 255)")
    if images01.numel() == 0:
        raise ParameterError("no images to attack")
    lo, hi = float(images01.min()), float(images01.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ParameterError("images contain NaN or infinite values")
    if lo < 0.0:
        raise ParameterError(f"images reach {lo:.3g} < 0: they look normalised; attack [0, 1] pixels and wrap "
                             "the model in PixelModel, which normalises inside")
    if hi > 1.0:
        raise ParameterError(f"images reach {hi:.3g} > 1: attacks take [0, 1] pixels (divide [0, 255] images by 255)")


class PixelModel(nn.Module):
    """A model that expects normalised inputs, made to take [0, 1] images.

    ``forward(x)`` normalises ``x`` in fp32 with ``mean``/``std`` (CIFAR-100's by default) and
    runs ``model``; with a ``precision`` (``repro.train.precision(...)``) the model runs under
    its autocast and memory format and the logits come back as fp32.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                 precision: Precision | None = None) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float() - self.mean) / self.std
        if self.precision is None:
            return self.model(z)
        with self.precision.autocast():
            out = self.model(self.precision.prepare(z))
        return out.float()


class AutoAttackRunner:
    """pyautoattack's AutoAttack as a callable ``(images, labels) -> adversarial images``,
    with the iteration budget, restarts, EOT samples, target classes and seed of a spec."""

    def __init__(self, model: nn.Module, spec: AttackSpec, n_classes: int, device: torch.device) -> None:
        from pyautoattack import AutoAttack

        version_name = "rand" if spec.eot_samples > 1 else "standard"
        self.aa = AutoAttack(model, norm=spec.norm, eps=float(spec.eps), seed=spec.seed,
                             version=version_name, device=device)
        self.aa.verbose = False
        targets = min(spec.target_classes, n_classes - 1)
        for apgd in (self.aa.apgd, self.aa.apgd_targeted):
            _set_apgd_iterations(apgd, spec.steps)
            apgd.n_target_classes = targets
        self.aa.apgd.n_restarts = spec.restarts
        if spec.eot_samples > 1:
            self.aa.apgd.eot_iter = spec.eot_samples
        self.aa.fab.n_iter = spec.steps
        self.aa.fab.n_target_classes = targets
        self.aa.square.n_queries = SQUARE_QUERIES_PER_STEP * spec.steps
        self.seed = spec.seed

    @property
    def seed(self) -> int:
        return self.aa.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.aa.seed = value

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv, _ = self.aa.run_standard_evaluation(images, labels, batch_size=len(images))
        return adv


def _set_apgd_iterations(apgd: Any, n_iter: int) -> None:
    """pyautoattack's APGD derives its checkpoint schedule from ``n_iter`` in ``__init__``, so a
    new budget has to reset those as well."""
    apgd.n_iter = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return fallback


def make_attack(model: nn.Module, spec: AttackSpec, n_classes: int = 10) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The library attack object for ``spec`` on ``model`` (which takes [0, 1] images, e.g. a
    :class:`PixelModel`): a torchattacks ``Attack`` or an :class:`AutoAttackRunner`, called
    as ``atk(images01, labels) -> adversarial images``.

    ``n_classes`` sets the target classes of APGD-T, FAB and AutoAttack. ParameterError for a
    bad spec or a model in train mode. The attack keeps the model in eval mode throughout
    (torchattacks' ``set_model_training_mode(False)``).
    """
    check_attack(spec)
    check_model(model)
    kind = ATTACKS[spec.name]
    if n_classes < kind.min_classes:
        raise ParameterError(f"{spec.name} needs at least {kind.min_classes} classes, the model has {n_classes}")

    device = _device_of(model, torch.device("cpu"))
    if spec.name == "autoattack":
        return AutoAttackRunner(model, spec, n_classes, device)
    # torchattacks prints a warning for a model without parameters; the device is set below
    with contextlib.redirect_stdout(io.StringIO()):
        atk = _torchattacks(model, spec, n_classes)
    atk.set_device(device)
    atk.set_model_training_mode(model_training=False, batchnorm_training=False, dropout_training=False)
    return atk


def _torchattacks(model: nn.Module, spec: AttackSpec, n_classes: int) -> Any:
    import torchattacks as ta

    eps, steps, alpha = float(spec.eps), int(spec.steps), spec.effective_step_size()
    targets = min(spec.target_classes, n_classes - 1)
    name = spec.name
    if name == "fgsm":
        atk = ta.FGSM(model, eps=eps)
    elif name == "pgd" and spec.eot_samples > 1:
        atk = ta.EOTPGD(model, eps=eps, alpha=alpha, steps=steps, eot_iter=spec.eot_samples, random_start=True)
    elif name == "pgd":
        atk = ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    elif name == "pgd_l2":
        atk = ta.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    elif name == "apgd_ce":
        atk = ta.APGD(model, norm=spec.norm, eps=eps, steps=steps, n_restarts=spec.restarts, seed=spec.seed,
                      loss="ce", eot_iter=spec.eot_samples)
    elif name == "apgd_t":
        atk = ta.APGDT(model, norm=spec.norm, eps=eps, steps=steps, n_restarts=spec.restarts, seed=spec.seed,
                       eot_iter=spec.eot_samples, n_classes=n_classes)
        atk.n_target_classes = targets
    elif name == "fab":
        atk = ta.FAB(model, norm=spec.norm, eps=eps, steps=steps, n_restarts=spec.restarts, seed=spec.seed,
                     multi_targeted=True, n_classes=n_classes)
        atk.n_target_classes = targets
    elif name == "square":
        atk = ta.Square(model, norm=spec.norm, eps=eps, n_queries=steps, n_restarts=spec.restarts, seed=spec.seed)
    elif name == "mifgsm":
        atk = ta.MIFGSM(model, eps=eps, alpha=alpha, steps=steps)
    elif name == "difgsm":
        atk = ta.DIFGSM(model, eps=eps, alpha=alpha, steps=steps)
    elif name == "tifgsm":
        atk = ta.TIFGSM(model, eps=eps, alpha=alpha, steps=steps)
    elif name == "nifgsm":
        atk = ta.NIFGSM(model, eps=eps, alpha=alpha, steps=steps)
    else:  # pragma: no cover - ATTACKS and this table move together
        raise ParameterError(f"unknown attack {name!r}")
    return atk


def eval_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of ``n_total`` evaluation images drawn without replacement by
    ``seed``: the fixed subset every attack of a chapter runs on (record the indices)."""
    if not 1 <= n <= n_total:
        raise ParameterError(f"cannot draw {n} of {n_total} images")
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False)).astype(np.int64)


def _batch_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _seed_everything(seed: int, atk: Any) -> None:
    torch.manual_seed(seed)
    if hasattr(atk, "seed"):   # APGD, FAB, Square, AutoAttack seed themselves from this
        atk.seed = seed


def _project(adv: torch.Tensor, x: torch.Tensor, spec: AttackSpec) -> torch.Tensor:
    """``adv`` inside the ε-ball around ``x`` and [0, 1]. Libraries stop at ε up to rounding;
    anything clearly beyond it is a bug and raises instead of being hidden."""
    d = adv.float() - x
    flat = d.flatten(1)
    size = flat.abs().amax(1) if spec.norm == "Linf" else flat.norm(dim=1)
    eps = float(spec.eps)
    if bool((size > eps * (1 + 1e-4) + 1e-5).any()):
        raise RuntimeError(f"{spec.name} returned a perturbation of {spec.norm} size {float(size.max()):.6g} "
                           f"> eps = {eps:.6g}")
    if spec.norm == "Linf":
        d = d.clamp(-eps, eps)
    else:
        d = d * (eps / size.clamp_min(1e-12)).clamp(max=1.0).view(-1, *([1] * (d.dim() - 1)))
    return (x + d).clamp(0.0, 1.0)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def _rng_scope(device: torch.device) -> contextlib.AbstractContextManager:
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _batches(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
             batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(clean, adversarial, labels) per batch on the model's device; one batch in a dry run."""
    check_attack(spec)
    check_model(model)
    check_images(images01)
    if len(labels) != len(images01):
        raise ParameterError(f"{len(images01)} images but {len(labels)} labels")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be ≥ 1, got {batch_size}")
    device = _device_of(model, images01.device)
    kind = ATTACKS[spec.name]
    with _rng_scope(device), torch.autocast(device.type, enabled=False):
        n_classes = int(model(images01[:1].to(device, torch.float32)).shape[1])
        atk = make_attack(model, spec, n_classes)
        for b, start in enumerate(range(0, len(images01), batch_size)):
            x = images01[start:start + batch_size].to(device, torch.float32)
            y = labels[start:start + batch_size].to(device, torch.long)
            if kind.restarts == "ours" and spec.restarts > 1:
                adv = x.clone()
                fooled = torch.zeros(len(x), dtype=torch.bool, device=device)
                for r in range(spec.restarts):
                    _seed_everything(_batch_seed(spec.seed, b, r), atk)
                    cand = _project(atk(x, y), x, spec)
                    # keep the first adversarial example found; unfooled images keep the last try
                    take = ~fooled & ((_predict(model, cand) != y) | (r == spec.restarts - 1))
                    adv[take] = cand[take]
                    fooled |= _predict(model, adv) != y
                    if bool(fooled.all()):
                        break
            else:
                _seed_everything(_batch_seed(spec.seed, b, 0), atk)  # = restart 0 of a restarted run
                adv = _project(atk(x, y), x, spec)
            WORK["eval_batches"] += 1
            yield x, adv.detach(), y
            if dry_run():
                break


def attack(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
           batch_size: int = 256) -> torch.Tensor:
    """Adversarial versions of ``images01`` ([N, C, H, W] in [0, 1]) under ``spec``, on the
    images' device, in batches of ``batch_size`` (fp32; deterministic under ``spec.seed`` and
    ``batch_size``). A dry run attacks the first batch only and returns just those images."""
    out = [adv.to(images01.device) for _, adv, _ in _batches(model, images01, labels, spec, batch_size)]
    return torch.cat(out)


def clean_correct(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor,
                  batch_size: int = 256) -> torch.Tensor:
    """Per image: is the clean image classified correctly (bool [N]; first batch in a dry run)."""
    check_model(model)
    check_images(images01)
    device = _device_of(model, images01.device)
    out = []
    for start in range(0, len(images01), batch_size):
        x = images01[start:start + batch_size].to(device, torch.float32)
        out.append((_predict(model, x) == labels[start:start + batch_size].to(device)).cpu())
        WORK["eval_batches"] += 1
        if dry_run():
            break
    return torch.cat(out)


def robust_correct(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
                   batch_size: int = 256) -> torch.Tensor:
    """Per image: does it stay correctly classified, clean and under ``spec`` (bool [N])."""
    out = []
    for x, adv, y in _batches(model, images01, labels, spec, batch_size):
        out.append(((_predict(model, x) == y) & (_predict(model, adv) == y)).cpu())
    return torch.cat(out)


def transfer_correct(source: nn.Module, targets: Mapping[str, nn.Module], images01: torch.Tensor,
                     labels: torch.Tensor, spec: AttackSpec, batch_size: int = 256
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """``(clean, robust, adversarial)`` of an attack crafted on ``source`` and read by
    ``targets``: per target, bool [N] — is each clean image classified correctly, and does it
    stay correct, clean and under the attack; and the adversarial images (on the images'
    device, for the sanity checks' transfer sets).

    The attack only sees ``source`` (say, one head of a multi-head network); every target
    (other heads, an ensemble of them, ``source`` itself) classifies the clean and the
    adversarial images. An image counts as robust for a target as in :func:`robust_correct`:
    correct on both (the same clean prediction as in ``clean``, so robust ≤ clean also for a
    stochastic target). Each target must be in eval mode and take [0, 1] images. A dry run
    attacks one batch.
    """
    if not targets:
        raise ParameterError("transfer_correct needs at least one target")
    for target in targets.values():
        check_model(target)
    clean: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
    robust: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
    advs = []
    for x, adv, y in _batches(source, images01, labels, spec, batch_size):
        for name, target in targets.items():
            ok = _predict(target, x) == y
            clean[name].append(ok.cpu())
            robust[name].append((ok & (_predict(target, adv) == y)).cpu())
        advs.append(adv.to(images01.device))
    return ({k: torch.cat(v) for k, v in clean.items()}, {k: torch.cat(v) for k, v in robust.items()},
            torch.cat(advs))


def _percent(correct: torch.Tensor) -> float:
    return 100.0 * float(correct.float().mean())


def robust_masks(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor,
                 specs: Sequence[AttackSpec], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per image (bool [N]): correct on the clean image (key ``"clean"``) and correct under each
    attack (key ``spec.key``, :func:`robust_correct`), on the caller's fixed evaluation subset.
    Every spec is checked before any attack runs."""
    for spec in specs:
        check_attack(spec)
    keys = [s.key for s in specs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup or "clean" in keys:
        raise ParameterError(f"attack keys must be distinct and not 'clean' ({', '.join(dup) or 'clean'}): "
                             "give the specs distinct labels")
    check_model(model)
    check_images(images01)
    out = {"clean": clean_correct(model, images01, labels, batch_size)}
    for spec in specs:
        out[spec.key] = robust_correct(model, images01, labels, spec, batch_size)
    return out


def robust_accuracy(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor,
                    specs: Sequence[AttackSpec], batch_size: int = 256) -> dict[str, float]:
    """Accuracy (%) on the clean images (key ``"clean"``) and under each attack (key
    ``spec.key``), on the given images — the caller's fixed evaluation subset
    (:func:`eval_subset`), whose indices it records with ``[s.as_record() for s in specs]``."""
    return {k: _percent(m) for k, m in robust_masks(model, images01, labels, specs, batch_size).items()}
