"""Arms: the methods a family compares, each registered once with a typed config.

An arm is whatever a family's sweep trains for one seed: a learner class (incremental), a
training function (distillation), a schedule (training)… It registers under a family and a
name, with a dataclass that holds every setting it reads::

    @dataclass
    class WAConfig(IncrementalConfig):
        clip_weights: bool = True
        align_bias: bool = False

    @arm("wa", family="incremental", config=WAConfig)
    class WeightAligning(ReplayKD):
        ...

:func:`make_config` builds that dataclass from a chapter's resolved parameters (a field takes
the parameter of the same name) plus explicit overrides. An unknown override or an ill-typed
value is a ParameterError before anything trains, and algorithm code only ever sees the typed
config: never the run, never a raw parameter dict.

Arms are found without a list to edit: :func:`load_family` imports ``repro.families.<family>``
and every module of its ``arms`` package, and each module registers what it defines. (timm's
``@register_model`` and torchdistill's registries work the same way.)
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ParameterError
from .papers import check_type

T = TypeVar("T")


@dataclass(frozen=True)
class Arm:
    """One registered method: where it belongs, what implements it, and its config class."""

    family: str
    name: str
    impl: Any
    config: type | None

    @property
    def doc(self) -> str:
        return (self.impl.__doc__ or "").strip().split("\n", 1)[0]


_REGISTRY: dict[str, dict[str, Arm]] = {}


def arm(name: str, *, family: str, config: type | None = None) -> Callable[[T], T]:
    """Register the decorated class or function as arm ``name`` of ``family``."""
    if not name.isidentifier():
        raise ValueError(f"arm name {name!r} must be an identifier (it becomes part of metric names)")
    if config is not None and not dataclasses.is_dataclass(config):
        raise TypeError(f"arm {name!r}: config must be a dataclass, not {config!r}")

    def deco(obj: T) -> T:
        arms = _REGISTRY.setdefault(family, {})
        old = arms.get(name)
        if old is not None and old.impl is not obj and getattr(old.impl, "__qualname__", None) != \
                getattr(obj, "__qualname__", None):
            raise ValueError(f"arm {family}/{name} is registered twice ({old.impl!r} and {obj!r})")
        arms[name] = Arm(family, name, obj, config)
        return obj
    return deco


def load_family(family: str) -> None:
    """Import ``repro.families.<family>`` and every module of its ``arms`` package (each
    registers its arms on import)."""
    try:
        importlib.import_module(f"repro.families.{family}")
    except ModuleNotFoundError as e:
        if e.name == f"repro.families.{family}":
            raise ParameterError(f"no family {family!r}; families: {', '.join(families())}") from None
        raise
    try:
        pkg = importlib.import_module(f"repro.families.{family}.arms")
    except ModuleNotFoundError as e:
        if e.name == f"repro.families.{family}.arms":
            return
        raise
    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def families() -> list[str]:
    """Names of the family packages under ``repro/families``."""
    from . import families as fam

    return sorted(m.name for m in pkgutil.iter_modules(fam.__path__) if m.ispkg)


def available(family: str) -> list[str]:
    """Every arm of ``family``, by name."""
    load_family(family)
    return sorted(_REGISTRY.get(family, {}))


def get(family: str, name: str) -> Arm:
    """The arm ``name`` of ``family``; ParameterError listing the family's arms if unknown."""
    load_family(family)
    arms = _REGISTRY.get(family, {})
    if name not in arms:
        raise ParameterError(f"no arm {name!r} in family {family!r}; its arms: {', '.join(sorted(arms)) or 'none'}")
    return arms[name]


def _hint_default(tp: Any) -> Any:
    """A value of the annotated type, for type checking a field that has no default."""
    origin = typing.get_origin(tp) or tp
    return {int: 0, float: 0.0, str: "", bool: False, list: [], tuple: [], dict: {}}.get(origin)


def make_config(cls: type[T], params: Mapping[str, Any] | None = None, **overrides: Any) -> T:
    """Build dataclass ``cls``: each field from ``params[field]`` when present, then from
    ``overrides``, else its default. Overrides must name fields; every value taken must fit the
    field's type (ParameterError naming the field otherwise). Lists become tuples where the
    field's default is a tuple."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ParameterError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; "
                             f"its fields: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for name, f in fields.items():
        if name in overrides:
            value = overrides[name]
        elif params is not None and name in params:
            value = params[name]
        else:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = _hint_default(hints.get(name))
        if default is not None and value is not None:
            value = check_type(cls.__name__, name, value, default)
            if isinstance(default, tuple):
                value = tuple(value)
        kw[name] = value
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{cls.__name__}: {exc}") from exc
