"""Paper specs: parameters (with the paper's defaults), tier overrides and claims, as data.

One TOML file per paper, ``repro/papers/<slug>.toml``::

    [paper]   number, slug, title, authors, year, venue, arxiv, code, family, claim,
              modules (the package modules that implement the chapter; a test imports them),
              protocol (optional: a family's shared params and tiers, protocols/<name>.toml)
    [params]  name = { default = ..., help = "..." }      # the paper tier's values
    [tiers.smoke] / [tiers.cpu] / [tiers.gpu]   name = value overrides
    [[claims]] id, text, metric, kind ("effect" | "noninferior" | "absolute"), direction
               ("higher" | "lower"), paper_value (optional), tolerance, unit, source; arm and
               baseline (optional): the claim is about ``metric`` of arm minus baseline,
               paired by seed, formed from the tidy rows the family's sweep writes; margin
               (noninferior); tiers + untestable (the tiers that judge it, and why not the
               others); comparable (tiers besides paper whose setting matches the paper's);
               test_noise; seed_sd (expected spread over seeds, for the power shown at setup)

A paper with a family ``protocol`` may give a protocol parameter a new default or tier value:
the paper's regime wins over the family's.

Every notebook's ``parameters`` cell carries the same names and defaults (a test checks).
"""
from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..tiers import TIERS, check_tier

HERE = Path(__file__).parent
# Every chapter has these two, in addition to its own.
COMMON_PARAMS: dict[str, dict[str, Any]] = {
    "tier": {"default": "paper", "help": f"one of {', '.join(TIERS)}; sets the other defaults"},
    "device": {"default": "auto", "help": "'auto' (CUDA if present, else CPU), 'cpu' or 'cuda'"},
}


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    metric: str
    kind: str = "effect"          # effect: the sign is judged; absolute: the value is judged
    direction: str = "higher"     # the claimed sign of an effect (or the better side)
    paper_value: float | None = None
    tolerance: float = 1.0
    unit: str = "pts"
    source: str = ""
    arm: str | None = None        # the metric of this arm (a row of the run's sweep)…
    baseline: str | None = None   # …minus that of this one, paired by seed
    margin: float | None = None   # noninferior claims: the margin δ, fixed before running
    tiers: tuple[str, ...] = ()   # tiers at which the claim is judged (empty: all)
    untestable: str = ""          # why it is not judged at the other tiers
    comparable: tuple[str, ...] = ()  # tiers besides paper whose setting matches the paper's
    test_noise: str = "auto"      # "binomial" | "none" | "auto" (by metric name; repro.verdicts)
    seed_sd: float | None = None  # expected spread over seeds (for the power shown before a run)

    def __post_init__(self) -> None:
        if self.kind not in ("effect", "noninferior", "absolute"):
            raise ValueError(f"kind must be effect, noninferior or absolute, not {self.kind!r}")
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"direction must be higher or lower, not {self.direction!r}")
        if self.kind == "noninferior" and (self.margin is None or self.margin < 0):
            raise ValueError("a noninferior claim needs a margin ≥ 0, fixed before running")
        if self.test_noise not in ("auto", "binomial", "none"):
            raise ValueError(f"test_noise must be auto, binomial or none, not {self.test_noise!r}")
        for t in (*self.tiers, *self.comparable):
            check_tier(t)
        if self.tiers and not self.untestable:
            raise ValueError("a claim limited to some tiers must say why (untestable = ...)")
        object.__setattr__(self, "tiers", tuple(self.tiers))
        object.__setattr__(self, "comparable", tuple(self.comparable))

    @property
    def key(self) -> str:
        """The name the claim's per-seed values have in a record's metrics: ``metric`` for a
        metric the chapter logs itself, ``metric:arm`` or ``metric:arm-baseline`` for one
        formed from the sweep's rows."""
        if self.arm is None:
            return self.metric
        return f"{self.metric}:{self.arm}" + (f"-{self.baseline}" if self.baseline else "")


