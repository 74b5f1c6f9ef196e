"""The architecture family's Markdown tables (through ``repro.tables.markdown_table``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...sweep import SweepResult
from ...tables import markdown_table


def summary_table(result: SweepResult, arms: Sequence[str] | None = None) -> str:
    """One row per arm: its network, parameters, forward MFLOPs per image, training images/s,
    test top-1 per seed (mean) and the mean train–test gap."""
    rows = []
    for arm in arms or result.arms():
        jobs = result.of(arm)
        if not jobs:
            continue
        top = list(result.per_seed("top1", arm).values())
        rows.append([
            f"`{arm}`", jobs[0]["extra"].get("title", arm),
            f"{np.mean(list(result.per_seed('params', arm).values())) / 1e3:.1f} k",
            f"{np.mean(list(result.per_seed('mflops', arm).values())):.2f}",
            f"{np.mean(list(result.per_seed('images_per_s', arm).values())):.0f}",
            ", ".join(f"{v:.1f}" for v in top) + f" (**{np.mean(top):.2f}**)",
            f"{np.mean(list(result.per_seed('gap', arm).values())):.1f}",
        ])
    return markdown_table(["arm", "network", "params", "MFLOPs", "train img/s", "top-1 per seed (mean)",
                           "train − test gap"], rows, "llrrrll")
