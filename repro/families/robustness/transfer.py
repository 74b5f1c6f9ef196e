"""Transfer attacks from a zoo of source models: craft adversarial images on each source, then
measure how a target model classifies them (the threat model of chapter 32, PubDef; reused by
the comparison chapter).

An attacker who cannot query the target crafts its images on a *source* (surrogate) model it
has, and hopes they transfer. :class:`TransferConfig` names the zoo (:class:`Source`: a
recipe the family's ``standard`` arm trains and a seed, so every chapter that asks for the same
source loads the same checkpoint), the attacks (the suite's :class:`~.attacks.AttackSpec`:
PGD, MI-/DI-/TI-/NI-FGSM… run by torchattacks through :func:`~.attacks.attack`), the fixed
evaluation subset of the test set and which sources a defence has *seen* in training (the
others are *held out*).

* :func:`craft` attacks a source on [0, 1] pixels and stores the result as 8-bit images
  (:func:`quantise`: rounded, and clipped back into the L∞ ball of the clean 8-bit image, so
  ‖δ‖∞ ≤ ε holds exactly; an attacker delivers image files, and PubDef's code saves PNGs);
* :func:`transfer_sets` crafts every (source, attack) set once on the evaluation subset and
  caches it, uint8, in the source's checkpoint folder (:func:`cached`), so every target of every
  seed, and every chapter, is attacked with the very same images;
* :func:`evaluate_transfer` classifies them with a target: an image counts as robust when the
  target classifies its clean version and the transfer image correctly (as in the family's
  robust accuracy, so transfer accuracy never exceeds clean accuracy). :func:`summarise` turns
  the per-pair accuracies into the headline numbers: the **worst case** over (source, attack)
  pairs — the attacker picks the best pair — and the mean, over all sources, the seen ones and
  the held-out ones. ``transfer_union`` is stricter: an image counts only if it survives every
  pair (an attacker who could try them all on the target, which this threat model does not
  grant; shown, never judged).

Figures: :func:`plot_clean_vs_transfer` (clean against worst-case transfer accuracy, seen and
held-out sources apart) and :func:`plot_transfer_heatmap` (target × (source, attack)).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...errors import ParameterError
from ...io import save_torch
from ...plots.style import COLORS, annotate_setting, jsonable, new_figure
from ...train import dry_run
from .attacks import ATTACKS, AttackSpec, PixelModel, attack, check_attack, clean_correct, eval_subset
from .protocol import CheckpointFor, RobustConfig
from .sanity import binomial_tolerance
from .figures import spread

#: Metric names of :meth:`TransferResult.metrics`, as the sweep's rows carry them.
METRICS = ("transfer_clean", "transfer_worst", "transfer_mean", "transfer_worst_seen", "transfer_mean_seen",
           "transfer_worst_heldout", "transfer_mean_heldout", "transfer_union")


def _identifier(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ParameterError(f"{what} {name!r} must be an identifier (it names metrics and table rows)")


@dataclass(frozen=True)
class Source:
    """One model of the attacker's zoo: ``config`` is a recipe the family's ``standard`` arm
    trains (loaded from its shared checkpoint when another job or chapter trained it), with
    ``seed``; ``name`` an identifier; ``group`` what kind of public model it stands for
    ("standard", "adversarial", "architecture"… for tables and figures)."""

    name: str
    config: RobustConfig
    seed: int = 0
    group: str = ""

    def __post_init__(self) -> None:
        _identifier("source name", self.name)
        if not isinstance(self.config, RobustConfig):
            raise ParameterError(f"source {self.name}: config must be a RobustConfig, got {type(self.config).__name__}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ParameterError(f"source {self.name}: seed must be an integer ≥ 0, got {self.seed!r}")

    def as_record(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "seed": self.seed, "config": self.config.as_record()}

    def key(self) -> dict[str, Any]:
        """What determines the source's weights (its recipe and seed)."""
        return {"recipe": self.config.recipe(), "seed": self.seed}


