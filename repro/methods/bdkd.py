"""Chapter 37 (BD-KD): the balance between forward and reverse KL during online training."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..plots.style import annotate_setting, jsonable, new_figure


def plot_balance(results: list[dict[str, Any]], label: str, setting: str, window: int = 20):
    """Per-step entropy gap H_S − H_T (left) and mean reverse-KL weight w_R (right) of the BD-KD
    runs, smoothed over ``window`` steps, one line per seed."""
    fig, (a, b) = new_figure(ncols=2, width=9.0)
    data: dict[str, Any] = {}
    for r in results:
        if r["method"] != label or "extra" not in r:
            continue
        bal = r["extra"]["balance"]
        k = max(1, min(window, len(bal["gap"]) // 5 or 1))
        smooth = lambda v: np.convolve(v, np.ones(k) / k, mode="valid")
        gap, wr = smooth(np.asarray(bal["gap"])), smooth(np.asarray(bal["w_reverse"]))
        steps = np.arange(len(gap)) + k
        a.plot(steps, gap, label=f"seed {r['seed']}")
        b.plot(steps, wr, label=f"seed {r['seed']}")
        data[str(r["seed"])] = {"gap": bal["gap"], "w_reverse": bal["w_reverse"], "window": k}
    a.axhline(0, color="0.4", linewidth=1)
    a.set_xlabel("training step")
    a.set_ylabel("mean H(p_S) − H(p_T) (nats, at τ)")
    a.set_title("Student less sure than teacher above 0")
    b.axhline(0.5, color="0.4", linewidth=1, linestyle=":")
    b.set_ylim(0, 1)
    b.set_xlabel("training step")
    b.set_ylabel("mean reverse-KL weight w_R")
    b.set_title("Share of the mode-seeking (reverse) KL")
    a.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({"runs": data, "setting": setting})
