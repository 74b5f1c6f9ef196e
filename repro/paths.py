"""Where things live: the checkout, and the folders every command reads and writes.

Each folder can be moved with an environment variable, and every command honours it:

========================  ==========================================  ============================
variable                  what                                        default
========================  ==========================================  ============================
``REPRO_DATA``            CIFAR-100 pickles                           ``~/.cache/repro/data``
``REPRO_RESULTS``         published run records, figures, bench       ``<checkout>/results``
``REPRO_BOOK``            book pages; executed chapters in chapters/  ``<checkout>/book`` (*)
``REPRO_RUNS``            run folders (every run is staged here)      ``~/.cache/repro/runs``
``REPRO_CHECKPOINTS``     training checkpoints (resume)               ``~/.cache/repro/checkpoints``
``REPRO_ARTIFACTS``       cached artifacts, one folder per kind       ``~/.cache/repro/artifacts``
``REPRO_TEACHERS``        cached teachers (overrides the above)       ``<artifacts>/teachers``
========================  ==========================================  ============================

(*) When ``REPRO_RESULTS`` is set and ``REPRO_BOOK`` is not, the book folder is
``$REPRO_RESULTS/book``: records kept elsewhere get their own results page and chapters, and
the checkout's book is left alone. ``~/.cache`` is ``$XDG_CACHE_HOME`` when that is set.
Nothing here imports torch.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "REPRO_DATA"
RESULTS_ENV = "REPRO_RESULTS"
BOOK_ENV = "REPRO_BOOK"
RUNS_ENV = "REPRO_RUNS"
CHECKPOINTS_ENV = "REPRO_CHECKPOINTS"
TEACHERS_ENV = "REPRO_TEACHERS"


def _is_root(path: Path) -> bool:
    return (path / "_config.yml").is_file() and (path / "repro").is_dir()


def project_root() -> Path:
    """The checkout holding ``_config.yml`` and ``repro/``: searched upwards from the working
    directory, then from this file; the working directory if neither finds one."""
    cwd = Path.cwd().resolve()
    for base in (cwd, *cwd.parents):
        if _is_root(base):
            return base
    here = Path(__file__).resolve().parent
    for base in (here, *here.parents):
        if _is_root(base):
            return base
    return cwd


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/repro``, else ``~/.cache/repro``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repro"


def _env_or(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value) if value else default


def data_dir() -> Path:
    return _env_or(DATA_ENV, cache_home() / "data")


def results_dir() -> Path:
    return _env_or(RESULTS_ENV, project_root() / "results")


def book_dir() -> Path:
    if os.environ.get(BOOK_ENV):
        return Path(os.environ[BOOK_ENV])
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]) / "book"
    return project_root() / "book"


def chapters_dir() -> Path:
    """Executed chapters the book renders: ``<book>/chapters``."""
    return book_dir() / "chapters"


def runs_dir() -> Path:
    return _env_or(RUNS_ENV, cache_home() / "runs")


def checkpoints_dir() -> Path:
    return _env_or(CHECKPOINTS_ENV, cache_home() / "checkpoints")

