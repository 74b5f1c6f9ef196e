"""Paper specs: parameters (with the paper's defaults), tier overrides and claims, as data.

One TOML file per paper, ``repro/papers/<slug>.toml``::

    [paper]   number, slug, title, authors, year, venue, arxiv, code, family, claim,
              protocol (optional: a family's shared params and tiers, protocols/<name>.toml)
    [params]  name = { default = ..., help = "..." }      # the paper tier's values
    [tiers.smoke] / [tiers.cpu] / [tiers.gpu]   name = value overrides
    [[claims]] id, text, metric, kind ("effect" | "absolute"), direction ("higher" | "lower"),
               paper_value (optional), tolerance, unit, source

Every notebook's ``parameters`` cell carries the same names and defaults (a test checks).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..tiers import TIERS, check_tier

HERE = Path(__file__).parent
# Every chapter has these two, in addition to its own.
COMMON_PARAMS: dict[str, dict[str, Any]] = {
    "tier": {"default": "paper", "help": f"one of {', '.join(TIERS)}; sets the other defaults"},
    "device": {"default": "auto", "help": "'auto' (CUDA if present, else CPU), 'cpu' or 'cuda'"},
}


class ParameterError(ValueError):
    """An unknown, ill-typed or out-of-range notebook parameter."""


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
        return out

    def parameters_source(self) -> str:
        """The notebook's ``parameters`` cell: one ``name = default  # help`` line per parameter.

        "=" in a help text is written ":" (papermill would try to parse it as an assignment)."""
        return "\n".join(f"{k} = {v['default']!r}" + (f"  # {v['help'].replace('=', ':')}" if v.get("help") else "")
                         for k, v in self.params.items())

    def help_text(self) -> str:
        w = max(len(k) for k in self.params)
        return "\n".join(f"  {k:<{w}}  {v['default']!r:<14} {v.get('help', '')}" for k, v in self.params.items())


def check_type(paper: str, name: str, value: Any, default: Any) -> Any:
    """Return ``value`` if its type fits ``default``'s (an int may stand for a float)."""
    def fits(v: Any, d: Any) -> bool:
        if isinstance(d, bool):
            return isinstance(v, bool)
        if isinstance(d, float):
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        if isinstance(d, int):
            return isinstance(v, int) and not isinstance(v, bool)
        if isinstance(d, str):
            return isinstance(v, str)
        if isinstance(d, (list, tuple)):
            if not isinstance(v, (list, tuple)):
                return False
            return not d or all(fits(x, d[0]) for x in v)
        return True

    if not fits(value, default):
        raise ParameterError(
            f"{paper}: parameter {name}={value!r} has type {type(value).__name__}; "
            f"expected {type(default).__name__} like the default {default!r}")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, (list, tuple)):
        return [float(x) if default and isinstance(default[0], float) else x for x in value]
    return value


def load_spec(slug: str) -> PaperSpec:
    """The spec of one paper, by slug (``ghostbn``) or name (``41-ghostbn``)."""
    return _load_spec(slug.split("-", 1)[1] if slug[:2].isdigit() and "-" in slug else slug)


@cache
def _load_spec(slug: str) -> PaperSpec:
    path = HERE / f"{slug}.toml"
    if not path.is_file():
        known = ", ".join(s.slug for s in all_specs())
        raise KeyError(f"no paper {slug!r}; known: {known}")
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
    claims = [Claim(**c) for c in raw.get("claims", [])]
    return PaperSpec(number=int(info["number"]), slug=info["slug"], title=info["title"],
                     family=info.get("family", "other"), info=info, params=params, tiers=tiers,
                     claims=claims)


def load_protocol(name: str) -> dict[str, Any]:
    """A family's shared parameters and tier values (``protocols/<name>.toml``)."""
    path = HERE / "protocols" / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in (HERE / "protocols").glob("*.toml"))
        raise KeyError(f"no protocol {name!r}; known: {known}")
    return tomllib.loads(path.read_text())


def _with_protocol(file: str, name: str, params: dict, tiers: dict) -> tuple[dict, dict]:
    """Merge a family protocol into a paper's params and tiers; the paper may not redefine it."""
    proto = load_protocol(name)
    shared = proto.get("params", {})
    clash = sorted(set(shared) & set(params))
    if clash:
        raise ParameterError(f"{file}: parameter(s) {', '.join(clash)} belong to the {name!r} protocol")
    merged_tiers: dict[str, dict] = {}
    for t in sorted(set(tiers) | set(proto.get("tiers", {}))):
        own, common = tiers.get(t, {}), proto.get("tiers", {}).get(t, {})
        clash = sorted(set(own) & set(shared))
        if clash:
            raise ParameterError(f"{file}: tier {t} overrides {', '.join(clash)} of the {name!r} protocol")
        merged_tiers[t] = {**common, **own}
    return {**params, **shared}, merged_tiers


def all_specs() -> list[PaperSpec]:
    """Every paper with a spec, by number."""
    return sorted((load_spec(p.stem) for p in HERE.glob("*.toml")), key=lambda s: s.number)