@dataclass(frozen=True)
class TransferConfig:
    """One transfer evaluation: every ``attacks`` (L∞ only: the sets are stored as 8-bit
    images, and rounding keeps an L∞ radius exactly) crafted on every ``sources`` model, on
    ``images`` images of the test set drawn by ``seed`` (0: all), in batches of
    ``batch_size``; ``contains``: the subset includes the ``contains`` images the family's
    :class:`~.evaluate.EvalConfig` draws with the same seed (:func:`subset_indices`), so that
    transfer and white-box attacks can be compared on them (0: an independent draw, which is
    that subset when ``images`` equals it). ``seen``: the sources a defence trained against;
    the rest are held out. ParameterError, at construction, for anything the evaluation cannot
    run."""

    sources: tuple[Source, ...]
    attacks: tuple[AttackSpec, ...]
    seen: tuple[str, ...] = ()
    images: int = 1000
    seed: int = 0
    batch_size: int = 256
    contains: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "attacks", tuple(self.attacks))
        object.__setattr__(self, "seen", tuple(self.seen))
        self.check()

    def check(self) -> None:
        if not self.sources:
            raise ParameterError("a transfer evaluation needs at least one source model")
        if not self.attacks:
            raise ParameterError("a transfer evaluation needs at least one attack")
        for s in self.sources:
            if not isinstance(s, Source):
                raise ParameterError(f"sources must be Source, got {type(s).__name__}")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ParameterError(f"source names must be distinct: {', '.join(dup)} repeat")
        unknown = [n for n in self.seen if n not in names]
        if unknown:
            raise ParameterError(f"seen sources {unknown} are not in the zoo ({', '.join(names)})")
        for spec in self.attacks:
            if not isinstance(spec, AttackSpec):
                raise ParameterError(f"attacks must be AttackSpec, got {type(spec).__name__}")
            check_attack(spec)
            if spec.norm != "Linf":
                raise ParameterError(f"transfer attack {spec.key}: only L∞ attacks (8-bit storage keeps an L∞ "
                                     f"radius exactly), got {spec.norm}")
            _identifier("attack key", spec.key)
        keys = [s.key for s in self.attacks]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ParameterError(f"attack keys must be distinct ({', '.join(dup)}): give the specs distinct labels")
        for name in ("images", "seed", "contains"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ParameterError(f"{name} must be an integer ≥ 0, got {v!r}")
        if self.images and self.contains > self.images:
            raise ParameterError(f"the transfer subset ({self.images} images) cannot contain the white-box "
                                 f"evaluation's {self.contains}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ParameterError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}")

    @property
    def held_out(self) -> tuple[str, ...]:
        """The sources no defence trained against."""
        return tuple(s.name for s in self.sources if s.name not in self.seen)

    def as_record(self) -> dict[str, Any]:
        return {"sources": [s.as_record() for s in self.sources], "attacks": [a.as_record() for a in self.attacks],
                "seen": list(self.seen), "held_out": list(self.held_out), "images": self.images, "seed": self.seed,
                "contains": self.contains, "batch_size": self.batch_size}


def subset_indices(n_total: int, images: int, seed: int, contains: int = 0) -> list[int]:
    """Sorted indices of the transfer subset: ``images`` of ``n_total`` (0: all). With
    ``contains``, the subset is the family's evaluation subset of that size and seed
    (:func:`~.attacks.eval_subset`) plus further images drawn from the rest by ``seed``;
    without, :func:`~.attacks.eval_subset` itself."""
    n = images or n_total
    if not contains or contains >= n:
        return eval_subset(n_total, n, seed).tolist()
    base = eval_subset(n_total, contains, seed)
    rest = np.setdiff1d(np.arange(n_total), base)
    extra = np.random.default_rng([seed, 1]).choice(rest, size=n - contains, replace=False)
    return sorted(int(i) for i in np.concatenate([base, extra]))


# -- crafting -----------------------------------------------------------------------------------------------
def quantise(adv01: torch.Tensor, clean_u8: torch.Tensor, eps: float) -> torch.Tensor:
    """Adversarial images in [0, 1] as 8-bit images: ``round(255·adv)``, then clipped into
    the L∞ ball of radius ``floor(255·ε)`` (in 8-bit steps) around the clean 8-bit image, so
    the stored perturbation never exceeds ε (rounding alone could add half a step)."""
    if clean_u8.dtype != torch.uint8:
        raise ParameterError(f"clean images must be uint8, got {clean_u8.dtype}")
    if adv01.shape != clean_u8.shape:
        raise ParameterError(f"adversarial images {tuple(adv01.shape)} and clean images {tuple(clean_u8.shape)} differ")
    k = math.floor(float(eps) * 255 + 1e-6)
    c = clean_u8.to(torch.int16)
    q = (adv01.detach().float().cpu() * 255).round().to(torch.int16)
    q = torch.maximum(torch.minimum(q, c + k), c - k)
    return q.clamp(0, 255).to(torch.uint8)


def craft(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
          batch_size: int = 256) -> torch.Tensor:
    """``spec`` run on ``model`` (a network trained on normalised inputs, in eval mode: it is
    wrapped in :class:`~.attacks.PixelModel`) against the 8-bit ``images_u8`` → uint8
    adversarial images (:func:`quantise`), on the CPU. A dry run attacks the first batch only,
    with one attack step (as ``fit`` takes one training step), and returns just those."""
    if dry_run() and ATTACKS[spec.name].steps:
        spec = dataclasses.replace(spec, steps=1)  # checks the plumbing, never a result
    net = PixelModel(model).eval()
    adv = attack(net, images_u8.float() / 255.0, labels, spec, batch_size)
    return quantise(adv, images_u8[:len(adv)].cpu(), spec.eps)


def _digest(key: Any) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached(folder: Path | None, key: Mapping[str, Any], make: Callable[[], dict[str, Any]],
           prefix: str = "transfer") -> dict[str, Any]:
    """``make()`` (a dict of tensors and plain values), stored once in ``folder`` under a file
    named by ``key``'s hash and loaded from there afterwards. Nothing is stored without a
    folder or in a dry run (whose sets are partial)."""
    if folder is None or dry_run():
        return make()
    path = Path(folder) / f"{prefix}-{_digest(dict(key))}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    out = make()
    save_torch(path, out)
    return out


# -- the zoo and its sets -----------------------------------------------------------------------------------
@dataclass
class ZooModel:
    """A trained source: the network (eval mode), its fits and its test top-1 after training."""

    source: Source
    model: nn.Module
    fits: list[Any]
    top1: float

    def record(self) -> dict[str, Any]:
        return {**self.source.as_record(), "top1": self.top1,
                "train_s": sum(f.train_seconds for f in self.fits),
                "train_images": sum(f.train_images for f in self.fits)}


#: Zoo models this process has trained or loaded, by checkpoint folder, source and device:
#: every job of a chapter uses the same zoo, and loading it again would also count its
#: training cost again in the run's record (``fit`` reports a loaded model's cost).
_ZOO: dict[tuple[str, str, str], ZooModel] = {}
_ZOO_MAX = 16


def train_zoo(sources: Iterable[Source], data: Any, checkpoints: CheckpointFor | None,
              device: torch.device | str = "cpu") -> dict[str, ZooModel]:
    """Every source, trained by the family's ``standard`` arm under its recipe and seed (or
    loaded from the shared checkpoint another job or chapter left), in eval mode. A source
    with a checkpoint folder is kept in memory for the next job of the process."""
    from .arms.standard import train_model  # late: the arms package registers arms on import

    out: dict[str, ZooModel] = {}
    for s in sources:
        if s.name in out:
            continue
        folder = source_folder(checkpoints, s)
        key = (str(folder), json.dumps(s.key(), sort_keys=True, default=str), str(device))
        if folder is not None and key in _ZOO:
            out[s.name] = dataclasses.replace(_ZOO[key], source=s)
            continue
        model, fits, _ = train_model(s.config, data, s.seed, checkpoints, device, own=False)
        model.eval()
        top1 = float(fits[-1].history[-1].get("test_acc", float("nan"))) if fits[-1].history else float("nan")
        out[s.name] = ZooModel(s, model, fits, top1)
        if folder is not None:
            while len(_ZOO) >= _ZOO_MAX:
                _ZOO.pop(next(iter(_ZOO)))
            _ZOO[key] = out[s.name]
    return out


def source_folder(checkpoints: CheckpointFor | None, source: Source) -> Path | None:
    """The checkpoint folder of a source (where its sets are cached), None without one."""
    return checkpoints(source.config, source.seed, False) if checkpoints is not None else None


@dataclass
class TransferSets:
    """The transfer subset and its transfer images: ``indices`` into the test split,
    ``clean`` (uint8) and ``labels``; ``adv[source][attack]`` uint8 images aligned with them
    (the first batch only in a dry run); ``self_acc[source][attack]``: the source's own
    accuracy on them (white-box robust accuracy of the source, a check that crafting worked);
    ``source_clean[source]``: its clean accuracy on the subset."""

    indices: list[int]
    clean: torch.Tensor
    labels: torch.Tensor
    adv: dict[str, dict[str, torch.Tensor]]
    self_acc: dict[str, dict[str, float]]
    source_clean: dict[str, float]


def _pct(correct: torch.Tensor) -> float:
    return 100.0 * float(correct.float().mean()) if correct.numel() else float("nan")


def transfer_sets(cfg: TransferConfig, data: Any, zoo: Mapping[str, ZooModel],
                  checkpoints: CheckpointFor | None) -> TransferSets:
    """Every (source, attack) set on the transfer subset of ``data``'s test split, crafted
    on the source's device once and cached in its checkpoint folder (keyed by the source,
    the attack's settings, the subset's images and the batch size, on which the attack's
    randomness depends)."""
    missing = [s.name for s in cfg.sources if s.name not in zoo]
    if missing:
        raise ParameterError(f"no trained model for sources {missing}")
    idx = subset_indices(len(data.y_test), cfg.images, cfg.seed, cfg.contains)
    sel = torch.as_tensor(idx, dtype=torch.long)
    clean = data.x_test[sel].cpu()
    labels = data.y_test[sel].long().cpu()
    content = hashlib.sha256(clean.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:20]
    adv: dict[str, dict[str, torch.Tensor]] = {}
    self_acc: dict[str, dict[str, float]] = {}
    source_clean: dict[str, float] = {}
    for s in cfg.sources:
        model = zoo[s.name].model
        net = PixelModel(model).eval()
        ok = clean_correct(net, clean.float() / 255.0, labels, cfg.batch_size)
        source_clean[s.name] = _pct(ok)
        adv[s.name], self_acc[s.name] = {}, {}
        for spec in cfg.attacks:
            key = {"set": "test", "source": s.key(), "attack": spec.as_record(), "images": content,
                   "batch_size": cfg.batch_size}

            def make(net=net, model=model, spec=spec, ok=ok) -> dict[str, Any]:
                a = craft(model, clean, labels, spec, cfg.batch_size)
                hit = clean_correct(net, a.float() / 255.0, labels[:len(a)], cfg.batch_size)
                return {"adv": a, "self_acc": _pct(ok[:len(hit)] & hit)}
            got = cached(source_folder(checkpoints, s), key, make)
            adv[s.name][spec.key] = got["adv"]
            self_acc[s.name][spec.key] = float(got["self_acc"])
    return TransferSets(idx, clean, labels, adv, self_acc, source_clean)


# -- evaluation ---------------------------------------------------------------------------------------------
def summarise(pairs: Mapping[str, Mapping[str, float]], seen: Iterable[str] = ()) -> dict[str, float]:
    """The headline numbers of per-pair accuracies ``pairs[source][attack]`` (%): worst case
    (the minimum) and mean over every pair, over the pairs of the ``seen`` sources and over
    those of the held-out ones (a group without sources is left out)."""
    seen = set(seen)
    groups = {"": list(pairs), "_seen": [s for s in pairs if s in seen],
              "_heldout": [s for s in pairs if s not in seen]}
    out: dict[str, float] = {}
    for suffix, names in groups.items():
        vals = [float(v) for s in names for v in pairs[s].values()]
        if vals:
            out[f"transfer_worst{suffix}"] = min(vals)
            out[f"transfer_mean{suffix}"] = sum(vals) / len(vals)
    return out


@dataclass
class TransferResult:
    """What :func:`evaluate_transfer` measured on ``n`` images: ``clean`` accuracy (%),
    ``pairs[source][attack]`` transfer accuracy (%: correct on the clean and the transfer
    image), ``union`` (% correct on the clean image and on every transfer image), ``seen`` and
    ``held_out`` source names, and ``flags`` (one line per failed check)."""

    n: int
    indices: list[int]
    clean: float
    pairs: dict[str, dict[str, float]]
    union: float
    seen: list[str]
    held_out: list[str]
    flags: list[str] = field(default_factory=list)
    #: per pair, per image: robust (clean and transfer image correct); not recorded
    correct: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, float]:
        return summarise(self.pairs, self.seen)

    def worst_pair(self) -> tuple[str, str]:
        """The (source, attack) with the lowest transfer accuracy."""
        return min(((s, a) for s in self.pairs for a in self.pairs[s]), key=lambda p: self.pairs[p[0]][p[1]])

    def metrics(self) -> dict[str, float]:
        """``transfer_clean`` (clean accuracy on the transfer subset), ``transfer_worst``,
        ``transfer_mean``, their ``_seen`` and ``_heldout`` versions and ``transfer_union``."""
        return {"transfer_clean": self.clean, **self.summary(), "transfer_union": self.union}

    def test_var(self) -> dict[str, float]:
        """Binomial sampling variance (points²) of each metric on the ``n`` images (the worst
        case is a minimum over pairs, so this understates its spread a little)."""
        def var(p: float) -> float:
            q = min(max(p / 100.0, 0.0), 1.0)
            return 100.0 ** 2 * q * (1.0 - q) / max(self.n, 1)
        return {k: var(v) for k, v in self.metrics().items()}

    def check_white_box(self, white_box: float, indices: Sequence[int] | None = None, z: float = 2.0) -> list[str]:
        """A transfer attack must not beat the white-box attack (robust accuracy ``white_box``,
        %) on the same images (beyond ``z`` binomial standard errors): if it does, the
        white-box number is masked. ``indices``: the white-box attack's test images; the
        transfer pairs are then scored on those of them this subset has (all of them when
        it ``contains`` that subset; the check is skipped when none are shared). Adds and
        returns the failures."""
        pairs, n = self.pairs, self.n
        if indices is not None and list(indices) != list(self.indices):
            wanted = set(int(i) for i in indices)
            pos = torch.as_tensor([k for k, i in enumerate(self.indices) if int(i) in wanted], dtype=torch.long)
            if len(pos) == 0 or not self.correct:
                return []
            pairs = {s: {a: _pct(c[pos]) for a, c in per.items()} for s, per in self.correct.items()}
            n = len(pos)
        tol = binomial_tolerance(white_box, n, z)
        s, a = min(((s, a) for s in pairs for a in pairs[s]), key=lambda p: pairs[p[0]][p[1]])
        worst = pairs[s][a]
        out = []
        if worst < white_box - tol:
            out.append(f"transfer {s}/{a} leaves {worst:.1f}% but white-box PGD {white_box:.1f}% on the same {n} "
                       f"images (tolerance {tol:.1f}): a transfer attack beats the white-box one, its gradients "
                       f"are masked")
        self.flags.extend(out)
        return out

    def as_record(self) -> dict[str, Any]:
        s, a = self.worst_pair()
        return {"n": self.n, "indices": list(self.indices), "clean": self.clean, "pairs": self.pairs,
                "union": self.union, "seen": list(self.seen), "held_out": list(self.held_out),
                "worst_pair": [s, a], **self.summary(), "flags": list(self.flags)}


