"""A labelled grid of images (e.g. one picture under each corruption and severity, or OOD samples)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from .style import annotate_setting, jsonable, new_figure

CELL_IN = 0.85  # inches per image: 32 px shown at ~38 dpi stay crisp with nearest interpolation


def image_grid(rows: Sequence[torch.Tensor], row_labels: Sequence[str], col_labels: Sequence[str] | None = None,
               *, setting: str | None, title: str | None = None) -> tuple[Figure, dict]:
    """Draw rows of uint8 images ``[K, 3, S, S]`` as a grid, one row per tensor.

    Args:
        rows: one uint8 tensor ``[K, 3, S, S]`` per row; rows may hold different K (the
            shorter ones leave blank cells), and all share S.
        row_labels: one label per row, written left of it.
        col_labels: optional labels over the columns (as many as the longest row).
        setting: caption stating the experimental setting (required; ``""`` to omit).
        title: optional figure title.

    Returns:
        ``(fig, data)``; data has ``shape`` [rows, cols, S], ``row_labels``, ``col_labels``,
        ``setting`` and ``title`` (the pixels are not repeated in it).
    """
    if len(rows) == 0:
        raise ValueError("image_grid needs at least one row")
    if len(row_labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels")
    sizes = set()
    for r in rows:
        if r.dtype != torch.uint8 or r.dim() != 4 or r.shape[1] != 3:
            raise ValueError(f"each row must be uint8 [K, 3, S, S], got {r.dtype} {list(r.shape)}")
        sizes.add(int(r.shape[-1]))
    if len(sizes) > 1:
        raise ValueError(f"rows have different image sizes {sorted(sizes)}")
    ncols = max(len(r) for r in rows)
    if col_labels is not None and len(col_labels) != ncols:
        raise ValueError(f"{ncols} columns but {len(col_labels)} column labels")
    nrows = len(rows)
    # Extra width for the row labels, extra height for the column labels and the title.
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=CELL_IN * ncols + 1.1,
                           height=CELL_IN * nrows + 0.3 + 0.25 * (col_labels is not None) + 0.3 * bool(title),
                           squeeze=False)
    for i, r in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j < len(r):
                ax.imshow(r[j].detach().cpu().permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.set_visible(False)
                continue
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"shape": [nrows, ncols, sizes.pop()], "row_labels": list(row_labels),
                          "col_labels": list(col_labels) if col_labels is not None else None,
                          "setting": setting, "title": title})