@dataclass(frozen=True)
class PaperSpec:
    number: int
    slug: str
    title: str
    family: str
    info: dict[str, Any]
    params: dict[str, dict[str, Any]]
    tiers: dict[str, dict[str, Any]]
    claims: list[Claim] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``NN-slug``, the file stem of the notebook and of the records."""
        return f"{self.number:02d}-{self.slug}"

    @property
    def modules(self) -> list[str]:
        """The package modules that implement this chapter (``[paper] modules``)."""
        return list(self.info.get("modules", []))

    @property
    def synthesis(self) -> bool:
        """A chapter of this book that compares several papers' methods (``[paper] synthesis``),
        not a paper: the results page counts it apart."""
        return bool(self.info.get("synthesis", False))

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: v["default"] for k, v in self.params.items()}

    def resolve(self, tier: str, explicit: dict[str, Any] | None = None) -> dict[str, Any]:
        """Parameters of a run: defaults, then the tier's overrides, then ``explicit``.

        Unknown names or values whose type differs from the default's raise
        ParameterError listing the valid parameters.
        """
        check_tier(tier)
        explicit = dict(explicit or {})
        explicit.pop("tier", None)
        unknown = sorted(set(explicit) - set(self.params))
        if unknown:
            raise ParameterError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}. Valid parameters:\n"
                + self.help_text())
        out = self.defaults
        out.update(self.tiers.get(tier, {}))
        for k, v in explicit.items():
            out[k] = check_type(self.name, k, v, self.params[k]["default"])
        out["tier"] = tier
        check_seeds(self.name, out)
        return out

    def parameters_source(self) -> str:
        """The notebook's ``parameters`` cell: one ``name = default  # help`` line per parameter.

        "=" in a help text is written ":" (papermill would try to parse it as an assignment)."""
        return "\n".join(f"{k} = {v['default']!r}" + (f"  # {v['help'].replace('=', ':')}" if v.get("help") else "")
                         for k, v in self.params.items())

    def help_text(self) -> str:
        w = max(len(k) for k in self.params)
        return "\n".join(f"  {k:<{w}}  {v['default']!r:<14} {v.get('help', '')}" for k, v in self.params.items())


def _fits(v: Any, d: Any) -> bool:
    if isinstance(d, bool):
        return isinstance(v, bool)
    if isinstance(d, float):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(d, int):
        return isinstance(v, int) and not isinstance(v, bool)
    if isinstance(d, str):
        return isinstance(v, str)
    if isinstance(d, (list, tuple)):
        return isinstance(v, (list, tuple))
    return True


def check_type(paper: str, name: str, value: Any, default: Any) -> Any:
    """Return ``value`` if its type fits ``default``'s (an int may stand for a float; a list's
    elements must fit the default's first element), else raise ParameterError."""
    if not _fits(value, default):
        raise ParameterError(
            f"{paper}: parameter {name}={value!r} has type {type(value).__name__}; "
            f"expected {type(default).__name__} like the default {default!r}")
    if isinstance(default, (list, tuple)) and default:
        for i, x in enumerate(value):
            if not _fits(x, default[0]) or isinstance(x, (list, tuple, dict)) and not isinstance(default[0], (list, tuple)):
                raise ParameterError(
                    f"{paper}: parameter {name}={value!r}: element {i} ({x!r}) has type {type(x).__name__}; "
                    f"expected {type(default[0]).__name__} like the default {default!r}")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, (list, tuple)):
        return [float(x) if default and isinstance(default[0], float) else x for x in value]
    return value