def evaluate_transfer(model: nn.Module, sets: TransferSets, cfg: TransferConfig) -> TransferResult:
    """Clean and transfer accuracy of ``model`` (trained on normalised inputs; must be in
    eval mode) on the sets of :func:`transfer_sets`."""
    net = PixelModel(model).eval()
    clean = clean_correct(net, sets.clean.float() / 255.0, sets.labels, cfg.batch_size)
    n = len(clean)  # a dry run classifies the first batch only
    union = clean.clone()
    pairs: dict[str, dict[str, float]] = {}
    correct: dict[str, dict[str, torch.Tensor]] = {}
    for s in cfg.sources:
        pairs[s.name], correct[s.name] = {}, {}
        for spec in cfg.attacks:
            adv = sets.adv[s.name][spec.key][:n]
            ok = clean_correct(net, adv.float() / 255.0, sets.labels[:len(adv)], cfg.batch_size)
            m = min(n, len(ok))
            robust = clean[:m] & ok[:m]
            union = union[:m] & robust
            pairs[s.name][spec.key] = _pct(robust)
            correct[s.name][spec.key] = robust
    return TransferResult(n=len(union), indices=sets.indices[:len(union)], clean=_pct(clean), pairs=pairs,
                          union=_pct(union), seen=list(cfg.seen), held_out=list(cfg.held_out), correct=correct)


