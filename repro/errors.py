"""The errors a user can cause, each with its own exit code in the CLI.

Everything here subclasses :class:`ReproError` and carries a message that says what to do.
An interrupt is not an error: :class:`Interrupted` is a ``KeyboardInterrupt`` (so no
``except Exception`` swallows it) raised on SIGTERM as Ctrl-C raises the built-in one.
"""
from __future__ import annotations

import math
from typing import Any


class ReproError(Exception):
    """Base of the errors a user can fix."""

    exit_code = 1


class ParameterError(ReproError, ValueError):
    """An unknown, ill-typed or out-of-range parameter, tier or paper name."""

    exit_code = 2


def check_choices(names, known, what: str) -> list[str]:
    """``names`` as a list when each is one of ``known``; otherwise a ParameterError listing the
    unknown ones and the valid ``what`` (e.g. "detector", "OOD set")."""
    bad = [n for n in names if n not in known]
    if bad:
        raise ParameterError(f"unknown {what}(s) {', '.join(map(repr, bad))}; {what}s: {', '.join(known)}")
    return list(names)


def check_number(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False,
                 integer: bool = False) -> float:
    """``value`` as a float when it is a finite number (an int if ``integer``; never a bool) in
    [lo, hi] (``lo_open``: (lo, hi]); otherwise a ParameterError that names ``name`` and the range."""
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) \
        and math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        side = f"> {lo:g}" if lo_open else f"≥ {lo:g}"
        raise ParameterError(f"{name} must be {kind} {side}" + (f" and ≤ {hi:g}" if hi < math.inf else "")
                             + f", got {value!r}")
    return float(value)


class DataError(ReproError, RuntimeError):
    """CIFAR-100 is missing, incomplete or corrupt; the message says how to fix it."""

    exit_code = 3


class RecordError(ReproError, ValueError):
    """A run record that does not parse or does not match its schema (the message names the file)."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) during a run: checkpoints are saved, then this propagates."""


#: exit codes of ``repro run`` by the exception class that ended the chapter (by name, since a
#: notebook's exception reaches the CLI as papermill's ename/evalue strings).
EXIT_CODES = {"ParameterError": 2, "DataError": 3, "KeyboardInterrupt": 130, "Interrupted": 130}
INTERRUPTED_EXIT = 130
