"""Vision-transformer attention maps: per-head CLS attention and attention rollout."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..metrics import to_numpy
from .style import annotate_setting, jsonable, new_figure


def _head_stack(m: Any) -> np.ndarray:
    """One block's attention as ``[heads, N, N]`` (a ``[1, heads, N, N]`` batch of one is allowed)."""
    a = to_numpy(m, np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"attention map must be [heads, N, N]; got {a.shape}")
    return a


def attention_rollout(maps: Sequence[Any]) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) through all blocks.

    Per block: average the heads, add the identity (the residual path), renormalise rows
    to sum to 1; then multiply through the blocks, later blocks on the left:
    ``R = Â_L · … · Â_1``.

    Args:
        maps: one ``[heads, N, N]`` row-stochastic attention per block, in forward order,
            token 0 = class token.

    Returns:
        ``[N, N]``; row 0 (from index 1) is the CLS token's rollout attention to the patches.
    """
    if len(maps) == 0:
        raise ValueError("need at least one attention map")
    r: np.ndarray | None = None
    for m in maps:
        a = _head_stack(m).mean(0)
        a = a + np.eye(a.shape[0])
        a = a / a.sum(axis=1, keepdims=True)
        r = a if r is None else a @ r
    assert r is not None
    return r


def _image_hwc(image: Any) -> np.ndarray:
    img = to_numpy(image, np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C], the documented layout
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return np.clip(img, 0.0, 1.0)


def attention_grid(image: Any, maps: Sequence[Any], patch_size: int, setting: str | None,
                   title: str | None = None, num_prefix_tokens: int = 1,
                   alpha: float = 0.6) -> tuple[Figure, dict]:
    """The image, each head's CLS→patch attention in the last block, and the rollout.

    Args:
        image: ``[3, H, W]`` (or ``[H, W, 3]``) in [0, 1], un-normalised.
        maps: per block ``[heads, N, N]`` attention, ``N = num_prefix_tokens + (H/p)(W/p)``,
            class token first.
        patch_size: ``p``, the patch side in pixels.
        setting: caption stating the experimental setting (required; ``""`` to omit).
        num_prefix_tokens: tokens before the patches (class token, distillation token…).
        alpha: opacity of the attention overlay.

    Returns:
        ``(fig, data)``; ``data = {grid: [h, w], heads: [heads][h][w], rollout: [h][w]}``
        with each map normalised to sum to 1 over the patches.
    """
    img = _image_hwc(image)
    H, W = img.shape[:2]
    gh, gw = H // patch_size, W // patch_size
    last = _head_stack(maps[-1])
    n_patch = last.shape[1] - num_prefix_tokens
    if gh * gw != n_patch:
        raise ValueError(f"{n_patch} patch tokens do not tile a {H}x{W} image with patch {patch_size}")

    def cls_map(row: np.ndarray) -> np.ndarray:
        m = row[num_prefix_tokens:].reshape(gh, gw)
        return m / m.sum() if m.sum() > 0 else m  # ignore the mass on prefix tokens

    heads = [cls_map(last[h, 0]) for h in range(last.shape[0])]
    rollout = cls_map(attention_rollout(maps)[0])
    panels = [("image", None)] + [(f"head {h}", m) for h, m in enumerate(heads)] + [("rollout", rollout)]
    ncols = min(len(panels), 7)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=1.55 * ncols, height=1.7 * nrows + 0.3,
                           squeeze=False)
    grey = img.mean(-1) if img.ndim == 3 else img
    for ax, (name, m) in zip(axes.flat, panels):
        if m is None:
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
        else:
            # Grey image underneath so the colour map alone carries the attention.
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            ax.imshow(m, cmap="inferno", alpha=alpha, extent=(-0.5, W - 0.5, H - 0.5, -0.5),
                      interpolation="nearest")
        ax.set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    annotate_setting(fig, setting)
    return fig, jsonable({"grid": [gh, gw], "patch_size": patch_size, "block": len(maps) - 1,
                          "heads": [m for m in heads], "rollout": rollout,
                          "setting": setting, "title": title})