# -- figures ------------------------------------------------------------------------------------------------

def plot_clean_vs_transfer(points: Mapping[str, Sequence[Mapping[str, Any]]], setting: str,
                           title: str | None = None):
    """Clean accuracy against worst-case transfer accuracy, one colour per target model.

    points: ``label → [TransferResult.as_record() per seed]``. Filled markers: the worst case
    over the pairs of the sources the defence *saw*; open markers: over the *held-out* ones
    (each mean over seeds with min–max bars, small dots per seed). Both axes start at 0 and a
    dotted line marks transfer = clean (transfer accuracy never exceeds clean accuracy).
    Returns ``(fig, data)``."""
    if not points:
        raise ParameterError("no points to plot")
    fig, ax = new_figure(width=6.2, height=3.8)
    out: dict[str, Any] = {}
    top = 1.0
    markers = ("o", "s", "^", "D", "v")
    for i, (label, recs) in enumerate(points.items()):
        if not recs:
            continue
        color, marker = COLORS[i % len(COLORS)], markers[i % len(markers)]
        clean = spread([r["clean"] for r in recs])
        out[label] = {"clean": clean}
        for key, name, face in (("transfer_worst_seen", "seen sources", color),
                                ("transfer_worst_heldout", "held-out sources", "white")):
            if not all(key in r for r in recs):
                continue
            y = spread([r[key] for r in recs])
            out[label][key] = y
            ax.scatter(clean["values"], y["values"], s=12, color=color, alpha=0.45, linewidths=0, zorder=3)
            bars = ax.errorbar(clean["mean"], y["mean"],
                               xerr=[[clean["mean"] - clean["min"]], [clean["max"] - clean["mean"]]],
                               yerr=[[y["mean"] - y["min"]], [y["max"] - y["mean"]]],
                               fmt=marker, color=color, markerfacecolor=face, markeredgecolor=color,
                               markersize=7, capsize=2.5, elinewidth=1.0, zorder=4,
                               label=f"{label}, {name} (n={clean['n']})")
            for artist in bars.get_children():
                artist.set_clip_on(False)
            top = max(top, y["max"])
        top = max(top, clean["max"])
    lim = min(100.0, top * 1.15)
    ax.plot([0, lim], [0, lim], linestyle=":", color="0.5", linewidth=1, label="transfer = clean", zorder=1)
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel("clean accuracy on the transfer subset (%)")
    ax.set_ylabel("worst-case transfer accuracy (%)")
    ax.set_title(title or "Clean vs worst-case transfer accuracy")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({"points": out, "bars": "min-max over seeds", "setting": setting,
                          "filled": "worst case over the seen sources' pairs",
                          "open": "worst case over the held-out sources' pairs"})