def check_seeds(paper: str, params: dict[str, Any]) -> None:
    """``seeds``, where a paper has it, must be a non-empty list of distinct integers ≥ 0."""
    if "seeds" not in params:
        return
    seeds = params["seeds"]
    if not seeds:
        raise ParameterError(f"{paper}: seeds is empty; give at least one seed, e.g. [0, 1, 2]")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ParameterError(f"{paper}: seeds must be integers ≥ 0, not {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ParameterError(f"{paper}: seeds repeat: {seeds!r} (a repeated seed is not a new run)")


def parse_text_value(paper: str, name: str, text: str) -> Any:
    """A parameter value given as text (papermill ``-p``, the CLI): a Python literal if it
    parses as one (``"3"``, ``"0.1"``, ``"[0, 1]"``, ``"True"``), else ParameterError."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ParameterError(f"{paper}: parameter {name}={text!r} is not a Python literal "
                             f"(a number, True/False, or a list such as [0, 1, 2])") from None


def load_spec(slug: str) -> PaperSpec:
    """The spec of one paper, by slug (``ghostbn``) or name (``41-ghostbn``)."""
    return _load_spec(slug.split("-", 1)[1] if slug[:2].isdigit() and "-" in slug else slug)


@cache
def _load_spec(slug: str) -> PaperSpec:
    path = HERE / f"{slug}.toml"
    if not path.is_file():
        known = ", ".join(s.slug for s in all_specs())
        raise ParameterError(f"no paper {slug!r}; known: {known} (repro list shows them)")
    raw = tomllib.loads(path.read_text())
    info = raw["paper"]
    params = {**COMMON_PARAMS, **raw.get("params", {})}
    tiers = raw.get("tiers", {})
    if info.get("protocol"):
        params, tiers = _with_protocol(path.name, info["protocol"], params, tiers)
    for t, over in tiers.items():
        check_tier(t)
        for k, v in over.items():
            if k not in params:
                raise ParameterError(f"{path.name}: tier {t} overrides unknown parameter {k}")
            check_type(path.name, k, v, params[k]["default"])
    claims = []
    for c in raw.get("claims", []):
        try:
            claims.append(Claim(**c))
        except (TypeError, ValueError, ParameterError) as exc:
            raise ParameterError(f"{path.name}: claim {c.get('id', '?')!r}: {exc}") from None
        if claims[-1].baseline and not claims[-1].arm:
            raise ParameterError(f"{path.name}: claim {c.get('id')!r} names a baseline but no arm")
    return PaperSpec(number=int(info["number"]), slug=info["slug"], title=info["title"],
                     family=info.get("family", "other"), info=info, params=params, tiers=tiers,
                     claims=claims)


def load_protocol(name: str) -> dict[str, Any]:
    """A family's shared parameters and tier values (``protocols/<name>.toml``)."""
    path = HERE / "protocols" / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in (HERE / "protocols").glob("*.toml"))
        raise ParameterError(f"no protocol {name!r}; known: {known}")
    return tomllib.loads(path.read_text())


def _with_protocol(file: str, name: str, params: dict, tiers: dict) -> tuple[dict, dict]:
    """Merge a family protocol into a paper's params and tiers; the paper may not redefine it."""
    proto = load_protocol(name)
    shared = proto.get("params", {})
    for k in sorted(set(shared) & set(params)):
        # The paper's regime wins over the family's (e.g. its own base-task size), but only as
        # a new default of the same type: the parameter keeps the protocol's meaning.
        if set(params[k]) - {"default", "help"}:
            raise ParameterError(f"{file}: parameter {k} of the {name!r} protocol may only get a new default")
        check_type(file, k, params[k]["default"], shared[k]["default"])
    merged_tiers: dict[str, dict] = {}
    for t in sorted(set(tiers) | set(proto.get("tiers", {}))):
        own, common = tiers.get(t, {}), proto.get("tiers", {}).get(t, {})
        merged_tiers[t] = {**common, **own}  # a paper's tier values win over the protocol's
    merged = {**params, **shared}
    for k in set(shared) & set(params):
        merged[k] = {**shared[k], **params[k]}
    return merged, merged_tiers


def all_specs() -> list[PaperSpec]:
    """Every paper with a spec, by number."""
    return sorted((load_spec(p.stem) for p in HERE.glob("*.toml")), key=lambda s: s.number)
