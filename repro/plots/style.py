"""The one figure style of the book, the setting caption, and atomic saving.

Every plotting function in ``repro.plots`` builds its figure with ``new_figure`` (which
applies the style), writes the experimental setting under it with ``annotate_setting``
and returns ``(fig, data)``; ``save`` writes the PNG (150 dpi, every text at least 9 pt as the
book displays it) and the numbers side by side, with a caption and an alt text derived from
the figure (``describe``) that the book puts under the figure.
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
    "savefig.dpi": 150,
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
    width_in = fig.get_size_inches()[0]
    # Roughly 0.55 em per character at this font size.
    chars = max(20, int(width_in * 72 / (0.55 * CAPTION_SIZE)))
    text = "\n".join(textwrap.wrap(str(setting), chars)) or str(setting)
    n_lines = text.count("\n") + 1
    t = fig.text(0.5, 0.004, text, ha="center", va="bottom", fontsize=CAPTION_SIZE,
                 color=CAPTION_COLOR, gid="setting")
    t.repro_setting = str(setting)  # type: ignore[attr-defined]  (re-wrapped if save enlarges the text)
    _reserve_strip(fig, n_lines * CAPTION_SIZE)


def _reserve_strip(fig: Figure, text_pt: float) -> None:
    """Keep a strip of ``text_pt`` points of caption text (plus padding) free at the bottom."""
    height_in = fig.get_size_inches()[1]
    strip = (text_pt * 1.35 + 6) / 72 / height_in
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "Constrained" in type(engine).__name__:
        engine.set(rect=(0.0, strip, 1.0, 1.0 - strip))
    else:
        bottom = fig.subplotpars.bottom
        fig.subplots_adjust(bottom=max(bottom, strip + 0.08))


# How the book displays a figure: one image pixel per CSS pixel (96 per inch), scaled down to
# the text column when wider. The smallest text must stay MIN_DISPLAY_PT points on screen.
PAGE_WIDTH_PX = 760
MIN_DISPLAY_PT = 9.0


def _texts(fig: Figure) -> list[Any]:
    from matplotlib.text import Text

    fig.draw_without_rendering()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def displayed_scale(fig: Figure, dpi: float | None = None) -> float:
    """Points on screen per point in the figure, as the book shows the saved PNG."""
    dpi = float(dpi or mpl.rcParams["savefig.dpi"])
    width_px = fig.get_size_inches()[0] * dpi
    shown = min(width_px, PAGE_WIDTH_PX)
    return (shown / width_px) * dpi / 72 * 0.75   # image px → CSS px → CSS pt (1 pt = 4/3 px)


def smallest_text_pt(fig: Figure) -> float:
    """The smallest font size (pt, in the figure) of any visible text."""
    sizes = [t.get_fontsize() for t in _texts(fig)]
    return min(sizes) if sizes else float("inf")


def ensure_readable(fig: Figure, min_pt: float = MIN_DISPLAY_PT) -> float:
    """Enlarge every text of ``fig`` by one factor so the smallest shows at ≥ ``min_pt`` on
    the book's page (a figure wider than the text column is scaled down there). Returns the
    factor (1.0: nothing to do)."""
    small = smallest_text_pt(fig)
    if small == float("inf"):
        return 1.0
    factor = min_pt / (small * displayed_scale(fig))
    if factor <= 1.0:
        return 1.0
    factor *= 1.02
    ticks = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for which, ticks_of in (("major", axis.get_major_ticks), ("minor", axis.get_minor_ticks)):
                labels = [tk.label1 for tk in ticks_of()] + [tk.label2 for tk in ticks_of()]
                ticks.update(id(lb) for lb in labels)
                if labels:
                    axis.set_tick_params(which=which, labelsize=labels[0].get_fontsize() * factor)
        ticks.update(id(t) for t in (*ax.get_xticklabels(), *ax.get_yticklabels()))
    for t in _texts(fig):
        if id(t) in ticks:
            continue
        t.set_fontsize(t.get_fontsize() * factor)
        setting = getattr(t, "repro_setting", None)
        if setting is not None:  # re-wrap the setting line for its new size
            width_in = fig.get_size_inches()[0]
            chars = max(20, int(width_in * 72 / (0.55 * t.get_fontsize())))
            text = "\n".join(textwrap.wrap(setting, chars)) or setting
            t.set_text(text)
            _reserve_strip(fig, (text.count("\n") + 1) * t.get_fontsize())
    return factor


def describe(fig: Figure) -> dict[str, str]:
    """A caption and an alt text for ``fig``, from what it shows: its titles, axis labels,
    legends, the kind of marks in each panel, and the setting line (``annotate_setting``)."""
    setting = next((getattr(t, "repro_setting", None) or t.get_text() for t in fig.texts
                    if t.get_gid() == "setting"), "")
    sup = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    panels = []
    titles = []
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        kinds = []
        if any(type(c).__name__ == "BarContainer" for c in ax.containers):
            kinds.append("bars")
        if [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]:
            kinds.append("lines")
        if ax.collections:
            kinds.append("points or bands")
        if ax.images:
            kinds.append("an image or heat map")
        title = ax.get_title() or ax.get_title("left")
        if title:
            titles.append(title)
        x, y = ax.get_xlabel(), ax.get_ylabel()
        what = " and ".join(kinds) or "a panel"
        text = f"{title}: {what}" if title else what.capitalize()
        if x or y:
            text += f" of {y or 'a value'} against {x or 'an index'}"
        legend = ax.get_legend()
        if legend is not None:
            names = [t.get_text() for t in legend.get_texts() if t.get_text()]
            if names:
                text += " for " + ", ".join(names[:8]) + ("…" if len(names) > 8 else "")
        panels.append(text)
    head = sup or "; ".join(titles) or "Figure"
    caption = head.rstrip(".") + "." + (f" {setting}" if setting else "")
    n = len(panels)
    alt = (f"{head.rstrip('.')}. " if sup or len(titles) > 1 else "") + (f"{n} panels. " if n > 1 else "") + \
        ". ".join(p[:1].upper() + p[1:] for p in panels) + "."
    if setting:
        alt += f" Setting: {setting}."
    return {"caption": " ".join(caption.split()), "alt": " ".join(alt.split())}


def figure_texts(png: str | os.PathLike) -> dict[str, str]:
    """The ``caption`` and ``alt`` text ``save`` wrote into a PNG (empty for other PNGs)."""
    from PIL import Image

    try:
        with Image.open(png) as im:
            info = dict(getattr(im, "text", {}) or {})
    except OSError:
        return {}
    out = {"caption": info.get("Title", ""), "alt": info.get("Description", "")}
    return {k: v for k, v in out.items() if v}


def save(fig: Figure, path: str | os.PathLike, data: dict | None = None) -> Path:
    """Save ``fig`` as PNG at ``path`` and, if given, ``data`` as JSON beside it.

    The text is first enlarged where the book would show it below 9 pt (``ensure_readable``);
    the PNG has 150 dpi and carries the figure's caption and alt text (``describe``) as its
    ``Title`` and ``Description`` text chunks (:func:`figure_texts` reads them back). Both are written atomically (temporary file +
    ``os.replace``). The JSON goes to ``path`` with suffix ``.json``; NaN/inf become ``null``.
    Returns the PNG path.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    ensure_readable(fig)
    dpi = max(150.0, float(mpl.rcParams["savefig.dpi"]))
    texts = describe(fig)
    meta = {"Title": texts["caption"], "Description": texts["alt"]}
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, metadata=meta))
    if data is not None:
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(jsonable(data), indent=1, allow_nan=False).encode())
    return path