def plot_transfer_heatmap(rows: Mapping[str, Sequence[Mapping[str, Any]]], setting: str,
                          title: str | None = None):
    """Target model × (source, attack) transfer accuracy (%), mean over seeds, with the clean
    accuracy as the first column; the seen sources' columns first, a white line before the
    held-out ones. rows: ``label → [TransferResult.as_record() per seed]`` (same sources and
    attacks in every record). Returns ``(fig, data)``."""
    rows = {k: list(v) for k, v in rows.items() if v}
    if not rows:
        raise ParameterError("no rows to plot")
    first = next(iter(rows.values()))[0]
    seen = [s for s in first["pairs"] if s in first["seen"]]
    held = [s for s in first["pairs"] if s not in first["seen"]]
    attacks = list(first["pairs"][(seen + held)[0]])
    cols = [("clean", "")] + [(s, a) for s in seen + held for a in attacks]
    grid = np.full((len(rows), len(cols)), np.nan)
    for i, recs in enumerate(rows.values()):
        for j, (s, a) in enumerate(cols):
            vals = [r["clean"] if s == "clean" else r["pairs"][s][a] for r in recs]
            grid[i, j] = float(np.mean(vals))
    width = min(7.5, 2.0 + 0.3 * len(cols))
    fig, ax = new_figure(width=width, height=2.6 + 0.4 * len(rows))
    top = max(1.0, float(np.nanmax(grid)))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5, color="white" if v < 0.6 * top else "black")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xticks(range(len(cols)), ["clean"] + [f"{s} · {a}" for s, a in cols[1:]], rotation=90, fontsize=6.5)
    ax.grid(False)
    # white lines between the clean column and each source's block, a thick one before the held-out sources
    for k in range(len(seen + held)):
        ax.axvline(0.5 + k * len(attacks), color="white", linewidth=0.8 if k else 1.5)
    groups = [("seen sources", 1, len(seen) * len(attacks))] if seen else []
    if held:
        ax.axvline(0.5 + len(seen) * len(attacks), color="white", linewidth=3)
        groups.append(("held-out sources", 1 + len(seen) * len(attacks), len(held) * len(attacks)))
    sec = ax.secondary_xaxis("top")
    sec.set_xticks([start + (size - 1) / 2 for _, start, size in groups], [g for g, _, _ in groups], fontsize=8)
    sec.tick_params(length=0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="accuracy (%)")
    ax.set_title(title or "Transfer accuracy: target × (source · attack)", pad=22)
    annotate_setting(fig, setting)
    data = {"rows": list(rows), "columns": [list(c) for c in cols], "mean": grid.tolist(), "seen": seen,
            "held_out": held, "attacks": attacks, "n_seeds": {k: len(v) for k, v in rows.items()},
            "setting": setting}
    return fig, jsonable(data)
