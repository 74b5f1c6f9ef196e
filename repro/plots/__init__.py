"""Figures for the book: one style, a setting caption on each, ``(fig, data)`` returns.

Every plotting function returns ``(fig, data)`` where ``data`` holds the plotted numbers
as plain JSON types; ``save(fig, path, data)`` (or ``run.figure``) writes both.
"""
from .attention import attention_grid, attention_rollout
from .curves import bar_with_errors, training_curves
from .grid import image_grid
from .landscape import (filter_normalized_directions, interpolate_1d, plane_2d, plot_1d,
                        plot_2d)
from .reliability import reliability_diagram
from .roc import roc_panels, roc_plot
from .style import COLORS, OKABE_ITO, annotate_setting, apply_style, jsonable, new_figure, save

__all__ = [
    "COLORS", "OKABE_ITO", "apply_style", "new_figure", "annotate_setting", "save", "jsonable",
    "training_curves", "bar_with_errors", "interpolate_1d", "plane_2d",
    "filter_normalized_directions", "plot_1d", "plot_2d", "roc_plot", "roc_panels", "reliability_diagram", "image_grid",
    "attention_grid", "attention_rollout",
]
