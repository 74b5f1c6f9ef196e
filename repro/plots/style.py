"""The one figure style of the book, the setting caption, and atomic saving.

Every plotting function in ``repro.plots`` builds its figure with ``new_figure`` (which
applies the style), writes the experimental setting under it with ``annotate_setting``
and returns ``(fig, data)``; ``save`` writes the PNG and the numbers side by side.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_write, atomic_write_bytes, jsonable  # noqa: F401  (jsonable: for figure data)

# Okabe & Ito (2008) palette, ordered so that the first colours are the most distinct for
# common colour-vision deficiencies; yellow and black come last (yellow is faint on white).
OKABE_ITO: dict[str, str] = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "bluish_green": "#009E73",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "reddish_purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
}
COLORS: list[str] = list(OKABE_ITO.values())
CAPTION_COLOR = "0.45"
CAPTION_SIZE = 7.5

STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 11,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "image.cmap": "viridis",
}


def apply_style() -> None:
    """Set the book's rcParams (idempotent; safe to call in every figure function)."""
    mpl.rcParams.update(STYLE)


def new_figure(ncols: int = 1, nrows: int = 1, width: float | None = None,
               height: float | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    """A styled figure with a grid of axes, like ``plt.subplots`` (same squeeze rules).

    Args:
        ncols, nrows: axes grid.
        width, height: inches; default 4.2 per column and 3.2 per row.
        kwargs: passed to ``plt.subplots`` (e.g. ``sharex``, ``gridspec_kw``).

    The figure uses constrained layout so ``annotate_setting`` can reserve a caption strip.
    """
    apply_style()
    width = 4.2 * ncols if width is None else width
    height = 3.2 * nrows if height is None else height
    kwargs.setdefault("layout", "constrained")
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)
    return fig, axes


def annotate_setting(fig: Figure, setting: str | None) -> None:
    """Write the experimental setting as a small grey caption along the bottom of ``fig``.

    E.g. ``"tier cpu · 2 seeds · 20 classes × 250 img · cnn3"``. Long settings are wrapped
    to the figure width. With constrained layout the axes are shrunk so the caption never
    overlaps tick labels; otherwise the bottom margin is enlarged. Empty/None does nothing.
    """
    if not setting:
        return
    width_in, height_in = fig.get_size_inches()
    # Roughly 0.55 em per character at this font size.
    chars = max(20, int(width_in * 72 / (0.55 * CAPTION_SIZE)))
    text = "\n".join(textwrap.wrap(str(setting), chars)) or str(setting)
    n_lines = text.count("\n") + 1
    strip = (n_lines * CAPTION_SIZE * 1.35 + 6) / 72 / height_in  # fraction of the height
    fig.text(0.5, 0.004, text, ha="center", va="bottom", fontsize=CAPTION_SIZE,
             color=CAPTION_COLOR, gid="setting")
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "Constrained" in type(engine).__name__:
        engine.set(rect=(0.0, strip, 1.0, 1.0 - strip))
    else:
        bottom = fig.subplotpars.bottom
        fig.subplots_adjust(bottom=max(bottom, strip + 0.08))


def save(fig: Figure, path: str | os.PathLike, data: dict | None = None) -> Path:
    """Save ``fig`` as PNG at ``path`` and, if given, ``data`` as JSON beside it.

    Both are written atomically (temporary file + ``os.replace``). The JSON goes to
    ``path`` with suffix ``.json``; NaN/inf become ``null``. Returns the PNG path.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    if data is not None:
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(jsonable(data), indent=1, allow_nan=False).encode())
    return path
